//! Reading a request: who sent it ([`client_ip`], [`ClientSide`]), which host and origin it
//! names ([`request_host`], [`public_origin`], [`same_origin_request`]), which credentials it
//! carries ([`credentials`]), and the path Faspex receives ([`forward_path`]).
//!
//! These are plain functions of the request's head: they decide nothing about sessions and
//! send nothing anywhere. What they cannot read is a [`BadRequest`] (400).

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::{client_body, full, ProxyBody};
use super::classify::Classified;

/// A request the gateway cannot read: answered 400 with this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub &'static str);

/// What the forwarder needs to know about the client side of one request.
#[derive(Debug, Clone)]
pub struct ClientSide {
    /// The address of the end client: the socket peer, or from `X-Forwarded-For` when the peer
    /// is a trusted proxy.
    pub client_ip: IpAddr,
    /// The socket peer's address.
    pub peer_ip: IpAddr,
    /// Whether the socket peer is a configured trusted proxy (its `X-Forwarded-*` are kept).
    pub peer_trusted: bool,
    /// The scheme the client used to reach the gateway: the listener's, or a trusted proxy's
    /// `X-Forwarded-Proto`.
    pub scheme: &'static str,
    /// The authority the client asked for (`Host`, or `:authority` in HTTP/2).
    pub host: Option<HeaderValue>,
    /// The public host name for rewritten redirects: `host`, or a trusted proxy's
    /// `X-Forwarded-Host`.
    pub public_host: Option<HeaderValue>,
}

// A constant, not a `&str`: a `&str` name is parsed and lower-case-checked on every lookup.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// HTTP/1.1's `h2c` upgrade settings (RFC 7540 §3.2.1): the gate refuses a request with it, and
/// the forwarder strips it as hop-by-hop.
pub(crate) const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The end client's address. The socket peer, unless the peer is a trusted proxy: then the
/// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> (IpAddr, bool) {
    // On a dual-stack listener an IPv4 peer is `::ffff:a.b.c.d`: the same address as the
    // IPv4 one `trusted_proxies` names, and the one limits and logs should show.
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&ip.to_canonical()));
    if !is_trusted(&peer) {
        return (peer, false);
    }
    let mut entries: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    while let Some(entry) = entries.pop() {
        match parse_xff_entry(entry) {
            Some(ip) if is_trusted(&ip) => continue,
            Some(ip) => return (ip.to_canonical(), true),
            None => break,
        }
    }
    (peer, true)
}

/// An `X-Forwarded-For` entry: an IP, possibly with a port or in brackets.
fn parse_xff_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(sa) = entry.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
}

/// Credentials a protected request carries, classified by its headers.
pub enum Credentials {
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
    /// An `Authorization` header the gateway cannot read: 400.
    Malformed,
    /// No `Authorization` (or a scheme Faspex 4 does not use): the session cookie decides.
    None,
}

/// Classify a request's credentials by its `Authorization` header.
pub fn credentials(headers: &HeaderMap) -> Credentials {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use base64::Engine as _;
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Credentials::None;
    };
    if values.next().is_some() {
        return Credentials::Malformed;
    }
    let Ok(value) = value.to_str() else {
        return Credentials::Malformed;
    };
    let value = value.trim();
    let (scheme, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = STANDARD
            .decode(rest)
            .or_else(|_| STANDARD_NO_PAD.decode(rest))
        else {
            return Credentials::Malformed;
        };
        // Not UTF-8, name or password: 400. A lossy reading would check another password than
        // the bytes Faspex receives.
        let Ok(decoded) = String::from_utf8(decoded) else {
            return Credentials::Malformed;
        };
        let Some((user, password)) = decoded.split_once(':') else {
            return Credentials::Malformed;
        };
        return Credentials::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        };
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Credentials::Malformed;
        }
        return Credentials::Bearer(rest.to_owned());
    }
    // Faspex 4 knows only these two; what it would make of another is not worth guessing.
    Credentials::Malformed
}

