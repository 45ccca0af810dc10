//! What the console shows: the sign-in page, the console itself (seats, sessions, locks, the
//! "why can't NAME log in?" answer, the lock form) and its refusals, as plain HTML with the
//! gateway pages' look. Every page is built here; everything it echoes is escaped.
//!
//! Accessibility: one `h1`, a heading per section, a label on every input, real buttons in real
//! forms (so the keyboard does everything), tables with captions and header cells, the seats as
//! a `<meter>` with the same figure in words, notices in a `role="status"` region, and no fixed
//! widths (the layout reflows at 200 % zoom; wide tables scroll inside their own box). The style
//! sheet is served by the console itself ([`STYLE`] at [`STYLE_PATH`]): no inline style or
//! script, nothing from elsewhere.

use std::fmt::Write as _;

use crate::clock::Timestamp;
use crate::policy::Diagnosis;
use crate::proxy::pages::{escape, Site};
use crate::store::{Lock, Session};

use super::sessions::Notice;

/// Where the console's style sheet is served.
pub const STYLE_PATH: &str = "/console.css";

/// The console's style sheet: the gateway pages' own ([`crate::proxy::pages::STYLE`]) and what
/// the console adds (a wider page, tables, the seats bar).
pub static STYLE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{}{}",
        crate::proxy::pages::STYLE,
        r#"
