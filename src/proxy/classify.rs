//! Route classification: which kind of request this is, decided on the normalised path, and
//! the one path that is forwarded.
//!
//! Faspex sits behind Apache, which decodes and normalises a path before routing it, and Rails'
//! router, which squeezes slashes, drops trailing ones and takes any `.format` suffix. The gateway
//! decides on the same normalised form, and forwards exactly the path it decided on, so that no
//! reading downstream can differ from the one classified. The rules:
//!
//! - an encoded slash or backslash (`%2F`, `%5C`, at any depth of encoding) or an encoded dot
//!   segment (`%2e%2e`) is refused (400), as Apache's default `AllowEncodedSlashes Off` in front
//!   of Faspex refuses them; so are invalid percent-encoding, NUL, control characters and raw
//!   backslashes: no Faspex URL carries them, and servers disagree on what they mean;
//! - `//` is collapsed and `.`/`..` segments are resolved on the path as sent; that normalised
//!   path is what Faspex receives ([`Classified::forward`]);
//! - the deny list wins over everything, and is checked on the once-decoded and on the
//!   fully-decoded path (a double-encoded variant is denied too), ignoring ASCII case, and also
//!   with each segment's `;params` removed (`/PACKAGE_RELAY/`, `/package_relay;x/` are denied:
//!   Rails would 404 them, a server that folds case or drops `;params` would not). Only the
//!   decision reads the path that way: what is forwarded is still the path as classified. A rule
//!   for `GET` also covers
//!   `HEAD` (Rails runs the GET action), and a rule for `PUT`, `PATCH` or `DELETE` also covers
//!   `POST`, which Rails turns into those with `_method=` or `X-HTTP-Method-Override`;
//! - the login, logout and token actions are recognised as Rails routes them
//!   ([`Action`]): the path itself, with a trailing slash, or with any format suffix
//!   (`.json`, `.x-y`: Rails' `[^/.?]+`). A spelling that is neither clearly the action nor
//!   clearly another path (`/login.`, `/login.a.b`, `/login;x`, or one decoding says login and
//!   the other does not) is refused, not guessed;
//! - a path is public only when both decodings say it is public.
//!
//! The table of spellings, what Rails routes each to and what the gateway does, is the test
//! `rails_spellings` below, and docs/security.md's "Faspex's routes as Rails sees them".

use std::borrow::Cow;

use http::Method;

/// The gateway's own prefix: pages and assets that are never forwarded.
pub const GATEWAY_PREFIX: &str = "/_faspex-gate/";

/// What kind of request this is, which decides what the gateway does with it.
/// Also the `route` label of the request metrics, so the set is small and fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// No login needed: external deliveries, invitations, transfer paths, assets, the login page.
    Public,
    /// The login form's POST.
    Login,
    /// The logout path.
    Logout,
    /// Everything else: needs a live session.
    Protected,
    /// Matched `faspex.deny`: answered 403, never forwarded.
    Denied,
    /// Under `/_faspex-gate/`: served by the gateway itself.
    Gateway,
}

impl Route {
    /// The metric label and access-log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Public => "public",
            Route::Login => "login",
            Route::Logout => "logout",
            Route::Protected => "protected",
            Route::Denied => "denied",
            Route::Gateway => "gateway",
        }
    }
}

/// The Faspex actions the gateway must recognise whatever the method, as Rails routes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `faspex.login_path`: the page (GET) and the form's POST.
    Login,
    /// `faspex.logout_path`.
    Logout,
    /// `faspex.token_path`: the OAuth2 token grant.
    Token,
}

/// Why a path could not be classified. Answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with '/'")]
    NotAbsolute,
    #[error("the request path has invalid percent-encoding")]
    BadPercentEncoding,
    #[error("the request path contains a NUL, control character or backslash")]
    ForbiddenCharacter,
    #[error("the request path contains an encoded slash or backslash (%2F, %5C)")]
    EncodedSlash,
    #[error("the request path contains an encoded dot segment")]
    EncodedDot,
    /// `..;x` or `.;x`: a dot segment to a server that drops `;params` (Tomcat, Jetty), a name
    /// to Apache and Rails. Which one Faspex's front end is, the gateway cannot know.
    #[error("the request path contains a dot segment with ;parameters")]
    DotSegmentParams,
    #[error("the request path is an unclear spelling of the login, logout or token action")]
    UnclearAction,
}

/// One `faspex.deny` rule: `METHOD PATH-PREFIX`, where a `None` method means any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyPrefix {
    pub method: Option<Method>,
    pub prefix: String,
}

/// The Faspex route profile: which paths are public, which is the login form, which are denied.
#[derive(Debug, Clone)]
pub struct RouteProfile {
    pub login_path: String,
    pub logout_path: String,
    pub token_path: String,
    pub public_prefixes: Vec<String>,
    pub deny: Vec<DenyPrefix>,
}

