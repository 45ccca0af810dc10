//! The credential gate: no credential reaches Faspex unless the gateway checked it in this
//! request.
//!
//! Every request the gateway forwards passes here, whatever its route, after
//! [`classify`](super::classify) and before any byte goes upstream. The gate reads the request as
//! Rails would ([`crate::faspex::rack`]: the query string and every form-type body, in the widest
//! reading any Rack version gives) and looks for credential parameters: the configured login
//! fields (`user[name]`, `user[password]`) and OAuth's `username`, `password`, `refresh_token`
//! and `client_secret`, in every spelling Rack decodes to the same parameter. Then:
//!
//! - the login action's POST ([`Plan::Login`]) must carry its credentials exactly once each, in
//!   the configured spelling, in a URL-encoded body, and nowhere in the query: those are the
//!   credentials the login pipeline checks, and the only ones Faspex gets;
//! - the token action's POST ([`Plan::Token`]) may name only the credentials of its HTTP Basic
//!   header, which the pipeline checks;
//! - a form listed in `faspex.password_forms` ([`Plan::PasswordForm`]) may carry a password for
//!   its own purpose, and is forwarded only with a live session;
//! - any other request carrying a credential is refused (400).
//!
//! What the gate cannot read it does not forward: a form-type body over its size limit is 413,
//! a content-encoded one 415, a malformed one 400. Transfer bodies (the HTTP Gateway's paths,
//! `application/octet-stream`) stream unread: Rails never turns them into parameters.
//!
//! [`Gate::plan`] runs the whole decision on a request held in memory; the handler runs the same
//! steps ([`Gate::body`], then [`Gate::decide`]) on a streamed one, so the property test that
//! holds the plan against the real Rails router holds the handler too.

use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method};

use super::classify::{self, Action, Classified, PathError, Route, RouteProfile};
use super::request::{credentials, BadRequest, Credentials, HTTP2_SETTINGS};
use crate::faspex::rack::{self, BodyKind, Param, ParamError};

/// The most the gateway reads of a login form or a token request.
pub const LOGIN_READ_LIMIT: usize = 64 * 1024;

/// The HTTP Gateway's paths: a transfer service beside Faspex (not the Rails application), which
/// takes Faspex-issued transfer tokens in `Authorization`, and whose bodies are file data.
pub const HTTP_GATEWAY_PREFIX: &str = "/aspera/http-gwy/";

/// Rails 3 read a body as the format this header names (`xml`, `yaml`), whatever its type.
const X_POST_DATA_FORMAT: header::HeaderName =
    header::HeaderName::from_static("x-post-data-format");

/// Headers some servers and frameworks take as the request's real URL (IIS URL Rewrite,
/// Symfony, Zend): Rails ignores them, but the path Faspex acts on must be the one classified.
const URL_OVERRIDES: [header::HeaderName; 5] = [
    header::HeaderName::from_static("x-original-url"),
    header::HeaderName::from_static("x-rewrite-url"),
    header::HeaderName::from_static("x-original-uri"),
    header::HeaderName::from_static("x-override-url"),
    header::HeaderName::from_static("x-forwarded-uri"),
];

/// Method overrides Rails does not read (it reads `_method` and `X-HTTP-Method-Override`, which
/// the gate reads too) but other frameworks do: the method Faspex acts on must be the one read.
const METHOD_OVERRIDES: [header::HeaderName; 2] = [
    header::HeaderName::from_static("x-http-method"),
    header::HeaderName::from_static("x-method-override"),
];

/// Credential parameters by name, wherever they sit: OAuth's, and the password forms' own.
const OAUTH_FIELDS: [&str; 6] = [
    "username",
    "password",
    "refresh_token",
    "client_secret",
    "current_password",
    "password_confirmation",
];

/// One `faspex.password_forms` entry: a Faspex form that carries a password for another purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordForm {
    pub method: Method,
    pub path: String,
}

/// Why the gate refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("the path is on the deny list")]
    Denied,
    #[error(
        "the request carries a credential parameter the gateway does not check here; if this is \
         one of Faspex's own forms that carries a password for another purpose, an administrator \
         can list it in faspex.password_forms"
    )]
    CredentialField,
    #[error(transparent)]
    Params(#[from] ParamError),
    #[error("method not allowed here")]
    MethodNotAllowed,
    #[error("{0}")]
    Form(&'static str),
    #[error("the body is larger than the {0} bytes the gateway inspects")]
    TooLarge(usize),
    #[error("a body the gateway must inspect may not carry a Content-Encoding")]
    Encoded,
    #[error("{0}")]
    Header(&'static str),
    #[error(
        "only a GET may upgrade, only to WebSocket, and only on the HTTP Gateway's paths or with \
         a live session"
    )]
    Upgrade,
}

impl Refusal {
    /// The `reason` label of `faspex_gate_requests_refused_total`, for the refusals it counts.
    pub fn metric_reason(&self) -> Option<&'static str> {
        match self {
            Refusal::Path(_) => Some("path"),
            Refusal::CredentialField | Refusal::Form(_) => Some("credential_field"),
            Refusal::Params(_) | Refusal::Encoded | Refusal::TooLarge(_) => Some("body"),
            Refusal::Upgrade => Some("upgrade"),
            Refusal::Header(_) => Some("header"),
            Refusal::Denied | Refusal::MethodNotAllowed => None,
        }
    }
}

/// What the gateway does with a request, once the gate has read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Refuse(Refusal),
    /// The login form's POST, with the credentials the pipeline checks and Faspex gets.
    Login {
        username: String,
        password: String,
    },
    /// The token grant: the credentials it names must be its Basic ones.
    Token {
        username: Option<String>,
        password: Option<String>,
    },
    /// A `faspex.password_forms` form: forwarded only with a live session.
    PasswordForm,
    Logout,
    Public,
    Protected,
    /// The gateway's own pages.
    Gateway,
}

/// The gate's word that it read a request and let it on, as the handler acts on it: the
/// [`Plan`] of a request the gate did not refuse, each variant that may reach Faspex with the
/// mark only [`Gate::pass`] gives out, typed by its plan and holding the head it judged. A
/// [`Permit`](super::permit::Permit) is made from these marks: a request the gate has not passed
/// cannot become one, nor can one plan's mark stand in for another's.
#[derive(Debug)]
pub enum Pass {
    /// A public path: it goes on with no credentials.
    Public(PublicPass),
    /// The login form's POST, with the credentials the pipeline checks and Faspex gets.
    Login {
        username: String,
        password: String,
        gate: Passed<plan::Login>,
    },
    /// The token grant: the credentials it names (held in its mark) must be its Basic ones.
    Token(Passed<plan::Token>),
    /// A `faspex.password_forms` form: forwarded only with a live session.
    PasswordForm(Passed<plan::PasswordForm>),
    /// The logout path (answered by the gateway itself), and its head.
    Logout(Parts),
    /// A protected request: forwarded only with a live session or a checked login.
    Protected(Passed<plan::Protected>),
    /// The gateway's own pages.
    Gateway,
}

