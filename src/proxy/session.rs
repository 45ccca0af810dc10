//! The gateway's session cookie: a signed token (HS256, jsonwebtoken) under `session.cookie_name`
//! that names a server-side session.
//!
//! The cookie carries no authority of its own. It holds the session's random token (`sid`),
//! whose hash is the key of the server-side session in the store, and the browser's client id
//! (`cid`), which keeps one browser the same client across its logins. The signature, with the
//! key from `session.secret_file`, lets the gateway turn away forged or tampered cookies without
//! a store lookup. Whether the session is live is always the store's answer, so logout, idle
//! expiry, a kick and a restart behave the same whatever the cookie says.
//!
//! The cookie is `Secure; HttpOnly; SameSite=Lax; Path=/` with no `Domain`, which is what the
//! `__Host-` prefix of the default name requires. It has no `Max-Age`: the browser forgets it
//! when it closes, and the server-side session ends on its own timeouts. Its signed lifetime
//! ([`COOKIE_LIFETIME`]) only bounds how long a copy stays worth presenting at all. Its `iat`
//! and `exp` come from the gateway's injected [`Clock`], and `exp` is checked against that same
//! clock (not by jsonwebtoken, which would read the wall), so a test that moves time moves the
//! cookie's lifetime too.

use std::time::Duration;

use http::{header, HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::clock::Clock;
use crate::store::{ClientId, SessionKey, SessionToken};

/// How long a signed cookie is accepted, whatever its session's state.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the cookie says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The session's token (the store keeps only its hash).
    sid: String,
    /// The browser's client id.
    cid: String,
    iat: u64,
    exp: u64,
    /// The store's key for `sid`, hashed once per verified cookie rather than per request.
    #[serde(skip)]
    key: std::sync::OnceLock<SessionKey>,
}

impl Claims {
    pub fn token(&self) -> SessionToken {
        SessionToken::from_client(&self.sid)
    }

    /// The key the store files the session under (the hash of its token).
    pub fn key(&self) -> &SessionKey {
        self.key.get_or_init(|| self.token().key())
    }

    pub fn client(&self) -> ClientId {
        ClientId(self.cid.as_str().into())
    }

    /// Whether the signed lifetime still covers `now` (seconds since the epoch): through the
    /// second `exp` itself, as jsonwebtoken counts it.
    fn live_at(&self, now: u64) -> bool {
        self.exp >= now
    }
}

/// How many verified cookies [`SessionCookies`] remembers before it starts afresh.
const VERIFIED_CAP: usize = 10_000;

/// Issues and checks session cookies.
pub struct SessionCookies {
    name: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Signature and required claims; `exp` is checked here against [`SessionCookies::clock`].
    validation: Validation,
    /// Where `iat`, and the `now` that `exp` is checked against, come from.
    clock: Arc<dyn Clock>,
    /// Cookies whose signature has been checked, by their exact text: a busy session's requests
    /// skip the base64, JSON and HMAC work (about 5 % of a small request). Only the lifetime is
    /// checked again; whether the session lives is, as always, the store's answer. Keyed with
    /// foldhash (seeded per process) rather than SipHash: a key is a whole cookie of some 250
    /// bytes, and only cookies whose signature checked out are ever stored, so no client can
    /// choose colliding keys.
    verified: dashmap::DashMap<Box<[u8]>, Arc<Claims>, foldhash::fast::RandomState>,
    /// A SIMD search for the name, built once: building one costs more than a search.
    finder: memchr::memmem::Finder<'static>,
}

impl SessionCookies {
    pub fn new(name: &str, secret: &[u8], clock: Arc<dyn Clock>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        // `exp` must be there, and is compared with the injected clock in `verify`.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            name: name.to_owned(),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            clock,
            verified: dashmap::DashMap::with_hasher(foldhash::fast::RandomState::default()),
            finder: memchr::memmem::Finder::new(name.as_bytes()).into_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A fresh client id for a browser that has none yet.
    pub fn new_client() -> Result<ClientId, crate::store::StoreError> {
        Ok(ClientId(
            format!("web:{}", SessionToken::generate()?.key().0).into(),
        ))
    }

    /// The `Set-Cookie` value that hands `token` to the browser `client`.
    pub fn issue(&self, token: &SessionToken, client: &ClientId) -> Option<HeaderValue> {
        let now = self.now_secs();
        let claims = Claims {
            sid: token.expose().to_owned(),
            cid: client.0.to_string(),
            iat: now,
            exp: now + COOKIE_LIFETIME.as_secs(),
            key: std::sync::OnceLock::new(),
        };
        let jwt =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).ok()?;
        HeaderValue::from_str(&format!(
            "{}={jwt}; Path=/; Secure; HttpOnly; SameSite=Lax",
            self.name
        ))
        .ok()
    }

