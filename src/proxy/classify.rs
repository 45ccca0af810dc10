//! Route classification: which kind of request this is, decided on the normalised path.
//!
//! The upstream (Faspex behind Apache/Passenger) decodes and normalises a path before routing
//! it, so the gateway must decide on the same normalised form, or an encoded variant of a denied
//! path (`/aspera/faspex/%70ackage_relay/...`, `//aspera/...`, `/x/../aspera/...`) would slip
//! through. The rules, all case-sensitive as Faspex's routes are:
//!
//! - percent-decoding, `%2F` included, then `//` collapsed and `.`/`..` segments resolved;
//! - invalid percent-encoding, NUL, control characters and backslashes are refused (400): no
//!   Faspex URL carries them, and servers disagree on what they mean;
//! - the deny list wins over everything, and is checked on the once-decoded and on the
//!   fully-decoded path (a double-encoded variant is denied too). A rule for `GET` also covers
//!   `HEAD` (Rails runs the GET action), and a rule for `PUT`, `PATCH` or `DELETE` also covers
//!   `POST`, which Rails turns into those with `_method=` or `X-HTTP-Method-Override`;
//! - the login and logout actions are recognised in every form Rails routes to them: with a
//!   trailing slash, or with a format suffix (`/login.json`);
//! - a path is public only when both decodings say it is public;
//! - the path is forwarded as the client sent it: this module only decides.

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

/// Why a path could not be classified. Answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with '/'")]
    NotAbsolute,
    #[error("the request path has invalid percent-encoding")]
    BadPercentEncoding,
    #[error("the request path contains a NUL, control character or backslash")]
    ForbiddenCharacter,
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
    pub public_prefixes: Vec<String>,
    pub deny: Vec<DenyPrefix>,
}

/// The outcome of classification: the route, and the normalised path it was decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub route: Route,
    /// The once-decoded, normalised path (lossy UTF-8 where the client sent other bytes).
    pub path: String,
}

impl RouteProfile {
    /// Classify a request by method and raw path (the path part of the request target, without
    /// the query).
    pub fn classify(&self, method: &Method, raw_path: &str) -> Result<Classified, PathError> {
        let decoded = decode_once(raw_path.as_bytes())?;
        let further = decode_further(&decoded);
        // Without a `%` left after one decoding (nearly every path), both readings are one.
        let full_owned;
        let (full, once) = match further {
            Cow::Borrowed(_) => {
                let once = normalize(&decoded)?;
                (None, once)
            }
            Cow::Owned(further) => {
                full_owned = further;
                (Some(normalize(&full_owned)?), normalize(&decoded)?)
            }
        };
        // One reading (nearly every path): each question is asked of it once.
        let one_reading = full.is_none();
        let full: &[u8] = full.as_deref().unwrap_or(&once);
        let path = String::from_utf8_lossy(&once).into_owned();

        let denied = |p: &[u8]| {
            self.deny.iter().any(|rule| {
                rule.method
                    .as_ref()
                    .is_none_or(|m| method_may_reach(method, m))
                    && deny_matches(p, rule.prefix.as_bytes())
            })
        };
        if denied(&once) || (!one_reading && denied(full)) {
            return Ok(Classified {
                route: Route::Denied,
                path,
            });
        }
        let gateway = |p: &[u8]| under(p, GATEWAY_PREFIX.as_bytes());
        if gateway(&once) || (!one_reading && gateway(full)) {
            return Ok(Classified {
                route: Route::Gateway,
                path,
            });
        }

        let route = if is_action(&once, self.login_path.as_bytes()) && *method == Method::POST {
            Route::Login
        } else if is_action(&once, self.logout_path.as_bytes()) {
            Route::Logout
        } else if self.is_public(method, &once) && (one_reading || self.is_public(method, full)) {
            Route::Public
        } else {
            Route::Protected
        };
        Ok(Classified { route, path })
    }

    /// Whether `raw_path` (as a `Location` names it) leads to the login action or page: a login
    /// that redirects there did not succeed.
    pub fn is_login_page(&self, raw_path: &str) -> bool {
        let login = self.login_path.as_bytes();
        let check = |p: &[u8]| under(p, login) || is_action(p, login);
        let decoded = decode_once(raw_path.as_bytes());
        match decoded.as_deref().map_err(Clone::clone).and_then(normalize) {
            Ok(p) => check(&p),
            // An undecodable target is no proof of success.
            Err(_) => true,
        }
    }

