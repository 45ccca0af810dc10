//! The Aspera HTTP Gateway under `/aspera/http-gwy`, where file data moves over HTTP and can share
//! the gateway's port:
//!
//! * `GET /v1/download/{id}[?bytes=N]` streams a package (or `N` bytes of it) with `Content-Length`:
//!   [`pattern_byte`](crate::pattern_byte) bytes, as slices of one shared block ([`PatternBody`]), so memory stays flat;
//! * `POST /v1/upload` drains a streamed body of any size and answers `{"bytes":N}`;
//! * `GET /v2/upload` is a WebSocket (RFC 6455) that echoes every text and binary message.
//!
//! Each needs a transfer token, in `Authorization` (any scheme) or a `token` query parameter. Faspex
//! issued it; the emulator only checks that one is there.

use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
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

use crate::base::stopped;
use crate::emulator::Emulator;
use crate::http::{self, drain, not_found, query_param, set_header, Fault, Resp};
use crate::pattern::PatternBody;

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
pub(crate) async fn route(
    emulator: &Emulator,
    stop: watch::Receiver<bool>,
    request: Request<Incoming>,
    segments: &[&str],
) -> Result<Resp, Fault> {
    let action = match (request.method(), segments) {
        (&Method::GET, ["v1", "download", id]) => Action::Download(id),
        (&Method::POST, ["v1", "upload"]) => Action::Upload,
        (&Method::GET, ["v2", "upload"]) => Action::WebSocket,
        _ => return Ok(not_found(request.headers())),
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
        return Ok(not_found(request.headers()));
    };
    let len = match query_param(request.uri(), "bytes") {
        Some(bytes) => bytes
            .trim()
            .parse::<u64>()
            .map_err(|_| Fault::BadRequest("bytes must be a number"))?,
        None => package.size,
    };
    let body = PatternBody::new(emulator.pattern().clone(), len).boxed();
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
