//! The one place where a refusal or a failure becomes an HTTP response.
//!
//! Clients get a clear, generic message: an HTML page for a browser, a line of text for an API
//! client. The details (which upstream error, which bad byte) go to the log, not to the client.

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;
use super::classify::PathError;
use super::gate::Refusal as GateRefusal;
use super::pages::{self, html, text, LoginForm, Site};
use super::request::BadRequest;
use super::session::SessionCookies;
use super::upstream::{ForwardError, UpstreamError};
use crate::clock::Timestamp;
use crate::policy::LoginRefused;
use crate::store::{EndReason, StoreError};

/// What the error-to-response mapping needs besides the error.
pub struct Answer<'a> {
    /// Which column of the contract's table applies.
    pub browser: bool,
    pub site: &'a Site,
    /// The `Set-Cookie` that clears the gateway's cookie, sent when a session is gone.
    pub clear_cookie: Option<HeaderValue>,
    pub now: Timestamp,
}

/// A login refused by the engine, with the form it came from (for the take-over page).
#[derive(Debug)]
pub struct Refusal {
    pub refused: LoginRefused,
    pub form: Option<LoginForm>,
}

/// Everything that stops a request before (or instead of) a normal upstream response.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The credential gate refused the request before anything reached Faspex.
    #[error("refused: {0}")]
    Gate(#[from] GateRefusal),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("path is on the deny list")]
    Denied,
    #[error("no such gateway page")]
    NotFound,
    /// A method the action does not take (the login action other than by GET or POST, the
    /// token endpoint other than by POST).
    #[error("method not allowed here")]
    MethodNotAllowed,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the request body stood still for {0:?}")]
    ClientStalled(std::time::Duration),
    #[error("the request body broke off")]
    ClientAborted,
    /// A body the gateway must read (the login form, the token response) is over 64 KiB.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// A protected request without a live session: no credentials, an unknown or ended
    /// session, or an unknown bearer token. `Some` says how the session ended.
    #[error("no live session")]
    NoSession(Option<EndReason>),
    /// The engine refused a login or a credential check.
    #[error("login refused: {}", .0.refused)]
    Refused(Box<Refusal>),
    /// Too many requests to public paths from this address.
    #[error("too many requests to public paths")]
    PublicThrottled(std::time::Duration),
    /// Too many public requests from this address still arriving
    /// (`policy.public_inflight_per_ip`).
    #[error("too many public requests from this address are still arriving")]
    PublicInflight,
    /// The state store could not answer or save: fail closed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::faspex::rack::ParamError> for GatewayError {
    fn from(e: crate::faspex::rack::ParamError) -> Self {
        GatewayError::Gate(e.into())
    }
}

impl From<PathError> for GatewayError {
    fn from(e: PathError) -> Self {
        GatewayError::Gate(e.into())
    }
}

impl From<LoginRefused> for GatewayError {
    fn from(refused: LoginRefused) -> Self {
        GatewayError::Refused(Box::new(Refusal {
            refused,
            form: None,
        }))
    }
}

impl From<BadRequest> for GatewayError {
    fn from(BadRequest(why): BadRequest) -> Self {
        GatewayError::BadRequest(why)
    }
}

impl From<ForwardError> for GatewayError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Upstream(u) => GatewayError::Upstream(u),
            ForwardError::ClientStalled(d) => GatewayError::ClientStalled(d),
            ForwardError::ClientAborted(_) => GatewayError::ClientAborted,
        }
    }
}

/// The status an API client gets for a refused login (the contract's right-hand column), and
/// `Retry-After`.
pub fn refusal_status(r: &LoginRefused) -> (StatusCode, Option<std::time::Duration>) {
    use StatusCode as S;
    match r {
        LoginRefused::InvalidUsername(_) | LoginRefused::BadCredentials => (S::UNAUTHORIZED, None),
        LoginRefused::AccountLocked { retry_after, .. } => (S::FORBIDDEN, Some(*retry_after)),
        LoginRefused::LicenseFull { retry_after } => (S::SERVICE_UNAVAILABLE, Some(*retry_after)),
        LoginRefused::OtherClientActive { .. } => (S::CONFLICT, None),
        LoginRefused::Throttled { retry_after } => (S::TOO_MANY_REQUESTS, Some(*retry_after)),
        LoginRefused::DirectoryUnavailable | LoginRefused::Store(_) => {
            (S::SERVICE_UNAVAILABLE, None)
        }
        LoginRefused::FaspexUnavailable => (S::BAD_GATEWAY, None),
    }
}