/// Whether the request carries `Authorization: Basic …` (in any of its `Authorization`
/// headers; one that is not text counts too).
pub fn basic_credentials(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(|v| v.to_str().map_or(true, scheme_is_basic))
}

/// Whether an `Authorization` or `WWW-Authenticate` value is of the Basic scheme.
fn scheme_is_basic(value: &str) -> bool {
    value
        .split_ascii_whitespace()
        .next()
        .is_some_and(|s| s.eq_ignore_ascii_case("basic"))
}

/// Whether a response is Faspex's Basic challenge: the credentials were refused.
pub fn basic_challenge<B>(resp: &Response<B>) -> bool {
    resp.status() == StatusCode::UNAUTHORIZED
        && resp
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(scheme_is_basic)
}

/// The User-Agent, or empty.
pub fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// The authority the client asked for. `Host`, an absolute-form target's authority (HTTP/1.1)
/// and `:authority` (HTTP/2, which hyper puts in the target) pass the same check: each must be a
/// plain `host[:port]`, with no user information, and when a request carries two of them they
/// must name the same authority. Faspex and the redirects see that one. An HTTP/1.1 request must
/// carry exactly one `Host` (RFC 9112 §3.2).
pub fn request_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, BadRequest> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadRequest("more than one Host header"));
    }
    if req.version() == http::Version::HTTP_11 && host.is_none() {
        return Err(BadRequest("an HTTP/1.1 request needs a Host header"));
    }
    if let Some(h) = host {
        if !is_authority(h.as_bytes()) {
            return Err(BadRequest("the Host header is not a host name"));
        }
    }
    let Some(target) = req.uri().authority() else {
        return Ok(host.cloned());
    };
    if !is_authority(target.as_str().as_bytes()) {
        return Err(BadRequest(
            "the request target's authority is not a host name",
        ));
    }
    if let Some(h) = host {
        if !h
            .as_bytes()
            .eq_ignore_ascii_case(target.as_str().as_bytes())
        {
            return Err(BadRequest(
                "the Host header and the request target name different hosts",
            ));
        }
        return Ok(Some(h.clone()));
    }
    Ok(HeaderValue::from_str(target.as_str()).ok())
}

/// `host[:port]` with no user information, path or other decoration.
///
/// The host is a DNS name (letters, digits, `-` and `.`), an IPv4 address, or an IPv6 literal in
/// brackets without a zone; the port, when there is a `:`, is 1 to 65535. Anything else a URI
/// allows in a host (`,`, `_`, `!`, `%`-escapes...) is refused: Rack reads a comma list in a
/// host header by its last element, and what Faspex writes into its links must be a plain name.
fn is_authority(v: &[u8]) -> bool {
    /// A host name's bytes but the dot: ASCII letters, digits and `-` (a table: one look a byte).
    const NAME_BYTE: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = (b as u8).is_ascii_alphanumeric() || b == b'-' as usize;
            b += 1;
        }
        table
    };
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|&b| b == b']') {
            Some(end) => (&v[..=end], &v[end + 1..]),
            None => return false,
        },
        _ => match memchr::memrchr(b':', v) {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        },
    };
    let host_ok = match host {
        [b'[', inner @ .., b']'] => std::str::from_utf8(inner)
            .ok()
            .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
            .is_some(),
        h => {
            // One pass: letters, digits, `-` and `.`, never a `.` first or after another `.`.
            let mut after_dot = true;
            !h.is_empty()
                && h.len() <= 253
                && h.iter().all(|&b| {
                    if b == b'.' {
                        !std::mem::replace(&mut after_dot, true)
                    } else {
                        after_dot = false;
                        NAME_BYTE[usize::from(b)]
                    }
                })
        }
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            (1..=5).contains(&digits.len())
                && digits.iter().all(u8::is_ascii_digit)
                && (1..=65535).contains(
                    &digits
                        .iter()
                        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')),
                )
        }
        _ => false,
    };
    host_ok && port_ok
}