/// The outcome of classification: the route, the action, and the normalised path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub route: Route,
    /// The login, logout or token action, whatever the method.
    pub action: Option<Action>,
    /// The once-decoded, normalised path (lossy UTF-8 where the client sent other bytes): what
    /// the decisions were made on, and what the access log shows.
    pub path: String,
    /// The path to forward, still percent-encoded as the client sent it but normalised: `None`
    /// when that is the request's own path unchanged (nearly every request).
    pub forward: Option<String>,
}

/// How a path spells an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spelling {
    /// Rails routes it to the action.
    Action,
    /// Clearly another path.
    Not,
    /// Neither: refused.
    Unclear,
}

impl RouteProfile {
    /// Classify a request by method and raw path (the path part of the request target, without
    /// the query).
    pub fn classify(&self, method: &Method, raw_path: &str) -> Result<Classified, PathError> {
        let raw = raw_path.as_bytes();
        if raw.first() != Some(&b'/') {
            return Err(PathError::NotAbsolute);
        }
        if raw.contains(&b'%') {
            refuse_encoded_separators(raw)?;
        }
        let forward = normalize(raw)?;
        let decoded = decode_once(&forward)?;
        // A path without `%` (nearly every one) decodes to itself, already normal.
        let decoded_plain = matches!(decoded, Cow::Borrowed(_));
        let further = decode_further(&decoded);
        // Without a `%` left after one decoding (nearly every path), both readings are one.
        let full_owned;
        let (full, once) = match further {
            Cow::Borrowed(_) if decoded_plain => (None, Cow::Borrowed(&*decoded)),
            Cow::Borrowed(_) => (None, normalize(&decoded)?),
            Cow::Owned(further) => {
                full_owned = further;
                (Some(normalize(&full_owned)?), normalize(&decoded)?)
            }
        };
        // One reading (nearly every path): each question is asked of it once.
        let one_reading = full.is_none();
        let full: &[u8] = full.as_deref().unwrap_or(&once);
        let path = utf8_lossy(&once);
        let forward = match &forward {
            // (normalising can give back the same bytes: `/.x/` has a `/.` but no dot segment)
            Cow::Owned(f) if f.as_slice() != raw => Some(utf8_lossy(f)),
            _ => None,
        };
        // (called once, on whichever path returns)
        let done = move |route, action| {
            Ok(Classified {
                route,
                action,
                path,
                forward,
            })
        };

        let denied = |p: &[u8]| {
            // The readings a server that drops `;params` from a segment would route: the path
            // without them, with and without its dot segments resolved again (`..;x` is `..` to
            // it). Nearly every path has no `;`, and is its own only reading.
            let stripped = p.contains(&b';').then(|| strip_params(p));
            let resolved = stripped
                .as_deref()
                .and_then(|s| normalize(s).ok())
                .filter(|r| Some(&**r) != stripped.as_deref());
            let readings = [Some(p), stripped.as_deref(), resolved.as_deref()];
            self.deny.iter().any(|rule| {
                rule.method
                    .as_ref()
                    .is_none_or(|m| method_may_reach(method, m))
                    && readings
                        .iter()
                        .flatten()
                        .any(|r| deny_matches(r, rule.prefix.as_bytes()))
            })
        };
        if denied(&once) || (!one_reading && denied(full)) {
            return done(Route::Denied, None);
        }
        let gateway = |p: &[u8]| under(p, GATEWAY_PREFIX.as_bytes());
        if gateway(&once) || (!one_reading && gateway(full)) {
            return done(Route::Gateway, None);
        }

        let action = self.action(&once, (!one_reading).then_some(full))?;
        let route = match action {
            Some(Action::Login) if *method == Method::POST => Route::Login,
            Some(Action::Login) if *method == Method::GET || *method == Method::HEAD => {
                Route::Public
            }
            Some(Action::Logout) => Route::Logout,
            Some(_) => Route::Protected,
            None if self.is_public(method, &once)
                && (one_reading || self.is_public(method, full)) =>
            {
                Route::Public
            }
            None => Route::Protected,
        };
        done(route, action)
    }

    /// Which action both readings of a path spell, if any; refused when they disagree or either
    /// is unclear.
    fn action(&self, once: &[u8], full: Option<&[u8]>) -> Result<Option<Action>, PathError> {
        // A path without `.`, `;` or another mark after a base spells no action unclearly, and
        // most paths share no prefix with the three at all: each test is a prefix compare.
        for (base, action) in [
            (&self.login_path, Action::Login),
            (&self.logout_path, Action::Logout),
            (&self.token_path, Action::Token),
        ] {
            let a = spelling(once, base.as_bytes());
            let b = full.map_or(a, |f| spelling(f, base.as_bytes()));
            match (a, b) {
                (Spelling::Not, Spelling::Not) => continue,
                (Spelling::Action, Spelling::Action) => return Ok(Some(action)),
                _ => return Err(PathError::UnclearAction),
            }
        }
        Ok(None)
    }

