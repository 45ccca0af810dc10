//! The pages people see from the gateway itself: small, self-contained HTML (inline CSS, no
//! external assets) in plain words. Everything a page echoes is escaped. Also the responses
//! that carry them ([`html`], [`text`]), with the headers every answer the gateway writes
//! itself has ([`page_headers`]).

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::body::{full, ProxyBody};
use crate::clock::Timestamp;
use crate::store::EndReason;

/// What the pages need to know about the site.
#[derive(Clone, Debug)]
pub struct Site {
    /// `pages.helpdesk`: how people get help.
    pub helpdesk: String,
    /// `pages.timezone`, resolved: for "locked until HH:MM".
    pub tz: jiff::tz::TimeZone,
    /// `faspex.login_path`: where every page leads back to.
    pub login_path: String,
}

impl Site {
    /// `at` as people here read a clock: "14:05 CET", with the date when it is not today.
    pub fn clock(&self, at: Timestamp, now: Timestamp) -> String {
        let to_zoned = |t: Timestamp| {
            jiff::Timestamp::from_millisecond(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
                .ok()
                .map(|ts| ts.to_zoned(self.tz.clone()))
        };
        match (to_zoned(at), to_zoned(now)) {
            (Some(at), Some(now)) if at.date() == now.date() => at.strftime("%H:%M %Z").to_string(),
            (Some(at), _) => at.strftime("%H:%M %Z on %A %-d %B %Y").to_string(),
            (None, _) => "later".to_owned(),
        }
    }
}

/// A login form's fields other than the password, to carry into the take-over form.
#[derive(Clone, Debug, Default)]
pub struct LoginForm {
    /// The name typed in.
    pub username: String,
    /// Every other field (Faspex's `authenticity_token` among them), in order.
    pub hidden: Vec<(String, String)>,
    /// The form's field names, from `faspex.username_field` and `faspex.password_field`.
    pub username_field: String,
    pub password_field: String,
}

/// The field the take-over form adds; the gateway takes it out before Faspex sees the form.
pub const TAKEOVER_FIELD: &str = "_faspex_gate_takeover";

fn back_link(site: &Site, label: &str) -> String {
    format!(
        r#"<p><a class="btn" href="{}">{}</a></p>"#,
        escape(&site.login_path),
        escape(label)
    )
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs().max(1);
    match s {
        1 => "a second".to_owned(),
        2..=90 => format!("{s} seconds"),
        _ => format!("{} minutes", s.div_ceil(60)),
    }
}

/// Wrong name or password.
pub fn login_failed(site: &Site) -> String {
    page(
        "Login failed",
        "The user name or password was not right. Please check them and try again. After \
         several failed tries in a row the account is locked for a while, to keep it safe.",
        &back_link(site, "Back to the login page"),
    )
}

/// The account is locked.
pub fn locked(site: &Site, until: Timestamp, now: Timestamp, by_admin: bool) -> String {
    let why = if by_admin {
        "This account has been locked by the helpdesk"
    } else {
        "This account is locked because of too many failed logins"
    };
    page(
        "Account locked",
        &format!(
            "{why}. It unlocks at {}. If you need it sooner, or you did not make these \
             attempts, contact {}.",
            site.clock(until, now),
            site.helpdesk
        ),
        &back_link(site, "Back to the login page"),
    )
}

/// Every licence seat is taken.
pub fn license_full(site: &Site, retry: Duration) -> String {
    page(
        "All licences are in use",
        &format!(
            "Faspex allows only a limited number of people to be logged in at the same time, and \
             all of those places are taken right now. Please try again in {}. A place frees up \
             when someone logs out or has been inactive for a while.",
            seconds(retry)
        ),
        &back_link(site, "Try again"),
    )
}

/// The account is active on another client: offer to sign that one out after a fresh
/// password check.
pub fn other_client(
    site: &Site,
    form: &LoginForm,
    since: Timestamp,
    ip: IpAddr,
    now: Timestamp,
) -> String {
    let mut hidden = String::new();
    for (name, value) in &form.hidden {
        hidden.push_str(&format!(
            r#"<input type="hidden" name="{}" value="{}">"#,
            escape(name),
            escape(value)
        ));
    }
    let extra = format!(
        r#"<form method="post" action="{action}">{hidden}<input type="hidden" name="{takeover}" value="1">
<label>User name<input type="text" name="{uf}" value="{user}" readonly autocomplete="username"></label>
<label>Password<input type="password" name="{pf}" autocomplete="current-password" required autofocus></label>
<button class="btn" type="submit">Sign the other one out and continue here</button></form>
<p><small><a href="{action}">Cancel</a></small></p>"#,
        action = escape(&site.login_path),
        takeover = TAKEOVER_FIELD,
        uf = escape(&form.username_field),
        pf = escape(&form.password_field),
        user = escape(&form.username),
    );
    page(
        "Already signed in elsewhere",
        &format!(
            "This account is already signed in on another browser or computer (since {}, from \
             {ip}). An account can be used from one place at a time. To sign the other one out \
             and continue here, enter your password again.",
            site.clock(since, now)
        ),
        &extra,
    )
}

/// The session ended without the person logging out.
pub fn ended(site: &Site, why: Option<EndReason>) -> String {
    let (title, message) = match why {
        Some(EndReason::Absolute) => (
            "Your session reached its time limit",
            "Sessions last a limited time, however active. Please log in again.",
        ),
        Some(EndReason::Replaced) => (
            "Signed in somewhere else",
            "This account was signed in from another browser or computer, which signed this one \
             out. Please log in again to continue here.",
        ),
        Some(EndReason::Admin) => (
            "Signed out by the helpdesk",
            "The helpdesk ended this session. Please log in again, or contact them if you do not \
             know why.",
        ),
        _ => (
            "Signed out after inactivity",
            "You were signed out because there was no activity for a while. This frees the \
             licence for others. Please log in again to continue.",
        ),
    };
    page(title, message, &back_link(site, "Log in again"))
}

/// A logout link followed from another site: the session ends only when the person confirms,
/// with a POST from this page.
///
/// The gateway believes that POST because the browser says it is same-origin, with
/// `Sec-Fetch-Site` and `Origin`. Under the pages' `Referrer-Policy: no-referrer`, a browser
/// sends a form's POST with `Origin: null` (Fetch, "serializing a request origin"), which the
/// gateway must take for another site's: the button would only bring this page back (Chromium
/// does exactly that). So this one page narrows its policy to `same-origin` with a `<meta>`: its
/// POST carries the real origin, and still nothing about it leaves for another origin.
pub fn confirm_logout(logout_path: &str) -> String {
    let extra = format!(
        r#"<form method="post" action="{action}"><button class="btn" type="submit">Sign out</button></form>
<p><small><a href="/">Stay signed in</a></small></p>"#,
        action = escape(logout_path),
    );
    page_with_head(
        "Sign out?",
        "A link from another page asked to sign you out of Faspex. If you meant to sign out, \
         confirm with the button below.",
        &extra,
        r#"<meta name="referrer" content="same-origin">"#,
    )
}

/// Too many attempts from this address, or the directory's ceiling.
pub fn throttled(site: &Site, retry: Duration) -> String {
    page(
        "Too many attempts",
        &format!(
            "There have been too many login attempts in a short time. Please wait {} and try \
             again.",
            seconds(retry)
        ),
        &back_link(site, "Back to the login page"),
    )
}

/// The directory cannot be reached, or the gateway cannot record the login.
pub fn unavailable(site: &Site) -> String {
    page(
        "Login is unavailable",
        &format!(
            "Passwords cannot be checked right now. This did not count as a failed login. Please \
             try again in a few minutes, or contact {} if it goes on.",
            site.helpdesk
        ),
        &back_link(site, "Try again"),
    )
}

/// Escape text for HTML element content and double- or single-quoted attribute values: `&`, `<`,
/// `>`, `"` and `'` (as `&#x27;`). Text with none of them is borrowed, not copied.
pub fn escape(s: &str) -> Cow<'_, str> {
    html_escape::encode_quoted_attribute(s)
}