/// The scheme and host the public sees: the listener's, unless a trusted proxy says otherwise in
/// `X-Forwarded-Proto` / `X-Forwarded-Host` (a balancer that terminates TLS in front of us).
pub fn public_origin(
    headers: &http::HeaderMap,
    peer_trusted: bool,
    scheme: &'static str,
    host: &Option<HeaderValue>,
) -> (&'static str, Option<HeaderValue>) {
    if !peer_trusted {
        return (scheme, host.clone());
    }
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
    };
    let scheme = match first("x-forwarded-proto") {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        _ => scheme,
    };
    let host = first("x-forwarded-host")
        .filter(|h| is_authority(h.as_bytes()))
        .and_then(|h| HeaderValue::from_str(h).ok())
        .or_else(|| host.clone());
    (scheme, host)
}

/// Whether a request comes from the gateway's own origin, as the browser tells: a POST not
/// marked cross-site, or a GET marked same-origin (`Sec-Fetch-Site: same-origin` or `none`, a
/// typed address) or carrying a same-origin `Origin` or `Referer`.
pub fn same_origin_request(parts: &http::request::Parts, side: &ClientSide) -> bool {
    let h = &parts.headers;
    let fetch_site = h
        .get("sec-fetch-site")
        .map(|v| v.as_bytes().to_ascii_lowercase());
    let origin_of = |v: &HeaderValue| -> Option<bool> {
        let url = url::Url::parse(v.to_str().ok()?).ok()?;
        let host = side.public_host.as_ref()?.to_str().ok()?;
        let ours = url::Url::parse(&format!("{}://{host}/", side.scheme)).ok()?;
        Some(url.origin() == ours.origin())
    };
    // Under `Referrer-Policy: no-referrer` a browser sends `Origin: null` even for its own
    // origin's form posts; with `Sec-Fetch-Site` saying same-origin, that null says nothing.
    let origin = h
        .get(header::ORIGIN)
        .filter(|v| {
            !(v.as_bytes() == b"null" && matches!(fetch_site.as_deref(), Some(b"same-origin")))
        })
        .map(|v| origin_of(v).unwrap_or(false));
    let referer = h
        .get(header::REFERER)
        .map(|v| origin_of(v).unwrap_or(false));
    match fetch_site.as_deref() {
        Some(b"same-origin" | b"none") => return origin != Some(false),
        Some(_) => return false,
        None => {}
    }
    if origin == Some(false) || referer == Some(false) {
        return false;
    }
    parts.method == Method::POST || origin == Some(true) || referer == Some(true)
}

/// Put the path the gate classified, normalised, into the request target: the path Faspex
/// receives is the one classified.
pub fn forward_path(uri: &mut http::Uri, c: &Classified) -> Result<(), BadRequest> {
    let Some(path) = &c.forward else {
        return Ok(());
    };
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let mut builder = http::Uri::builder();
    if let Some(scheme) = uri.scheme() {
        builder = builder.scheme(scheme.clone());
    }
    if let Some(a) = uri.authority() {
        builder = builder.authority(a.clone());
    }
    *uri = builder
        .path_and_query(pq)
        .build()
        .map_err(|_| BadRequest("the request path is not valid"))?;
    Ok(())
}

/// A request's body after the gate: read whole and inspected, or streaming.
pub enum Inspected {
    Read(Bytes),
    Stream(Incoming),
}

impl Inspected {
    /// The body to forward: the bytes read, or the stream.
    pub fn into_body(self) -> ProxyBody {
        match self {
            Inspected::Read(bytes) => full(bytes),
            Inspected::Stream(body) => client_body(body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<ipnet::IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let peer: IpAddr = "127.0.0.9".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &nets(&["10.0.0.0/8"])), (peer, false));
    }

