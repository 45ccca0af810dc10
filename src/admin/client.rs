//! `faspex-gate admin`: the helpdesk's command. It calls the admin API of a running gateway and
//! prints what it did, for a person or (`--json`) for a script.
//!
//! The URL and token file come from `--url` and `--token-file`, else from the configuration's
//! `admin.listen` and `admin.token_file`. The operator's login name (`$SUDO_USER`, else `$USER`)
//! goes in `X-Admin-Actor` for the audit log. Exit codes: 0 done (also an unlock or kick that
//! had nothing to do), 1 refused or failed (a wrong token says so), 2 usage or configuration
//! error (including a request the gateway answers `400`, such as a user name with a control
//! character), 3 the gateway could not be reached.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

use super::{LockView, SessionView, ACTOR_HEADER};

/// Exit code: refused or failed.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: usage or configuration error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the gateway could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// How long to wait for a connection, and for the whole answer.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);
const ANSWER_LIMIT: Duration = Duration::from_secs(30);

/// What to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Status,
    Sessions,
    Kick(String),
    Lockouts,
    Unlock(String),
    Lock {
        user: String,
        duration: Option<String>,
    },
}

/// Where and as whom.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`, no path.
    pub base: String,
    pub token: String,
    /// `X-Admin-Actor`, when a valid one is known.
    pub actor: Option<String>,
}

/// A failure, with its exit code and a message for the operator.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// The gateway's JSON error body, for `--json`.
    pub body: Option<Value>,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.into(),
            body: None,
        }
    }
}

/// Resolve the target from the flags and, where they are missing, the configuration.
pub fn target(
    config: Option<&Path>,
    url: Option<&str>,
    token_file: Option<&Path>,
) -> Result<Target, Failure> {
    let needs_config = url.is_none() || token_file.is_none();
    let cfg = if needs_config {
        let path = config
            .map(Path::to_path_buf)
            .unwrap_or_else(crate::config::default_path);
        Some(crate::config::Config::load(&path).map_err(|e| {
            Failure::usage(format!(
                "configuration error: {e} (or give --url and --token-file)"
            ))
        })?)
    } else {
        None
    };
    let base = match url {
        Some(u) => base_url(u)?,
        None => {
            let cfg = cfg.as_ref().ok_or_else(|| Failure::usage("no --url"))?;
            match cfg.admin.listen {
                Some(addr) => {
                    let ip = match addr.ip() {
                        std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
                            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
                        }
                        std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
                            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
                        }
                        ip => ip,
                    };
                    format!("http://{}", std::net::SocketAddr::new(ip, addr.port()))
                }
                None => {
                    return Err(Failure::usage(format!(
                        "{}: admin.listen is off, so there is no admin API to call; turn it on \
                         or give --url",
                        cfg.file.display()
                    )))
                }
            }
        }
    };
    let token_path: PathBuf = match token_file {
        Some(p) => p.to_path_buf(),
        None => cfg
            .as_ref()
            .and_then(|c| c.admin.token_file.clone())
            .ok_or_else(|| Failure::usage("no --token-file, and admin.token_file is not set"))?,
    };
    let token = std::fs::read_to_string(&token_path)
        .map_err(|e| {
            Failure::usage(format!(
                "cannot read the admin token {}: {e}",
                token_path.display()
            ))
        })?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(Failure::usage(format!(
            "the admin token file {} is empty",
            token_path.display()
        )));
    }
    Ok(Target {
        base,
        token,
        actor: operator(),
    })
}

/// `$SUDO_USER`, else `$USER`, when it is a plausible login name.
pub fn operator() -> Option<String> {
    ["SUDO_USER", "USER"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|c| c.is_ascii_graphic() && !matches!(c, b'"' | b'\\'))
        })
}

fn base_url(u: &str) -> Result<String, Failure> {
    let parsed = url::Url::parse(u).map_err(|e| Failure::usage(format!("--url {u}: {e}")))?;
    if parsed.scheme() != "http" {
        return Err(Failure::usage(format!(
            "--url {u}: the admin listener speaks plain HTTP (http://host:port)"
        )));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| Failure::usage(format!("--url {u}: no host")))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Ok(format!("http://{host}:{port}"))
}

fn user_path(user: &str) -> String {
    utf8_percent_encode(user, NON_ALPHANUMERIC).to_string()
}