    /// Whether `raw_path` (as a `Location` names it) leads to the login action or page: a login
    /// that redirects there did not succeed.
    pub fn is_login_page(&self, raw_path: &str) -> bool {
        let login = self.login_path.as_bytes();
        let check = |p: &[u8]| under(p, login) || spelling(p, login) != Spelling::Not;
        let decoded = decode_once(raw_path.as_bytes());
        match decoded.as_deref().map_err(Clone::clone).and_then(normalize) {
            Ok(p) => check(&p),
            // An undecodable target is no proof of success.
            Err(_) => true,
        }
    }

    fn is_public(&self, method: &Method, path: &[u8]) -> bool {
        let login = self.login_path.as_bytes();
        let login_page = (*method == Method::GET || *method == Method::HEAD) && under(path, login);
        login_page
            || self
                .public_prefixes
                .iter()
                .any(|prefix| under(path, prefix.as_bytes()))
    }
}

/// Refuse `%2F`/`%5C` at any depth of encoding (`%252F` is `%2F` to whoever decodes once more),
/// and a segment that decodes to `.` or `..` without being spelled so.
fn refuse_encoded_separators(raw: &[u8]) -> Result<(), PathError> {
    let mut cur: Cow<'_, [u8]> = Cow::Borrowed(raw);
    for _ in 0..5 {
        let has = cur.windows(3).any(|w| {
            w[0] == b'%'
                && (w[1] == b'2' && (w[2] | 0x20) == b'f' || w[1] == b'5' && (w[2] | 0x20) == b'c')
        });
        if has {
            return Err(PathError::EncodedSlash);
        }
        if !cur.contains(&b'%') {
            break;
        }
        let (next, _) = decode_escapes(&cur);
        if next == *cur {
            break;
        }
        cur = Cow::Owned(next);
    }
    for seg in raw.split(|&b| b == b'/') {
        if !seg.contains(&b'%') {
            continue;
        }
        let mut s = seg.to_vec();
        for _ in 0..5 {
            let (next, _) = decode_escapes(&s);
            if next == s {
                break;
            }
            s = next;
        }
        if s == b"." || s == b".." {
            return Err(PathError::EncodedDot);
        }
    }
    Ok(())
}

/// How the normalised `path` spells the action at `base`: itself, with a trailing slash, or with
/// a format suffix (`[^/.]+`, as Rails' `(.:format)`) is the action; another segment or a name
/// that goes on in letters, digits, `_` or `-` is another path; anything else (an empty or
/// dotted format, `;`, `,`, a space...) is unclear.
fn spelling(path: &[u8], base: &[u8]) -> Spelling {
    let Some(rest) = path.strip_prefix(base) else {
        return Spelling::Not;
    };
    let rest = rest.strip_suffix(b"/").unwrap_or(rest);
    match rest {
        b"" => Spelling::Action,
        [b'/', ..] => Spelling::Not,
        [b'.', format @ ..]
            if !format.is_empty() && !format.contains(&b'.') && !format.contains(&b'/') =>
        {
            Spelling::Action
        }
        [c, ..] if c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-' => Spelling::Not,
        _ => Spelling::Unclear,
    }
}

/// Whether the normalised `path` is the action at `base`, as Rails routes it (trailing slash,
/// format suffix).
pub fn spells_action(path: &str, base: &str) -> bool {
    spelling(path.as_bytes(), base.as_bytes()) == Spelling::Action
}

/// Whether a request with `method` can end up in the upstream action routed for `rule`: Rails
/// answers HEAD with the GET action, and Rack's `MethodOverride` turns a POST into any of
/// `GET HEAD PUT POST DELETE OPTIONS PATCH` (Rack 2 adds `LINK UNLINK`) on request, by its
/// `_method` form field or its `X-HTTP-Method-Override` header.
pub fn method_may_reach(method: &Method, rule: &Method) -> bool {
    const OVERRIDES: [&str; 9] = [
        "GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "LINK", "UNLINK",
    ];
    method == rule
        || (*method == Method::HEAD && *rule == Method::GET)
        || (*method == Method::POST && OVERRIDES.contains(&rule.as_str()))
}

/// [`under`] for a normalised path as a string.
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    under(path.as_bytes(), prefix.as_bytes())
}

/// Segment-aware prefix test: `/a/b/` covers `/a/b`, `/a/b/` and `/a/b/c`, never `/a/bc`.
fn under(path: &[u8], prefix: &[u8]) -> bool {
    let bare = prefix.strip_suffix(b"/").unwrap_or(prefix);
    if bare.is_empty() {
        return true;
    }
    path == bare || (path.starts_with(bare) && path.get(bare.len()) == Some(&b'/'))
}

/// Deny matching is deliberately wider than [`under`]: a plain prefix, and a prefix with a
/// trailing slash also covers the path without it. Both ignore ASCII case: Faspex's routes are
/// case-sensitive, but a server in front of it, or in its place, may fold case.
fn deny_matches(path: &[u8], prefix: &[u8]) -> bool {
    let starts = |p: &[u8]| {
        path.get(..p.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(p))
    };
    if starts(prefix) {
        return true;
    }
    let bare = prefix.strip_suffix(b"/").unwrap_or(prefix);
    // `/…/package_relay.json` is the same resource to Rails, in another format.
    bare.is_empty()
        || (starts(bare) && matches!(path.get(bare.len()), None | Some(&b'/') | Some(&b'.')))
}