    /// Whether `raw_path` is the action at `base` (in any form Rails routes to it).
    pub fn is_path(raw_path: &str, base: &str) -> bool {
        // A path without `%`, `.` and `//` decodes and normalises to itself: it is the action
        // at `base` only if it starts with `base`.
        if !raw_path.starts_with(base) && is_plain(raw_path.as_bytes()) {
            return false;
        }
        let decoded = decode_once(raw_path.as_bytes());
        match decoded.as_deref().map_err(Clone::clone).and_then(normalize) {
            Ok(p) => is_action(&p, base.as_bytes()),
            Err(_) => false,
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

/// Whether a request with `method` can end up in the upstream action routed for `rule`: Rails
/// answers HEAD with the GET action, and turns a POST into PUT, PATCH or DELETE on request.
fn method_may_reach(method: &Method, rule: &Method) -> bool {
    method == rule
        || (*method == Method::HEAD && *rule == Method::GET)
        || (*method == Method::POST
            && (*rule == Method::PUT || *rule == Method::PATCH || *rule == Method::DELETE))
}

/// The forms in which Rails routes to the action at `base`: itself, with a trailing slash, or with
/// a format suffix such as `.json` or `.html`.
fn is_action(path: &[u8], base: &[u8]) -> bool {
    let Some(rest) = path.strip_prefix(base) else {
        return false;
    };
    match rest {
        b"" | b"/" => true,
        [b'.', format @ ..] => {
            !format.is_empty() && format.iter().all(|b| b.is_ascii_alphanumeric())
        }
        _ => false,
    }
}

/// Whether a path has no `%`, no `.` and no `//`: one that decoding and normalising leave as
/// it is. One pass over the bytes (the `str` searches it replaces cost more than the path).
fn is_plain(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in path {
        if b == b'%' || b == b'.' || (b == b'/' && prev == b'/') {
            return false;
        }
        prev = b;
    }
    true
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

/// Deny matching is deliberately wider than [`under`]: a plain byte prefix, and a prefix with a
/// trailing slash also covers the path without it.
fn deny_matches(path: &[u8], prefix: &[u8]) -> bool {
    path.starts_with(prefix) || under(path, prefix)
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
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex);
            let lo = raw.get(i + 2).copied().and_then(hex);
            match (hi, lo) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                _ => return Err(PathError::BadPercentEncoding),
            }
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Ok(Cow::Owned(out))
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
        let next = decode_lenient(&cur);
        if next == cur {
            break;
        }
        cur = next;
    }
    Cow::Owned(cur)
}

/// Percent-decode the valid escapes, keeping any other `%` as it is.
fn decode_lenient(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
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
        }
        out.push(raw[i]);
        i += 1;
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `is_path`'s shortcut for paths that cannot be the action gives the full answer.
    #[test]
    fn is_path_answers_as_the_full_decoding_does() {
        let full = |raw: &str, base: &str| match decode_once(raw.as_bytes())
            .map(|d| d.into_owned())
            .and_then(|d| normalize(&d).map(Cow::into_owned))
        {
            Ok(p) => is_action(&p, base.as_bytes()),
            Err(_) => false,
        };
        let base = "/aspera/faspex/login";
        for raw in [
            "/aspera/faspex/login",
            "/aspera/faspex/login/",
            "/aspera/faspex/login.json",
            "/aspera/faspex/log",
            "/aspera/faspex/logout",
            "/x/../aspera/faspex/login",
            "//aspera/faspex/login",
            "/aspera//faspex/login",
            "/aspera/./faspex/login",
            "/aspera/faspex/%6cogin",
            "/aspera/faspex/%2e%2e/faspex/login",
            "/aspera%2ffaspex/login",
            "/aspera/faspex/login%00",
            "/other",
            "/",
        ] {
            assert_eq!(RouteProfile::is_path(raw, base), full(raw, base), "{raw}");
        }
    }

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
            "/aspera%2Ffaspex%2Fpackage_relay%2Frelay_package",
            "/aspera/faspex/%2570ackage_relay/relay_package",
            "/aspera/faspex/%252e%252e/faspex/package_relay/x",
            "/aspera/faspex/%2e/package_relay/relay_package",
            // A stray `%` must not switch the second decoding off.
            "/aspera/faspex/%2570ackage_relay/relay_package%25",
            "/aspera/faspex/%2570ackage_relay/relay_package%2525zz",
        ] {
            assert_eq!(route(Method::POST, p), Route::Denied, "{p}");
            assert_eq!(route(Method::GET, p), Route::Denied, "{p}");
        }
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
        assert_eq!(r(&get, Method::POST), Route::Protected);
        for m in [Method::PUT, Method::PATCH, Method::DELETE] {
            let p = rule(m.clone());
            assert_eq!(r(&p, m.clone()), Route::Denied);
            assert_eq!(r(&p, Method::POST), Route::Denied, "POST can become {m}");
            assert_eq!(r(&p, Method::GET), Route::Protected);
        }
    }

    #[test]
    fn matching_is_case_sensitive() {
        assert_eq!(
            route(Method::GET, "/aspera/faspex/External/x"),
            Route::Protected
        );
        assert_eq!(
            route(Method::GET, "/aspera/faspex/external/x"),
            Route::Public
        );
    }

    #[test]
    fn public_paths_need_every_reading_to_agree() {
        assert_eq!(
            route(Method::GET, "/aspera/faspex/external_deliveries/4822"),
            Route::Public
        );
        assert_eq!(
            route(Method::GET, "/aspera/http-gwy/v1/download/1"),
            Route::Public
        );
        // Escaping the public prefix with dot segments lands on a protected path.
        assert_eq!(
            route(Method::GET, "/aspera/faspex/external/../received/4044"),
            Route::Protected
        );
        assert_eq!(
            route(Method::GET, "/aspera/faspex/external/%2e%2e/received/4044"),
            Route::Protected
        );
        // Double-encoded dot segments: public once decoded, protected fully decoded.
        assert_eq!(
            route(
                Method::GET,
                "/aspera/faspex/external/%252e%252e/received/4044"
            ),
            Route::Protected
        );
        assert_eq!(
            route(
                Method::GET,
                "/aspera/faspex/external/%252e%252e/received/4044%25"
            ),
            Route::Protected
        );
        // A prefix is a whole segment.
        assert_eq!(
            route(Method::GET, "/aspera/faspex/externalx"),
            Route::Protected
        );
        assert_eq!(
            route(Method::GET, "/aspera/faspex/received/4044"),
            Route::Protected
        );
    }

    #[test]
    fn login_and_logout() {
        use Route::*;
        let cases = [
            (Method::POST, "/aspera/faspex/login", Login),
            (Method::POST, "//aspera/faspex/login", Login),
            (Method::GET, "/aspera/faspex/login", Public),
            (Method::GET, "/aspera/faspex/login/new", Public),
            (Method::POST, "/aspera/faspex/login/new", Protected),
            (Method::GET, "/aspera/faspex/logout", Logout),
            (Method::GET, "/aspera/faspex/loginx", Protected),
            // Every form Rails routes to the same actions.
            (Method::POST, "/aspera/faspex/login/", Login),
            (Method::POST, "/aspera/faspex/login.json", Login),
            (Method::POST, "/aspera/faspex/login.html", Login),
            (Method::POST, "/aspera/faspex/login.js%6fn", Login),
            (Method::GET, "/aspera/faspex/logout/", Logout),
            (Method::GET, "/aspera/faspex/logout.json", Logout),
            (Method::POST, "/aspera/faspex/login.", Protected),
            (Method::POST, "/aspera/faspex/login.x/y", Protected),
        ];
        for (method, path, want) in cases {
            assert_eq!(route(method.clone(), path), want, "{method} {path}");
        }
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
        ] {
            assert!(p.is_login_page(t), "{t}");
        }
        for t in ["/aspera/faspex/inbox", "/aspera/faspex/loginx", "/"] {
            assert!(!p.is_login_page(t), "{t}");
        }
        assert!(RouteProfile::is_path(
            "/aspera/faspex/auth/oauth2/token/",
            "/aspera/faspex/auth/oauth2/token"
        ));
        assert!(!RouteProfile::is_path(
            "/aspera/faspex/auth/oauth2/tokens",
            "/aspera/faspex/auth/oauth2/token"
        ));
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
    fn bad_paths_are_refused() {
        let c = |p: &str| profile().classify(&Method::GET, p);
        assert_eq!(c("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(c("/a%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(c("/a%"), Err(PathError::BadPercentEncoding));
        assert_eq!(c("/a%00b"), Err(PathError::ForbiddenCharacter));
        assert_eq!(c("/a%0d%0aX: y"), Err(PathError::ForbiddenCharacter));
        assert_eq!(c("/a%5c..%5creceived"), Err(PathError::ForbiddenCharacter));
        assert_eq!(c("*"), Err(PathError::NotAbsolute));
        assert_eq!(c(""), Err(PathError::NotAbsolute));
        // Non-UTF-8 bytes are not an error, just never public by accident.
        assert_eq!(c("/aspera/%ff%fe").unwrap().route, Route::Protected);
    }
}
