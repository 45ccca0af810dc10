//! The one place where a refusal or a failure becomes an HTTP response.
//!
//! Clients get a clear, generic message: an HTML page for a browser, a line of text for an API
//! client. The details (which upstream error, which bad byte) go to the log, not to the client.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::classify::PathError;
use super::forward::{ForwardError, ProxyBody, UpstreamError};
use super::pages::{self, LoginForm, Site};
use super::session::SessionCookies;
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
    Gate(#[from] super::gate::Refusal),
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

impl From<ForwardError> for GatewayError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Upstream(u) => GatewayError::Upstream(u),
            ForwardError::ClientStalled(d) => GatewayError::ClientStalled(d),
            ForwardError::ClientAborted(_) => GatewayError::ClientAborted,
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Gate(r) => r.status(),
            GatewayError::BadRequest(_) | GatewayError::ClientAborted => StatusCode::BAD_REQUEST,
            GatewayError::ClientStalled(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::Denied => StatusCode::FORBIDDEN,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Upstream(UpstreamError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Upstream(_) => StatusCode::BAD_GATEWAY,
            GatewayError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::NoSession(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Refused(r) => r.refused.status().0,
            GatewayError::PublicThrottled(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// `Retry-After`, where the contract gives one.
    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            GatewayError::Refused(r) => r.refused.status().1,
            GatewayError::PublicThrottled(d) => Some(*d),
            _ => None,
        }
    }

    /// The (title, message) a person sees. Generic on purpose.
    fn words(&self) -> (&'static str, String) {
        match self {
            GatewayError::Gate(r) => match r.status() {
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
        LoginRefused::DirectoryUnavailable | LoginRefused::Store(_) => pages::unavailable(site),
    }
}

/// A request is a browser request when it carries a gateway cookie, accepts HTML, or was sent by
/// script (`X-Requested-With`). Only other requests may ever see `WWW-Authenticate`.
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
        let accepts_html = || {
            headers
                .get_all(header::ACCEPT)
                .iter()
                .any(|v| HTML.find(v.as_bytes()).is_some())
        };
        BrowserSigns(
            headers.contains_key(X_REQUESTED_WITH) || accepts_html() || cookies.carried(headers),
        )
    }

    pub fn is_browser(&self) -> bool {
        self.0
    }
}

/// Wrap a complete body into the gateway's body type.
pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An HTML response that must not be cached.
pub fn html(status: StatusCode, body: String) -> Response<ProxyBody> {
    respond(status, "text/html; charset=utf-8", body)
}

/// A plain-text response that must not be cached.
pub fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_detection_follows_the_contract() {
        let cookies = SessionCookies::new("__Host-faspex-gate", &[7u8; 32]);
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