/// The path with each segment's `;params` removed (`/a;x/b;y=1/c` is `/a/b/c`), as servers
/// that take `;` for a parameter separator in a path read it (Tomcat, Jetty, Spring).
fn strip_params(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for (i, seg) in path.split(|&b| b == b'/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        let end = seg.iter().position(|&b| b == b';').unwrap_or(seg.len());
        out.extend_from_slice(&seg[..end]);
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decode once. `%` must be followed by two hex digits. A path without `%` (nearly
/// every one) is borrowed as it is.
fn decode_once(raw: &[u8]) -> Result<Cow<'_, [u8]>, PathError> {
    if !raw.contains(&b'%') {
        return Ok(Cow::Borrowed(raw));
    }
    match decode_escapes(raw) {
        (out, false) => Ok(Cow::Owned(out)),
        (_, true) => Err(PathError::BadPercentEncoding),
    }
}

/// From the once-decoded path, decode until nothing changes (at most a few rounds): the most
/// suspicious reading of the path. A `%` that does not start a valid escape is kept as it is and
/// the valid escapes around it are still decoded, so one stray `%` cannot hide the rest. Paths
/// without a `%` left (nearly all) cost nothing more.
fn decode_further(once: &[u8]) -> Cow<'_, [u8]> {
    if !once.contains(&b'%') {
        return Cow::Borrowed(once);
    }
    let mut cur = once.to_vec();
    for _ in 0..4 {
        if !cur.contains(&b'%') {
            break;
        }
        let (next, _) = decode_escapes(&cur);
        if next == cur {
            break;
        }
        cur = next;
    }
    Cow::Owned(cur)
}

/// Percent-decode the valid escapes, keeping any other `%` as it is; and whether there was such
/// a `%`.
fn decode_escapes(raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(raw.len());
    let mut stray = false;
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex);
            let lo = raw.get(i + 2).copied().and_then(hex);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
            stray = true;
        }
        out.push(raw[i]);
        i += 1;
    }
    (out, stray)
}