/// Call the API for `action`: the JSON answer, or a failure with its exit code.
pub async fn call(target: &Target, action: &Action) -> Result<Value, Failure> {
    let (method, path, body) = match action {
        Action::Status => (Method::GET, "status".to_owned(), None),
        Action::Sessions => (Method::GET, "sessions".to_owned(), None),
        Action::Lockouts => (Method::GET, "lockouts".to_owned(), None),
        Action::Kick(u) => (Method::DELETE, format!("sessions/{}", user_path(u)), None),
        Action::Unlock(u) => (Method::DELETE, format!("lockouts/{}", user_path(u)), None),
        Action::Lock { user, duration } => {
            if let Some(d) = duration {
                let parsed = humantime::parse_duration(d).map_err(|e| {
                    Failure::usage(format!("--for {d}: {e} (use e.g. 30m, 1h, 2d)"))
                })?;
                if parsed < Duration::from_secs(1) || parsed > super::MAX_LOCK {
                    return Err(Failure::usage(format!(
                        "--for {d}: a lock lasts from 1s to 366d"
                    )));
                }
            }
            let body = match duration {
                Some(d) => serde_json::json!({ "for": d }).to_string(),
                None => String::new(),
            };
            (
                Method::POST,
                format!("lockouts/{}", user_path(user)),
                Some(body),
            )
        }
    };
    let uri = format!("{}{}{path}", target.base, super::API_PREFIX);
    let mut req = Request::builder()
        .method(method)
        .uri(&uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", target.token))
        .header(
            header::USER_AGENT,
            concat!("faspex-gate-admin/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(a) = &target.actor {
        req = req.header(ACTOR_HEADER, a.as_str());
    }
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| Failure::usage(format!("cannot build the request to {uri}: {e}")))?;

    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_LIMIT));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let unreachable = |why: String| Failure {
        code: EXIT_UNREACHABLE,
        message: format!(
            "cannot reach the gateway's admin API at {}: {why}",
            target.base
        ),
        body: None,
    };
    let resp = tokio::time::timeout(ANSWER_LIMIT, client.request(req))
        .await
        .map_err(|_| unreachable(format!("no answer within {ANSWER_LIMIT:?}")))?
        .map_err(|e| {
            use std::error::Error as _;
            let mut why = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                why = format!("{why}: {s}");
                src = s.source();
            }
            unreachable(why)
        })?;
    let status = resp.status();
    let bytes = tokio::time::timeout(ANSWER_LIMIT, resp.into_body().collect())
        .await
        .map_err(|_| unreachable("the answer stopped arriving".into()))?
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    let value: Option<Value> = serde_json::from_slice(&bytes).ok();
    if status == StatusCode::OK {
        return value.ok_or_else(|| Failure {
            code: EXIT_REFUSED,
            message: format!(
                "{uri} answered 200 without JSON; is this a faspex-gate admin listener?"
            ),
            body: None,
        });
    }
    let reason = value
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
    let (code, message) = match status {
        StatusCode::UNAUTHORIZED => (
            EXIT_REFUSED,
            "the gateway refused the admin token (401): check --token-file or admin.token_file"
                .to_owned(),
        ),
        // What was asked cannot be asked (a user name with a control character, say): usage.
        StatusCode::BAD_REQUEST => (
            EXIT_USAGE,
            format!("the gateway refused ({status}): {reason}"),
        ),
        _ => (
            EXIT_REFUSED,
            format!("the gateway refused ({status}): {reason}"),
        ),
    };
    Err(Failure {
        code,
        message,
        body: value,
    })
}