/// The pages' one style sheet, inline so that a page needs nothing else from the gateway. The
/// Content-Security-Policy allows exactly this text, by its hash ([`STYLE_HASH`]).
pub const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f5f7;color:#1d2330;margin:0}
main{max-width:34rem;margin:12vh auto;background:#fff;border-radius:8px;padding:2rem 2.25rem;box-shadow:0 1px 4px rgba(0,0,0,.12)}
h1{font-size:1.35rem;margin:0 0 1rem} p{line-height:1.5} a{color:#0b5cad}
.btn{display:inline-block;background:#0b5cad;color:#fff;text-decoration:none;padding:.5rem 1rem;border-radius:4px;border:0;font-size:1rem;cursor:pointer}
input{font-size:1rem;padding:.4rem;width:100%;box-sizing:border-box;margin:.25rem 0 .75rem}
small{color:#5a6272}
"#;

/// `'sha256-…'` of [`STYLE`], as a CSP source expression.
pub static STYLE_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use base64::Engine as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
});

/// The Content-Security-Policy of every answer the gateway writes itself: nothing may load or
/// run but the pages' own style sheet; forms post only to this origin (the login and logout
/// paths); no page may be framed, nor its base URL changed.
pub static CONTENT_SECURITY_POLICY: std::sync::LazyLock<http::HeaderValue> =
    std::sync::LazyLock::new(|| {
        let csp = format!(
            "default-src 'none'; style-src {}; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'",
            *STYLE_HASH
        );
        http::HeaderValue::try_from(csp)
            .unwrap_or_else(|_| http::HeaderValue::from_static("default-src 'none'"))
    });

/// A complete page: a heading, a paragraph of plain text and optional trusted HTML below it.
/// `title` and `message` are escaped; `extra_html` must already be safe, and may hold no
/// script, inline style or other resource: the pages' CSP allows none.
pub fn page(title: &str, message: &str, extra_html: &str) -> String {
    page_with_head(title, message, extra_html, "")
}

/// [`page`] with trusted `head_html` in its head.
fn page_with_head(title: &str, message: &str, extra_html: &str, head_html: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - Aspera Faspex</title>{head_html}
<style>{STYLE}</style></head>
<body><main><h1>{title}</h1><p>{message}</p>{extra_html}</main></body></html>
"#,
        title = escape(title),
        message = escape(message),
        extra_html = extra_html,
        head_html = head_html,
    )
}

/// An HTML response that must not be cached, with the gateway's page headers
/// ([`page_headers`]).
pub fn html(status: StatusCode, body: String) -> Response<ProxyBody> {
    respond(status, "text/html; charset=utf-8", body)
}

/// A plain-text response that must not be cached, with the same headers as a page.
pub fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    page_headers(h);
    resp
}