/// The status of a request the credential gate refused: 400 unless the refusal says more.
fn gate_status(r: &GateRefusal) -> StatusCode {
    match r {
        GateRefusal::Denied => StatusCode::FORBIDDEN,
        GateRefusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        GateRefusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        GateRefusal::Encoded => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Gate(r) => gate_status(r),
            GatewayError::BadRequest(_) | GatewayError::ClientAborted => StatusCode::BAD_REQUEST,
            GatewayError::ClientStalled(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::Denied => StatusCode::FORBIDDEN,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Upstream(UpstreamError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Upstream(UpstreamError::Busy(_)) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Upstream(_) => StatusCode::BAD_GATEWAY,
            GatewayError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::NoSession(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Refused(r) => refusal_status(&r.refused).0,
            GatewayError::PublicThrottled(_) | GatewayError::PublicInflight => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// `Retry-After`, where the contract gives one.
    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            GatewayError::Refused(r) => refusal_status(&r.refused).1,
            GatewayError::PublicThrottled(d) => Some(*d),
            // Both clear as soon as requests in flight finish: a second is the honest guess.
            GatewayError::PublicInflight | GatewayError::Upstream(UpstreamError::Busy(_)) => {
                Some(std::time::Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// The (title, message) a person sees. Generic on purpose.
    fn words(&self) -> (&'static str, String) {
        match self {
            GatewayError::Gate(r) => match gate_status(r) {
                StatusCode::FORBIDDEN => ("Not allowed", "This address is not available through this gateway.".into()),
                StatusCode::METHOD_NOT_ALLOWED => ("Not allowed", "This address does not take that kind of request.".into()),
                StatusCode::PAYLOAD_TOO_LARGE => ("Request too large", format!("The request was refused: {r}.")),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => ("Unsupported request", format!("The request was refused: {r}.")),
                _ => ("Bad request", format!("The request was refused: {r}.")),
            },
            GatewayError::BadRequest(why) => ("Bad request", format!("The request is not valid: {why}.")),
            GatewayError::Denied => ("Not allowed", "This address is not available through this gateway.".into()),
            GatewayError::NotFound => ("Not found", "There is no such page.".into()),
            GatewayError::MethodNotAllowed => (
                "Not allowed",
                "This address does not take that kind of request.".into(),
            ),
            GatewayError::ClientStalled(_) => (
                "Upload stopped",
                "Nothing arrived from your side for too long, so the transfer was stopped. Please try again.".into(),
            ),
            GatewayError::ClientAborted => (
                "Upload broke off",
                "The request did not arrive in full. Please try again.".into(),
            ),
            GatewayError::Upstream(UpstreamError::Timeout(_)) => (
                "Faspex is not answering",
                "The file-transfer server took too long to answer. Please try again in a few minutes.".into(),
            ),
            GatewayError::Upstream(UpstreamError::Busy(_)) => (
                "Faspex is busy",
                "The file-transfer server is handling as many requests as it can. Please try again in a moment.".into(),
            ),
            GatewayError::Upstream(_) => (
                "Faspex is unavailable",
                "The file-transfer server cannot be reached right now. Please try again in a few minutes.".into(),
            ),
            GatewayError::TooLarge(limit) => (
                "Request too large",
                format!("The gateway reads at most {} KiB here.", limit / 1024),
            ),
            GatewayError::NoSession(_) => (
                "Login required",
                "Valid credentials are required.".into(),
            ),
            GatewayError::Refused(r) => ("Login refused", r.refused.to_string()),
            GatewayError::PublicThrottled(_) => (
                "Too many requests",
                "Too many requests from this address. Please wait a moment and try again.".into(),
            ),
            GatewayError::PublicInflight => (
                "Too many requests",
                "Too many uploads from this address are still arriving. Please wait a moment and try again.".into(),
            ),
            GatewayError::Store(_) => (
                "Temporarily unavailable",
                "The gateway cannot record sessions right now. Please try again in a few minutes.".into(),
            ),
        }
    }

    /// Render the response: an HTML page for a browser, a line of text for an API client,
    /// with the contract's status and headers.
    pub fn into_response(self, a: &Answer<'_>) -> Response<ProxyBody> {
        let status = self.status();
        let retry = self.retry_after();
        let mut resp = match (&self, a.browser) {
            // A browser without a live session goes to the login page, or to the page that
            // says why its session ended.
            (GatewayError::NoSession(why), true) => {
                let to = match why {
                    Some(EndReason::Idle) => "/_faspex-gate/expired".to_owned(),
                    Some(r @ (EndReason::Absolute | EndReason::Replaced | EndReason::Admin)) => {
                        format!("/_faspex-gate/expired?reason={}", r.as_str())
                    }
                    _ => a.site.login_path.clone(),
                };
                let mut resp = text(StatusCode::FOUND, String::new());
                if let Ok(v) = HeaderValue::from_str(&to) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                resp
            }
            (GatewayError::Refused(r), true) => html(status, refusal_page(r, a)),
            (GatewayError::Refused(r), false) => text(status, format!("{}\n", r.refused)),
            (GatewayError::PublicThrottled(d), true) => html(status, pages::throttled(a.site, *d)),
            (GatewayError::Store(_), true) => html(status, pages::unavailable(a.site)),
            (_, browser) => {
                let (title, message) = self.words();
                if browser {
                    html(status, pages::page(title, &message, ""))
                } else {
                    text(status, format!("{title}: {message}\n"))
                }
            }
        };
        let challenged = resp.status() == StatusCode::UNAUTHORIZED && !a.browser;
        let h = resp.headers_mut();
        if let Some(d) = retry {
            h.insert(header::RETRY_AFTER, HeaderValue::from(d.as_secs().max(1)));
        }
        // Only an API client is ever challenged: a browser must never see a password prompt.
        if challenged {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Faspex\""),
            );
        }
        if matches!(self, GatewayError::NoSession(_)) {
            if let Some(c) = &a.clear_cookie {
                h.append(header::SET_COOKIE, c.clone());
            }
        }
        resp
    }
}

/// The page a browser sees for a refused login.
fn refusal_page(r: &Refusal, a: &Answer<'_>) -> String {
    let site = a.site;
    match &r.refused {
        LoginRefused::InvalidUsername(_) | LoginRefused::BadCredentials => {
            pages::login_failed(site)
        }
        LoginRefused::AccountLocked {
            until, by_admin, ..
        } => pages::locked(site, *until, a.now, *by_admin),
        LoginRefused::LicenseFull { retry_after } => pages::license_full(site, *retry_after),
        LoginRefused::OtherClientActive { since, ip, .. } => match &r.form {
            Some(form) => pages::other_client(site, form, *since, *ip, a.now),
            None => pages::page(
                "Already signed in elsewhere",
                "This account is already signed in on another browser or computer. Log in \
                 again from the login page to sign the other one out.",
                "",
            ),
        },
        LoginRefused::Throttled { retry_after } => pages::throttled(site, *retry_after),
        LoginRefused::FaspexUnavailable => pages::page(
            "Faspex is unavailable",
            "The file-transfer server cannot be reached right now. Please try again in a few \
             minutes.",
            "",
        ),
        LoginRefused::DirectoryUnavailable | LoginRefused::Store(_) => pages::unavailable(site),
    }
}

/// A request is a browser request when it carries a gateway cookie, accepts HTML, or was sent by
/// script (`X-Requested-With`). Only other requests may ever see `WWW-Authenticate`. (The
/// handler takes [`BrowserSigns`] before forwarding; this is its one-shot form, for tests.)
#[cfg(test)]
pub fn is_browser(headers: &HeaderMap, cookies: &SessionCookies) -> bool {
    BrowserSigns::of(headers, cookies).is_browser()
}

/// What marks a request as a browser's, taken before the request is forwarded and used only
/// when an answer depends on it (an error, or a `WWW-Authenticate` from Faspex).
pub struct BrowserSigns(bool);

impl BrowserSigns {
    pub fn of(headers: &HeaderMap, cookies: &SessionCookies) -> Self {
        const X_REQUESTED_WITH: header::HeaderName =
            header::HeaderName::from_static("x-requested-with");
        // Built once: building a searcher costs more than a search.
        static HTML: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"text/html"));
        // One pass over the headers, with no hashing.
        BrowserSigns(headers.iter().any(|(k, v)| {
            *k == X_REQUESTED_WITH
                || (*k == header::ACCEPT && HTML.find(v.as_bytes()).is_some())
                || (*k == header::COOKIE && cookies.carried_in(v))
        }))
    }

    pub fn is_browser(&self) -> bool {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[test]
    fn browser_detection_follows_the_contract() {
        let cookies = SessionCookies::new(
            "__Host-faspex-gate",
            &[7u8; 32],
            std::sync::Arc::new(crate::clock::SystemClock),
        );
        let mut h = HeaderMap::new();
        assert!(!is_browser(&h, &cookies));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/xml"));
        assert!(!is_browser(&h, &cookies));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml"),
        );
        assert!(is_browser(&h, &cookies));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; __Host-faspex-gate=x"),
        );
        assert!(is_browser(&h, &cookies));
        for (cookie, browser) in [
            ("__Host-faspex-gate=x", true),
            ("a=b;__Host-faspex-gate", true),
            ("  __Host-faspex-gate=; a=b", true),
            ("x__Host-faspex-gate=y", false),
            ("a=__Host-faspex-gate", false),
            ("__Host-faspex-gate-2=y", false),
            ("a=b, __Host-faspex-gate=y", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, HeaderValue::from_static(cookie));
            assert_eq!(is_browser(&h, &cookies), browser, "{cookie}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            "x-requested-with",
            HeaderValue::from_static("XMLHttpRequest"),
        );
        assert!(is_browser(&h, &cookies));
    }

    fn site() -> Site {
        Site {
            helpdesk: "the helpdesk".into(),
            tz: jiff::tz::TimeZone::UTC,
            login_path: "/aspera/faspex/login".into(),
        }
    }

    /// The four headers of every page, with the one CSP.
    fn assert_page_headers(resp: &Response<ProxyBody>, what: &str) {
        let h = resp.headers();
        let csp = h
            .get(header::CONTENT_SECURITY_POLICY)
            .unwrap_or_else(|| panic!("{what}: no CSP"))
            .to_str()
            .unwrap();
        for part in [
            "default-src 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(part), "{what}: {csp}");
        }
        assert!(
            csp.contains(&format!("style-src {};", *pages::STYLE_HASH)),
            "{what}: {csp}"
        );
        assert!(!csp.contains("unsafe"), "{what}: {csp}");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY", "{what}");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer", "{what}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{what}");
        assert_eq!(h[header::CACHE_CONTROL], "no-store", "{what}");
    }

    async fn body_of(resp: Response<ProxyBody>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// What a page may hold under its CSP: its one style sheet, the hash of which the CSP
    /// names, and no script, inline style attribute, frame or outside resource.
    fn assert_page_fits_its_csp(body: &str, what: &str) {
        use base64::Engine as _;
        let start = body.find("<style>").unwrap_or_else(|| panic!("{what}")) + "<style>".len();
        let end = body.find("</style>").unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, &body.as_bytes()[start..end]);
        let hash = format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        );
        assert_eq!(hash, *pages::STYLE_HASH, "{what}");
        assert_eq!(body.matches("<style").count(), 1, "{what}");
        for banned in [
            "<script",
            " style=",
            "<img",
            "<iframe",
            "<link",
            "<base",
            "javascript:",
        ] {
            assert!(!body.contains(banned), "{what} holds {banned:?}");
        }
        // No event handler attribute (` onclick=` and the like).
        assert!(
            !body.split(" on").skip(1).any(|rest| {
                let name = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
                name > 0 && rest.as_bytes().get(name) == Some(&b'=')
            }),
            "{what} holds an event handler"
        );
    }

    /// Every answer the gateway writes itself, page or text, carries the page headers, and every
    /// page fits its CSP.
    #[tokio::test]
    async fn every_page_carries_the_security_headers() {
        let site = site();
        let now = Timestamp::from_millis(1_795_352_700_000);
        let form = LoginForm {
            username: "ann".into(),
            hidden: vec![("authenticity_token".into(), "t".into())],
            username_field: "user[name]".into(),
            password_field: "user[password]".into(),
        };
        let retry = std::time::Duration::from_secs(30);
        let mut pages_built: Vec<(&str, String)> = vec![
            ("login failed", pages::login_failed(&site)),
            ("locked", pages::locked(&site, now, now, false)),
            ("locked by admin", pages::locked(&site, now, now, true)),
            ("licence full", pages::license_full(&site, retry)),
            (
                "other client",
                pages::other_client(&site, &form, now, "10.0.0.1".parse().unwrap(), now),
            ),
            (
                "confirm logout",
                pages::confirm_logout("/aspera/faspex/logout"),
            ),
            ("throttled", pages::throttled(&site, retry)),
            ("unavailable", pages::unavailable(&site)),
            ("page", pages::page("t", "m", "")),
        ];
        for why in [
            None,
            Some(EndReason::Idle),
            Some(EndReason::Absolute),
            Some(EndReason::Replaced),
            Some(EndReason::Admin),
        ] {
            pages_built.push(("ended", pages::ended(&site, why)));
        }
        for (what, body) in pages_built {
            assert_page_fits_its_csp(&body, what);
            let resp = html(StatusCode::OK, body);
            assert_page_headers(&resp, what);
        }
        assert_page_headers(&text(StatusCode::OK, "x".into()), "text");

        let refused = |r: LoginRefused, form: Option<LoginForm>| {
            GatewayError::Refused(Box::new(Refusal { refused: r, form }))
        };
        let errors = || {
            vec![
                GatewayError::Gate(crate::proxy::gate::Refusal::Upgrade),
                GatewayError::Gate(crate::proxy::gate::Refusal::Denied),
                GatewayError::BadRequest("x"),
                GatewayError::Denied,
                GatewayError::NotFound,
                GatewayError::MethodNotAllowed,
                GatewayError::Upstream(UpstreamError::Timeout(retry)),
                GatewayError::Upstream(UpstreamError::Connect("x".into())),
                GatewayError::ClientStalled(retry),
                GatewayError::ClientAborted,
                GatewayError::TooLarge(65536),
                GatewayError::NoSession(None),
                GatewayError::NoSession(Some(EndReason::Replaced)),
                refused(LoginRefused::BadCredentials, None),
                refused(
                    LoginRefused::AccountLocked {
                        until: now,
                        retry_after: retry,
                        by_admin: false,
                    },
                    None,
                ),
                refused(LoginRefused::LicenseFull { retry_after: retry }, None),
                refused(
                    LoginRefused::OtherClientActive {
                        since: now,
                        ip: "10.0.0.1".parse().unwrap(),
                        kind: crate::store::ClientKind::Browser,
                    },
                    Some(form.clone()),
                ),
                refused(
                    LoginRefused::OtherClientActive {
                        since: now,
                        ip: "10.0.0.1".parse().unwrap(),
                        kind: crate::store::ClientKind::Browser,
                    },
                    None,
                ),
                refused(LoginRefused::Throttled { retry_after: retry }, None),
                refused(LoginRefused::DirectoryUnavailable, None),
                GatewayError::PublicThrottled(retry),
                GatewayError::PublicInflight,
                GatewayError::Upstream(UpstreamError::Busy(retry)),
                GatewayError::Store(StoreError::Closed),
            ]
        };
        for browser in [true, false] {
            let answer = Answer {
                browser,
                site: &site,
                clear_cookie: None,
                now,
            };
            for e in errors() {
                let what = format!("{e:?} (browser: {browser})");
                let resp = e.into_response(&answer);
                assert_page_headers(&resp, &what);
                let html = resp.headers()[header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with("text/html");
                let body = body_of(resp).await;
                if html {
                    assert_page_fits_its_csp(&body, &what);
                }
            }
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(GatewayError::Denied.status(), 403);
        assert_eq!(
            GatewayError::Upstream(UpstreamError::Timeout(std::time::Duration::from_secs(1)))
                .status(),
            504
        );
        assert_eq!(
            GatewayError::Upstream(UpstreamError::Connect("x".into())).status(),
            502
        );
    }
}
