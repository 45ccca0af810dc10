//! The one place where a refusal or a failure becomes an HTTP response.
//!
//! Clients get a clear, generic message: an HTML page for a browser, a line of text for an API
//! client. The details (which upstream error, which bad byte) go to the log, not to the client.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::classify::PathError;
use super::forward::{ForwardError, ProxyBody, UpstreamError};
use super::pages;

/// Everything that stops a request before (or instead of) a normal upstream response.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("bad request path: {0}")]
    BadPath(#[from] PathError),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("path is on the deny list")]
    Denied,
    #[error("no such gateway page")]
    NotFound,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the request body stood still for {0:?}")]
    ClientStalled(std::time::Duration),
    #[error("the request body broke off")]
    ClientAborted,
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
            GatewayError::BadPath(_)
            | GatewayError::BadRequest(_)
            | GatewayError::ClientAborted => StatusCode::BAD_REQUEST,
            GatewayError::ClientStalled(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::Denied => StatusCode::FORBIDDEN,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::Upstream(UpstreamError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The (title, message) a person sees. Generic on purpose.
    fn words(&self) -> (&'static str, String) {
        match self {
            GatewayError::BadPath(e) => ("Bad request", format!("The address is not valid: {e}.")),
            GatewayError::BadRequest(why) => ("Bad request", format!("The request is not valid: {why}.")),
            GatewayError::Denied => ("Not allowed", "This address is not available through this gateway.".into()),
            GatewayError::NotFound => ("Not found", "There is no such page.".into()),
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
        }
    }

    /// Render the response for a browser (an HTML page) or an API client (plain text).
    pub fn into_response(self, browser: bool) -> Response<ProxyBody> {
        let status = self.status();
        let (title, message) = self.words();
        if browser {
            html(status, pages::page(title, &message, ""))
        } else {
            text(status, format!("{title}: {message}\n"))
        }
    }
}

/// A request is a browser request when it carries a gateway cookie, accepts HTML, or was sent by
/// script (`X-Requested-With`). Only other requests may ever see `WWW-Authenticate`.
pub fn is_browser(headers: &HeaderMap, cookie_name: &str) -> bool {
    let accepts_html = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"));
    let has_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|kv| kv.trim_start().split('=').next() == Some(cookie_name));
    accepts_html || has_cookie || headers.contains_key("x-requested-with")
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
        let mut h = HeaderMap::new();
        assert!(!is_browser(&h, "__Host-faspex-gate"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/xml"));
        assert!(!is_browser(&h, "__Host-faspex-gate"));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml"),
        );
        assert!(is_browser(&h, "__Host-faspex-gate"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; __Host-faspex-gate=x"),
        );
        assert!(is_browser(&h, "__Host-faspex-gate"));
        let mut h = HeaderMap::new();
        h.insert(
            "x-requested-with",
            HeaderValue::from_static("XMLHttpRequest"),
        );
        assert!(is_browser(&h, "__Host-faspex-gate"));
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