/// The plans whose requests may reach Faspex, one mark type each: `Passed<Public>` (a
/// [`PublicPass`](crate::proxy::gate::PublicPass)), `Passed<Login>`, `Passed<Token>`,
/// `Passed<PasswordForm>` and `Passed<Protected>` ([`Passed`](crate::proxy::gate::Passed)).
/// Only the gate makes them; each [`Permit`](crate::proxy::permit::Permit) constructor takes the
/// marks of the plans it serves.
pub mod plan {
    /// A public path ([`Plan::Public`](super::Plan::Public)): its mark is a
    /// [`PublicPass`](super::PublicPass).
    #[derive(Debug)]
    pub struct Public(pub(super) ());

    /// The login form's POST ([`Plan::Login`](super::Plan::Login)).
    #[derive(Debug)]
    pub struct Login(pub(super) ());

    /// The token grant ([`Plan::Token`](super::Plan::Token)), with the credentials its form
    /// names. It forwards nothing itself: only once the bearer grant has held those credentials
    /// to its Basic ones ([`Passed::grant`](super::Passed::grant)) does it go on, as a
    /// [`Protected`] request.
    #[derive(Debug)]
    pub struct Token {
        pub(super) username: Option<String>,
        pub(super) password: Option<String>,
    }

    /// A `faspex.password_forms` form ([`Plan::PasswordForm`](super::Plan::PasswordForm)).
    #[derive(Debug)]
    pub struct PasswordForm(pub(super) ());

    /// A protected request ([`Plan::Protected`](super::Plan::Protected)), or a token grant the
    /// bearer grant let on.
    #[derive(Debug)]
    pub struct Protected(pub(super) ());

    /// The plans a request forwarded with a live session may come under: a protected request
    /// and a password form. Sealed: no other type is one.
    pub trait Session: crate::proxy::gate::sealed::Sealed {
        /// Whether the request carries a password of its own (a password form): Faspex's
        /// answer to it is never taken as a rotation of the session's cookie.
        const PASSWORD_FORM: bool;
    }

    /// The plans a request forwarded as a login may come under: the login form, and a Basic
    /// caller's request under a session plan (its first request logs it in). Sealed.
    pub trait Admits: crate::proxy::gate::sealed::Sealed {}

    impl Session for Protected {
        const PASSWORD_FORM: bool = false;
    }
    impl Session for PasswordForm {
        const PASSWORD_FORM: bool = true;
    }
    impl Admits for Login {}
    impl Admits for Protected {}
    impl Admits for PasswordForm {}
}

/// What keeps [`plan::Session`] and [`plan::Admits`] to the plans the gate names: no other
/// module can name it, so none can add a plan to them.
mod sealed {
    pub trait Sealed {}
}
impl sealed::Sealed for plan::Login {}
impl sealed::Sealed for plan::PasswordForm {}
impl sealed::Sealed for plan::Protected {}

/// The gate's mark on a request it read and let on to the credential checks, typed by its plan
/// (`P`, one of [`plan`]'s), holding the head it judged. Only [`Gate::pass`] makes one; each
/// [`Permit`](super::permit::Permit) but a public one takes one, of the plans it serves, and
/// forwards the head the gate judged: a mark made for one request cannot forward another.
///
/// The routes may remove headers from the head ([`Passed::remove_header`]), never replace it.
#[derive(Debug)]
pub struct Passed<P> {
    head: Parts,
    plan: P,
}

/// The gate's mark on a public request: it may go to Faspex as it is, with no credentials.
/// Only [`Gate::pass`] makes one; it holds the head the gate judged.
pub type PublicPass = Passed<plan::Public>;

impl<P> Passed<P> {
    /// The request's head, as the gate judged it.
    pub fn head(&self) -> &Parts {
        &self.head
    }

    /// Remove a header the gateway does not send on.
    pub fn remove_header(&mut self, name: header::HeaderName) {
        self.head.headers.remove(name);
    }

    /// The head, to forward: only a permit takes it apart.
    pub(super) fn into_head(self) -> Parts {
        self.head
    }
}

impl Passed<plan::Login> {
    /// The login form as Faspex gets it: `len` bytes of the form rebuilt from the fields the
    /// gate read, URL-encoded, with no query string (Rails would let a query parameter override
    /// the form's credentials), no `Content-Encoding`, no credentials in `Authorization`, and no
    /// method override (Rack would turn the POST into another method on request).
    pub fn as_form(&mut self, len: usize) -> Result<(), BadRequest> {
        let head = &mut self.head;
        head.uri = head
            .uri
            .path()
            .parse()
            .map_err(|_| BadRequest("the login path is not valid"))?;
        let headers = &mut head.headers;
        headers.remove(header::HeaderName::from_static("x-http-method-override"));
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::TRANSFER_ENCODING);
        headers.remove(header::CONTENT_ENCODING);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        Ok(())
    }
}

impl Passed<plan::Token> {
    /// The bearer grant's check ([`routes::bearer::grant`](super::routes::bearer::grant)): a
    /// token grant names no other credentials than those of its own HTTP Basic header (an
    /// account name counts as the same when `account` maps both to one account). Only then
    /// does it go on, as a protected request of a Basic caller, with those credentials (user,
    /// password); Faspex is never asked for a token for credentials the gateway does not check.
    pub fn grant(
        self,
        account: impl Fn(&str) -> Option<String>,
    ) -> Result<(Passed<plan::Protected>, String, String), BadRequest> {
        let (user, password) = match credentials(&self.head.headers) {
            Credentials::Basic { user, password } => (user, password),
            Credentials::Malformed => {
                return Err(BadRequest(
                    "the Authorization header is malformed, not UTF-8, or of an unknown scheme",
                ))
            }
            Credentials::Bearer(_) | Credentials::None => {
                return Err(BadRequest(
                    "the token endpoint takes HTTP Basic credentials",
                ))
            }
        };
        let named = &self.plan;
        let same_user = named
            .username
            .as_deref()
            .is_none_or(|v| account(v) == account(&user));
        let same_password = named.password.as_deref().is_none_or(|v| v == password);
        if !same_user || !same_password {
            return Err(BadRequest(
                "the token request names other credentials than its Authorization",
            ));
        }
        let granted = Passed {
            head: self.head,
            plan: plan::Protected(()),
        };
        Ok((granted, user, password))
    }
}