/// Collapse empty and `.` segments, resolve `..` (never above the root), keep a trailing slash.
fn normalize(decoded: &[u8]) -> Result<Cow<'_, [u8]>, PathError> {
    if decoded.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // One pass: a forbidden byte anywhere is refused; without `//` and `/.`, every segment but
    // a trailing empty one is kept as it is, and the path is already normal (nearly every one).
    let mut normal = true;
    let mut prev = 0u8;
    for &b in decoded {
        if b < 0x20 || b == 0x7f || b == b'\\' {
            return Err(PathError::ForbiddenCharacter);
        }
        normal &= !(prev == b'/' && (b == b'/' || b == b'.'));
        prev = b;
    }
    if normal {
        return Ok(Cow::Borrowed(decoded));
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded[1..].split(|&b| b == b'/') {
        trailing_slash = false;
        if let Some(i) = seg.iter().position(|&b| b == b';') {
            if matches!(&seg[..i], b"." | b"..") {
                return Err(PathError::DotSegmentParams);
            }
        }
        match seg {
            b"" | b"." => trailing_slash = true,
            b".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for seg in &segments {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if segments.is_empty() || trailing_slash {
        out.push(b'/');
    }
    Ok(Cow::Owned(out))
}

/// `bytes` as a string, invalid UTF-8 replaced (U+FFFD): checked by the fast check first, as
/// nearly every path is ASCII (`String::from_utf8_lossy` walks it byte by byte).
fn utf8_lossy(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut for paths that are already normal changes no answer.
    #[test]
    fn normal_paths_come_back_unchanged_and_the_rest_are_normalised() {
        let cases: &[(&str, &str)] = &[
            ("/", "/"),
            ("/a", "/a"),
            ("/a/", "/a/"),
            ("/a/b.c/d", "/a/b.c/d"),
            ("/a.", "/a."),
            ("//", "/"),
            ("/a//b", "/a/b"),
            ("/.", "/"),
            ("/./a", "/a"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/../b", "/b"),
            ("/../..", "/"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a/b/../../../c/", "/c/"),
        ];
        for (input, want) in cases {
            let got = normalize(input.as_bytes()).unwrap();
            assert_eq!(
                String::from_utf8(got.into_owned()).unwrap(),
                *want,
                "{input}"
            );
        }
    }

    fn profile() -> RouteProfile {
        RouteProfile {
            login_path: "/aspera/faspex/login".into(),
            logout_path: "/aspera/faspex/logout".into(),
            token_path: "/aspera/faspex/auth/oauth2/token".into(),
            public_prefixes: vec![
                "/aspera/faspex/external_deliveries/".into(),
                "/aspera/faspex/external/".into(),
                "/aspera/http-gwy/".into(),
                "/aspera/faspex/javascripts/".into(),
            ],
            deny: vec![DenyPrefix {
                method: None,
                prefix: "/aspera/faspex/package_relay/".into(),
            }],
        }
    }

    fn route(method: Method, path: &str) -> Route {
        profile().classify(&method, path).unwrap().route
    }

    /// Each path, asked for with GET, takes its route.
    fn assert_get_routes(cases: &[(&str, Route)]) {
        for (p, want) in cases {
            assert_eq!(route(Method::GET, p), *want, "{p}");
        }
    }

    /// Each path, asked for with GET, is refused with `e` before any route is decided.
    fn assert_refused(paths: &[&str], e: PathError) {
        for p in paths {
            assert_eq!(profile().classify(&Method::GET, p), Err(e.clone()), "{p}");
        }
    }

    #[test]
    fn normalises_segments() {
        let n = |p: &str| {
            String::from_utf8(
                normalize(&decode_once(p.as_bytes()).unwrap())
                    .unwrap()
                    .into_owned(),
            )
            .unwrap()
        };
        assert_eq!(n("/"), "/");
        assert_eq!(n("//a///b"), "/a/b");
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/a/b/"), "/a/b/");
        assert_eq!(n("/a/b/."), "/a/b/");
        assert_eq!(n("/../../etc"), "/etc");
        assert_eq!(n("/a%2Fb"), "/a/b");
        assert_eq!(n("/a/%2e%2e/b"), "/b");
    }

    #[test]
    fn deny_list_holds_against_every_encoding() {
        for p in [
            "/aspera/faspex/package_relay/relay_package",
            "/aspera/faspex/package_relay",
            "//aspera/faspex/package_relay/relay_package",
            "/aspera//faspex///package_relay/relay_package",
            "/aspera/faspex/./package_relay/relay_package",
            "/aspera/faspex/x/../package_relay/relay_package",
            "/aspera/faspex/external/../package_relay/relay_package",
            "/aspera/faspex/%70ackage_relay/relay_package",
            "/aspera/faspex/package%5Frelay/relay_package",
            "/aspera/faspex/%2570ackage_relay/relay_package",
            // A stray `%` must not switch the second decoding off.
            "/aspera/faspex/%2570ackage_relay/relay_package%25",
            "/aspera/faspex/%2570ackage_relay/relay_package%2525zz",
        ] {
            assert_eq!(route(Method::POST, p), Route::Denied, "{p}");
            assert_eq!(route(Method::GET, p), Route::Denied, "{p}");
        }
        // Encoded separators and dot segments are refused before any route is decided.
        assert_refused(
            &["/aspera%2Ffaspex%2Fpackage_relay%2Frelay_package"],
            PathError::EncodedSlash,
        );
        assert_refused(
            &[
                "/aspera/faspex/%252e%252e/faspex/package_relay/x",
                "/aspera/faspex/%2e/package_relay/relay_package",
            ],
            PathError::EncodedDot,
        );
    }

    /// Issue 19: a deny rule holds against a server that folds case or drops `;params` from a
    /// segment, whatever Rails would make of the spelling; the path forwarded for what is not
    /// denied is still the one classified, byte for byte.
    #[test]
    fn deny_rules_ignore_case_and_segment_params() {
        for p in [
            "/aspera/faspex/PACKAGE_RELAY/relay_package",
            "/aspera/faspex/Package_Relay/relay_package",
            "/ASPERA/FASPEX/PACKAGE_RELAY",
            "/aspera/faspex/package_relay;x/relay_package",
            "/aspera/faspex/package_relay;/relay_package",
            "/aspera/faspex/package_relay;jsessionid=1;a=b/relay_package",
            "/aspera/faspex/PACKAGE_RELAY;x",
            "/aspera;x/faspex;y/package_relay;z/relay_package",
            "/aspera/faspex/%50ACKAGE_RELAY;x/relay_package",
            "/aspera/faspex/package_relay%3bx/relay_package",
            "/aspera/faspex/package_relay%253bx/relay_package",
            // `;x` alone is an empty segment once the params are gone.
            "/aspera/faspex/;x/package_relay/relay_package",
        ] {
            for m in [Method::GET, Method::POST, Method::HEAD, Method::PUT] {
                assert_eq!(route(m.clone(), p), Route::Denied, "{m} {p}");
            }
        }
        // `..;` is `..` to a server that drops params and a name to Rails: refused outright.
        assert_refused(
            &[
                "/aspera/faspex/inbox/..;/package_relay/relay_package",
                "/aspera/faspex/x;y/..;z/PACKAGE_RELAY/relay_package",
                "/aspera/faspex/package_relay/..;/inbox",
            ],
            PathError::DotSegmentParams,
        );
        // Methods match as before: a rule for one method still leaves the others alone.
        let post_only = RouteProfile {
            deny: vec![DenyPrefix {
                method: Some(Method::POST),
                prefix: "/aspera/faspex/package_relay/".into(),
            }],
            ..profile()
        };
        let r = |m: Method, p: &str| post_only.classify(&m, p).unwrap().route;
        assert_eq!(
            r(Method::POST, "/aspera/faspex/PACKAGE_RELAY;x/relay_package"),
            Route::Denied
        );
        assert_eq!(
            r(Method::GET, "/aspera/faspex/PACKAGE_RELAY;x/relay_package"),
            Route::Protected
        );
        // Names that only share a prefix, or carry the word elsewhere, are not denied.
        for p in [
            "/aspera/faspex/package_relayx/relay_package",
            "/aspera/faspex/x/package_relay",
            "/aspera/faspex/inbox;package_relay/x",
            "/aspera/faspex/received/1;/package_relayz",
        ] {
            assert_ne!(route(Method::POST, p), Route::Denied, "{p}");
        }
        // What is not denied is forwarded as classified: the params and the case stay.
        let c = profile()
            .classify(&Method::GET, "/aspera/faspex/Inbox;x/1")
            .unwrap();
        assert_eq!((c.route, c.forward), (Route::Protected, None));
        let c = profile()
            .classify(&Method::GET, "//aspera/faspex/./Inbox;x/1")
            .unwrap();
        assert_eq!(c.forward.as_deref(), Some("/aspera/faspex/Inbox;x/1"));
    }

    #[test]
    fn deny_matching_keeps_its_prefix_semantics() {
        // A byte prefix, case folded; a rule with a trailing slash covers the bare path too.
        assert!(deny_matches(b"/a/B/c", b"/a/b/"));
        assert!(deny_matches(b"/A/b", b"/a/b/"));
        assert!(deny_matches(b"/a/bc", b"/a/b"));
        assert!(!deny_matches(b"/a/bc", b"/a/b/"));
        assert!(!deny_matches(b"/a", b"/a/b/"));
        assert!(deny_matches(b"/anything", b"/"));
        // A format suffix names the same resource to Rails.
        assert!(deny_matches(b"/a/b.json", b"/a/b/"));
        assert!(deny_matches(b"/a/B.xml/c", b"/a/b/"));
        assert!(!deny_matches(b"/a/bjson", b"/a/b/"));
        assert_eq!(strip_params(b"/a;x/b;y=1;z/c/;/d"), b"/a/b/c//d");
        assert_eq!(strip_params(b"/"), b"/");
        assert_eq!(strip_params(b"/;"), b"/");
    }

    #[test]
    fn deny_rule_with_method_only_denies_that_method() {
        let mut p = profile();
        p.deny = vec![DenyPrefix {
            method: Some(Method::POST),
            prefix: "/aspera/faspex/package_relay/".into(),
        }];
        let r = |m: Method| {
            p.classify(&m, "/aspera/faspex/package_relay/relay_package")
                .unwrap()
                .route
        };
        assert_eq!(r(Method::POST), Route::Denied);
        assert_eq!(r(Method::GET), Route::Protected);
    }

    #[test]
    fn deny_rules_cover_the_methods_rails_maps_onto_them() {
        let rule = |m: Method| RouteProfile {
            deny: vec![DenyPrefix {
                method: Some(m),
                prefix: "/aspera/faspex/secret/".into(),
            }],
            ..profile()
        };
        let r =
            |p: &RouteProfile, m: Method| p.classify(&m, "/aspera/faspex/secret/x").unwrap().route;
        let get = rule(Method::GET);
        assert_eq!(r(&get, Method::GET), Route::Denied);
        assert_eq!(r(&get, Method::HEAD), Route::Denied);
        // (`POST` with `X-HTTP-Method-Override: GET`, or a `_method=get` field, runs the GET
        // action)
        assert_eq!(r(&get, Method::POST), Route::Denied);
        assert_eq!(r(&get, Method::PUT), Route::Protected);
        for m in [
            Method::HEAD,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            let p = rule(m.clone());
            assert_eq!(r(&p, m.clone()), Route::Denied);
            assert_eq!(r(&p, Method::POST), Route::Denied, "POST can become {m}");
            assert_eq!(r(&p, Method::GET), Route::Protected);
        }
    }

    #[test]
    fn matching_is_case_sensitive() {
        assert_get_routes(&[
            ("/aspera/faspex/External/x", Route::Protected),
            ("/aspera/faspex/external/x", Route::Public),
        ]);
    }

    #[test]
    fn public_paths_need_every_reading_to_agree() {
        assert_get_routes(&[
            ("/aspera/faspex/external_deliveries/4822", Route::Public),
            ("/aspera/http-gwy/v1/download/1", Route::Public),
            // Escaping the public prefix with dot segments lands on a protected path.
            ("/aspera/faspex/external/../received/4044", Route::Protected),
        ]);
        // Encoded dot segments, once or twice encoded, are refused.
        assert_refused(
            &[
                "/aspera/faspex/external/%2e%2e/received/4044",
                "/aspera/faspex/external/%252e%252e/received/4044",
                "/aspera/faspex/external/%252e%252e/received/4044%25",
                "/aspera/faspex/inbox/%2e%2e/javascripts/x",
                "/aspera/faspex/inbox/.%2e/javascripts/x",
            ],
            PathError::EncodedDot,
        );
        assert_refused(
            &[
                "/aspera/faspex/received/1%2f..%2f..%2fjavascripts%2fx",
                "/aspera/faspex/received/1%252f..",
                "/aspera/faspex/received/1%5C..",
                "/aspera/faspex/received/1%255c..",
            ],
            PathError::EncodedSlash,
        );
        // A prefix is a whole segment.
        assert_get_routes(&[
            ("/aspera/faspex/externalx", Route::Protected),
            ("/aspera/faspex/received/4044", Route::Protected),
        ]);
    }

    /// (method, path, what Rails runs, what the gateway makes of it)
    type Spelled = (
        Method,
        &'static str,
        &'static str,
        Result<(Route, Option<Action>), PathError>,
    );

    /// The spellings of the three actions: the path, what Rails routes it to, and what the
    /// gateway does. docs/security.md's table of spellings follows this one.
    #[test]
    fn rails_spellings() {
        use Route::*;
        let unclear = Err(PathError::UnclearAction);
        let ok = |route: Route, action: Option<Action>| Ok((route, action));
        let login = Some(Action::Login);
        let logout = Some(Action::Logout);
        let token = Some(Action::Token);
        // (method, path, Rails' action, the gateway's answer)
        let cases: &[Spelled] = &[
            (
                Method::POST,
                "/aspera/faspex/login",
                "login",
                ok(Login, login),
            ),
            (
                Method::POST,
                "//aspera/faspex/login",
                "login",
                ok(Login, login),
            ),
            (
                Method::POST,
                "/aspera/faspex/login/",
                "login",
                ok(Login, login),
            ),
            (
                Method::POST,
                "/aspera/faspex/login//",
                "login",
                ok(Login, login),
            ),
            (
                Method::POST,
                "/aspera/faspex/login.json",
                "login",
                ok(Login, login),
            ),
            (
                Method::POST,
                "/aspera/faspex/login.json/",
                "login",
                ok(Login, login),
            ),
            (
                Method::POST,
                "/aspera/faspex/login.html/",
                "login",
                ok(Login, login),
            ),
            (
                Method::POST,
                "/aspera/faspex/login.x-y",
                "login",
                ok(Login, login),
            ),
            (
                Method::POST,
                "/aspera/faspex/login.a_b",
                "login",
                ok(Login, login),
            ),
            (
                Method::POST,
                "/aspera/faspex/login.js%6fn",
                "login",
                ok(Login, login),
            ),
            (
                Method::POST,
                "/aspera/faspex/%6cogin",
                "login",
                ok(Login, login),
            ),
            (
                Method::GET,
                "/aspera/faspex/login",
                "login (page)",
                ok(Public, login),
            ),
            (
                Method::GET,
                "/aspera/faspex/login.json/",
                "login (page)",
                ok(Public, login),
            ),
            (
                Method::HEAD,
                "/aspera/faspex/login",
                "login (page)",
                ok(Public, login),
            ),
            (
                Method::PUT,
                "/aspera/faspex/login",
                "login",
                ok(Protected, login),
            ),
            (
                Method::GET,
                "/aspera/faspex/login/new",
                "login page",
                ok(Public, None),
            ),
            (
                Method::POST,
                "/aspera/faspex/login/new",
                "login page",
                ok(Protected, None),
            ),
            (
                Method::GET,
                "/aspera/faspex/loginx",
                "404",
                ok(Protected, None),
            ),
            (
                Method::POST,
                "/aspera/faspex/login_x",
                "404",
                ok(Protected, None),
            ),
            (
                Method::POST,
                "/aspera/faspex/Login",
                "404",
                ok(Protected, None),
            ),
            (
                Method::POST,
                "/aspera/faspex/login.",
                "404",
                unclear.clone(),
            ),
            (
                Method::POST,
                "/aspera/faspex/login.a.b",
                "404",
                unclear.clone(),
            ),
            (
                Method::POST,
                "/aspera/faspex/login.a%2Eb",
                "login (format a.b)",
                unclear.clone(),
            ),
            (
                Method::POST,
                "/aspera/faspex/login;x",
                "404",
                unclear.clone(),
            ),
            (
                Method::POST,
                "/aspera/faspex/login,x",
                "404",
                unclear.clone(),
            ),
            (
                Method::POST,
                "/aspera/faspex/%256cogin",
                "404 (login if decoded twice)",
                unclear.clone(),
            ),
            (
                Method::GET,
                "/aspera/faspex/logout",
                "logout",
                ok(Logout, logout),
            ),
            (
                Method::POST,
                "/aspera/faspex/logout/",
                "logout",
                ok(Logout, logout),
            ),
            (
                Method::GET,
                "/aspera/faspex/logout.json",
                "logout",
                ok(Logout, logout),
            ),
            (
                Method::GET,
                "/aspera/faspex/logout.",
                "404",
                unclear.clone(),
            ),
            (
                Method::POST,
                "/aspera/faspex/auth/oauth2/token",
                "token",
                ok(Protected, token),
            ),
            (
                Method::POST,
                "/aspera/faspex/auth/oauth2/token.json/",
                "token",
                ok(Protected, token),
            ),
            (
                Method::POST,
                "/aspera/faspex/auth//oauth2/token/",
                "token",
                ok(Protected, token),
            ),
            (
                Method::POST,
                "/aspera/faspex/auth/oauth2/tokens",
                "404",
                ok(Protected, None),
            ),
            (
                Method::POST,
                "/aspera/faspex/auth/oauth2/token;",
                "404",
                unclear.clone(),
            ),
        ];
        for (method, path, rails, want) in cases {
            let got = profile()
                .classify(method, path)
                .map(|c| (c.route, c.action));
            assert_eq!(&got, want, "{method} {path} (Rails: {rails})");
        }
    }

    #[test]
    fn the_forwarded_path_is_the_classified_one() {
        let f = |p: &str| {
            let c = profile().classify(&Method::GET, p).unwrap();
            c.forward.unwrap_or_else(|| p.to_owned())
        };
        assert_eq!(f("/aspera/faspex/inbox"), "/aspera/faspex/inbox");
        assert_eq!(f("//aspera//faspex/inbox"), "/aspera/faspex/inbox");
        assert_eq!(
            f("/aspera/faspex/external/../received/4044"),
            "/aspera/faspex/received/4044"
        );
        assert_eq!(f("/aspera/faspex/./inbox/"), "/aspera/faspex/inbox/");
        assert_eq!(
            f("/aspera/faspex/r%C3%A9%20x"),
            "/aspera/faspex/r%C3%A9%20x"
        );
        assert!(profile()
            .classify(&Method::GET, "/aspera/faspex/inbox")
            .unwrap()
            .forward
            .is_none());
    }

    #[test]
    fn login_page_targets() {
        let p = profile();
        for t in [
            "/aspera/faspex/login",
            "/aspera/faspex/login/",
            "/aspera/faspex/login/new",
            "/aspera/faspex/login.html",
            "//aspera/faspex/./login",
            "/aspera/faspex/%6cogin",
            "/a%zz",
            "/aspera/faspex/login.",
        ] {
            assert!(p.is_login_page(t), "{t}");
        }
        for t in ["/aspera/faspex/inbox", "/aspera/faspex/loginx", "/"] {
            assert!(!p.is_login_page(t), "{t}");
        }
    }

    #[test]
    fn gateway_paths_are_never_forwarded() {
        assert_eq!(route(Method::GET, "/_faspex-gate/expired"), Route::Gateway);
        assert_eq!(route(Method::GET, "/_faspex-gate"), Route::Gateway);
        assert_eq!(route(Method::GET, "/%5Ffaspex-gate/x"), Route::Gateway);
        assert_eq!(
            route(Method::GET, "/aspera/../_faspex-gate/x"),
            Route::Gateway
        );
    }

    #[test]
    fn dot_segments_with_params_are_refused() {
        let p = profile();
        for path in [
            "/aspera/faspex/external/..;/received/4044",
            "/aspera/faspex/external/..;x/received/4044",
            "/aspera/faspex/.;/inbox",
            "/aspera/faspex/external/%2e%2e;/received/4044",
        ] {
            assert!(p.classify(&Method::GET, path).is_err(), "{path}");
        }
        assert_eq!(
            p.classify(&Method::GET, "/aspera/faspex/external/..;/received/4044"),
            Err(PathError::DotSegmentParams)
        );
        // A name that merely starts with dots is a name.
        assert!(p
            .classify(&Method::GET, "/aspera/faspex/inbox/...;x")
            .is_ok());
        assert!(p
            .classify(&Method::GET, "/aspera/faspex/inbox/..x;y")
            .is_ok());
    }

    #[test]
    fn bad_paths_are_refused() {
        let c = |p: &str| profile().classify(&Method::GET, p);
        assert_eq!(c("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(c("/a%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(c("/a%"), Err(PathError::BadPercentEncoding));
        assert_eq!(c("/a%00b"), Err(PathError::ForbiddenCharacter));
        assert_eq!(c("/a%0d%0aX: y"), Err(PathError::ForbiddenCharacter));
        assert_eq!(c("/a%5c..%5creceived"), Err(PathError::EncodedSlash));
        assert_eq!(c("/a\\b"), Err(PathError::ForbiddenCharacter));
        assert_eq!(c("*"), Err(PathError::NotAbsolute));
        assert_eq!(c(""), Err(PathError::NotAbsolute));
        // Non-UTF-8 bytes are not an error, just never public by accident.
        let bytes = c("/aspera/%ff%fe").unwrap();
        assert_eq!(bytes.route, Route::Protected);
        // (and the log shows them replaced; a path with `..` to resolve is forwarded so)
        assert_eq!(bytes.path, "/aspera/\u{fffd}\u{fffd}");
        assert_eq!(bytes.forward, None);
        let resolved = c("/aspera/x/../%ff\u{e9}").unwrap();
        assert_eq!(resolved.path, "/aspera/\u{fffd}\u{e9}");
        assert_eq!(resolved.forward.as_deref(), Some("/aspera/%ff\u{e9}"));
    }
}
