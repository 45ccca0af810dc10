//! The h2c mode ([`EmulatorConfig::h2c`](crate::EmulatorConfig::h2c),
//! [`Emulator::accept_h2c`](crate::Emulator::accept_h2c)): the emulator answers protocol upgrades
//! as a Faspex behind Apache with `Protocols h2c http/1.1` does, so that tests can show what a
//! gateway that relayed such an upgrade would open.
//!
//! * An HTTP/1.1 request with `Connection: Upgrade`, `Upgrade: h2c` (among its tokens), one valid
//!   `HTTP2-Settings` and no body is answered `101 Switching Protocols` with `Upgrade: h2c`, and the
//!   connection then speaks HTTP/2 (RFC 7540 §3.2): every request sent inside reaches the same
//!   routes as any other, whatever its path (`POST /aspera/faspex/package_relay/relay_package`
//!   among them). Apache also answers the upgrading request itself on stream 1; hyper's server
//!   cannot take a stream it did not read, so here that request gets no answer, and the client
//!   sends its requests on fresh streams (a hyper HTTP/2 client, which starts at stream 1, does).
//! * An upgrade to any other token but `websocket` (`Upgrade: made-up`) is answered `101` naming
//!   that token, and the connection then echoes every byte it receives: a raw tunnel.
//!
//! Without the mode (the default) none of this happens: the request is routed as any other
//! (the WebSocket of the HTTP Gateway is the one upgrade Faspex always takes). Each switch is an
//! [`EmulatorEvent::Upgraded`], after the request's own [`EmulatorEvent::Request`].

use std::convert::Infallible;

use base64::Engine as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http2;
use hyper::upgrade::Upgraded;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use crate::base::stopped;
use crate::emulator::{Emulator, EmulatorEvent};
use crate::http::{empty, Resp};
use crate::routes;

/// The protocol a request asks to switch to, as the h2c mode takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Switch {
    /// HTTP/2 over cleartext.
    H2c,
    /// Any other token but `websocket`: a raw echo.
    Other(String),
}

impl Switch {
    fn token(&self) -> &str {
        match self {
            Switch::H2c => "h2c",
            Switch::Other(token) => token,
        }
    }
}

/// The comma-separated tokens of every `name` header, trimmed, empty ones left out.
fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether `value` is an `HTTP2-Settings` value: base64url of whole SETTINGS entries (six bytes
/// each; none at all is allowed).
fn valid_settings(value: &HeaderValue) -> bool {
    let trimmed = value
        .as_bytes()
        .strip_suffix(b"==")
        .or_else(|| value.as_bytes().strip_suffix(b"="))
        .unwrap_or(value.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .is_ok_and(|settings| settings.len() % 6 == 0)
}

/// Whether a request declares a body (the h2c upgrade is taken only without one).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// What a request asks to switch to, if the h2c mode takes it.
pub(crate) fn asked(headers: &HeaderMap, version: Version) -> Option<Switch> {
    if version != Version::HTTP_11
        || !tokens(headers, header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return None;
    }
    let offered: Vec<&str> = tokens(headers, header::UPGRADE).collect();
    if offered.iter().any(|t| t.eq_ignore_ascii_case("h2c")) {
        let settings: Vec<&HeaderValue> = headers.get_all("http2-settings").iter().collect();
        let valid = matches!(settings[..], [one] if valid_settings(one));
        return (valid && !has_body(headers)).then_some(Switch::H2c);
    }
    let first = offered.first()?;
    let is_token = first
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
    (is_token && !first.eq_ignore_ascii_case("websocket")).then(|| Switch::Other((*first).into()))
}

/// Answer `101` for `switch`, and take the connection over once hyper hands it on.
pub(crate) fn switch(
    emulator: &Emulator,
    stop: watch::Receiver<bool>,
    mut request: Request<Incoming>,
    switch: Switch,
) -> Resp {
    emulator.record_request(&request);
    emulator.record(EmulatorEvent::Upgraded {
        protocol: switch.token().to_owned(),
    });
    let Ok(upgrade) = HeaderValue::try_from(switch.token()) else {
        // (a token is always a valid header value; this only keeps the path panic-free)
        return empty(StatusCode::BAD_REQUEST);
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let emulator = emulator.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "emulator: upgrade failed");
                return;
            }
        };
        match switch {
            Switch::H2c => serve_h2(emulator, stop, upgraded).await,
            Switch::Other(_) => echo(upgraded, stop).await,
        }
    });
    let mut response = empty(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, upgrade);
    response
}

/// HTTP/2 on the upgraded connection, every request to the emulator's routes, until the client
/// leaves or the emulator stops.
async fn serve_h2(emulator: Emulator, mut stop: watch::Receiver<bool>, upgraded: Upgraded) {
    // Inside HTTP/2 there is no upgrade to take: every request goes straight to the routes.
    let routes_stop = stop.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let emulator = emulator.clone();
        let stop = routes_stop.clone();
        async move { Ok::<_, Infallible>(routes::handle(&emulator, stop, request).await) }
    });
    let connection = http2::Builder::new(TokioExecutor::new()).serve_connection(upgraded, service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "emulator: h2c connection ended with an error");
            }
            return;
        }
        () = stopped(&mut stop) => connection.as_mut().graceful_shutdown(),
    }
    if let Err(error) = connection.await {
        tracing::debug!(%error, "emulator: h2c connection ended with an error during shutdown");
    }
}

/// Echo every byte back until the client closes its side or the emulator stops.
async fn echo(upgraded: Upgraded, mut stop: watch::Receiver<bool>) {
    let (mut from, mut to) = tokio::io::split(TokioIo::new(upgraded));
    tokio::select! {
        result = tokio::io::copy(&mut from, &mut to) => {
            if let Err(error) = result {
                tracing::debug!(%error, "emulator: echo tunnel ended with an error");
            }
        }
        () = stopped(&mut stop) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn what_the_mode_takes_for_an_upgrade() {
        let h2c = [
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ];
        let ask = |pairs: &[(&'static str, &'static str)]| asked(&headers(pairs), Version::HTTP_11);
        assert_eq!(ask(&h2c), Some(Switch::H2c));
        assert_eq!(
            asked(&headers(&h2c), Version::HTTP_2),
            None,
            "only HTTP/1.1 upgrades"
        );
        // h2c needs exactly one valid HTTP2-Settings and no body.
        assert_eq!(ask(&h2c[..2]), None);
        assert_eq!(
            ask(&[h2c[0], h2c[1], ("http2-settings", "AAMAAABkAA")]),
            None
        );
        assert_eq!(
            ask(&[h2c[0], h2c[1], ("http2-settings", "")]),
            Some(Switch::H2c)
        );
        assert_eq!(ask(&[h2c[0], h2c[1], h2c[2], h2c[2]]), None);
        assert_eq!(
            ask(&[h2c[0], h2c[1], h2c[2], ("content-length", "4")]),
            None
        );
        // Without `Connection: upgrade` nothing is asked.
        assert_eq!(ask(&h2c[1..]), None);
        assert_eq!(
            ask(&[("connection", "upgrade"), ("upgrade", "made-up")]),
            Some(Switch::Other("made-up".into()))
        );
        assert_eq!(
            ask(&[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "foo/1, h2c")
            ]),
            None,
            "h2c offered without its settings is not taken, nor the other token"
        );
        assert_eq!(
            ask(&[("connection", "upgrade"), ("upgrade", "websocket")]),
            None
        );
        assert_eq!(ask(&[("connection", "upgrade"), ("upgrade", "a b")]), None);
    }
}