/// What to do with a request's body before deciding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRule {
    /// There is none.
    Empty,
    /// A transfer body: streamed unread.
    Stream,
    /// Read it whole (at most `limit` bytes) and inspect it as `kind`.
    Inspect { kind: BodyKind, limit: usize },
}

/// A request held in memory, for [`Gate::plan`].
#[derive(Debug, Clone, Copy)]
pub struct Probe<'a> {
    pub method: &'a Method,
    /// The request target's path and query, as on the request line.
    pub target: &'a str,
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub body: &'a [u8],
}

/// The credential gate: the route profile, the credential fields and the forms that may carry a
/// password.
#[derive(Debug, Clone)]
pub struct Gate {
    pub profile: RouteProfile,
    username_field: String,
    password_field: String,
    /// The two login fields' paths (`["user", "password"]`), split once.
    field_paths: [Vec<String>; 2],
    password_forms: Vec<PasswordForm>,
    max_inspected_body: usize,
}

impl Gate {
    pub fn new(
        profile: RouteProfile,
        username_field: &str,
        password_field: &str,
        password_forms: Vec<PasswordForm>,
        max_inspected_body: usize,
    ) -> Gate {
        let path = |f: &str| rack::segments(f).map(str::to_owned).collect();
        Gate {
            profile,
            username_field: username_field.to_owned(),
            password_field: password_field.to_owned(),
            field_paths: [path(username_field), path(password_field)],
            password_forms,
            max_inspected_body,
        }
    }

    /// The gate for Faspex 4's defaults (the contract's), as the tests and fuzzers use it: only
    /// in test builds, so that nothing shipped can pass a request through a gate it was not
    /// configured with.
    #[cfg(any(test, feature = "test-support"))]
    pub fn for_tests() -> Gate {
        Gate::new(
            RouteProfile {
                login_path: "/aspera/faspex/login".into(),
                logout_path: "/aspera/faspex/logout".into(),
                token_path: "/aspera/faspex/auth/oauth2/token".into(),
                public_prefixes: [
                    "/aspera/faspex/external_deliveries/",
                    "/aspera/faspex/external/",
                    HTTP_GATEWAY_PREFIX,
                    "/aspera/faspex/javascripts/",
                    "/aspera/faspex/stylesheets/",
                    "/aspera/faspex/images/",
                ]
                .map(String::from)
                .to_vec(),
                deny: vec![classify::DenyPrefix {
                    method: None,
                    prefix: "/aspera/faspex/package_relay/".into(),
                }],
            },
            "user[name]",
            "user[password]",
            default_password_forms(),
            1024 * 1024,
        )
    }

    /// Classify a request's path.
    pub fn classify(&self, method: &Method, path: &str) -> Result<Classified, PathError> {
        self.profile.classify(method, path)
    }

    /// Make a request's headers ones that every reader downstream reads as the gate does, before
    /// the gate reads them: header names with `_` are dropped (Rack folds `_` and `-` together,
    /// so `X_Forwarded_For` or `X_Post_Data_Format` would stand in for the real one), as is
    /// `X-Post-Data-Format` (Rails 3 parsed a body as the XML or YAML it names, whatever its
    /// type), and so are the URL-override headers (`X-Original-URL` and the like), which some
    /// servers take as the path instead of the one classified. Refused: a `Connection` that names any header but the hop-by-hop ones (a hop
    /// would remove, say, the `Content-Type` the gate decided on), and more than one
    /// `Content-Type`. Returns how many headers were dropped.
    pub fn headers(&self, headers: &mut HeaderMap) -> Result<usize, Refusal> {
        // Every name to drop but the `_` ones begins `x-`: most names are done after a look at
        // their first bytes.
        let drop = |k: &header::HeaderName| {
            let s = k.as_str();
            s.contains('_')
                || (s.starts_with("x-")
                    && (*k == X_POST_DATA_FORMAT
                        || URL_OVERRIDES.contains(k)
                        || METHOD_OVERRIDES.contains(k)))
        };
        // One pass over every header, with no hashing: nearly every request has no name to
        // drop, one `Content-Type` at most and a `Connection` of hop-by-hop tokens, if any.
        let mut odd = false;
        let mut end_to_end = false;
        let mut content_types = 0usize;
        for (k, v) in headers.iter() {
            if *k == header::CONNECTION {
                const HOP: [&[u8]; 5] = [
                    b"keep-alive",
                    b"close",
                    b"upgrade",
                    b"te",
                    b"http2-settings",
                ];
                end_to_end |= v.as_bytes().split(|&b| b == b',').any(|token| {
                    let t = token.trim_ascii();
                    !(t.is_empty() || HOP.iter().any(|h| t.eq_ignore_ascii_case(h)))
                });
            } else if *k == header::CONTENT_TYPE {
                content_types += 1;
            } else {
                odd |= drop(k);
            }
        }
        let mut dropped = 0;
        if odd {
            let names: Vec<header::HeaderName> =
                headers.keys().filter(|k| drop(k)).cloned().collect();
            for name in names {
                dropped += headers.get_all(&name).iter().count();
                headers.remove(&name);
            }
        }
        if end_to_end {
            return Err(Refusal::Header(
                "the Connection header names an end-to-end header",
            ));
        }
        if content_types > 1 {
            return Err(Refusal::Header("more than one Content-Type"));
        }
        Ok(dropped)
    }

    /// Whether a request that asks to switch protocols may: only a GET asking for
    /// `Upgrade: websocket`, on the HTTP Gateway's paths or a protected path (whose route then
    /// requires a live session). `h2c` and every other token, an `HTTP2-Settings` header, or an
    /// upgrade anywhere else would open a tunnel past every check: refused.
    pub fn upgrade(
        &self,
        method: &Method,
        c: &Classified,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        // (one pass over the names first, with no hashing: nearly every request names none)
        let names_any = headers
            .keys()
            .any(|k| *k == header::CONNECTION || *k == header::UPGRADE || *k == HTTP2_SETTINGS);
        if !names_any {
            return Ok(());
        }
        let connection_upgrade = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        let asks = connection_upgrade
            || headers.contains_key(header::UPGRADE)
            || headers.contains_key(HTTP2_SETTINGS);
        if !asks {
            return Ok(());
        }
        let mut tokens = headers.get_all(header::UPGRADE).iter();
        let websocket = tokens
            .next()
            .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
            && tokens.next().is_none();
        let place = classify::under_prefix(&c.path, HTTP_GATEWAY_PREFIX)
            || (c.route == Route::Protected && c.action.is_none());
        if *method == Method::GET
            && connection_upgrade
            && websocket
            && !headers.contains_key(HTTP2_SETTINGS)
            && place
        {
            Ok(())
        } else {
            Err(Refusal::Upgrade)
        }
    }