main.console{max-width:72rem;margin:2rem auto}
header.top{display:flex;flex-wrap:wrap;gap:1rem;align-items:baseline;justify-content:space-between}
h2{font-size:1.1rem;margin:1.75rem 0 .5rem}
section{margin-bottom:1rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.95rem}
caption{text-align:left;color:#5a6272;padding:.25rem 0}
th,td{text-align:left;padding:.4rem .5rem;border-bottom:1px solid #dde1e7;vertical-align:top}
th{background:#f4f5f7}
meter{width:100%;height:1.5rem}
.figure{font-size:1.05rem;font-weight:600}
.notice{padding:.6rem .9rem;border-radius:4px;margin:1rem 0;border:1px solid #9bb8d9;background:#eef4fb}
.notice.noop{border-color:#d9c79b;background:#fbf6ea}
.inline{display:inline;margin:0}
.row{display:flex;flex-wrap:wrap;gap:.75rem;align-items:flex-end}
.row label{flex:1 1 14rem}
.row .btn{margin-bottom:.75rem}
.btn.secondary{background:#5a6272}
ul.answer{padding-left:1.25rem;line-height:1.5}
"#
    )
});

/// A complete console page: `title`, and trusted `body_html` inside `main`.
fn shell(title: &str, main_class: &str, body_html: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - faspex-gate helpdesk</title>
<link rel="stylesheet" href="{STYLE_PATH}"></head>
<body><main class="{main_class}">{body_html}</main></body></html>
"#,
        title = escape(title),
    )
}

fn hidden(name: &str, value: &str) -> String {
    format!(
        r#"<input type="hidden" name="{}" value="{}">"#,
        escape(name),
        escape(value)
    )
}

/// The sign-in page, with `message` (a refusal) above the form when there is one.
pub fn signin(token: &str, message: Option<&str>, username: &str) -> String {
    let mut body = String::from("<h1>Helpdesk sign-in</h1>");
    if let Some(m) = message {
        let _ = write!(
            body,
            r#"<p class="notice noop" role="alert">{}</p>"#,
            escape(m)
        );
    }
    let _ = write!(
        body,
        r#"<p>Sign in with your own directory account. Only members of the helpdesk group can use this console.</p>
<form method="post" action="/signin">{csrf}
<label for="username">User name</label>
<input id="username" type="text" name="username" value="{user}" autocomplete="username" required autofocus>
<label for="password">Password</label>
<input id="password" type="password" name="password" autocomplete="current-password" required>
<button class="btn" type="submit">Sign in</button></form>"#,
        csrf = hidden("csrf", token),
        user = escape(username),
    );
    shell("Helpdesk sign-in", "", &body)
}

/// A refusal with no form: a heading and a paragraph (and a way back when `back`).
pub fn refusal(title: &str, message: &str, back: bool) -> String {
    let back = if back {
        r#"<p><a class="btn" href="/">Back to the console</a></p>"#
    } else {
        ""
    };
    shell(
        title,
        "",
        &format!("<h1>{}</h1><p>{}</p>{back}", escape(title), escape(message)),
    )
}

/// What the console page shows.
pub struct View<'a> {
    pub site: &'a Site,
    pub now: Timestamp,
    /// Who is signed in (their account).
    pub me: &'a str,
    pub csrf: &'a str,
    pub notice: Option<Notice>,
    pub seats_used: usize,
    pub seats_limit: u32,
    pub sessions: &'a [Session],
    pub locks: &'a [Lock],
    /// The "why can't NAME log in?" question and its answer.
    pub why: Option<(&'a str, Result<Diagnosis, String>)>,
}

fn kind_word(s: &Session) -> &'static str {
    match s.kind.as_str() {
        "browser" => "browser",
        "basic" => "API (Basic)",
        "bearer" => "API (token)",
        _ => "other",
    }
}

fn action_form(path: &str, csrf: &str, user: &str, label: &str, accessible: &str) -> String {
    format!(
        r#"<form class="inline" method="post" action="{path}">{csrf}{user}<button class="btn" type="submit" aria-label="{accessible}">{label}</button></form>"#,
        csrf = hidden("csrf", csrf),
        user = hidden("user", user),
        accessible = escape(accessible),
        label = escape(label),
    )
}

fn sources(l: &Lock) -> String {
    if l.by_admin {
        return "set by the helpdesk or an administrator".into();
    }
    if l.sources.is_empty() {
        return "unknown".into();
    }
    l.sources
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The console.
pub fn console(v: &View<'_>) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        r#"<header class="top"><h1>Helpdesk console</h1>
<form class="inline" method="post" action="/signout">{csrf}<span>Signed in as <strong>{me}</strong>. </span><button class="btn secondary" type="submit">Sign out</button></form></header>"#,
        csrf = hidden("csrf", v.csrf),
        me = escape(v.me),
    );
    if let Some(n) = &v.notice {
        let _ = write!(
            b,
            r#"<p class="notice{}" role="status">{}</p>"#,
            if n.done { "" } else { " noop" },
            escape(&n.text)
        );
    }

    // Seats.
    let limit = v.seats_limit;
    let _ = write!(
        b,
        r#"<section aria-labelledby="seats-h"><h2 id="seats-h">Licence seats</h2>
<label for="seats">Seats in use</label>
<meter id="seats" min="0" max="{limit}" low="{low}" high="{high}" optimum="0" value="{used}">{used} of {limit}</meter>
<p class="figure">{used} of {limit} seats in use{full}</p></section>"#,
        used = v.seats_used,
        low = (f64::from(limit) * 0.7).floor(),
        high = (f64::from(limit) * 0.9).floor(),
        full = if v.seats_used >= limit as usize {
            " — all taken: new logins get the \u{201c}All licences are in use\u{201d} page"
        } else {
            ""
        },
    );

    // Why can't NAME log in?
    let asked = v.why.as_ref().map(|(n, _)| *n).unwrap_or("");
    let _ = write!(
        b,
        r#"<section aria-labelledby="why-h"><h2 id="why-h">Why can't someone log in?</h2>
<form method="get" action="/" class="row"><label>User name<input type="text" name="why" value="{asked}" required></label>
<button class="btn" type="submit">Check</button></form>"#,
        asked = escape(asked),
    );
    if let Some((name, answer)) = &v.why {
        b.push_str(&why_answer(v, name, answer));
    }
    b.push_str("</section>");

    // Sessions.
    let _ = write!(
        b,
        r#"<section aria-labelledby="sessions-h"><h2 id="sessions-h">Sessions ({})</h2>"#,
        v.sessions.len()
    );
    if v.sessions.is_empty() {
        b.push_str("<p>No one is logged in.</p>");
    } else {
        b.push_str(
            r#"<div class="scroll"><table><caption>Who holds a seat now, oldest first</caption>
<thead><tr><th scope="col">User</th><th scope="col">Client</th><th scope="col">Kind</th><th scope="col">Since</th><th scope="col">Last activity</th><th scope="col">Action</th></tr></thead><tbody>"#,
        );
        for s in v.sessions {
            let _ = write!(
                b,
                "<tr><th scope=\"row\">{user}</th><td>{ip}<br><small>{agent}</small></td><td>{kind}</td><td>{since}</td><td>{last}</td><td>{kick}</td></tr>",
                user = escape(&s.account),
                ip = s.ip,
                agent = escape(if s.agent.is_empty() { "(no agent)" } else { &s.agent }),
                kind = kind_word(s),
                since = escape(&v.site.clock(s.started, v.now)),
                last = escape(&v.site.clock(s.last_activity, v.now)),
                kick = action_form(
                    "/kick",
                    v.csrf,
                    &s.account,
                    "Kick",
                    &format!("Kick {}", s.account)
                ),
            );
        }
        b.push_str("</tbody></table></div>");
    }
    b.push_str("</section>");

    // Locks.
    let _ = write!(
        b,
        r#"<section aria-labelledby="locks-h"><h2 id="locks-h">Locked accounts ({})</h2>"#,
        v.locks.len()
    );
    if v.locks.is_empty() {
        b.push_str("<p>No account is locked.</p>");
    } else {
        b.push_str(
            r#"<div class="scroll"><table><caption>Locks in force</caption>
<thead><tr><th scope="col">User</th><th scope="col">Unlocks at</th><th scope="col">Failures</th><th scope="col">From</th><th scope="col">Action</th></tr></thead><tbody>"#,
        );
        for l in v.locks {
            let user = match l.key.ip {
                Some(ip) => format!("{} (from {ip} only)", l.key.account),
                None => l.key.account.clone(),
            };
            let _ = write!(
                b,
                "<tr><th scope=\"row\">{user}</th><td>{until}</td><td>{failures}</td><td>{from}</td><td>{unlock}</td></tr>",
                user = escape(&user),
                until = escape(&v.site.clock(l.until, v.now)),
                failures = if l.by_admin {
                    "—".to_owned()
                } else {
                    l.failures.to_string()
                },
                from = escape(&sources(l)),
                unlock = action_form(
                    "/unlock",
                    v.csrf,
                    &l.key.account,
                    "Unlock",
                    &format!("Unlock {}", l.key.account)
                ),
            );
        }
        b.push_str("</tbody></table></div>");
    }
    b.push_str("</section>");

    // Lock form.
    let _ = write!(
        b,
        r#"<section aria-labelledby="lock-h"><h2 id="lock-h">Lock an account</h2>
<p>A lock refuses new logins; it does not end a live session (kick it as well to end access now).</p>
<form method="post" action="/lock" class="row">{csrf}
<label>User name<input type="text" name="user" required></label>
<label>For how long (e.g. 30m, 2h, 1d; empty: the lockout duration)<input type="text" name="for"></label>
<button class="btn" type="submit">Lock</button></form></section>"#,
        csrf = hidden("csrf", v.csrf),
    );
    shell("Helpdesk console", "console", &b)
}

fn why_answer(v: &View<'_>, name: &str, answer: &Result<Diagnosis, String>) -> String {
    let d = match answer {
        Err(reason) => {
            return format!(
                r#"<p class="notice noop" role="status">{}</p>"#,
                escape(reason)
            )
        }
        Ok(d) => d,
    };
    let mut items = Vec::new();
    for l in &d.locks {
        let whom = match l.key.ip {
            Some(ip) => format!(" (from {ip} only)"),
            None => String::new(),
        };
        let why = if l.by_admin {
            "locked by the helpdesk or an administrator".to_owned()
        } else {
            format!(
                "locked after {} failed logins, from {}",
                l.failures,
                sources(l)
            )
        };
        items.push(format!(
            "<li><strong>Locked</strong>{} until {}: {}. {}</li>",
            escape(&whom),
            escape(&v.site.clock(l.until, v.now)),
            escape(&why),
            action_form(
                "/unlock",
                v.csrf,
                &l.key.account,
                "Unlock",
                &format!("Unlock {}", l.key.account)
            )
        ));
    }
    for s in &d.sessions {
        let other = if d.one_client_rejects {
            " A login from any other browser or computer is refused while it lives (one client \
             per account); kick it to let them in elsewhere."
        } else {
            " A login from another client replaces it."
        };
        items.push(format!(
            "<li><strong>Has a live session</strong> ({kind}) since {since} from {ip} ({agent}), last active {last}.{other} {kick}</li>",
            kind = kind_word(s),
            since = escape(&v.site.clock(s.started, v.now)),
            ip = s.ip,
            agent = escape(if s.agent.is_empty() { "no agent" } else { &s.agent }),
            last = escape(&v.site.clock(s.last_activity, v.now)),
            other = escape(other),
            kick = action_form(
                "/kick",
                v.csrf,
                &s.account,
                "Kick",
                &format!("Kick {}", s.account)
            ),
        ));
    }
    if d.sessions.is_empty() && d.seats_used >= d.seats_limit as usize {
        items.push(format!(
            "<li><strong>No seat free</strong>: all {} seats are in use, so a login gets the \
             \u{201c}All licences are in use\u{201d} page until someone logs out or is signed \
             out for inactivity.</li>",
            d.seats_limit
        ));
    }
    if items.is_empty() {
        items.push(
            "<li><strong>Nothing known</strong> against this account: it is not locked, has no \
             session, and a seat is free. If they still cannot log in, the password or the \
             directory account itself (disabled, expired, not in the group) is the likely \
             cause.</li>"
                .to_owned(),
        );
    }
    format!(
        r#"<div role="status"><h3>{}</h3><ul class="answer">{}</ul></div>"#,
        escape(&format!("{name} (account {})", d.account)),
        items.join("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_echo_and_load_only_their_style_sheet() {
        let p = signin("t\"k", Some("<b>no</b>"), "\"><script>x</script>");
        assert!(!p.contains("<script>x"));
        assert!(p.contains("&lt;b&gt;no&lt;/b&gt;"));
        assert!(p.contains(r#"value="t&quot;k""#));
        assert!(p.contains(r#"<link rel="stylesheet" href="/console.css">"#));
        assert!(!p.contains("<style") && !p.contains("style=") && !p.contains("<script"));
        // Every input has a label.
        assert!(p.contains(r#"<label for="username">"#) && p.contains(r#"<label for="password">"#));
        let r = refusal("A & B", "<x>", true);
        assert!(r.contains("A &amp; B") && r.contains("&lt;x&gt;"));
    }
}
