//! HTTP plumbing for the emulator: the response body type and builders, the one mapping from a
//! [`Fault`] to a response, request parsing helpers (query, `Accept`, the Rails-style base URL),
//! body draining for uploads of any size.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode, Uri};

use crate::pages;

/// Every response body the emulator sends.
pub type EmulatorBody = BoxBody<Bytes, Infallible>;

/// Every response the emulator sends.
pub type Resp = Response<EmulatorBody>;

/// The most of a body read before routing (method override and parameters need it); actions
/// other than the streamed uploads answer `413` to larger ones.
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;

/// What went wrong with a request. `Fault::into_response` is the one place that turns these into
/// responses.
#[derive(Debug)]
pub enum Fault {
    /// Malformed input: `400` with the reason.
    BadRequest(&'static str),
    /// A body over its limit: `413`.
    TooLarge,
    /// A body of the wrong type: `415` naming the expected one.
    UnsupportedMediaType(&'static str),
}

impl Fault {
    pub fn into_response(self) -> Resp {
        let (status, reason) = match self {
            Fault::BadRequest(reason) => (StatusCode::BAD_REQUEST, reason),
            Fault::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            Fault::UnsupportedMediaType(expected) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, expected),
        };
        text(status, format!("{reason}\n"))
    }
}

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> EmulatorBody {
    Full::new(bytes.into()).boxed()
}

/// A response with a body and its `Content-Type`.
pub fn respond(status: StatusCode, content_type: &'static str, body: EmulatorBody) -> Resp {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An empty response.
pub fn empty(status: StatusCode) -> Resp {
    let mut response = Response::new(Empty::new().boxed());
    *response.status_mut() = status;
    response
}

pub fn html(status: StatusCode, body: String) -> Resp {
    respond(status, "text/html; charset=utf-8", full(body))
}

pub fn xml(status: StatusCode, body: String) -> Resp {
    respond(status, "application/xml; charset=utf-8", full(body))
}

pub fn atom(body: String) -> Resp {
    respond(
        StatusCode::OK,
        "application/atom+xml; charset=utf-8",
        full(body),
    )
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    respond(
        status,
        "application/json; charset=utf-8",
        full(value.to_string()),
    )
}

pub fn text(status: StatusCode, body: String) -> Resp {
    respond(status, "text/plain; charset=utf-8", full(body))
}

/// A `302` to `location`, with the small HTML body Rails sends along.
pub fn redirect(location: &str) -> Result<Resp, Fault> {
    let value =
        HeaderValue::try_from(location).map_err(|_| Fault::BadRequest("invalid Host header"))?;
    let mut response = html(StatusCode::FOUND, pages::redirect_body(location));
    response.headers_mut().insert(header::LOCATION, value);
    Ok(response)
}

/// The `404` of an unknown path or record: XML for XML clients, a Rails-like page otherwise.
pub fn not_found(headers: &HeaderMap) -> Resp {
    if wants_xml(headers) {
        return xml(StatusCode::NOT_FOUND, pages::xml_error("Not found"));
    }
    html(
        StatusCode::NOT_FOUND,
        pages::message_page(
            "The page you were looking for doesn't exist.",
            "You may have mistyped the address or the page may have moved.",
        ),
    )
}

/// Add a header whose value was built at run time; values that cannot be a header are dropped
/// (they never come from client input here).
pub fn set_header(response: &mut Resp, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::try_from(value) {
        response.headers_mut().append(name, value);
    }
}

/// The first value of `name` in the query of `uri`, percent-decoded.
pub fn query_param(uri: &Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// A header as text, if present and visible ASCII.
pub fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Whether the `Accept` header names `mime` (a plain substring test, case-insensitive: enough for
/// the clients Faspex serves).
pub fn accepts(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.to_ascii_lowercase().contains(mime))
}

/// Whether the request asks for XML (the API clients of the seed tutorial send `application/xml`).
pub fn wants_xml(headers: &HeaderMap) -> bool {
    ["application/xml", "text/xml", "application/atom+xml"]
        .iter()
        .any(|mime| accepts(headers, mime))
}

/// Whether the body is of `mime` (parameters such as `charset` ignored).
pub fn content_type_is(headers: &HeaderMap, mime: &str) -> bool {
    header_str(headers, header::CONTENT_TYPE)
        .and_then(|value| value.split(';').next())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case(mime))
}

/// The scheme and authority the client used, as Rails computes them for absolute redirects:
/// `X-Forwarded-Proto`/`X-Forwarded-Host` when a proxy set them, else plain `http` and `Host`.
/// Empty when there is no usable host, so that links become relative.
pub fn base_url(headers: &HeaderMap) -> String {
    let first = |name: &str| {
        header_str(headers, name)
            .and_then(|value| value.split(',').next())
            .map(str::trim)
            .filter(|value| !value.is_empty())
    };
    let scheme = match first("x-forwarded-proto") {
        Some(proto) if proto.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    match first("x-forwarded-host").or_else(|| first("host")) {
        Some(host) if is_valid_host(host) => format!("{scheme}://{host}"),
        _ => String::new(),
    }
}

/// The host name of the request without its port, as Faspex puts the transfer server in
/// `faspe://` links; `localhost` when the request names none.
pub fn request_host(headers: &HeaderMap) -> String {
    let authority = header_str(headers, "x-forwarded-host")
        .and_then(|value| value.split(',').next())
        .or_else(|| header_str(headers, header::HOST))
        .map(str::trim)
        .filter(|host| is_valid_host(host));
    let Some(authority) = authority else {
        return "localhost".to_owned();
    };
    if authority.starts_with('[') {
        // An IPv6 literal: keep the brackets, drop the port.
        return match authority.find(']') {
            Some(end) => authority[..=end].to_owned(),
            None => "localhost".to_owned(),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_owned(),
        _ => authority.to_owned(),
    }
}

/// A host (and optional port) made only of the characters a host may hold.
fn is_valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

/// Read and discard a body of any size, frame by frame, and count its bytes.
pub async fn drain(mut body: Incoming) -> Result<u64, Fault> {
    let mut count = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Fault::BadRequest("request body could not be read"))?;
        if let Some(data) = frame.data_ref() {
            count += data.len() as u64;
        }
    }
    Ok(count)
}
