//! The Aspera HTTP Gateway under `/aspera/http-gwy`, where file data moves over HTTP and can share
//! the gateway's port:
//!
//! * `GET /v1/download/{id}[?bytes=N]` streams a package (or `N` bytes of it) with `Content-Length`:
//!   [`pattern_byte`] bytes, as slices of one shared block ([`PatternBody`]), so memory stays flat;
//! * `POST /v1/upload` drains a streamed body of any size and answers `{"bytes":N}`;
//! * `GET /v2/upload` is a WebSocket (RFC 6455) that echoes every text and binary message.
//!
//! Each needs a transfer token, in `Authorization` (any scheme) or a `token` query parameter. Faspex
//! issued it; the emulator only checks that one is there.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::http::{self, drain, query_param, set_header, Fault, Resp};
use super::{routes, stopped, Emulator};

/// What a request under `/aspera/http-gwy/` asks for.
enum Action<'a> {
    /// `GET /v1/download/{id}`.
    Download(&'a str),
    /// `POST /v1/upload`.
    Upload,
    /// `GET /v2/upload` with `Upgrade: websocket`.
    WebSocket,
}

/// Route a request under `/aspera/http-gwy/`; `segments` is the path after it.
pub(super) async fn route(
    emulator: &Emulator,
    stop: watch::Receiver<bool>,
    request: Request<Incoming>,
    segments: &[&str],
) -> Result<Resp, Fault> {
    let action = match (request.method(), segments) {
        (&Method::GET, ["v1", "download", id]) => Action::Download(id),
        (&Method::POST, ["v1", "upload"]) => Action::Upload,
        (&Method::GET, ["v2", "upload"]) => Action::WebSocket,
        _ => return Ok(routes::not_found(request.headers())),
    };
    if !has_transfer_token(&request) {
        return Ok(token_required());
    }
    match action {
        Action::Download(id) => download(emulator, &request, id),
        Action::Upload => {
            let bytes = drain(request.into_body()).await?;
            Ok(http::json(StatusCode::OK, &json!({ "bytes": bytes })))
        }
        Action::WebSocket => websocket(request, stop),
    }
}

/// Whether the request carries a transfer token.
fn has_transfer_token(request: &Request<Incoming>) -> bool {
    let in_header = http::header_str(request.headers(), header::AUTHORIZATION)
        .is_some_and(|value| !value.trim().is_empty());
    in_header || query_param(request.uri(), "token").is_some_and(|token| !token.is_empty())
}

/// The `401` of a request without a transfer token.
fn token_required() -> Resp {
    let mut response = http::json(
        StatusCode::UNAUTHORIZED,
        &json!({"error": {"code": 401, "message": "A transfer token is required"}}),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"Aspera HTTP Gateway\""),
    );
    response
}

/// `GET /v1/download/{id}[?bytes=N]`: the package's bytes, or `N` of them.
fn download(emulator: &Emulator, request: &Request<Incoming>, id: &str) -> Result<Resp, Fault> {
    let Some(package) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| emulator.catalog().package(id))
    else {
        return Ok(routes::not_found(request.headers()));
    };
    let len = match query_param(request.uri(), "bytes") {
        Some(bytes) => bytes
            .trim()
            .parse::<u64>()
            .map_err(|_| Fault::BadRequest("bytes must be a number"))?,
        None => package.size,
    };
    let body = PatternBody::new(emulator.shared.pattern.clone(), len).boxed();
    let mut response = http::respond(StatusCode::OK, "application/octet-stream", body);
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    set_header(
        &mut response,
        header::CONTENT_DISPOSITION,
        &format!("attachment; filename=\"package-{}.bin\"", package.id),
    );
    Ok(response)
}

/// `GET /v2/upload`: the RFC 6455 handshake, then an echo session on the upgraded connection.
fn websocket(mut request: Request<Incoming>, stop: watch::Receiver<bool>) -> Result<Resp, Fault> {
    let headers = request.headers();
    let key = websocket_key(headers)?;
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(echo(on_upgrade, stop));
    let mut response = http::empty(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    set_header(&mut response, header::SEC_WEBSOCKET_ACCEPT, &accept);
    Ok(response)
}

/// The `Sec-WebSocket-Key` of a valid upgrade request (RFC 6455 section 4.2.1); `400` otherwise.
fn websocket_key(headers: &HeaderMap) -> Result<String, Fault> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|part| part.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(Fault::BadRequest("expected a WebSocket upgrade"));
    }
    if http::header_str(headers, header::SEC_WEBSOCKET_VERSION).map(str::trim) != Some("13") {
        return Err(Fault::BadRequest("Sec-WebSocket-Version must be 13"));
    }
    http::header_str(headers, header::SEC_WEBSOCKET_KEY)
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
        .ok_or(Fault::BadRequest("Sec-WebSocket-Key is missing"))
}

/// Echo every text and binary message until the client closes (tungstenite answers its close
/// and pings), or until the emulator stops (close 1001 "going away").
async fn echo(on_upgrade: OnUpgrade, mut stop: watch::Receiver<bool>) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%error, "emulator: WebSocket upgrade failed");
            return;
        }
    };
    let mut socket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            () = stopped(&mut stop) => {
                let frame = CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() };
                let _ = socket.close(Some(frame)).await;
                return;
            }
        };
        match message {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            // Close, ping and pong are answered by tungstenite on the next read.
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                tracing::debug!(%error, "emulator: WebSocket session ended with an error");
                return;
            }
            None => return,
        }
    }
}

/// The length of every chunk a [`PatternBody`] yields (the last one may be shorter).
const CHUNK: usize = 64 * 1024;

/// The period of the download pattern. It does not divide [`CHUNK`], so that a chunk lost,
/// repeated or reordered on the way shows up as a wrong byte.
const PERIOD: u64 = 251;

/// The byte at `offset` of every package the HTTP Gateway streams: `offset mod 251`.
pub fn pattern_byte(offset: u64) -> u8 {
    // The remainder is below 251, so the cast cannot truncate.
    (offset % PERIOD) as u8
}

/// One block holding [`CHUNK`] bytes of the pattern from every starting phase: bytes
/// `0 .. CHUNK + PERIOD` of the pattern.
pub fn pattern_block() -> Bytes {
    let len = CHUNK + PERIOD as usize;
    (0..len as u64)
        .map(pattern_byte)
        .collect::<Vec<u8>>()
        .into()
}

/// A body of `len` pattern bytes (see [`pattern_byte`]), yielded as slices of one shared block:
/// memory stays flat whatever the length, and hyper only asks for the next chunk when the client
/// has taken the previous one.
pub struct PatternBody {
    block: Bytes,
    offset: u64,
    len: u64,
}

impl PatternBody {
    /// `block` must come from `pattern_block()`.
    pub(super) fn new(block: Bytes, len: u64) -> Self {
        Self {
            block,
            offset: 0,
            len,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let remaining = this.len - this.offset;
        if remaining == 0 {
            return Poll::Ready(None);
        }
        // Both values fit: the first is below CHUNK, the second below PERIOD.
        let n = remaining.min(CHUNK as u64) as usize;
        let start = (this.offset % PERIOD) as usize;
        let chunk = this.block.slice(start..start + n);
        this.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.offset)
    }
}