    /// The `Set-Cookie` value that makes the browser forget the cookie.
    pub fn clear(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "{}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
            self.name
        ))
        .ok()
    }

    /// Whether a `;`-separated pair of one of the request's `Cookie` values is named exactly
    /// `session.cookie_name` (with or without a value): a SIMD search finds the name, and a hit
    /// counts when it starts a pair and ends at its `=` or the pair's end. A sign of a browser.
    pub fn carried_in(&self, v: &HeaderValue) -> bool {
        let name = self.name.len();
        let v = v.as_bytes();
        self.finder.find_iter(v).any(|i| {
            let before = v[..i].trim_ascii_end();
            (before.is_empty() || before.ends_with(b";"))
                && matches!(v.get(i + name), None | Some(b'=' | b';'))
        })
    }

    /// The request's session cookie, if it carries one at all (signed or not).
    pub fn present(&self, headers: &HeaderMap) -> bool {
        self.raw(headers).is_some()
    }

    /// The claims of the request's cookie when its signature and lifetime check out.
    pub fn verify(&self, headers: &HeaderMap) -> Option<Arc<Claims>> {
        let raw = self.raw_bytes(headers)?;
        let now = self.now_secs();
        if let Some(c) = self.verified.get(raw) {
            if c.live_at(now) {
                return Some(Arc::clone(&c));
            }
        }
        // Only a cookie not remembered is read as text (a remembered one was valid UTF-8).
        let text = std::str::from_utf8(raw).ok()?;
        let claims = jsonwebtoken::decode::<Claims>(text, &self.decoding, &self.validation)
            .ok()?
            .claims;
        if !claims.live_at(now) {
            return None;
        }
        claims.key();
        let claims = Arc::new(claims);
        if self.verified.len() >= VERIFIED_CAP {
            self.verified.clear();
        }
        self.verified.insert(raw.into(), Arc::clone(&claims));
        Some(claims)
    }

    /// The clock's `now` in whole seconds, the unit of `iat` and `exp`.
    fn now_secs(&self) -> u64 {
        self.clock.now().as_millis() / 1000
    }

    /// The value of the request's cookie named exactly `session.cookie_name`. Cookies are read
    /// as bytes: a header that also holds another cookie with non-ASCII bytes (which Rack reads,
    /// and so does the gateway) does not hide this one, and the long values are not checked
    /// character by character on every request.
    fn raw<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        self.raw_bytes(headers)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// [`SessionCookies::raw`] before it is read as text: the value of the first `;`-separated
    /// pair named exactly `session.cookie_name`. (Loops, not a `flat_map` over the pieces,
    /// which cost twice as much per request.)
    fn raw_bytes<'a>(&self, headers: &'a HeaderMap) -> Option<&'a [u8]> {
        let name = self.name.as_bytes();
        for value in headers.get_all(header::COOKIE) {
            for pair in Pieces::new(value.as_bytes(), b';', b';') {
                let pair = pair.trim_ascii();
                if let Some(eq) = memchr::memchr(b'=', pair) {
                    if pair[..eq].trim_ascii() == name {
                        return Some(pair[eq + 1..].trim_ascii());
                    }
                }
            }
        }
        None
    }
}

/// The `name=value` pair of the cookie `name` a response sets, unless it is being deleted (for
/// Faspex's session cookie, kept to log it out later).
pub fn set_cookie_pair(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(str::trim)
        .rfind(|pair| {
            pair.split_once('=')
                .is_some_and(|(n, v)| n.trim() == name && !v.trim().is_empty())
        })
        .map(str::to_owned)
}

/// The `name=value` pair of the cookie `name` a request carries.
pub fn request_cookie_pair(headers: &HeaderMap, name: &str) -> Option<String> {
    cookie_pairs(headers)
        .find(|pair| pair.contains(&b'=') && names(pair, name))
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
}