    /// What to do with the body of a request to `c`. `empty` says the request has no body.
    pub fn body(
        &self,
        method: &Method,
        c: &Classified,
        headers: &HeaderMap,
        empty: bool,
    ) -> Result<BodyRule, Refusal> {
        if empty {
            return Ok(BodyRule::Empty);
        }
        if classify::under_prefix(&c.path, HTTP_GATEWAY_PREFIX) {
            return Ok(BodyRule::Stream);
        }
        if c.action.is_some() && matches!(*method, Method::GET | Method::HEAD) {
            return Err(Refusal::Form(
                "a GET or HEAD of the login, logout or token action carries no body",
            ));
        }
        let kind = BodyKind::of(headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()))?;
        // File data streams unread, but never to the three actions: there it is read, and
        // refused unless it is their form.
        if kind == BodyKind::Opaque && c.action.is_none() {
            return Ok(BodyRule::Stream);
        }
        let encoded = headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
        if encoded {
            return Err(Refusal::Encoded);
        }
        let limit = match c.action {
            Some(Action::Login | Action::Token) => LOGIN_READ_LIMIT,
            _ => self.max_inspected_body,
        };
        // (a declared length over the limit is refused as the body is read, after the client
        // has had a moment to finish sending, so that it reads the 413)
        Ok(BodyRule::Inspect { kind, limit })
    }

    /// [`Gate::decide`] on a request's head (its method, headers and query), with the gate's
    /// marks on what it lets on: a refusal is an error, and what passes carries the proof that
    /// it did ([`Pass`]), and the head it judged.
    pub(crate) fn pass(
        &self,
        head: Parts,
        c: &Classified,
        body: Option<(&BodyKind, &[u8])>,
    ) -> Result<Pass, Refusal> {
        let plan = self.decide(&head.method, c, &head.headers, head.uri.query(), body);
        Ok(match plan {
            Plan::Refuse(r) => return Err(r),
            Plan::Login { username, password } => Pass::Login {
                username,
                password,
                gate: Passed {
                    head,
                    plan: plan::Login(()),
                },
            },
            Plan::Token { username, password } => Pass::Token(Passed {
                head,
                plan: plan::Token { username, password },
            }),
            Plan::PasswordForm => Pass::PasswordForm(Passed {
                head,
                plan: plan::PasswordForm(()),
            }),
            Plan::Logout => Pass::Logout(head),
            Plan::Public => Pass::Public(Passed {
                head,
                plan: plan::Public(()),
            }),
            Plan::Protected => Pass::Protected(Passed {
                head,
                plan: plan::Protected(()),
            }),
            Plan::Gateway => Pass::Gateway,
        })
    }

    /// Decide what to do with a classified request, given its query and its inspected body
    /// (`None` when it has none, or streams unread).
    pub fn decide(
        &self,
        method: &Method,
        c: &Classified,
        headers: &HeaderMap,
        query: Option<&str>,
        body: Option<(&BodyKind, &[u8])>,
    ) -> Plan {
        match c.route {
            Route::Denied => return Plan::Refuse(Refusal::Denied),
            Route::Gateway => return Plan::Gateway,
            _ => {}
        }
        let query = query.filter(|q| !q.is_empty());
        let mut query_params = Vec::new();
        let mut body_params = Vec::new();
        if let Some(q) = query {
            if let Err(e) = rack::form_params(q.as_bytes(), &mut query_params) {
                return Plan::Refuse(e.into());
            }
        }
        if let Some((kind, bytes)) = body {
            if let Err(e) = rack::body_params(kind, bytes, &mut body_params) {
                return Plan::Refuse(e.into());
            }
            if query_params.len() + body_params.len() > rack::MAX_PARAMS {
                return Plan::Refuse(ParamError::TooMany.into());
            }
        }
        let json = matches!(body, Some((BodyKind::Json, _)));
        let any_credential = || {
            query_params
                .iter()
                .chain(&body_params)
                .any(|p| self.is_credential(&p.name))
                || (json
                    && body_params
                        .iter()
                        .any(|p| self.is_wrapped_credential(&p.name)))
        };
        match c.action {
            Some(Action::Login) => {
                if *method == Method::POST {
                    return self.login(&query_params, &body_params, body);
                }
                if *method != Method::GET && *method != Method::HEAD {
                    return Plan::Refuse(Refusal::MethodNotAllowed);
                }
                if any_credential() {
                    return Plan::Refuse(Refusal::CredentialField);
                }
                return Plan::Public;
            }
            Some(Action::Token) => {
                if *method != Method::POST {
                    return Plan::Refuse(Refusal::MethodNotAllowed);
                }
                return self.token(&query_params, &body_params, body);
            }
            Some(Action::Logout) => {
                if any_credential() {
                    return Plan::Refuse(Refusal::CredentialField);
                }
                return Plan::Logout;
            }
            None => {}
        }
        if self.is_password_form(method, &c.path, &body_params, headers) {
            return Plan::PasswordForm;
        }
        if any_credential() {
            return Plan::Refuse(Refusal::CredentialField);
        }
        match c.route {
            Route::Public => Plan::Public,
            _ => Plan::Protected,
        }
    }

    /// The whole decision for a request held in memory: what the handler does, step by step,
    /// with a streamed one.
    pub fn plan(&self, p: &Probe<'_>) -> Plan {
        let (path, query) = match p.target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (p.target, None),
        };
        let c = match self.classify(p.method, path) {
            Ok(c) => c,
            Err(e) => return Plan::Refuse(e.into()),
        };
        if matches!(c.route, Route::Denied | Route::Gateway) {
            return self.decide(p.method, &c, &HeaderMap::new(), None, None);
        }
        let mut headers = HeaderMap::new();
        let mut put = |name: header::HeaderName, v: Option<&str>| {
            if let Some(v) = v.and_then(|v| http::HeaderValue::from_str(v).ok()) {
                headers.insert(name, v);
            }
        };
        put(header::CONTENT_TYPE, p.content_type);
        put(header::CONTENT_ENCODING, p.content_encoding);
        if let Err(e) = self.headers(&mut headers) {
            return Plan::Refuse(e);
        }
        match self.body(p.method, &c, &headers, p.body.is_empty()) {
            Err(e) => Plan::Refuse(e),
            Ok(BodyRule::Empty | BodyRule::Stream) => {
                self.decide(p.method, &c, &headers, query, None)
            }
            Ok(BodyRule::Inspect { kind, limit }) => {
                if p.body.len() > limit {
                    return Plan::Refuse(Refusal::TooLarge(limit));
                }
                self.decide(p.method, &c, &headers, query, Some((&kind, p.body)))
            }
        }
    }

    /// Whether a parameter key holds a credential anywhere along its path: a login field's path
    /// (`user` → `password`), or an OAuth field's name, at any depth (Rails' ParamsWrapper
    /// copies a JSON body under the controller's name, and an action may read any level).
    fn is_credential(&self, name: &str) -> bool {
        // Nearly every key has no segment that starts a credential: one pass, no allocation.
        let anchored = rack::segments(name).any(|seg| {
            OAUTH_FIELDS.iter().any(|f| rack::same_segment(seg, f))
                || self
                    .field_paths
                    .iter()
                    .any(|p| p.first().is_some_and(|a| rack::same_segment(seg, a)))
        });
        if !anchored {
            return false;
        }
        self.field_paths.iter().any(|p| rack::holds(name, p))
            || OAUTH_FIELDS.iter().any(|f| rack::holds(name, &[f]))
    }

    /// Whether a JSON body's key becomes a login field once Rails' ParamsWrapper copies the
    /// body's top-level keys under the controller's name: `{"name": …}` is `user[name]` to a
    /// users controller. A top-level key that is a login field's path without its first segment
    /// counts as that field.
    fn is_wrapped_credential(&self, name: &str) -> bool {
        self.field_paths
            .iter()
            .any(|p| p.len() >= 2 && rack::reaches(name, &p[1..]))
    }

    /// Whether the request is a `faspex.password_forms` form, by the method Rails will run:
    /// a POST's `_method` parameter or `X-HTTP-Method-Override` header turns it into another
    /// (Rack::MethodOverride), and `POST /admin/users` with `_method=get` is another action.
    fn is_password_form(
        &self,
        method: &Method,
        path: &str,
        body: &[Param],
        headers: &HeaderMap,
    ) -> bool {
        let mut effective = method.clone();
        if *method == Method::POST {
            let overridden = body
                .iter()
                .rev()
                .find(|p| p.name == "_method")
                .map(|p| p.value.as_slice())
                .or_else(|| headers.get("x-http-method-override").map(|v| v.as_bytes()));
            if let Some(m) = overridden {
                match Method::from_bytes(&m.to_ascii_uppercase()) {
                    Ok(m) => effective = m,
                    // (Rack would ignore it; the gate does not guess)
                    Err(_) => return false,
                }
            }
        }
        self.password_forms
            .iter()
            .any(|f| effective == f.method && classify::spells_action(path, &f.path))
    }

    /// The login form: its credentials, exactly as Rails would read them, or a refusal.
    fn login(&self, query: &[Param], body: &[Param], raw: Option<(&BodyKind, &[u8])>) -> Plan {
        let bytes = match raw {
            Some((BodyKind::UrlEncoded, bytes)) => bytes,
            Some(_) => {
                return Plan::Refuse(Refusal::Form(
                    "a login must be sent as a form (application/x-www-form-urlencoded)",
                ))
            }
            None => &b""[..],
        };
        // Faspex must get exactly the credentials checked here: none may come from the query,
        // and no query key may stand where a field's top level does (Rails merges the query
        // over the body key by key: `?user` leaves Faspex no `user[name]` at all).
        if query.iter().any(|p| self.is_credential(&p.name)) {
            return Plan::Refuse(Refusal::CredentialField);
        }
        let shadows = |name: &str| {
            rack::segments(name).next().is_some_and(|top| {
                self.field_paths
                    .iter()
                    .any(|f| f.first().is_some_and(|root| rack::same_segment(top, root)))
            })
        };
        if query.iter().any(|p| shadows(&p.name)) {
            return Plan::Refuse(Refusal::Form(
                "the login's query string names its form's fields",
            ));
        }
        if bytes.contains(&b';') {
            // Rack 1 splits a form on `;` too, Rack 2 does not: the two readings differ, and a
            // browser encodes `;` in a form anyway.
            return Plan::Refuse(Refusal::Form(
                "the login form separates its fields with ';'",
            ));
        }
        let mut username = None;
        let mut password = None;
        for p in body {
            if p.name == "_method" {
                return Plan::Refuse(Refusal::Form("the login form overrides its method"));
            }
            let slot = if p.name == self.username_field {
                &mut username
            } else if p.name == self.password_field {
                &mut password
            } else if self.is_credential(&p.name) {
                return Plan::Refuse(Refusal::Form(
                    "the login form has another spelling of its credential fields",
                ));
            } else {
                continue;
            };
            if slot.is_some() {
                return Plan::Refuse(Refusal::Form("the login form repeats a credential field"));
            }
            match String::from_utf8(p.value.clone()) {
                Ok(v) => *slot = Some(v),
                Err(_) => {
                    return Plan::Refuse(Refusal::Form(
                        "the login form's credentials are not valid UTF-8",
                    ))
                }
            }
        }
        Plan::Login {
            username: username.unwrap_or_default(),
            password: password.unwrap_or_default(),
        }
    }

    /// The token grant: `username` and `password` once each in their plain spelling (the
    /// handler holds them to the Basic credentials it checks); no other credential.
    fn token(&self, query: &[Param], body: &[Param], raw: Option<(&BodyKind, &[u8])>) -> Plan {
        match raw {
            None | Some((BodyKind::UrlEncoded, _)) => {}
            Some(_) => {
                return Plan::Refuse(Refusal::Form(
                    "a token request must be sent as a form (application/x-www-form-urlencoded)",
                ))
            }
        }
        if raw.is_some_and(|(_, b)| b.contains(&b';')) {
            return Plan::Refuse(Refusal::Form(
                "the token request separates its fields with ';'",
            ));
        }
        let mut username = None;
        let mut password = None;
        for p in query.iter().chain(body) {
            if !self.is_credential(&p.name) {
                continue;
            }
            let slot = match p.name.as_str() {
                "username" => &mut username,
                "password" => &mut password,
                _ => return Plan::Refuse(Refusal::CredentialField),
            };
            if slot.is_some() {
                return Plan::Refuse(Refusal::Form(
                    "the token request repeats a credential field",
                ));
            }
            match String::from_utf8(p.value.clone()) {
                Ok(v) => *slot = Some(v),
                Err(_) => {
                    return Plan::Refuse(Refusal::Form(
                        "the token request's credentials are not valid UTF-8",
                    ))
                }
            }
        }
        Plan::Token { username, password }
    }
}