/// What a person reads for the answer to `action`.
pub fn human(action: &Action, v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    match action {
        Action::Status => format!(
            "Seats in use:     {} of {}\nLive sessions:    {}\nAccounts locked:  {}\nVersion:          {}\n",
            n("seats_used"),
            n("seats_limit"),
            n("sessions"),
            n("accounts_locked"),
            s("version"),
        ),
        Action::Sessions => {
            let list: Vec<SessionView> = list(v, "sessions");
            if list.is_empty() {
                return "No live sessions.\n".into();
            }
            let rows: Vec<[String; 7]> = list
                .into_iter()
                .map(|x| {
                    [
                        x.user,
                        x.account_kind,
                        x.kind,
                        x.client_ip,
                        x.started,
                        x.last_activity,
                        x.user_agent.chars().take(40).collect(),
                    ]
                })
                .collect();
            table(
                [
                    "USER",
                    "ACCOUNT",
                    "KIND",
                    "CLIENT",
                    "STARTED",
                    "LAST ACTIVITY",
                    "AGENT",
                ],
                &rows,
            )
        }
        Action::Lockouts => {
            let list: Vec<LockView> = list(v, "lockouts");
            if list.is_empty() {
                return "No account is locked.\n".into();
            }
            let rows: Vec<[String; 8]> = list
                .into_iter()
                .map(|l| {
                    [
                        l.user,
                        l.account_kind,
                        l.client_ip.unwrap_or_else(|| "(any)".into()),
                        l.locked_since,
                        l.unlocks_at,
                        l.failures.to_string(),
                        if l.by_admin { "admin" } else { "failed logins" }.into(),
                        if l.sources.is_empty() {
                            "-".into()
                        } else {
                            l.sources.join(",")
                        },
                    ]
                })
                .collect();
            table(
                [
                    "USER",
                    "ACCOUNT",
                    "FROM",
                    "LOCKED SINCE",
                    "UNLOCKS AT",
                    "FAILURES",
                    "BY",
                    "SOURCES",
                ],
                &rows,
            )
        }
        Action::Kick(_) => match n("ended") {
            0 => format!("{} had no live session; nothing to do.\n", s("user")),
            1 => format!(
                "{}: 1 session ended; its seat is free and Faspex is logged out.\n",
                s("user")
            ),
            k => format!(
                "{}: {k} sessions ended; the seat is free and Faspex is logged out.\n",
                s("user")
            ),
        },
        Action::Unlock(_) => {
            if v.get("was_locked").and_then(Value::as_bool) == Some(true) {
                format!("{0} was locked and is now unlocked; {0} can log in now.\n", s("user"))
            } else {
                format!(
                    "{} was not locked; nothing to do (its failed-login count is cleared).\n",
                    s("user")
                )
            }
        }
        Action::Lock { .. } => format!(
            "{0} is locked until {1}. Live sessions go on: end them with `faspex-gate admin kick {0}`.\n",
            s("user"),
            s("unlocks_at"),
        ),
    }
}

/// The array under `key` of an answer, read as `T`s (empty when absent or malformed).
fn list<T: serde::de::DeserializeOwned>(v: &Value, key: &str) -> Vec<T> {
    v.get(key)
        .cloned()
        .and_then(|l| serde_json::from_value(l).ok())
        .unwrap_or_default()
}

fn table<const N: usize>(head: [&str; N], rows: &[[String; N]]) -> String {
    let mut width = head.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(head.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_plain_http_with_a_port() {
        assert_eq!(
            base_url("http://127.0.0.1:9180").unwrap(),
            "http://127.0.0.1:9180"
        );
        assert_eq!(
            base_url("http://localhost/").unwrap(),
            "http://localhost:80"
        );
        assert_eq!(base_url("http://[::1]:9180").unwrap(), "http://[::1]:9180");
        assert_eq!(base_url("https://x:1").unwrap_err().code, EXIT_USAGE);
        assert_eq!(base_url("not a url").unwrap_err().code, EXIT_USAGE);
    }

    #[test]
    fn hostile_users_are_one_encoded_path_segment() {
        assert_eq!(user_path("*)(uid=*"), "%2A%29%28uid%3D%2A");
        assert_eq!(user_path("a/../b"), "a%2F%2E%2E%2Fb");
    }

    #[test]
    fn human_output_reads_well() {
        let v = serde_json::json!({"user": "ann", "ended": 0, "sessions": []});
        assert_eq!(
            human(&Action::Kick("ann".into()), &v),
            "ann had no live session; nothing to do.\n"
        );
        let v = serde_json::json!({"user": "ann", "was_locked": true});
        assert!(human(&Action::Unlock("ann".into()), &v).contains("can log in now"));
        let v = serde_json::json!({"lockouts": [{"user": "bob", "account_kind": "local",
            "locked_since": "t0", "unlocks_at": "t1", "failures": 5, "by_admin": false,
            "sources": ["192.0.2.9", "2001:db8::1"]}]});
        let t = human(&Action::Lockouts, &v);
        assert!(t.starts_with("USER  ACCOUNT  FROM   LOCKED SINCE"), "{t}");
        assert!(t.contains("bob   local    (any)  t0"), "{t}");
        assert!(t.contains("failed logins  192.0.2.9,2001:db8::1"), "{t}");
    }
}