/// Every `name=value` pair of a request's `Cookie` headers, in order, as bytes. Split the way
/// Rack (under Faspex 4) splits them, on `;` and `,`, so that the gateway sees every cookie
/// Faspex would, those with non-ASCII bytes included.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    pairs_in(headers.get_all(header::COOKIE).iter())
}

/// [`cookie_pairs`] of `Cookie` values already looked up.
fn pairs_in<'a>(
    values: http::header::ValueIter<'a, HeaderValue>,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    values
        .flat_map(|v| Pieces::new(v.as_bytes(), b';', b','))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
}

/// The pieces of a header value between the separators `a` and `b`, found with SIMD `memchr2`:
/// a plain loop looks at the bytes one by one, over cookie values some hundreds of bytes long.
struct Pieces<'a> {
    rest: Option<&'a [u8]>,
    a: u8,
    b: u8,
}

impl<'a> Pieces<'a> {
    fn new(value: &'a [u8], a: u8, b: u8) -> Self {
        Pieces {
            rest: Some(value),
            a,
            b,
        }
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match memchr::memchr2(self.a, self.b, rest) {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Whether a cookie pair is named `name` as Rack reads names: trimmed and percent-decoded.
fn names(pair: &[u8], name: &str) -> bool {
    let raw = match memchr::memchr(b'=', pair) {
        Some(eq) => &pair[..eq],
        None => pair,
    }
    .trim_ascii();
    if raw.contains(&b'%') {
        percent_encoding::percent_decode(raw).decode_utf8_lossy() == name
    } else {
        raw == name.as_bytes()
    }
}

/// Rewrite a request's cookies into the allow-list Faspex may see: `add` (the session's own
/// Faspex cookie) first, then the pairs named in `allow` (`faspex.forward_cookies`), in order.
/// Every other cookie, the gateway's own included, stays here; their names (never their values)
/// are logged at debug level, so that an admin can see what to add.
pub fn allow_cookies(headers: &mut HeaderMap, allow: &[String], add: Option<&str>) {
    // (looked up once, for both questions below)
    let cookies = headers.get_all(header::COOKIE);
    if cookies.iter().next().is_none() {
        if let Some(v) = add.and_then(|a| HeaderValue::from_str(a).ok()) {
            headers.insert(header::COOKIE, v);
        }
        return;
    }
    let kept = |p: &&[u8]| allow.iter().any(|n| names(p, n));
    if tracing::enabled!(tracing::Level::DEBUG) {
        let dropped: Vec<String> = cookie_pairs(headers)
            .filter(|p| !kept(p))
            .map(|p| {
                let name = p.split(|&b| b == b'=').next().unwrap_or(p);
                String::from_utf8_lossy(name).into_owned()
            })
            .collect();
        if !dropped.is_empty() {
            tracing::debug!(
                cookies = ?dropped,
                "cookies not passed to Faspex (list one in faspex.forward_cookies to pass it)"
            );
        }
    }
    // Most requests carry only cookies that go (the gateway's own, a stale Faspex one): then
    // the new header is `add` alone, with no joining and no second look at the long values.
    let value = if pairs_in(cookies.iter()).any(|p| kept(&p)) {
        let mut out = Vec::with_capacity(256);
        if let Some(a) = add {
            out.extend_from_slice(a.as_bytes());
        }
        for pair in cookie_pairs(headers).filter(kept) {
            if !out.is_empty() {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(pair);
        }
        // Every byte came from a valid header value or from `add`.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok()
    } else {
        add.and_then(|a| HeaderValue::from_str(a).ok())
    };
    // `insert` replaces every `Cookie` header in one step.
    match value {
        Some(v) => headers.insert(header::COOKIE, v),
        None => headers.remove(header::COOKIE),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies() -> SessionCookies {
        SessionCookies::new(
            "__Host-faspex-gate",
            &[7u8; 32],
            Arc::new(crate::clock::SystemClock),
        )
    }

    fn request_with(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    #[test]
    fn issued_cookie_round_trips_with_its_attributes() {
        let c = cookies();
        let token = SessionToken::generate().unwrap();
        let client = SessionCookies::new_client().unwrap();
        let set = c.issue(&token, &client).unwrap();
        let set = set.to_str().unwrap();
        assert!(set.starts_with("__Host-faspex-gate="));
        for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
            assert!(set.contains(attr), "{set}");
        }
        assert!(!set.contains("Domain"));
        let value = set.split(';').next().unwrap();
        let claims = c.verify(&request_with(&format!("a=b; {value}"))).unwrap();
        assert_eq!(claims.token(), token);
        assert_eq!(claims.key(), &token.key());
        assert_eq!(claims.client(), client);
    }

    #[test]
    fn forged_and_foreign_cookies_are_refused() {
        let c = cookies();
        let token = SessionToken::generate().unwrap();
        let set = c.issue(&token, &ClientId("web:x".into())).unwrap();
        let value = set.to_str().unwrap().split(';').next().unwrap().to_owned();
        // Another secret's signature.
        let other = SessionCookies::new(
            "__Host-faspex-gate",
            &[8u8; 32],
            Arc::new(crate::clock::SystemClock),
        );
        assert!(other.verify(&request_with(&value)).is_none());
        // A tampered payload.
        let mut parts: Vec<String> = value.split('.').map(str::to_owned).collect();
        parts[1].insert(3, 'A');
        assert!(c.verify(&request_with(&parts.join("."))).is_none());
        // "alg": "none".
        assert!(c
            .verify(&request_with(
                "__Host-faspex-gate=eyJhbGciOiJub25lIn0.eyJzaWQiOiJ4IiwiY2lkIjoieSIsImlhdCI6MSwiZXhwIjo5OTk5OTk5OTk5fQ."
            ))
            .is_none());
        assert!(c
            .verify(&request_with("__Host-faspex-gate=garbage"))
            .is_none());
        assert!(c.present(&request_with("__Host-faspex-gate=garbage")));
    }

    #[test]
    fn pieces_split_as_str_split_does() {
        for value in [
            "",
            "a",
            ";",
            "a;b",
            "a;;b;",
            ";a,b;c,,d,",
            "é=1;ü=2,x",
            "a=b; c=d",
        ] {
            let ours: Vec<&[u8]> = Pieces::new(value.as_bytes(), b';', b',').collect();
            let theirs: Vec<&[u8]> = value.split([';', ',']).map(str::as_bytes).collect();
            assert_eq!(ours, theirs, "{value:?}");
            let ours: Vec<&[u8]> = Pieces::new(value.as_bytes(), b';', b';').collect();
            let theirs: Vec<&[u8]> = value.split(';').map(str::as_bytes).collect();
            assert_eq!(ours, theirs, "{value:?}");
        }
    }

    /// `raw_bytes` as it was first written (an iterator chain), to check the loops against.
    fn raw_as_first_written<'a>(name: &str, headers: &'a HeaderMap) -> Option<&'a [u8]> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|&b| b == b'=')?;
                (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
            })
    }

    proptest::proptest! {
        #[test]
        fn the_cookie_is_found_as_the_first_reading_found_it(
            values in proptest::collection::vec(
                proptest::string::string_regex(
                    "((__Host-faspex-gate|__Host-faspex-gat|x|) ?(= ?[a-z=.]{0,4})? ?[;,]? ?){0,4}"
                ).unwrap(),
                0..3,
            )
        ) {
            let c = cookies();
            let mut h = HeaderMap::new();
            for v in &values {
                h.append(header::COOKIE, HeaderValue::from_str(v).unwrap());
            }
            proptest::prop_assert_eq!(
                c.raw_bytes(&h),
                raw_as_first_written(c.name(), &h),
                "{:?}", values
            );
        }
    }

    #[test]
    fn a_remembered_cookie_is_refused_once_its_lifetime_is_over() {
        let c = cookies();
        let stale = Claims {
            sid: "s".into(),
            cid: "c".into(),
            iat: 1,
            exp: 2,
            key: Default::default(),
        };
        c.verified.insert(b"x.y.z"[..].into(), Arc::new(stale));
        assert!(c
            .verify(&request_with("__Host-faspex-gate=x.y.z"))
            .is_none());
        // A forged cookie is never remembered.
        assert!(c
            .verify(&request_with("__Host-faspex-gate=a.b.c"))
            .is_none());
        assert!(!c.verified.contains_key(&b"a.b.c"[..]));
    }

    #[test]
    fn a_cookie_lives_by_the_injected_clock() {
        let clock = crate::clock::ManualClock::at_2026();
        let c = SessionCookies::new("__Host-faspex-gate", &[7u8; 32], Arc::new(clock.clone()));
        let token = SessionToken::generate().unwrap();
        let set = c.issue(&token, &ClientId("web:x".into())).unwrap();
        let value = set.to_str().unwrap().split(';').next().unwrap().to_owned();
        // Issued at the clock's time, not the wall's.
        let claims = c.verify(&request_with(&value)).unwrap();
        let now = clock.now().as_millis() / 1000;
        assert_eq!(
            (claims.iat, claims.exp),
            (now, now + COOKIE_LIFETIME.as_secs())
        );
        // To the last second of its lifetime, remembered or read afresh ...
        clock.advance(COOKIE_LIFETIME);
        assert!(c.verify(&request_with(&value)).is_some());
        let fresh = SessionCookies::new("__Host-faspex-gate", &[7u8; 32], Arc::new(clock.clone()));
        assert!(fresh.verify(&request_with(&value)).is_some());
        // ... and not a second after, either way.
        clock.advance(Duration::from_secs(1));
        assert!(c.verify(&request_with(&value)).is_none());
        let fresh = SessionCookies::new("__Host-faspex-gate", &[7u8; 32], Arc::new(clock.clone()));
        assert!(fresh.verify(&request_with(&value)).is_none());
    }

    #[test]
    fn only_allowed_cookies_reach_faspex() {
        let allow = vec!["lang".to_owned()];
        let mut h = request_with("_faspex_session=abc; __Host-faspex-gate=x.y.z; lang=de; other=1");
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-faspex-gate=again"),
        );
        allow_cookies(&mut h, &allow, Some("_faspex_session=mine"));
        assert_eq!(h[header::COOKIE], "_faspex_session=mine; lang=de");
        let mut h = request_with("__Host-faspex-gate=x; _faspex_session=someone-elses");
        allow_cookies(&mut h, &allow, None);
        assert!(!h.contains_key(header::COOKIE));
        let mut none = HeaderMap::new();
        allow_cookies(&mut none, &allow, Some("_faspex_session=mine"));
        assert_eq!(none[header::COOKIE], "_faspex_session=mine");
        // Every spelling Rack reads as the same cookie is judged by its name.
        let mut tricky = request_with("lang=1,_faspex_session=x; %5Ffaspex_session=y; %6cang=2");
        allow_cookies(&mut tricky, &allow, Some("_faspex_session=mine"));
        assert_eq!(
            tricky[header::COOKIE],
            "_faspex_session=mine; lang=1; %6cang=2"
        );
    }

    #[test]
    fn cookies_beside_non_ascii_ones_are_found_and_kept() {
        let c = cookies();
        let token = SessionToken::generate().unwrap();
        let set = c.issue(&token, &ClientId("web:x".into())).unwrap();
        let ours = set.to_str().unwrap().split(';').next().unwrap().to_owned();
        // A UTF-8 cookie that Faspex (Rack) reads, in the same header as the gateway's.
        let value = format!("lang=fran\u{e7}ais; {ours}; _faspex_session=abc");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
        assert!(h[header::COOKIE].to_str().is_err());
        assert_eq!(c.verify(&h).unwrap().token(), token);
        assert_eq!(
            request_cookie_pair(&h, "_faspex_session").as_deref(),
            Some("_faspex_session=abc")
        );
        // Faspex never sees the gateway's token, and keeps the cookies it may see, bytes and
        // all.
        allow_cookies(&mut h, &["lang".to_owned()], Some("_faspex_session=mine"));
        assert_eq!(
            h[header::COOKIE].as_bytes(),
            "_faspex_session=mine; lang=fran\u{e7}ais".as_bytes()
        );
    }

    #[test]
    fn faspex_cookie_is_found_kept_and_replaced() {
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("other=1; path=/"),
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("_faspex_session=abc; path=/; HttpOnly"),
        );
        assert_eq!(
            set_cookie_pair(&h, "_faspex_session").as_deref(),
            Some("_faspex_session=abc")
        );
        let mut gone = HeaderMap::new();
        gone.append(
            header::SET_COOKIE,
            HeaderValue::from_static("_faspex_session=; expires=Thu, 01 Jan 1970 00:00:00 GMT"),
        );
        assert_eq!(set_cookie_pair(&gone, "_faspex_session"), None);

        let req = request_with("a=1; _faspex_session=someone-elses; b=2");
        assert_eq!(
            request_cookie_pair(&req, "_faspex_session").as_deref(),
            Some("_faspex_session=someone-elses")
        );
    }
}