    #[test]
    fn trusted_peer_walks_the_chain_from_the_right() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let (ip, trusted) = client_ip(peer, &h, &nets(&["10.0.0.0/8"]));
        assert!(trusted);
        assert_eq!(ip, "1.2.3.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_dual_stack_listeners_mapped_peer_is_the_ipv4_proxy() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("9.9.9.9"));
        let peer: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let (ip, trusted) = client_ip(peer, &h, &nets(&["127.0.0.1/32"]));
        assert!(trusted);
        assert_eq!(ip, "9.9.9.9".parse::<IpAddr>().unwrap());
        // An untrusted mapped peer is its IPv4 address.
        let (ip, trusted) = client_ip(peer, &h, &nets(&["10.0.0.0/8"]));
        assert!(!trusted);
        assert_eq!(ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_in_the_chain_stops_the_walk() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, nonsense"),
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &nets(&["10.0.0.0/8"])).0, peer);
    }

    #[test]
    fn an_authority_is_a_plain_host_and_port() {
        for ok in [
            "localhost",
            "localhost:8443",
            "faspex.example.org",
            "faspex.example.org.",
            "192.0.2.7:443",
            "[2001:db8::1]",
            "[::1]:8443",
            "a-b.example:1",
            "x:65535",
        ] {
            assert!(is_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "evil.example,localhost",
            "user@host",
            "localhost:",
            "localhost:0",
            "localhost:65536",
            "localhost:99999",
            "evil.example:443.",
            "local_host",
            "[::ffff:1.2.3.4%25eth0]",
            "[::1",
            "::1",
            ".example",
            "a..b",
            "host/path",
            "host?q",
            "h\u{e9}te",
            "%65vil",
        ] {
            assert!(!is_authority(bad.as_bytes()), "{bad}");
        }
    }

    /// The checks as first written (several passes, `str::parse`): the one-pass version must
    /// answer as they do.
    fn authority_as_first_written(v: &[u8]) -> bool {
        let (host, port) = match v.first() {
            Some(b'[') => match v.iter().position(|&b| b == b']') {
                Some(end) => (&v[..=end], &v[end + 1..]),
                None => return false,
            },
            _ => match v.iter().rposition(|&b| b == b':') {
                Some(i) => (&v[..i], &v[i..]),
                None => (v, &v[v.len()..]),
            },
        };
        let host_ok = match host {
            [b'[', inner @ .., b']'] => std::str::from_utf8(inner)
                .ok()
                .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
                .is_some(),
            h => {
                !h.is_empty()
                    && h.len() <= 253
                    && h.iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                    && !h.starts_with(b".")
                    && !h.windows(2).any(|w| w == b"..")
            }
        };
        let port_ok = match port {
            [] => true,
            [b':', digits @ ..] => {
                !digits.is_empty()
                    && digits.len() <= 5
                    && digits.iter().all(u8::is_ascii_digit)
                    && std::str::from_utf8(digits)
                        .ok()
                        .and_then(|d| d.parse::<u32>().ok())
                        .is_some_and(|p| (1..=65535).contains(&p))
            }
            _ => false,
        };
        host_ok && port_ok
    }

    proptest::proptest! {
        #[test]
        fn the_one_pass_authority_check_answers_as_the_first(
            v in "[a-zA-Z0-9.:_%,\\-\\[\\]]{0,12}(:[0-9]{0,6})?"
        ) {
            proptest::prop_assert_eq!(
                is_authority(v.as_bytes()),
                authority_as_first_written(v.as_bytes()),
                "{}", v
            );
        }

        /// Any bytes at all, those past ASCII included.
        #[test]
        fn the_one_pass_authority_check_answers_as_the_first_for_any_bytes(
            v in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"aZ09-.:[]".to_vec()),
                    proptest::num::u8::ANY,
                ],
                0..12,
            )
        ) {
            proptest::prop_assert_eq!(is_authority(&v), authority_as_first_written(&v), "{:?}", v);
        }
    }
}