/// The `faspex.password_forms` default: the forms the emulator models, an administrator creating
/// a local account and a user changing a local password.
pub fn default_password_forms() -> Vec<PasswordForm> {
    vec![
        PasswordForm {
            method: Method::POST,
            path: "/aspera/faspex/admin/users".into(),
        },
        PasswordForm {
            method: Method::PUT,
            path: "/aspera/faspex/account/password".into(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(method: Method, target: &str, ct: Option<&str>, body: &str) -> Plan {
        encoded_plan(method, target, ct, None, body)
    }

    fn encoded_plan(
        method: Method,
        target: &str,
        ct: Option<&str>,
        encoding: Option<&str>,
        body: &str,
    ) -> Plan {
        Gate::for_tests().plan(&Probe {
            method: &method,
            target,
            content_type: ct,
            content_encoding: encoding,
            body: body.as_bytes(),
        })
    }

    /// A GET of `target` with no body.
    fn get(target: &str) -> Plan {
        plan(Method::GET, target, None, "")
    }

    /// Each of `bodies`, POSTed as a form to `target`, is refused.
    fn assert_forms_refused(target: &str, bodies: &[&str]) {
        for body in bodies {
            assert!(
                matches!(plan(Method::POST, target, FORM, body), Plan::Refuse(_)),
                "{body}"
            );
        }
    }

    fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    fn login(u: &str, p: &str) -> Plan {
        Plan::Login {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn the_login_action_in_every_spelling_is_the_checked_login() {
        for path in [
            "/aspera/faspex/login",
            "/aspera/faspex/login.json/",
            "/aspera/faspex/login.x-y",
            "/aspera/faspex/login.html/",
            "//aspera/faspex/login/",
        ] {
            assert_eq!(
                plan(
                    Method::POST,
                    path,
                    FORM,
                    "user%5Bname%5D=bob&user[password]=pw"
                ),
                login("bob", "pw"),
                "{path}"
            );
        }
        for path in ["/aspera/faspex/login.json%2F", "/aspera/faspex/login.a.b"] {
            assert!(
                matches!(
                    plan(Method::POST, path, FORM, "user[name]=bob"),
                    Plan::Refuse(_)
                ),
                "{path}"
            );
        }
    }

    #[test]
    fn credentials_anywhere_else_are_refused() {
        let refused = Plan::Refuse(Refusal::CredentialField);
        // In a query, to the login page or anywhere.
        for target in [
            "/aspera/faspex/login?user[name]=bob&user[password]=x",
            "/aspera/faspex/login/?user%5Bpassword%5D=x",
            "/aspera/faspex/login/new?user[password]=x",
            "/aspera/faspex/inbox?a=1;user[password]=x",
            "/aspera/faspex/external/x?password=1",
            "/aspera/faspex/logout?user[name]=a",
        ] {
            assert_eq!(get(target), refused, "{target}");
        }
        // In a body to a protected or public path, in every type.
        for (ct, body) in [
            (FORM, "user[password][]=x"),
            (FORM, "user[][password]=x"),
            (Some("application/json"), r#"{"user":{"password":"x"}}"#),
            (Some("text/plain"), r#"{"refresh_token":"x"}"#),
            (None, "client_secret=x"),
            (Some("application/xml"), "<user><password>x</password></user>"),
            (
                Some("multipart/form-data; boundary=B"),
                "--B\r\nContent-Disposition: form-data; name=\"user[password]\"\r\n\r\nx\r\n--B--\r\n",
            ),
        ] {
            assert_eq!(
                plan(Method::POST, "/aspera/faspex/send", ct, body),
                refused,
                "{ct:?} {body}"
            );
        }
        // At any depth: Rails' ParamsWrapper copies a JSON body under a key of its own, and
        // an action may read any level.
        for (target, ct, body) in [
            ("/aspera/faspex/inbox?session[password]=x", None, ""),
            ("/aspera/faspex/inbox?hash[user][name]=x", None, ""),
            (
                "/aspera/faspex/send",
                Some("application/json"),
                r#"[{"password":"x"}]"#,
            ),
            // (found by the property test against Rails: ParamsWrapper makes it user[name])
            (
                "/aspera/faspex/me",
                Some("application/json"),
                r#"{"name":"ann"}"#,
            ),
            (
                "/aspera/faspex/send",
                Some("application/xml"),
                "<request><username>x</username></request>",
            ),
        ] {
            assert_eq!(
                plan(Method::POST, target, ct, body),
                refused,
                "{target} {body}"
            );
        }
        // A GET login with a body, credentials or not.
        assert!(matches!(
            plan(
                Method::GET,
                "/aspera/faspex/login",
                FORM,
                "user[password]=x"
            ),
            Plan::Refuse(Refusal::Form(_))
        ));
        // (found by the property test) A query key that replaces the form's top level.
        assert!(matches!(
            plan(
                Method::POST,
                "/aspera/faspex/login?user",
                FORM,
                "user[name]=put"
            ),
            Plan::Refuse(_)
        ));
        // Credentials split across the query and the body of a login.
        assert_eq!(
            plan(
                Method::POST,
                "/aspera/faspex/login?user[password]=y",
                FORM,
                "user[name]=a&user[password]=x"
            ),
            refused
        );
    }

    #[test]
    fn login_forms_faspex_could_read_otherwise_are_refused() {
        assert_forms_refused(
            "/aspera/faspex/login",
            &[
                "user[name]=a&user[name]=b&user[password]=x",
                "user[name]=a&user]password=x",
                "user[name]=a&user[password][]=x",
                "user[name]=a&user[password]=x&_method=get",
                "user[name]=a;user[password]=x",
                "user[name]=a&user[password]=%FF",
                "user[name]=a&password=x",
            ],
        );
        assert!(matches!(
            plan(
                Method::POST,
                "/aspera/faspex/login",
                Some("application/json"),
                r#"{"user":{"name":"a","password":"b"}}"#
            ),
            Plan::Refuse(Refusal::Form(_))
        ));
        assert_eq!(
            plan(
                Method::PUT,
                "/aspera/faspex/login",
                FORM,
                "user[password]=x"
            ),
            Plan::Refuse(Refusal::MethodNotAllowed)
        );
    }

    #[test]
    fn token_requests_name_only_their_basic_credentials() {
        assert_eq!(
            plan(
                Method::POST,
                "/aspera/faspex/auth/oauth2/token.json/",
                FORM,
                "grant_type=password&username=a&password=b"
            ),
            Plan::Token {
                username: Some("a".into()),
                password: Some("b".into())
            }
        );
        assert_forms_refused(
            "/aspera/faspex/auth/oauth2/token",
            &[
                "refresh_token=x",
                "client_secret=x",
                "user[password]=x",
                "username=a&username=b",
            ],
        );
        assert_eq!(
            get("/aspera/faspex/auth/oauth2/token"),
            Plan::Refuse(Refusal::MethodNotAllowed)
        );
    }

    /// The token grant's mark goes on only as the request of its own Basic credentials, and
    /// holds the head it was made for.
    #[test]
    fn a_token_grant_forwards_only_with_the_credentials_of_its_authorization() {
        use base64::Engine as _;
        let gate = Gate::for_tests();
        let token = |auth: Option<&str>, form: &str| {
            let mut req = http::Request::post("/aspera/faspex/auth/oauth2/token?x=1");
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            let (head, ()) = req.body(()).unwrap().into_parts();
            let c = gate.classify(&head.method, head.uri.path()).unwrap();
            match gate.pass(head, &c, Some((&BodyKind::UrlEncoded, form.as_bytes()))) {
                Ok(Pass::Token(mark)) => mark,
                other => panic!("not a token grant: {other:?}"),
            }
        };
        let basic = |cred: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(cred)
            )
        };
        let account = |name: &str| Some(name.to_ascii_lowercase());
        let ann = basic("Ann:secret");
        let form = "grant_type=password&username=ann&password=secret";
        let (mark, user, password) = token(Some(&ann), form).grant(account).unwrap();
        assert_eq!((user.as_str(), password.as_str()), ("Ann", "secret"));
        assert_eq!(mark.head().uri, "/aspera/faspex/auth/oauth2/token?x=1");
        assert!(token(Some(&ann), "grant_type=client_credentials")
            .grant(account)
            .is_ok());
        let refused = |auth: Option<&str>, form: &str| token(auth, form).grant(account).err();
        let other = BadRequest("the token request names other credentials than its Authorization");
        assert_eq!(refused(Some(&basic("bob:secret")), form), Some(other));
        assert_eq!(refused(Some(&basic("ann:guess")), form), Some(other));
        assert_eq!(
            refused(Some("Bearer abc"), form),
            Some(BadRequest(
                "the token endpoint takes HTTP Basic credentials"
            ))
        );
        assert_eq!(
            refused(None, form),
            Some(BadRequest(
                "the token endpoint takes HTTP Basic credentials"
            ))
        );
        assert!(
            matches!(refused(Some("Basic %%%"), form), Some(BadRequest(why)) if why.contains("malformed"))
        );
    }

    #[test]
    fn password_forms_pass_with_their_passwords() {
        assert_eq!(
            plan(
                Method::POST,
                "/aspera/faspex/admin/users",
                FORM,
                "user[login]=x&user[password]=y&user[password_confirmation]=y"
            ),
            Plan::PasswordForm
        );
        assert_eq!(
            plan(
                Method::POST,
                "/aspera/faspex/account/password.json",
                FORM,
                "_method=put&user[current_password]=a&user[password]=b"
            ),
            Plan::PasswordForm
        );
        // Not when Rails would run another action: `_method=get` makes it the index.
        assert_eq!(
            plan(
                Method::POST,
                "/aspera/faspex/admin/users",
                FORM,
                "_method=get&user[password]=y"
            ),
            Plan::Refuse(Refusal::CredentialField)
        );
        // Not by GET with a query.
        assert_eq!(
            get("/aspera/faspex/admin/users?user[password]=x"),
            Plan::Refuse(Refusal::CredentialField)
        );
    }

    #[test]
    fn bodies_the_gate_cannot_read_are_not_forwarded() {
        let big = "a".repeat(1024 * 1024 + 1);
        assert_eq!(
            plan(Method::POST, "/aspera/faspex/send", FORM, &big),
            Plan::Refuse(Refusal::TooLarge(1024 * 1024))
        );
        assert_eq!(
            encoded_plan(
                Method::POST,
                "/aspera/faspex/send",
                FORM,
                Some("gzip"),
                "x=1"
            ),
            Plan::Refuse(Refusal::Encoded)
        );
        assert!(matches!(
            plan(
                Method::POST,
                "/aspera/faspex/send",
                Some("application/json"),
                "{"
            ),
            Plan::Refuse(Refusal::Params(_))
        ));
        // Transfer bodies stream unread, whatever they hold.
        assert_eq!(
            plan(
                Method::POST,
                "/aspera/faspex/send",
                Some("application/octet-stream"),
                "user[password]=x"
            ),
            Plan::Protected
        );
        assert_eq!(
            plan(
                Method::POST,
                "/aspera/http-gwy/v2/upload",
                FORM,
                "password=x"
            ),
            Plan::Public
        );
        // Plain requests pass.
        assert_eq!(get("/aspera/faspex/inbox"), Plan::Protected);
        assert_eq!(
            get("/aspera/faspex/external_deliveries/1?passcode=ab"),
            Plan::Public
        );
        assert_eq!(
            plan(
                Method::POST,
                "/aspera/faspex/package_relay/relay_package",
                None,
                ""
            ),
            Plan::Refuse(Refusal::Denied)
        );
    }

    #[test]
    fn only_websocket_upgrades_where_they_belong() {
        let gate = Gate::for_tests();
        let check = |method: Method, path: &str, headers: &[(&str, &str)]| {
            let c = gate.classify(&method, path).unwrap();
            gate.upgrade(&method, &c, &header_map(headers))
        };
        let ws = [("connection", "Upgrade"), ("upgrade", "websocket")];
        assert_eq!(
            check(Method::GET, "/aspera/http-gwy/v2/upload", &ws),
            Ok(())
        );
        assert_eq!(check(Method::GET, "/aspera/faspex/inbox", &ws), Ok(()));
        assert_eq!(check(Method::GET, "/aspera/faspex/inbox", &[]), Ok(()));
        for (method, path, headers) in [
            (Method::GET, "/aspera/faspex/external/x", &ws[..]),
            (Method::GET, "/aspera/faspex/login", &ws[..]),
            (Method::POST, "/aspera/http-gwy/v2/upload", &ws[..]),
            (
                Method::GET,
                "/aspera/faspex/inbox",
                &[("connection", "upgrade"), ("upgrade", "h2c")][..],
            ),
            (
                Method::GET,
                "/aspera/faspex/inbox",
                &[("upgrade", "websocket")][..],
            ),
            (
                Method::GET,
                "/aspera/faspex/inbox",
                &[("connection", "upgrade"), ("upgrade", "websocket, h2c")][..],
            ),
            (
                Method::GET,
                "/aspera/http-gwy/x",
                &[
                    ("connection", "upgrade"),
                    ("upgrade", "websocket"),
                    ("http2-settings", "AAA"),
                ][..],
            ),
            (
                Method::GET,
                "/aspera/faspex/external/x",
                &[("http2-settings", "AAA")][..],
            ),
        ] {
            assert_eq!(
                check(method.clone(), path, headers),
                Err(Refusal::Upgrade),
                "{method} {path} {headers:?}"
            );
        }
    }

    /// The hostile review's header tricks: a `Connection` that would strip the type the gate
    /// decided on, a legacy header that makes Rails 3 parse the body as XML, an underscore twin
    /// of a header, and file data sent to the token action.
    #[test]
    fn headers_are_made_what_every_reader_reads_alike() {
        let gate = Gate::for_tests();
        for bad in [
            &[("connection", "keep-alive, Content-Type")][..],
            &[("connection", "close"), ("connection", "authorization")][..],
            &[("content-type", "a/b"), ("content-type", "c/d")][..],
        ] {
            assert!(gate.headers(&mut header_map(bad)).is_err(), "{bad:?}");
        }
        let mut h = header_map(&[
            ("x-post-data-format", "xml"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x_http_method_override", "GET"),
            (
                "x-original-url",
                "/aspera/faspex/package_relay/relay_package",
            ),
            (
                "x-forwarded-uri",
                "/aspera/faspex/package_relay/relay_package",
            ),
            ("connection", "keep-alive, Upgrade"),
            ("content-type", "application/x-www-form-urlencoded"),
        ]);
        assert_eq!(gate.headers(&mut h), Ok(5));
        assert_eq!(h.len(), 2);
        assert!(h.contains_key("content-type") && h.contains_key("connection"));

        let token = gate
            .classify(&Method::POST, "/aspera/faspex/auth/oauth2/token")
            .unwrap();
        let octet = header_map(&[("content-type", "application/octet-stream")]);
        let rule = gate.body(&Method::POST, &token, &octet, false).unwrap();
        assert!(matches!(rule, BodyRule::Inspect { .. }), "{rule:?}");
        assert!(matches!(
            plan(
                Method::POST,
                "/aspera/faspex/auth/oauth2/token",
                Some("application/octet-stream"),
                "grant_type=password&username=victim&password=guess"
            ),
            Plan::Refuse(Refusal::Form(_))
        ));
    }

    /// The header rules as first written (one hashed lookup per rule), kept to check the one-pass
    /// rules against.
    fn headers_as_first_written(headers: &mut HeaderMap) -> Result<usize, Refusal> {
        let mut dropped = 0;
        let drop = |k: &header::HeaderName| {
            k.as_str().contains('_')
                || *k == X_POST_DATA_FORMAT
                || URL_OVERRIDES.contains(k)
                || METHOD_OVERRIDES.contains(k)
        };
        if headers.keys().any(drop) {
            let names: Vec<header::HeaderName> =
                headers.keys().filter(|k| drop(k)).cloned().collect();
            for name in names {
                dropped += headers.get_all(&name).iter().count();
                headers.remove(&name);
            }
        }
        for v in headers.get_all(header::CONNECTION) {
            for token in v.as_bytes().split(|&b| b == b',') {
                let t = token.trim_ascii().to_ascii_lowercase();
                let hop = matches!(
                    t.as_slice(),
                    b"" | b"keep-alive" | b"close" | b"upgrade" | b"te" | b"http2-settings"
                );
                if !hop {
                    return Err(Refusal::Header(
                        "the Connection header names an end-to-end header",
                    ));
                }
            }
        }
        if headers
            .get_all(header::CONTENT_TYPE)
            .iter()
            .nth(1)
            .is_some()
        {
            return Err(Refusal::Header("more than one Content-Type"));
        }
        Ok(dropped)
    }

    /// [`Gate::upgrade`] as first written, with no pass over the names before the lookups.
    fn upgrade_as_first_written(
        method: &Method,
        c: &Classified,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        let connection_upgrade = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        let asks = connection_upgrade
            || headers.contains_key(header::UPGRADE)
            || headers.contains_key("http2-settings");
        if !asks {
            return Ok(());
        }
        let mut tokens = headers.get_all(header::UPGRADE).iter();
        let websocket = tokens
            .next()
            .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
            && tokens.next().is_none();
        let place = classify::under_prefix(&c.path, HTTP_GATEWAY_PREFIX)
            || (c.route == Route::Protected && c.action.is_none());
        if *method == Method::GET
            && connection_upgrade
            && websocket
            && !headers.contains_key("http2-settings")
            && place
        {
            Ok(())
        } else {
            Err(Refusal::Upgrade)
        }
    }

    const NAMES: [&str; 18] = [
        "connection",
        "Connection",
        "content-type",
        "upgrade",
        "http2-settings",
        "x-post-data-format",
        "x_forwarded_for",
        "content_type",
        "x-original-url",
        "x-forwarded-uri",
        "x-http-method",
        "x-method-override",
        "x-http-method-override",
        "x-forwarded-for",
        "accept",
        "cookie",
        "host",
        "te",
    ];
    const VALUES: [&str; 17] = [
        "",
        "keep-alive,\tupgrade",
        "clos\u{e9}",
        "up\u{e9}grade, te",
        "keep-alive",
        "Keep-Alive, Upgrade",
        "close,  te ,",
        "UPGRADE",
        "upgrade, content-type",
        "HTTP2-Settings, Upgrade",
        "websocket",
        " WebSocket ",
        "h2c",
        "x-kept",
        "keep-alive,x-forwarded-for",
        "application/x-www-form-urlencoded",
        ",,",
    ];

    fn arbitrary_headers(picks: &[(usize, usize)]) -> HeaderMap {
        let pairs: Vec<(&str, &str)> = picks
            .iter()
            .map(|&(n, v)| (NAMES[n % NAMES.len()], VALUES[v % VALUES.len()]))
            .collect();
        header_map(&pairs)
    }

    proptest::proptest! {
        /// The one-pass header rules answer, and leave the headers, as the first rules did.
        #[test]
        fn the_one_pass_header_rules_answer_as_the_first(
            picks in proptest::collection::vec((0usize..64, 0usize..64), 0..8)
        ) {
            let gate = Gate::for_tests();
            let (mut new, mut old) = (arbitrary_headers(&picks), arbitrary_headers(&picks));
            let (a, b) = (gate.headers(&mut new), headers_as_first_written(&mut old));
            proptest::prop_assert_eq!(&a, &b, "{:?}", picks);
            proptest::prop_assert_eq!(new, old);
        }

        /// The upgrade rule with its first pass over the names answers as it did without.
        #[test]
        fn the_upgrade_rule_answers_as_the_first(
            picks in proptest::collection::vec((0usize..64, 0usize..64), 0..6),
            at in 0usize..3,
            get in proptest::bool::ANY,
        ) {
            let gate = Gate::for_tests();
            let path = [
                "/aspera/http-gwy/v1/upload",
                "/aspera/faspex/",
                "/aspera/faspex/login",
            ][at];
            let method = if get { Method::GET } else { Method::POST };
            let c = gate.classify(&method, path).unwrap();
            let h = arbitrary_headers(&picks);
            proptest::prop_assert_eq!(
                gate.upgrade(&method, &c, &h),
                upgrade_as_first_written(&method, &c, &h),
                "{:?} {}", picks, path
            );
        }
    }
}