/// The headers of every answer the gateway writes itself: a strict Content-Security-Policy (the
/// pages' own style sheet, forms to this origin, nothing else), no framing, no `Referer` leaving
/// a page, and no type sniffing.
pub fn page_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY.clone(),
    );
    for (name, value) in [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        Site {
            helpdesk: "help <desk>".into(),
            tz: jiff::tz::TimeZone::get("Europe/Berlin").unwrap(),
            login_path: "/aspera/faspex/login".into(),
        }
    }

    #[test]
    fn clock_reads_in_the_sites_time_zone() {
        // 2026-11-22 13:05 UTC is 14:05 in Berlin (CET).
        let now = Timestamp::from_millis(1_795_352_700_000);
        let at = now + Duration::from_secs(3600);
        assert_eq!(site().clock(at, now), "15:05 CET");
        let tomorrow = now + Duration::from_secs(24 * 3600);
        assert_eq!(
            site().clock(tomorrow, now),
            "14:05 CET on Monday 23 November 2026"
        );
    }

    #[test]
    fn pages_escape_what_they_echo() {
        let s = site();
        let now = Timestamp::from_millis(1_795_352_700_000);
        let p = locked(&s, now + Duration::from_secs(60), now, false);
        assert!(p.contains("help &lt;desk&gt;") && p.contains("14:06 CET"));
        let form = LoginForm {
            username: "\"><script>x</script>".into(),
            hidden: vec![("authenticity_token".into(), "a\"b".into())],
            username_field: "user[name]".into(),
            password_field: "user[password]".into(),
        };
        let p = other_client(&s, &form, now, "10.0.0.1".parse().unwrap(), now);
        assert!(!p.contains("<script>x"));
        assert!(p.contains(r#"name="authenticity_token" value="a&quot;b""#));
        assert!(p.contains(r#"name="_faspex_gate_takeover" value="1""#));
        assert!(p.contains(r#"type="password" name="user[password]""#));
    }

    /// Only the confirm-logout page narrows the referrer policy, to `same-origin` (never wider):
    /// its POST must carry the real `Origin`.
    #[test]
    fn only_the_confirm_logout_page_sends_its_origin() {
        let meta = r#"<meta name="referrer" content="same-origin">"#;
        let p = confirm_logout("/aspera/faspex/logout");
        assert!(p.contains(meta));
        assert!(p.find(meta) < p.find("</head>"));
        let now = Timestamp::from_millis(1_795_352_700_000);
        for other in [
            login_failed(&site()),
            locked(&site(), now, now, false),
            ended(&site(), None),
            page("t", "m", ""),
        ] {
            assert!(!other.contains("name=\"referrer\""));
        }
    }

    #[test]
    fn escapes_everything_it_echoes() {
        let p = page("<b>", "a \"quote\" & 'tick' <script>", "");
        assert!(p.contains("&lt;b&gt;"));
        assert!(p.contains("a &quot;quote&quot; &amp; &#x27;tick&#x27; &lt;script&gt;"));
        assert!(!p.contains("<script>"));
    }
}
