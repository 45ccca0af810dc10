//! The header rules of a forwarded exchange: hop-by-hop headers go both ways (with every header
//! `Connection` names), the forwarding headers (`X-Forwarded-*`, `X-Real-IP`) are set from what
//! the gateway vouches for, and every other header that could claim a client address goes.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::proxy::request::{ClientSide, HTTP2_SETTINGS, X_FORWARDED_FOR};

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1; `HTTP2-Settings`,
/// RFC 7540 §3.2.1), plus `Proxy-Authorization`, which is meant for us and not for Faspex.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HTTP2_SETTINGS,
];

/// Client-address headers that an untrusted client could use to lie to Faspex about who it is.
/// The gateway only vouches for `X-Forwarded-For` and `X-Real-IP`, so these go whoever sent them.
const CLIENT_ADDRESS_HEADERS: [HeaderName; 12] = [
    header::FORWARDED,
    HeaderName::from_static("client-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("fastly-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("x-originating-ip"),
    HeaderName::from_static("x-remote-addr"),
    HeaderName::from_static("x-remote-ip"),
    HeaderName::from_static("x-forwarded"),
    HeaderName::from_static("forwarded-for"),
];

/// What a trusted balancer may tell Faspex about the original request, and an untrusted client
/// may not (Rack reads `X-Forwarded-Scheme` and `X-Forwarded-Ssl` as well as `-Proto`).
const PROXY_ONLY_HEADERS: [HeaderName; 7] = [
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-original-host"),
];

// Header names are constants, not `&str`s: a `&str` name is parsed and lower-case-checked on
// every lookup, and these lookups run several times per request.
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The protocol a request or response asks to upgrade to, when `Connection` lists `upgrade`.
/// `Upgrade` is looked for first: nearly every message has none, and then `Connection` (which
/// most do carry) need not be read at all.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let proto = headers.get(header::UPGRADE)?;
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| proto.clone())
}

/// Whether any of `names` is among `headers`. One pass over the few names a message has, with
/// no hashing: removing each of the fifteen names in turn, on every request and response, was
/// a few percent of a small request.
pub(super) fn any_of(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    headers.keys().any(|k| names.contains(k))
}

/// Remove hop-by-hop headers, including every header that `Connection` names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // `Connection` is one of them: a message without any has nothing else to strip.
    if !any_of(headers, &HOP_BY_HOP) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Set `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP`. A trusted proxy's own values are
/// kept (and the chain extended); an untrusted client's are replaced, along with every other
/// header it could use to claim another address.
pub(super) fn set_forwarded(headers: &mut HeaderMap, side: &ClientSide) {
    let (xff, xfp, xfh) = (&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST);
    let client_ip = ip_value(side.client_ip);
    // Room for the four set below, so that the map grows once at most.
    headers.reserve(4);
    if any_of(headers, &CLIENT_ADDRESS_HEADERS) {
        for name in &CLIENT_ADDRESS_HEADERS {
            headers.remove(name);
        }
    }
    if let Some(peer) = side.peer_trusted.then_some(side.peer_ip) {
        // Extend the chain with the proxy we got the request from, as nginx's
        // `$proxy_add_x_forwarded_for` does.
        let mut chain: Vec<String> = headers
            .get_all(xff)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        chain.push(peer.to_string());
        let value = chain.join(", ");
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(xff, v);
        }
        if !headers.contains_key(xfp) {
            headers.insert(xfp, HeaderValue::from_static(side.scheme));
        }
        if !headers.contains_key(xfh) {
            if let Some(h) = &side.host {
                headers.insert(xfh, h.clone());
            }
        }
    } else {
        if any_of(headers, &PROXY_ONLY_HEADERS) {
            for name in &PROXY_ONLY_HEADERS {
                headers.remove(name);
            }
        }
        headers.insert(xff, client_ip.clone());
        headers.insert(xfp, HeaderValue::from_static(side.scheme));
        match &side.host {
            Some(h) => {
                headers.insert(xfh, h.clone());
            }
            None => {
                headers.remove(xfh);
            }
        }
    }
    headers.insert(X_REAL_IP, client_ip);
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut text = String::with_capacity(15);
    crate::util::push_ip(&mut text, ip);
    // An IP address always renders as a valid header value.
    HeaderValue::from_maybe_shared(Bytes::from(text))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_connection_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    /// `HTTP2-Settings` never goes on, even when no `Connection` names it (the gate refuses a
    /// request that carries it; this is the forwarder's own rule).
    #[test]
    fn http2_settings_goes_unnamed() {
        let mut h = HeaderMap::new();
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAoAAAAAIAAAAA"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        let side = ClientSide {
            client_ip: "127.0.0.7".parse().unwrap(),
            peer_ip: "127.0.0.7".parse().unwrap(),
            peer_trusted: false,
            scheme: "https",
            host: Some(HeaderValue::from_static("gate.example")),
            public_host: Some(HeaderValue::from_static("gate.example")),
        };
        set_forwarded(&mut h, &side);
        assert_eq!(h["x-forwarded-for"], "127.0.0.7");
        assert_eq!(h["x-real-ip"], "127.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "gate.example");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn spoofable_headers_go_even_through_a_trusted_proxy() {
        let mut h = HeaderMap::new();
        h.insert("client-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("true-client-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-forwarded-ssl", HeaderValue::from_static("on"));
        for name in [
            "cf-connecting-ip",
            "x-cluster-client-ip",
            "x-originating-ip",
            "x-remote-addr",
        ] {
            h.insert(name, HeaderValue::from_static("6.6.6.6"));
        }
        let side = ClientSide {
            client_ip: "203.0.113.9".parse().unwrap(),
            peer_ip: "10.0.0.1".parse().unwrap(),
            peer_trusted: true,
            scheme: "https",
            host: None,
            public_host: None,
        };
        let mut trusted = h.clone();
        set_forwarded(&mut trusted, &side);
        for gone in [
            "client-ip",
            "true-client-ip",
            "forwarded",
            "cf-connecting-ip",
            "x-cluster-client-ip",
            "x-originating-ip",
            "x-remote-addr",
        ] {
            assert!(!trusted.contains_key(gone), "{gone}");
        }
        assert_eq!(
            trusted["x-forwarded-ssl"], "on",
            "the balancer's own word is kept"
        );
        let mut untrusted = h;
        set_forwarded(
            &mut untrusted,
            &ClientSide {
                peer_trusted: false,
                ..side
            },
        );
        assert!(!untrusted.contains_key("x-forwarded-ssl"));
    }
}
