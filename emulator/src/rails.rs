//! How Faspex 4, a Rails 3 application on Rack, reads a request: which action a path reaches,
//! which method the action sees, and what its `params` hold. The emulator answers every request
//! through [`read`], so that the tests watching the gateway see what real Faspex would do with what
//! the gateway lets through.
//!
//! What is modelled, each from the Rails 6.1 / Rack 2.2 sources and checked against them by the
//! oracle in `tests/rails/` (which runs the real Rails router and Rack parser):
//!
//! * **Routing** (Journey): the path is percent-decoded (a front end such as Apache hands Rails a
//!   decoded `PATH_INFO`), repeated slashes are squeezed and a trailing slash dropped; every route
//!   carries an optional `(.:format)` whose value matches `[^/.?]+`; matching is case-sensitive. A
//!   Rails 3 `match` without `via:` runs for every method, so most routes here do; resource-style
//!   routes (`POST /admin/users`, `PUT /account/password`, `GET|POST /send`) keep their methods.
//!   Anything else reaches the catch-all [`Action::NotFound`].
//! * **Method override** (Rack::MethodOverride): a `POST` whose form body holds `_method`, or
//!   which carries `X-HTTP-Method-Override`, runs as that method.
//! * **Parameters**: the query string (pairs split on `&` and `;`), the body, and the path
//!   parameters, merged the way `ActionDispatch::Request#parameters` merges them: body first, the
//!   query replacing whole top-level keys (so `?user[name]=x` drops the body's `user[password]`),
//!   path parameters last. Bodies: urlencoded (also a `POST` with no `Content-Type`, and a
//!   `multipart/form-data` without a boundary Rack 1 reads), multipart (Rack 1.4's boundary and
//!   part-name patterns: a lower-case `boundary=`, the last `name=` after white space), JSON
//!   (`application/json`, `text/x-json`, `application/jsonrequest`, comments allowed as Ruby's parser allows them), and, as Rails 3 did
//!   until Rails 4 removed it, XML (`Hash.from_xml`). Keys nest the way Rack's `normalize_params`
//!   nests them (`user[password]`, `user]password`, `user[password`, `user[][password]`, ...). A
//!   JSON body is also wrapped under the controller's name (ParamsWrapper, on for JSON in every
//!   `rails new` application since 3.1): `{"password":..}` posted to the login appears again as
//!   `params["session"]["password"]`.
//! * **Rack 1** (Rails 3's Rack) also split urlencoded *bodies* on `;`; Rack 2 splits them on `&`
//!   only. The emulator takes the Rails 3 reading (the oracle's `legacy` answer).

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

/// What a Rails controller finds in `params`.
pub type Params = Map<String, Value>;

/// Rack's limit on the nesting of a parameter name (`Rack::Utils.param_depth_limit`).
const PARAM_DEPTH_LIMIT: u32 = 100;

/// Rack's limit on the number of separators in one query string or form body.
const PARAMS_LIMIT: usize = 4096;

/// Rack's complaint about [`PARAMS_LIMIT`] (which Rack::MethodOverride does not swallow).
const TOO_MANY: &str = "too many parameters";

/// ActiveSupport's limit on the depth of an XML document (`XmlMini.depth`).
const XML_DEPTH_LIMIT: u32 = 100;

/// The methods Rails knows (`ActionDispatch::Request::HTTP_METHODS`); any other is refused before
/// routing (`ActionController::UnknownHttpMethod`).
const RAILS_METHODS: [&str; 31] = [
    "OPTIONS",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "TRACE",
    "CONNECT",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "VERSION-CONTROL",
    "REPORT",
    "CHECKOUT",
    "CHECKIN",
    "UNCHECKOUT",
    "MKWORKSPACE",
    "UPDATE",
    "LABEL",
    "MERGE",
    "BASELINE-CONTROL",
    "MKACTIVITY",
    "ORDERPATCH",
    "ACL",
    "SEARCH",
    "MKCALENDAR",
    "PATCH",
];

/// The methods Rack::MethodOverride turns a `POST` into.
const OVERRIDE_METHODS: [&str; 9] = [
    "GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "LINK", "UNLINK",
];

/// The parameters ParamsWrapper leaves out of the wrapped hash.
const UNWRAPPED: [&str; 3] = ["authenticity_token", "_method", "utf8"];

// ------------------------------------------------------------------------------------------------
// Actions and routes

/// The Faspex 4 actions the emulator knows, named as the oracle names them ("controller#action").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `/aspera/faspex`: the inbox or the login page.
    Home,
    /// `/aspera/faspex/login`: the form login, for every method.
    Login,
    /// `/aspera/faspex/login/new`: the login page.
    LoginForm,
    /// `/aspera/faspex/logout`.
    Logout,
    /// `/aspera/faspex/auth/oauth2/token`.
    OauthToken,
    Inbox,
    Sent,
    Archive,
    /// `/aspera/faspex/received/:id`.
    ReceivedPackage,
    /// `/aspera/faspex/sent/:id`.
    SentPackage,
    Me,
    Dropboxes,
    AddressBook,
    IssueToken,
    /// `GET /aspera/faspex/send`: the "New Package" page.
    NewDelivery,
    /// `POST /aspera/faspex/send`.
    CreateDelivery,
    /// `/aspera/faspex/external_deliveries/:id`.
    ExternalDelivery,
    NewSubmission,
    /// `POST /aspera/faspex/external/submissions`.
    CreateSubmission,
    NewDropboxSubmission,
    /// `POST /aspera/faspex/external/dropbox_submissions`.
    CreateDropboxSubmission,
    /// `GET /aspera/faspex/admin/users`.
    AdminUsers,
    /// `POST /aspera/faspex/admin/users`: an administrator creates a local account.
    CreateUser,
    /// `/aspera/faspex/account`.
    Account,
    /// `GET /aspera/faspex/account/password`.
    EditPassword,
    /// `PUT|PATCH /aspera/faspex/account/password`: a user changes their local password.
    UpdatePassword,
    /// `/aspera/faspex/package_relay/relay_package` (CVE-2022-47986 in Faspex up to 4.4.2 PL1).
    RelayPackage,
    /// `/aspera/faspex/api/*path`.
    Api,
    /// The catch-all: Rails' routing error.
    NotFound,
}

impl Action {
    /// "controller#action", as Rails (and the oracle) name it.
    pub fn name(self) -> &'static str {
        match self {
            Action::Home => "home#index",
            Action::Login => "sessions#create",
            Action::LoginForm => "sessions#new",
            Action::Logout => "sessions#destroy",
            Action::OauthToken => "oauth2#token",
            Action::Inbox => "mailboxes#inbox",
            Action::Sent => "mailboxes#sent",
            Action::Archive => "mailboxes#archive",
            Action::ReceivedPackage => "packages#received",
            Action::SentPackage => "packages#sent",
            Action::Me => "users#me",
            Action::Dropboxes => "dropboxes#index",
            Action::AddressBook => "address_book#index",
            Action::IssueToken => "transfers#issue_token",
            Action::NewDelivery => "deliveries#new",
            Action::CreateDelivery => "deliveries#create",
            Action::ExternalDelivery => "external_deliveries#show",
            Action::NewSubmission => "submissions#new",
            Action::CreateSubmission => "submissions#create",
            Action::NewDropboxSubmission => "dropbox_submissions#new",
            Action::CreateDropboxSubmission => "dropbox_submissions#create",
            Action::AdminUsers => "admin/users#index",
            Action::CreateUser => "admin/users#create",
            Action::Account => "accounts#show",
            Action::EditPassword => "passwords#edit",
            Action::UpdatePassword => "passwords#update",
            Action::RelayPackage => "package_relay#relay_package",
            Action::Api => "api#handle",
            Action::NotFound => "errors#not_found",
        }
    }

    /// The key ParamsWrapper wraps a JSON body under: the controller's name, singular.
    fn wrapper_key(self) -> &'static str {
        match self
            .name()
            .split_once('#')
            .map_or("", |(controller, _)| controller)
        {
            "home" => "home",
            "sessions" => "session",
            "oauth2" => "oauth2",
            "mailboxes" => "mailbox",
            "packages" => "package",
            "users" | "admin/users" => "user",
            "dropboxes" => "dropbox",
            "address_book" => "address_book",
            "transfers" => "transfer",
            "deliveries" => "delivery",
            "external_deliveries" => "external_delivery",
            "submissions" => "submission",
            "dropbox_submissions" => "dropbox_submission",
            "accounts" => "account",
            "passwords" => "password",
            "package_relay" => "package_relay",
            "api" => "api",
            _ => "error",
        }
    }
}

/// The methods a route runs for.
#[derive(Clone, Copy)]
enum Via {
    /// A Rails 3 `match` without `via:`.
    All,
    /// `via: :get` (HEAD too, as Rails routes HEAD to GET routes).
    Get,
    Post,
    PutPatch,
}

impl Via {
    fn accepts(self, method: &str) -> bool {
        match self {
            Via::All => true,
            Via::Get => method == "GET" || method == "HEAD",
            Via::Post => method == "POST",
            Via::PutPatch => method == "PUT" || method == "PATCH",
        }
    }
}

/// One route: a path pattern (`:name` a segment parameter, `*name` a glob), each with an optional
/// `(.:format)` at its end.
struct Route {
    pattern: &'static str,
    via: Via,
    action: Action,
}

/// A route table: one `VIA "pattern" => Action,` line a route, in Rails' order of precedence.
macro_rules! routes {
    ($($via:ident $pattern:literal => $action:ident,)*) => {
        &[$(Route {
            pattern: $pattern,
            via: Via::$via,
            action: Action::$action,
        }),*]
    };
}

/// Faspex 4's routes in Rails' order of precedence (as `tests/rails/oracle.rb` declares them).
const ROUTES: &[Route] = routes! {
    All      "aspera/faspex"                                  => Home,
    All      "aspera/faspex/login"                            => Login,
    All      "aspera/faspex/login/new"                        => LoginForm,
    All      "aspera/faspex/logout"                           => Logout,
    All      "aspera/faspex/auth/oauth2/token"                => OauthToken,
    All      "aspera/faspex/inbox"                            => Inbox,
    All      "aspera/faspex/sent"                             => Sent,
    All      "aspera/faspex/archive"                          => Archive,
    All      "aspera/faspex/received/:id"                     => ReceivedPackage,
    All      "aspera/faspex/sent/:id"                         => SentPackage,
    All      "aspera/faspex/me"                               => Me,
    All      "aspera/faspex/dropboxes"                        => Dropboxes,
    All      "aspera/faspex/address-book"                     => AddressBook,
    All      "aspera/faspex/issue-token"                      => IssueToken,
    Get      "aspera/faspex/send"                             => NewDelivery,
    Post     "aspera/faspex/send"                             => CreateDelivery,
    All      "aspera/faspex/external_deliveries/:id"          => ExternalDelivery,
    All      "aspera/faspex/external/submissions/new"         => NewSubmission,
    Post     "aspera/faspex/external/submissions"             => CreateSubmission,
    All      "aspera/faspex/external/dropbox_submissions/new" => NewDropboxSubmission,
    Post     "aspera/faspex/external/dropbox_submissions"     => CreateDropboxSubmission,
    Get      "aspera/faspex/admin/users"                      => AdminUsers,
    Post     "aspera/faspex/admin/users"                      => CreateUser,
    All      "aspera/faspex/account"                          => Account,
    Get      "aspera/faspex/account/password"                 => EditPassword,
    PutPatch "aspera/faspex/account/password"                 => UpdatePassword,
    All      "aspera/faspex/package_relay/relay_package"      => RelayPackage,
    All      "aspera/faspex/api/*path"                        => Api,
    All      "*path"                                          => NotFound,
};

/// A path as the router matches it: percent-decoded and its dot segments resolved (as a front
/// end such as Apache passes `PATH_INFO`), then Journey's `normalize_path`.
pub fn normalize_path(raw: &str) -> String {
    let decoded = String::from_utf8_lossy(&percent_decode(raw.as_bytes())).into_owned();
    let mut kept: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "." => {}
            ".." => {
                if kept.len() > 1 {
                    kept.pop();
                }
            }
            other => kept.push(other),
        }
    }
    journey_normalize(&kept.join("/"))
}

/// Journey's `normalize_path`: a leading slash, repeated slashes squeezed, no trailing slash.
fn journey_normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 1);
    out.push('/');
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    if out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    out
}

/// The route a method and a raw path reach, with its path parameters (`controller`, `action`, and
/// `id`, `path`, `format` when present). The path is read as a front end decodes it; when that
/// reaches no action but the path as sent does (`/received/a%2Fb`: an escaped slash inside a
/// parameter), the path as sent wins, so that the emulator runs whatever either reading runs.
/// `None` only for the root path `/`, which no route matches.
pub fn recognize(method: &str, raw_path: &str) -> Option<(Action, Params)> {
    let decoded = route_path(method, &normalize_path(raw_path));
    if matches!(decoded, Some((Action::NotFound, _))) {
        let raw = route_path(method, &journey_normalize(raw_path));
        if raw
            .as_ref()
            .is_some_and(|(action, _)| *action != Action::NotFound)
        {
            return raw;
        }
    }
    decoded
}

/// The first route a method and a normalized path reach.
fn route_path(method: &str, path: &str) -> Option<(Action, Params)> {
    let path = path.strip_prefix('/').unwrap_or(path);
    ROUTES.iter().find_map(|route| {
        if !route.via.accepts(method) {
            return None;
        }
        let captures = match_pattern(route.pattern, path)?;
        let (controller, action) = route.action.name().split_once('#')?;
        let mut params = Params::new();
        params.insert("controller".into(), controller.into());
        params.insert("action".into(), action.into());
        for (name, value) in captures {
            params.insert(name.to_owned(), Value::String(value));
        }
        Some((route.action, params))
    })
}

/// Whether `s` is a valid value of `:format` or `:id`: `[^/.?]+`.
fn segment_value(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '.', '?'])
}

/// Match a route pattern against a normalized path (without its leading slash): the captured
/// parameters, unescaped as Journey unescapes them.
fn match_pattern(pattern: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
    let pattern: Vec<&'static str> = pattern.split('/').collect();
    let segments: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    let mut captures = Vec::new();
    for (i, part) in pattern.iter().enumerate() {
        if let Some(name) = part.strip_prefix('*') {
            // A glob: `(?<name>.+?)(?:\.(?<format>[^/.?]+))?\z` over the rest of the path.
            let rest = segments.get(i..)?.join("/");
            if rest.is_empty() {
                return None;
            }
            let split = rest
                .rfind('.')
                .filter(|&dot| dot > 0 && segment_value(&rest[dot + 1..]));
            match split {
                Some(dot) => {
                    captures.push((name, unescape_uri(&rest[..dot])));
                    captures.push(("format", unescape_uri(&rest[dot + 1..])));
                }
                None => captures.push((name, unescape_uri(&rest))),
            }
            return Some(captures);
        }
        let segment = *segments.get(i)?;
        let last = i + 1 == pattern.len();
        if !last {
            match part.strip_prefix(':') {
                Some(name) if segment_value(segment) => {
                    captures.push((name, unescape_uri(segment)))
                }
                Some(_) => return None,
                None if segment == *part => {}
                None => return None,
            }
            continue;
        }
        if segments.len() != pattern.len() {
            return None;
        }
        let format = match part.strip_prefix(':') {
            Some(name) => {
                let (value, format) = match segment.split_once('.') {
                    Some((value, format)) => (value, Some(format)),
                    None => (segment, None),
                };
                if !segment_value(value) {
                    return None;
                }
                captures.push((name, unescape_uri(value)));
                format
            }
            None if segment == *part => None,
            None => Some(segment.strip_prefix(part)?.strip_prefix('.')?),
        };
        if let Some(format) = format {
            if !segment_value(format) {
                return None;
            }
            captures.push(("format", unescape_uri(format)));
        }
    }
    (segments.len() == pattern.len()).then_some(captures)
}

/// `%XX` with two hex digits decoded to its byte; anything else kept (URI::RFC2396_Parser#unescape).
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (hex_value(bytes.get(i + 1)), hex_value(bytes.get(i + 2))) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn hex_value(byte: Option<&u8>) -> Option<u8> {
    let byte = *byte?;
    (byte as char).to_digit(16).map(|d| d as u8)
}

/// Journey's `unescape_uri` of a path parameter: `%` and two alphanumerics become the byte their
/// leading hex digits spell (Ruby's `String#hex`: `%zz` is a NUL byte).
fn unescape_uri(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_alphanumeric)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_alphanumeric)
        {
            let value = match (hex_value(bytes.get(i + 1)), hex_value(bytes.get(i + 2))) {
                (Some(h), Some(l)) => h * 16 + l,
                (Some(h), None) => h,
                _ => 0,
            };
            out.push(value);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ------------------------------------------------------------------------------------------------
// Reading a request

/// What went wrong reading a request; Rails answers each with a 4xx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// A method Rails does not know (`405`).
    UnknownMethod(String),
    /// A malformed query string, body or parameter name, or a value that is not UTF-8 (`400`).
    BadParams(String),
    /// A `Content-Type` that is not a MIME type (`400`).
    BadContentType(String),
    /// A JSON body that does not parse (`400`).
    Json(String),
    /// An XML body that does not parse, or asks for a forbidden type (`400`).
    Xml(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::UnknownMethod(method) => write!(f, "unknown HTTP method {method:?}"),
            ReadError::BadParams(why) => write!(f, "invalid request parameters: {why}"),
            ReadError::BadContentType(why) => write!(f, "invalid Content-Type: {why}"),
            ReadError::Json(why) => write!(f, "invalid JSON body: {why}"),
            ReadError::Xml(why) => write!(f, "invalid XML body: {why}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// A request as Rails receives it. (The gateway's `Probe` holds much the same parts for its own
/// reading, kept apart on purpose: the emulator, what the gateway is tested against, must not
/// read requests with the gateway's code.)
#[derive(Clone, Copy, Debug)]
pub struct RailsRequest<'a> {
    /// The method on the request line.
    pub method: &'a str,
    /// The path and query, as on the request line.
    pub target: &'a str,
    pub content_type: Option<&'a str>,
    /// `X-HTTP-Method-Override`.
    pub method_override: Option<&'a str>,
    pub body: &'a [u8],
}

/// How Rails read a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The method the action sees, after Rack::MethodOverride.
    pub method: String,
    /// The route's action; `None` when Rails refused the request before routing or no route matched.
    pub action: Option<Action>,
    /// The action's `params`, or why reading them failed.
    pub params: Result<Params, ReadError>,
}

impl Reading {
    /// A string parameter at a path of keys (`["user", "password"]`).
    pub fn param(&self, keys: &[&str]) -> Option<&str> {
        self.value(keys).and_then(Value::as_str)
    }

    /// Any parameter at a path of keys.
    pub fn value(&self, keys: &[&str]) -> Option<&Value> {
        let params = self.params.as_ref().ok()?;
        let (first, rest) = keys.split_first()?;
        rest.iter()
            .try_fold(params.get(*first)?, |value, key| value.get(*key))
    }
}

/// Read a request the way Rails 3 on Rack does: method override, routing, parameters.
pub fn read(request: &RailsRequest<'_>) -> Reading {
    let (path, query) = match request.target.split_once('?') {
        Some((path, query)) => (path, query),
        None => (request.target, ""),
    };
    let mut method = request.method.to_owned();
    // Rack::MethodOverride reads a POST's form body for `_method`, swallowing Rack's errors. Rails
    // reads a body without a Content-Type only from what MethodOverride parsed (its own reading
    // of the media type is "", not a form), so such a body that Rack cannot parse is no body.
    let mut body_swallowed = false;
    if method == "POST" {
        let from_body = match rack_form(request.method, request.content_type, request.body) {
            Ok(Some(form)) => match form.get(b"_method".as_slice()) {
                None | Some(Node::Nil) => None,
                Some(node) => Some(node.ruby_to_s()),
            },
            Ok(None) => None,
            Err(BodyError::Fail(ReadError::BadParams(why))) if why != TOO_MANY => {
                body_swallowed = request.content_type.is_none();
                None
            }
            Err(_) => None,
        };
        let wanted = from_body
            .or_else(|| request.method_override.map(str::to_owned))
            .map(|m| m.to_uppercase());
        if let Some(wanted) = wanted.filter(|m| OVERRIDE_METHODS.contains(&m.as_str())) {
            method = wanted;
        }
    }
    if !RAILS_METHODS.contains(&method.as_str()) {
        return Reading {
            params: Err(ReadError::UnknownMethod(method.clone())),
            method,
            action: None,
        };
    }
    let Some((action, path_params)) = recognize(&method, path) else {
        return Reading {
            method,
            action: None,
            params: Ok(Params::new()),
        };
    };
    let params = parameters(request, query, action, path_params, body_swallowed);
    Reading {
        method,
        action: Some(action),
        params,
    }
}

/// The MIME type Rails' parameter parsers look at: the `Content-Type` up to `,` or `;`, trimmed and
/// lowercased; an error when it is not a MIME type.
fn content_mime(content_type: Option<&str>) -> Result<Option<String>, ReadError> {
    let Some(content_type) = content_type else {
        return Ok(None);
    };
    let mime = content_type
        .split([',', ';'])
        .next()
        .unwrap_or("")
        .trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0')
        .to_ascii_lowercase();
    let name = |s: &str| {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.len() <= 127
            && chars.all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
    };
    let valid = mime == "*/*"
        || mime
            .split_once('/')
            .is_some_and(|(kind, sub)| name(kind) && (sub == "*" || name(sub)));
    if valid {
        Ok(Some(mime))
    } else {
        Err(ReadError::BadContentType(format!(
            "{content_type:?} is not a valid MIME type"
        )))
    }
}

fn is_json(mime: &str) -> bool {
    matches!(
        mime,
        "application/json" | "text/x-json" | "application/jsonrequest"
    )
}

fn is_xml(mime: &str) -> bool {
    matches!(mime, "application/xml" | "text/xml" | "application/x-xml")
}

/// `ActionDispatch::Request#parameters` (with ParamsWrapper) for a routed request.
fn parameters(
    request: &RailsRequest<'_>,
    query: &str,
    action: Action,
    path_params: Params,
    body_swallowed: bool,
) -> Result<Params, ReadError> {
    let mime = content_mime(request.content_type)?;
    let body = match body_params(request, mime.as_deref()) {
        _ if body_swallowed => Some(Params::new()),
        Ok(body) => Some(body),
        // Rails reads a body it cannot finish (EOFError) as no body at all.
        Err(BodyError::Eof) => None,
        Err(BodyError::Fail(error)) => return Err(error),
    };
    let query = to_params(parse_nested_query(query.as_bytes(), true)?)?;
    let mut params = body.clone().unwrap_or_default();
    params.extend(query);
    params.extend(path_params);
    if mime.as_deref().is_some_and(is_json) {
        let key = action.wrapper_key();
        if !params.contains_key(key) {
            let mut wrapped = body.unwrap_or_default();
            for name in UNWRAPPED {
                wrapped.remove(name);
            }
            params.insert(key.to_owned(), Value::Object(wrapped));
        }
    }
    Ok(params)
}

/// Why a body could not be read.
enum BodyError {
    /// A multipart body that ends early: Rails ignores the body.
    Eof,
    Fail(ReadError),
}

impl From<ReadError> for BodyError {
    fn from(error: ReadError) -> Self {
        BodyError::Fail(error)
    }
}

/// `ActionDispatch::Request#request_parameters`: JSON and XML by their parsers, the rest by Rack.
fn body_params(request: &RailsRequest<'_>, mime: Option<&str>) -> Result<Params, BodyError> {
    if !request.body.is_empty() {
        if let Some(mime) = mime {
            if is_json(mime) {
                return Ok(json_params(request.body)?);
            }
            if is_xml(mime) {
                return Ok(xml_params(request.body)?);
            }
        }
    }
    match rack_form(request.method, request.content_type, request.body) {
        Ok(Some(form)) => Ok(to_params(form)?),
        Ok(None) => Ok(Params::new()),
        Err(error) => Err(error),
    }
}

/// `Rack::Request#POST`: a urlencoded or multipart body; `None` for other bodies. `method` is the
/// method before any override (a `POST` without a `Content-Type` is read as a form).
fn rack_form(
    method: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Option<Hash>, BodyError> {
    let media_type = content_type.and_then(|value| {
        let first = value.split([';', ',']).next()?;
        let first = first.trim_end().to_ascii_lowercase();
        (!first.is_empty()).then_some(first)
    });
    let form = match media_type.as_deref() {
        None => method == "POST",
        Some(
            "application/x-www-form-urlencoded"
            | "multipart/form-data"
            | "multipart/related"
            | "multipart/mixed",
        ) => true,
        Some(_) => false,
    };
    if !form {
        return Ok(None);
    }
    if let Some(boundary) = content_type.map(multipart_boundary).transpose()?.flatten() {
        if body.is_empty() {
            return Ok(Some(Hash::new()));
        }
        return parse_multipart(body, &boundary).map(Some);
    }
    let body = body.strip_suffix(b"\0").unwrap_or(body);
    // Rack 1, which Rails 3 ran on, split bodies on `;` too.
    Ok(Some(parse_nested_query(body, true)?))
}

// ------------------------------------------------------------------------------------------------
// Rack's nested parameters

/// A parameter value while Rack builds it: strings are bytes until Rails checks their encoding.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Nil,
    Str(Vec<u8>),
    File(FilePart),
    Arr(Vec<Node>),
    Hash(Hash),
}

type Hash = BTreeMap<Vec<u8>, Node>;

/// An uploaded file of a multipart body.
#[derive(Clone, Debug, PartialEq)]
struct FilePart {
    filename: Vec<u8>,
    content_type: Option<Vec<u8>>,
    content: Vec<u8>,
}

impl Node {
    /// Ruby's `to_s`, for `_method`.
    fn ruby_to_s(&self) -> String {
        match self {
            Node::Str(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Node::Nil => String::new(),
            _ => "#<complex>".to_owned(),
        }
    }
}

fn bad(why: impl Into<String>) -> ReadError {
    ReadError::BadParams(why.into())
}

/// `Rack::QueryParser#parse_nested_query`: pairs split on `&` (and `;` when `semicolons`), each
/// separator swallowing the spaces after it; keys and values form-decoded.
fn parse_nested_query(qs: &[u8], semicolons: bool) -> Result<Hash, ReadError> {
    let mut params = Hash::new();
    if qs.is_empty() {
        return Ok(params);
    }
    let is_sep = |b: &u8| *b == b'&' || (semicolons && *b == b';');
    if qs.iter().filter(|b| is_sep(b)).count() >= PARAMS_LIMIT {
        return Err(bad(TOO_MANY));
    }
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < qs.len() {
        if is_sep(&qs[i]) {
            pieces.push(&qs[start..i]);
            i += 1;
            while i < qs.len() && qs[i] == b' ' {
                i += 1;
            }
            start = i;
        } else {
            i += 1;
        }
    }
    pieces.push(&qs[start..]);
    // Ruby's split drops trailing empty pieces; empty pieces are ignored anyway.
    for piece in pieces {
        if piece.is_empty() {
            continue;
        }
        let (key, value) = match piece.iter().position(|&b| b == b'=') {
            Some(eq) => (&piece[..eq], Some(&piece[eq + 1..])),
            None => (piece, None),
        };
        let key = form_unescape(key)?;
        let value = match value {
            Some(value) => Node::Str(form_unescape(value)?),
            None => Node::Nil,
        };
        normalize_params(&mut params, &key, value, PARAM_DEPTH_LIMIT)?;
    }
    Ok(params)
}

/// `URI.decode_www_form_component`: `+` is a space, `%XX` a byte, any other `%` an error.
fn form_unescape(bytes: &[u8]) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (hex_value(bytes.get(i + 1)), hex_value(bytes.get(i + 2))) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                }
                _ => return Err(bad("invalid %-encoding")),
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// What a call of `normalize_params` hands back to its caller.
enum Normalized {
    /// The hash it was given (now updated).
    Same,
    /// A value to store instead (`Array(v)` for a bare `[]`, or nil).
    Replace(Node),
}

/// `Rack::QueryParser#normalize_params`, step for step.
fn normalize_params(
    params: &mut Hash,
    name: &[u8],
    value: Node,
    depth: u32,
) -> Result<Normalized, ReadError> {
    if depth == 0 {
        return Err(bad("parameters nested too deep"));
    }
    // name =~ %r(\A[\[\]]*([^\[\]]+)\]*)
    let bracket = |b: &u8| *b == b'[' || *b == b']';
    let start = name.iter().take_while(|b| bracket(b)).count();
    let end = start + name[start..].iter().take_while(|b| !bracket(b)).count();
    if end == start {
        let array = !matches!(value, Node::Nil) && name == b"[]";
        return Ok(Normalized::Replace(if array {
            Node::Arr(vec![value])
        } else {
            Node::Nil
        }));
    }
    let key = name[start..end].to_vec();
    let after_start = end + name[end..].iter().take_while(|b| **b == b']').count();
    let after = &name[after_start..];

    if after.is_empty() {
        params.insert(key, value);
    } else if after == b"[" {
        params.insert(name.to_vec(), value);
    } else if after == b"[]" {
        let slot = slot_or(params, key.clone(), || Node::Arr(Vec::new()));
        let Node::Arr(list) = slot else {
            return Err(bad(format!(
                "expected Array for param `{}'",
                String::from_utf8_lossy(&key)
            )));
        };
        list.push(value);
    } else if let Some(child) = array_child(after) {
        let slot = slot_or(params, key.clone(), || Node::Arr(Vec::new()));
        let Node::Arr(list) = slot else {
            return Err(bad(format!(
                "expected Array for param `{}'",
                String::from_utf8_lossy(&key)
            )));
        };
        match list.last_mut() {
            Some(Node::Hash(last)) if !hash_has_key(last, child) => {
                normalize_params(last, child, value, depth - 1)?;
            }
            _ => {
                let mut fresh = Hash::new();
                let node = match normalize_params(&mut fresh, child, value, depth - 1)? {
                    Normalized::Same => Node::Hash(fresh),
                    Normalized::Replace(node) => node,
                };
                list.push(node);
            }
        }
    } else {
        let slot = slot_or(params, key.clone(), || Node::Hash(Hash::new()));
        let Node::Hash(inner) = slot else {
            return Err(bad(format!(
                "expected Hash for param `{}'",
                String::from_utf8_lossy(&key)
            )));
        };
        if let Normalized::Replace(node) = normalize_params(inner, after, value, depth - 1)? {
            params.insert(key, node);
        }
    }
    Ok(Normalized::Same)
}

/// `params[k] ||= default`: the slot, filled when missing or nil.
fn slot_or(params: &mut Hash, key: Vec<u8>, default: impl FnOnce() -> Node) -> &mut Node {
    let slot = params.entry(key).or_insert(Node::Nil);
    if matches!(slot, Node::Nil) {
        *slot = default();
    }
    slot
}

/// The child key of `after` by Rack's `/^\[\]\[([^\[\]]+)\]$/`, else `/^\[\](.+)$/`, as Ruby matches
/// them: `[][child]` or `[]child`.
fn array_child(after: &[u8]) -> Option<&[u8]> {
    // Each pattern is searched at every line start (`^`); `$` matches before a `\n` or at the
    // end, and `.` is never a `\n` (a key can hold one: a form's `%0A`, or a part name Rack 1
    // read over its line's end).
    let line_starts = || {
        std::iter::once(0).chain(
            after
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
    };
    let at_line_end = |i: usize| i == after.len() || after[i] == b'\n';
    for p in line_starts() {
        let Some(rest) = after[p..].strip_prefix(b"[][") else {
            continue;
        };
        let run = rest
            .iter()
            .take_while(|b| **b != b'[' && **b != b']')
            .count();
        let close = p + 3 + run;
        if run > 0 && after.get(close) == Some(&b']') && at_line_end(close + 1) {
            return Some(&after[p + 3..close]);
        }
    }
    line_starts().find_map(|p| {
        let rest = after[p..].strip_prefix(b"[]")?;
        let len = rest.iter().take_while(|b| **b != b'\n').count();
        (len > 0).then(|| &rest[..len])
    })
}

/// `Rack::QueryParser#params_hash_has_key?`.
fn hash_has_key(hash: &Hash, key: &[u8]) -> bool {
    if key.windows(2).any(|w| w == b"[]") {
        return false;
    }
    let mut current = hash;
    let mut parts = key
        .split(|b| *b == b'[' || *b == b']')
        .filter(|p| !p.is_empty())
        .peekable();
    while let Some(part) = parts.next() {
        match current.get(part) {
            Some(Node::Hash(inner)) => current = inner,
            Some(_) if parts.peek().is_none() => return true,
            Some(_) | None => return false,
        }
    }
    true
}

/// Rails' finishing of Rack's hash: strings checked for UTF-8, nils dropped from arrays, files
/// turned into uploaded files.
fn to_params(hash: Hash) -> Result<Params, ReadError> {
    let mut params = Params::new();
    for (key, node) in hash {
        params.insert(String::from_utf8_lossy(&key).into_owned(), to_value(node)?);
    }
    Ok(params)
}

fn to_value(node: Node) -> Result<Value, ReadError> {
    Ok(match node {
        Node::Nil => Value::Null,
        Node::Str(bytes) => Value::String(
            String::from_utf8(bytes).map_err(|_| bad("invalid encoding for parameter"))?,
        ),
        Node::File(file) => file_value(&file),
        Node::Arr(list) => Value::Array(
            list.into_iter()
                .filter(|node| !matches!(node, Node::Nil))
                .map(to_value)
                .collect::<Result<_, _>>()?,
        ),
        Node::Hash(hash) => Value::Object(to_params(hash)?),
    })
}

/// An uploaded file as the oracle reports one.
fn file_value(file: &FilePart) -> Value {
    let mut object = Params::new();
    object.insert("__file__".into(), Value::Bool(true));
    object.insert(
        "filename".into(),
        String::from_utf8_lossy(&file.filename).into_owned().into(),
    );
    object.insert(
        "content_type".into(),
        file.content_type.as_ref().map_or(Value::Null, |t| {
            String::from_utf8_lossy(t).into_owned().into()
        }),
    );
    object.insert(
        "content".into(),
        String::from_utf8_lossy(&file.content).into_owned().into(),
    );
    Value::Object(object)
}

/// Rails' NoNilParamEncoder over a parsed document: nils dropped from arrays, at any depth.
fn compact(value: Value) -> Value {
    match value {
        Value::Array(list) => Value::Array(
            list.into_iter()
                .filter(|v| !v.is_null())
                .map(compact)
                .collect(),
        ),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, compact(v))).collect())
        }
        other => other,
    }
}

// ------------------------------------------------------------------------------------------------
// Multipart (Rack::Multipart::Parser)

/// The boundary of a multipart `Content-Type` as Rack 1.4 reads it
/// (`%r|\Amultipart/.*boundary=\"?([^\";,]+)\"?|n`): case-sensitive, the last `boundary=` that
/// is followed by a value. `None` when there is none: the body is then read as a form.
fn multipart_boundary(content_type: &str) -> Result<Option<String>, BodyError> {
    if !content_type.starts_with("multipart/") {
        return Ok(None);
    }
    // (`.` stops at a line end; a header value holds none)
    let line = &content_type[..content_type.find('\n').unwrap_or(content_type.len())];
    for (at, _) in line.rmatch_indices("boundary=") {
        let value = &line[at + "boundary=".len()..];
        let value = value.strip_prefix('"').unwrap_or(value);
        let end = value.find(['"', ';', ',']).unwrap_or(value.len());
        if end > 0 {
            return Ok(Some(value[..end].to_owned()));
        }
    }
    Ok(None)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// A multipart body's fields: each part's name (from `Content-Disposition`, else `Content-ID`)
/// nested like a form key; parts with a filename become uploaded files.
fn parse_multipart(body: &[u8], boundary: &str) -> Result<Hash, BodyError> {
    let dash = format!("--{boundary}");
    let end = format!("--{boundary}--");
    // Fast-forward to the first boundary line.
    let mut pos = 0;
    loop {
        if pos >= body.len() {
            return Err(BodyError::Eof);
        }
        let line_end = find(body, b"\n", pos).map_or(body.len(), |n| n + 1);
        let line = body[pos..line_end].trim_ascii();
        pos = line_end;
        if line == dash.as_bytes() {
            break;
        }
        if line == end.as_bytes() {
            return Ok(Hash::new());
        }
    }
    let mut params = Hash::new();
    loop {
        let head_end = find(body, b"\r\n\r\n", pos).ok_or(BodyError::Eof)?;
        let head = &body[pos..head_end + 2];
        let content_start = head_end + 4;
        // The body runs to the next "\r\n--boundary" followed by "\r\n" or "--".
        let mut search = content_start;
        let (content_end, next) = loop {
            let at = find(body, dash.as_bytes(), search).ok_or(BodyError::Eof)?;
            let tail = &body[at + dash.len()..];
            if tail.starts_with(b"\r\n") || tail.starts_with(b"--") {
                let content_end = if at >= content_start + 2 && &body[at - 2..at] == b"\r\n" {
                    at - 2
                } else {
                    at
                };
                break (content_end, at);
            }
            search = at + 1;
        };
        let content = &body[content_start..content_end.max(content_start)];
        add_part(&mut params, head, content)?;
        // Consume the boundary line: a closing boundary (or the end of the body) ends the parse.
        let line_end = find(body, b"\n", next).map_or(body.len(), |n| n + 1);
        let line = body[next..line_end].trim_ascii();
        pos = line_end;
        if line == end.as_bytes() || pos >= body.len() {
            return Ok(params);
        }
    }
}

/// A header parameter value: a quoted string or a token (`[^\s()<>,;:\\"/\[\]?=]+`).
fn header_value(s: &[u8]) -> Option<Vec<u8>> {
    if s.first() == Some(&b'"') {
        let mut i = 1;
        while i < s.len() {
            match s[i] {
                b'\\' if s.get(i + 1) == Some(&b'"') => i += 2,
                b'"' => return Some(s[..=i].to_vec()),
                _ => i += 1,
            }
        }
        return None;
    }
    let token: Vec<u8> = s
        .iter()
        .take_while(|b| !ruby_space(b) && !b"()<>,;:\\\"/[]?=".contains(b))
        .copied()
        .collect();
    (!token.is_empty()).then_some(token)
}

/// Rack's `dequote`: surrounding quotes removed, backslash escapes resolved.
fn dequote(value: &[u8]) -> Vec<u8> {
    let inner = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(value);
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        if inner[i] == b'\\' && i + 1 < inner.len() {
            out.push(inner[i + 1]);
            i += 2;
        } else {
            out.push(inner[i]);
            i += 1;
        }
    }
    out
}

/// Ruby's `\s`: ASCII white space, the vertical tab included (which `is_ascii_whitespace` leaves
/// out).
fn ruby_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0B' | b'\x0C' | b'\r')
}

fn find_ci(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// The value of a header line in a part's head (`Name: value`), case-insensitively.
fn head_line<'h>(head: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    let at = find_ci(head, name)?;
    let rest = &head[at + name.len()..];
    let end = find(rest, b"\r\n", 0).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// A part's name as Rack 1.4 reads it from the part's head (its header lines, each with its
/// CRLF): `/Content-Disposition:.*\s+name="?([^";]*)"?/ni`, that is, at the first
/// `Content-Disposition:` where it matches, the last `name=` after white space before that line
/// ends (the white space may run on over line ends), and its value up to a `"` or `;` (an
/// unquoted one runs on over line ends too).
fn rack1_part_name(head: &[u8]) -> Option<Vec<u8>> {
    const LABEL: &[u8] = b"content-disposition:";
    let mut from = 0;
    while let Some(rel) = find_ci(&head[from..], LABEL) {
        let start = from + rel + LABEL.len();
        let line_end = find(head, b"\n", start).unwrap_or(head.len());
        let named = (start..=line_end).rev().find_map(|a| {
            if !ruby_space(head.get(a)?) {
                return None;
            }
            let q = a + head[a..].iter().take_while(|b| ruby_space(b)).count();
            let after = head.get(q..q + 5)?;
            after.eq_ignore_ascii_case(b"name=").then_some(q + 5)
        });
        if let Some(at) = named {
            let value = head[at..].strip_prefix(b"\"").unwrap_or(&head[at..]);
            let end = value
                .iter()
                .position(|b| *b == b'"' || *b == b';')
                .unwrap_or(value.len());
            return Some(value[..end].to_vec());
        }
        from = start;
    }
    None
}

/// The last `; name=VALUE` of the `Content-Disposition` parameters (up to the next colon).
fn disposition_param(head: &[u8], param: &[u8]) -> Option<Vec<u8>> {
    let at = find_ci(head, b"content-disposition:")?;
    let rest = &head[at + b"content-disposition:".len()..];
    let span = &rest[..rest.iter().position(|b| *b == b':').unwrap_or(rest.len())];
    let mut found = None;
    for (i, _) in span.iter().enumerate().filter(|(_, b)| **b == b';') {
        let after = &rest[i + 1..];
        let trimmed = &after[after.iter().take_while(|b| ruby_space(b)).count()..];
        if trimmed.len() > param.len()
            && trimmed[..param.len()].eq_ignore_ascii_case(param)
            && trimmed[param.len()] == b'='
        {
            if let Some(value) = header_value(&trimmed[param.len() + 1..]) {
                found = Some(value);
            }
        }
    }
    found
}

fn add_part(params: &mut Hash, head: &[u8], content: &[u8]) -> Result<(), BodyError> {
    let content_type = find_ci(head, b"content-type: ").map(|at| {
        let rest = &head[at + b"content-type: ".len()..];
        rest[..find(rest, b"\r\n", 0).unwrap_or(rest.len())].to_vec()
    });
    let mut name = match rack1_part_name(head) {
        Some(value) => Some(dequote(&value)),
        None => head_line(head, b"content-id:").map(|v| v.trim_ascii_start().to_vec()),
    };
    let filename = disposition_param(head, b"filename").map(|value| {
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(&value)
            .to_vec();
        let decoded = percent_decode(&value);
        decoded
            .rsplit(|b| *b == b'/' || *b == b'\\')
            .next()
            .unwrap_or(&[])
            .to_vec()
    });
    if name.as_ref().is_none_or(|n| n.is_empty()) {
        name = Some(match &filename {
            Some(filename) => filename.clone(),
            None => {
                let mut n = content_type
                    .clone()
                    .unwrap_or_else(|| b"text/plain".to_vec());
                n.extend_from_slice(b"[]");
                n
            }
        });
    }
    let name = name.unwrap_or_default();
    let value = match filename {
        Some(filename) if filename.is_empty() => return Ok(()),
        Some(filename) => Node::File(FilePart {
            filename,
            content_type,
            content: content.to_vec(),
        }),
        None => Node::Str(content.to_vec()),
    };
    normalize_params(params, &name, value, PARAM_DEPTH_LIMIT)?;
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// JSON (ActiveSupport::JSON.decode, on Ruby's parser)

/// A JSON body's parameters: an object as is, anything else under `_json`. Ruby's parser skips
/// `/* */` and `//` comments, so they are removed first.
fn json_params(body: &[u8]) -> Result<Params, ReadError> {
    let stripped = strip_json_comments(body)?;
    let value: Value =
        serde_json::from_slice(&stripped).map_err(|e| ReadError::Json(e.to_string()))?;
    Ok(match compact(value) {
        Value::Object(map) => map,
        other => {
            let mut map = Params::new();
            map.insert("_json".into(), other);
            map
        }
    })
}

fn strip_json_comments(body: &[u8]) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    let mut in_string = false;
    while i < body.len() {
        let b = body[i];
        if in_string {
            out.push(b);
            if b == b'\\' {
                if let Some(&next) = body.get(i + 1) {
                    out.push(next);
                    i += 1;
                }
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match (b, body.get(i + 1)) {
            (b'"', _) => {
                in_string = true;
                out.push(b);
                i += 1;
            }
            (b'/', Some(b'*')) => {
                let close = find(body, b"*/", i + 2)
                    .ok_or_else(|| ReadError::Json("unterminated comment".into()))?;
                out.push(b' ');
                i = close + 2;
            }
            (b'/', Some(b'/')) => {
                i = find(body, b"\n", i + 2).unwrap_or(body.len());
                out.push(b' ');
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// XML (Rails 3's default XML parameter parser: Hash.from_xml on REXML)

/// An element of an XML document.
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
    children: Vec<XmlNode>,
}

enum XmlNode {
    Element(Element),
    Text(String),
}

struct XmlParser<'a> {
    s: &'a str,
    pos: usize,
}

fn xml_error(why: impl Into<String>) -> ReadError {
    ReadError::Xml(why.into())
}

impl<'a> XmlParser<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start_matches([' ', '\t', '\r', '\n']).len();
    }

    fn skip_past(&mut self, end: &str) -> Result<(), ReadError> {
        let at = self
            .rest()
            .find(end)
            .ok_or_else(|| xml_error(format!("missing {end}")))?;
        self.pos += at + end.len();
        Ok(())
    }

    /// Comments, processing instructions and white space outside the root element.
    fn skip_misc(&mut self) -> Result<(), ReadError> {
        loop {
            self.skip_space();
            if self.rest().starts_with("<?") {
                self.skip_past("?>")?;
            } else if self.rest().starts_with("<!--") {
                self.skip_past("-->")?;
            } else if self.rest().starts_with("<!") {
                return Err(xml_error("document type declarations are not supported"));
            } else {
                return Ok(());
            }
        }
    }

    fn name(&mut self) -> Result<String, ReadError> {
        let rest = self.rest();
        let len = rest
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '>' | '=' | '<'))
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(xml_error("expected a name"));
        }
        self.pos += len;
        Ok(rest[..len].to_owned())
    }

    fn element(&mut self, depth: u32) -> Result<Element, ReadError> {
        if depth == 0 {
            return Err(xml_error("document too deep"));
        }
        if !self.rest().starts_with('<') {
            return Err(xml_error("expected an element"));
        }
        self.pos += 1;
        let name = self.name()?;
        let mut attributes = Vec::new();
        loop {
            self.skip_space();
            if self.rest().starts_with("/>") {
                self.pos += 2;
                return Ok(Element {
                    name,
                    attributes,
                    children: Vec::new(),
                });
            }
            if self.rest().starts_with('>') {
                self.pos += 1;
                break;
            }
            let attribute = self.name()?;
            self.skip_space();
            if !self.rest().starts_with('=') {
                return Err(xml_error("expected = after an attribute name"));
            }
            self.pos += 1;
            self.skip_space();
            let quote = self
                .rest()
                .chars()
                .next()
                .filter(|c| *c == '"' || *c == '\'')
                .ok_or_else(|| xml_error("expected a quoted attribute value"))?;
            self.pos += 1;
            let end = self
                .rest()
                .find(quote)
                .ok_or_else(|| xml_error("unterminated attribute value"))?;
            let value = unescape_xml(&self.rest()[..end])?;
            self.pos += end + 1;
            if attributes.iter().any(|(n, _)| *n == attribute) {
                return Err(xml_error("duplicate attribute"));
            }
            attributes.push((attribute, value));
        }
        let mut children = Vec::new();
        loop {
            let rest = self.rest();
            if rest.is_empty() {
                return Err(xml_error(format!("missing end tag for {name}")));
            }
            if rest.starts_with("</") {
                self.pos += 2;
                let end = self.name()?;
                if end != name {
                    return Err(xml_error(format!("end tag {end} does not close {name}")));
                }
                self.skip_space();
                if !self.rest().starts_with('>') {
                    return Err(xml_error("expected > after an end tag"));
                }
                self.pos += 1;
                return Ok(Element {
                    name,
                    attributes,
                    children,
                });
            }
            if rest.starts_with("<!--") {
                self.skip_past("-->")?;
            } else if let Some(cdata) = rest.strip_prefix("<![CDATA[") {
                let end = cdata
                    .find("]]>")
                    .ok_or_else(|| xml_error("unterminated CDATA"))?;
                children.push(XmlNode::Text(cdata[..end].to_owned()));
                self.pos += "<![CDATA[".len() + end + 3;
            } else if rest.starts_with("<?") {
                self.skip_past("?>")?;
            } else if rest.starts_with('<') {
                children.push(XmlNode::Element(self.element(depth - 1)?));
            } else {
                let end = rest.find('<').unwrap_or(rest.len());
                children.push(XmlNode::Text(unescape_xml(&rest[..end])?));
                self.pos += end;
            }
        }
    }
}

fn unescape_xml(text: &str) -> Result<String, ReadError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after
            .find(';')
            .ok_or_else(|| xml_error("unterminated entity"))?;
        let entity = &after[..end];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = entity.strip_prefix('#') {
                    dec.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| xml_error(format!("undeclared entity &{entity};")))?
            }
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// ActiveSupport's intermediate form of an XML document: ordered hashes, arrays and strings.
#[derive(Clone, Debug)]
enum XVal {
    Str(String),
    Arr(Vec<XVal>),
    Hash(Vec<(String, XVal)>),
}

fn xget<'v>(hash: &'v [(String, XVal)], key: &str) -> Option<&'v XVal> {
    hash.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn xstr<'v>(hash: &'v [(String, XVal)], key: &str) -> Option<&'v str> {
    match xget(hash, key) {
        Some(XVal::Str(s)) => Some(s),
        _ => None,
    }
}

/// XmlMini's `merge!`: a repeated key becomes an array.
fn xmerge(hash: &mut Vec<(String, XVal)>, key: String, value: XVal) {
    if let Some((_, existing)) = hash.iter_mut().find(|(k, _)| *k == key) {
        match existing {
            XVal::Arr(list) => list.push(value),
            other => {
                let first = std::mem::replace(other, XVal::Arr(Vec::new()));
                *other = XVal::Arr(vec![first, value]);
            }
        }
    } else {
        hash.push((key, value));
    }
}

/// XmlMini_REXML's `collapse`, with keys normalized (`-` to `_`).
fn collapse(element: &Element) -> XVal {
    let mut hash: Vec<(String, XVal)> = element
        .attributes
        .iter()
        .map(|(n, v)| (n.replace('-', "_"), XVal::Str(v.clone())))
        .collect();
    let texts: String = element
        .children
        .iter()
        .filter_map(|c| match c {
            XmlNode::Text(t) => Some(t.as_str()),
            XmlNode::Element(_) => None,
        })
        .collect();
    let has_text = element
        .children
        .iter()
        .any(|c| matches!(c, XmlNode::Text(_)));
    let has_elements = element
        .children
        .iter()
        .any(|c| matches!(c, XmlNode::Element(_)));
    for child in &element.children {
        if let XmlNode::Element(child) = child {
            xmerge(&mut hash, local_name(&child.name), collapse(child));
        }
    }
    if (has_elements && !blank(&texts)) || (!has_elements && has_text) {
        xmerge(&mut hash, "__content__".into(), XVal::Str(texts));
    }
    XVal::Hash(hash)
}

/// REXML's `Element#name`: the name without its namespace prefix; keys normalized.
fn local_name(name: &str) -> String {
    name.rsplit(':').next().unwrap_or(name).replace('-', "_")
}

/// Ruby's `blank?` for a string.
fn blank(s: &str) -> bool {
    s.chars().all(char::is_whitespace)
}

/// ActiveSupport's XMLConverter `deep_to_h`.
fn deep_to_h(value: &XVal) -> Result<Value, ReadError> {
    match value {
        XVal::Str(s) => Ok(Value::String(s.clone())),
        XVal::Arr(list) => {
            let mut values: Vec<Value> = list.iter().map(deep_to_h).collect::<Result<_, _>>()?;
            Ok(if values.len() > 1 {
                Value::Array(values)
            } else {
                values.pop().unwrap_or(Value::Null)
            })
        }
        XVal::Hash(hash) => process_hash(hash),
    }
}

fn process_hash(hash: &[(String, XVal)]) -> Result<Value, ReadError> {
    let kind = xstr(hash, "type");
    if let Some(kind @ ("symbol" | "yaml")) = kind {
        return Err(xml_error(format!("disallowed type attribute: {kind:?}")));
    }
    let content = xget(hash, "__content__");
    if kind == Some("array") {
        let entries = hash.iter().find(|(_, v)| !matches!(v, XVal::Str(_)));
        let empty_content = matches!(content, Some(XVal::Str(s)) if s.is_empty());
        return Ok(match entries {
            None => Value::Array(Vec::new()),
            Some(_) if empty_content => Value::Array(Vec::new()),
            Some((_, XVal::Arr(list))) => {
                Value::Array(list.iter().map(deep_to_h).collect::<Result<_, _>>()?)
            }
            Some((_, entry)) => Value::Array(vec![deep_to_h(entry)?]),
        });
    }
    let present = matches!(content, Some(XVal::Str(s)) if !blank(s));
    if kind == Some("file") || (content.is_some() && (hash.len() == 1 || present)) {
        let content = match content {
            Some(XVal::Str(s)) => s.as_str(),
            _ => return Ok(Value::Null),
        };
        return Ok(typecast(kind, content, hash));
    }
    if kind == Some("string") && xstr(hash, "nil") != Some("true") {
        return Ok(Value::String(String::new()));
    }
    if hash.is_empty() || xstr(hash, "nil") == Some("true") {
        return Ok(Value::Null);
    }
    if kind.is_some() && hash.len() == 1 {
        return Ok(Value::Null);
    }
    let mut map = Params::new();
    for (key, value) in hash {
        map.insert(key.clone(), deep_to_h(value)?);
    }
    Ok(Value::Object(map))
}

/// XmlMini's PARSING of a typed element's content (the types a password could hide behind).
fn typecast(kind: Option<&str>, content: &str, hash: &[(String, XVal)]) -> Value {
    use base64::Engine as _;
    let base64 = |s: &str| {
        let cleaned: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '+' || *c == '/')
            .collect();
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(cleaned.as_bytes())
            .unwrap_or_default();
        Value::String(String::from_utf8_lossy(&decoded).into_owned())
    };
    match kind {
        Some("integer") => Value::Number(ruby_to_i(content).into()),
        Some("float" | "double") => Number::from_f64(ruby_to_f(content))
            .map_or_else(|| Value::String(content.to_owned()), Value::Number),
        Some("boolean") => Value::Bool(matches!(content.trim(), "1" | "true")),
        Some("base64Binary") => base64(content),
        Some("binary") if xstr(hash, "encoding") == Some("base64") => base64(content),
        _ => Value::String(content.to_owned()),
    }
}

/// Ruby's `String#to_i`.
fn ruby_to_i(s: &str) -> i64 {
    let s = s.trim_start();
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut value: i64 = 0;
    let mut previous_underscore = false;
    for (i, c) in digits.chars().enumerate() {
        match c {
            '0'..='9' => {
                value = value
                    .saturating_mul(10)
                    .saturating_add(i64::from(c as u8 - b'0'));
                previous_underscore = false;
            }
            '_' if i > 0 && !previous_underscore => previous_underscore = true,
            _ => break,
        }
    }
    if negative {
        -value
    } else {
        value
    }
}

/// Ruby's `String#to_f`, for plain decimal numbers.
fn ruby_to_f(s: &str) -> f64 {
    let s = s.trim_start();
    let end = s
        .char_indices()
        .take_while(|(i, c)| {
            c.is_ascii_digit() || *c == '.' || ((*c == '-' || *c == '+') && *i == 0)
        })
        .map(|(i, c)| i + c.len_utf8())
        .last()
        .unwrap_or(0);
    s[..end].parse().unwrap_or(0.0)
}

/// An XML body's parameters: `Hash.from_xml(body) || {}`.
fn xml_params(body: &[u8]) -> Result<Params, ReadError> {
    let text = std::str::from_utf8(body).map_err(|_| xml_error("not UTF-8"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parser = XmlParser { s: text, pos: 0 };
    parser.skip_misc()?;
    if parser.rest().is_empty() {
        return Err(xml_error("the document does not have a valid root"));
    }
    let root = parser.element(XML_DEPTH_LIMIT)?;
    parser.skip_misc()?;
    if !parser.rest().is_empty() {
        return Err(xml_error("content after the root element"));
    }
    let top = XVal::Hash(vec![(local_name(&root.name), collapse(&root))]);
    match compact(deep_to_h(&top)?) {
        Value::Object(map) => Ok(map),
        _ => Err(xml_error("the document is not a hash")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req<'a>(
        method: &'a str,
        target: &'a str,
        content_type: Option<&'a str>,
        body: &'a str,
    ) -> Reading {
        read(&RailsRequest {
            method,
            target,
            content_type,
            method_override: None,
            body: body.as_bytes(),
        })
    }

    fn action(method: &str, path: &str) -> Option<&'static str> {
        recognize(method, path).map(|(action, _)| action.name())
    }

    #[test]
    fn routes_take_formats_slashes_and_escapes_as_journey_does() {
        for path in [
            "/aspera/faspex/login",
            "/aspera/faspex/login.json",
            "/aspera/faspex/login.json/",
            "/aspera/faspex/login.x-y",
            "/aspera/faspex/login.a_b",
            "//aspera/faspex/login",
            "/aspera//faspex///login/",
            "/aspera/faspex/%6cogin",
            "/aspera/faspex/login%2Ejson",
        ] {
            assert_eq!(action("GET", path), Some("sessions#create"), "{path}");
        }
        for path in [
            "/aspera/faspex/Login",
            "/aspera/faspex/login.",
            "/aspera/faspex/login.a.b",
            "/aspera/faspex/loginx",
        ] {
            assert_eq!(action("POST", path), Some("errors#not_found"), "{path}");
        }
        assert_eq!(action("GET", "/"), None);
        let (_, params) = recognize("GET", "/aspera/faspex/received/40%34%34.xml").unwrap();
        assert_eq!(params["id"], "4044");
        assert_eq!(params["format"], "xml");
        let (_, params) = recognize("GET", "/aspera/faspex/api/v1/me.json").unwrap();
        assert_eq!(params["path"], "v1/me");
        assert_eq!(params["format"], "json");
        assert_eq!(
            action("PUT", "/aspera/faspex/send"),
            Some("errors#not_found")
        );
        assert_eq!(
            action("HEAD", "/aspera/faspex/send"),
            Some("deliveries#new")
        );
        assert_eq!(
            action("PATCH", "/aspera/faspex/account/password"),
            Some("passwords#update")
        );
    }

    #[test]
    fn query_wins_over_the_body_and_keys_nest_like_rack() {
        let reading = req(
            "POST",
            "/aspera/faspex/login?user[name]=q",
            Some("application/x-www-form-urlencoded"),
            "user[name]=ann&user[password]=apple",
        );
        assert_eq!(reading.action, Some(Action::Login));
        assert_eq!(reading.param(&["user", "name"]), Some("q"));
        assert_eq!(reading.param(&["user", "password"]), None);

        let reading = req(
            "GET",
            "/aspera/faspex/login?user]name=ann;user[password=apple",
            None,
            "",
        );
        assert_eq!(reading.param(&["user", "name"]), Some("ann"));
        assert_eq!(reading.param(&["user", "password"]), Some("apple"));

        // A type clash is a 400, except in a POST without a Content-Type: Rack::MethodOverride
        // swallows the error, and Rails then reads no body at all.
        let clash = "user%5Bname%5D=a+b&user[password][]=x&user[][password]=y&user[password]=z";
        let form = Some("application/x-www-form-urlencoded");
        assert!(req("POST", "/aspera/faspex/login", form, clash)
            .params
            .is_err());
        let reading = req("POST", "/aspera/faspex/login", None, clash);
        assert_eq!(reading.value(&["user"]), None, "{reading:?}");
        assert!(reading.params.is_ok());

        let reading = req(
            "POST",
            "/x",
            None,
            "a[][b]=1&a[][c]=2&a[][b]=3&n&l[]&e=&%62=B",
        );
        let params = reading.params.unwrap();
        assert_eq!(params["a"], json!([{"b": "1", "c": "2"}, {"b": "3"}]));
        assert_eq!(params["n"], Value::Null);
        assert_eq!(params["l"], json!([]));
        assert_eq!(params["e"], "");
    }

    #[test]
    fn rails_3_splits_bodies_on_semicolons_and_reads_xml_and_json() {
        let reading = req(
            "POST",
            "/aspera/faspex/login",
            Some("application/x-www-form-urlencoded"),
            "user[name]=ann;user[password]=apple",
        );
        assert_eq!(reading.param(&["user", "password"]), Some("apple"));
        let reading = req(
            "POST",
            "/aspera/faspex/login",
            Some("application/xml"),
            "<?xml version=\"1.0\"?><user><name>ann</name><password>app&amp;le</password></user>",
        );
        assert_eq!(reading.param(&["user", "password"]), Some("app&le"));
        let reading = req(
            "POST",
            "/aspera/faspex/login.json",
            Some("application/json; charset=utf-8"),
            r#"{"user": /* hi */ {"name": "ann", "password": "apple"}}"#,
        );
        assert_eq!(reading.param(&["user", "password"]), Some("apple"));
        assert_eq!(reading.param(&["session", "user", "name"]), Some("ann"));
        assert_eq!(reading.param(&["format"]), Some("json"));
        let reading = req(
            "POST",
            "/aspera/faspex/login",
            Some("application/json"),
            "{",
        );
        assert!(matches!(reading.params, Err(ReadError::Json(_))));
    }

    #[test]
    fn method_override_reads_the_form_body() {
        let reading = req(
            "POST",
            "/aspera/faspex/account/password",
            Some("application/x-www-form-urlencoded"),
            "_method=put&user[current_password]=a",
        );
        assert_eq!(reading.method, "PUT");
        assert_eq!(reading.action, Some(Action::UpdatePassword));
        let reading = req(
            "POST",
            "/aspera/faspex/account/password",
            Some("application/json"),
            r#"{"_method":"put"}"#,
        );
        assert_eq!(reading.method, "POST");
        assert_eq!(reading.action, Some(Action::NotFound));
        let reading = req("POST", "/aspera/faspex/login", None, "_method=link");
        assert_eq!(reading.params, Err(ReadError::UnknownMethod("LINK".into())));
    }

    #[test]
    fn multipart_fields_and_files() {
        let body = "preamble\r\n--XX\r\nContent-Disposition: form-data; name=\"user[password]\"\r\n\r\napple\r\n\
                    --XX\r\nContent-Disposition: form-data; name=user[name]\r\n\r\nann\r\n\
                    --XX\r\nContent-Disposition: form-data; name=\"f\"; filename=\"C:\\\\x\\\\a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XX--\r\n";
        let reading = req(
            "POST",
            "/aspera/faspex/login",
            Some("multipart/form-data; boundary=XX"),
            body,
        );
        let params = reading.params.unwrap();
        // Rack 1 reads an unquoted name up to a `"` or `;`, over the line's end: `user[name]\r\n`.
        assert_eq!(params["user"]["password"], "apple");
        assert_eq!(params["user"]["name"]["\r\n"], "ann");
        assert_eq!(params["f"]["content"], "hello");
        // Rack 1's patterns: the last `name=` after white space (Ruby's `\s`, a vertical tab
        // included), and a boundary in lower case (else the body is read as a form,
        // `&`-separated pairs inside a part included).
        for (content_type, body, keys) in [
            (
                "multipart/form-data; boundary=XX",
                "--XX\r\nContent-Disposition: form-data; name=\"x name=password\"\r\n\r\nguess\r\n--XX--\r\n",
                &["password"][..],
            ),
            (
                "multipart/form-data; Boundary=XX",
                "--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n&user[password]=guess&\r\n--XX--\r\n",
                &["user", "password"][..],
            ),
            (
                "multipart/form-data; boundary=XX",
                "--XX\r\nContent-Disposition: form-data;\x0bname=\"password\"\r\n\r\nguess\r\n--XX--\r\n",
                &["password"][..],
            ),
        ] {
            let reading = req("POST", "/aspera/faspex/login", Some(content_type), body);
            assert_eq!(reading.param(keys), Some("guess"), "{content_type}: {body:?}");
        }
        // No boundary: the body is read as a urlencoded form.
        let reading = req(
            "POST",
            "/aspera/faspex/login",
            Some("multipart/form-data"),
            "user[password]=apple",
        );
        assert_eq!(reading.param(&["user", "password"]), Some("apple"));
    }

    #[test]
    fn xml_typecasts_like_active_support() {
        let params = xml_params(
            br#"<user><name>ann</name><password type="integer">12</password><x/><y nil="true"/><a><b>1</b><b>2</b></a><c type="array"><d>1</d></c><e k="v">t</e><f k="v"/><g-h>1</g-h></user>"#,
        )
        .unwrap();
        assert_eq!(
            Value::Object(params),
            json!({"user": {"name": "ann", "password": 12, "x": null, "y": null, "a": {"b": ["1", "2"]},
                            "c": ["1"], "e": "t", "f": {"k": "v"}, "g_h": "1"}})
        );
        assert!(xml_params(b"<a type=\"yaml\">x</a>").is_err());
        assert!(xml_params(b"<a><b></a>").is_err());
        let params =
            xml_params(b"<user><password type=\"base64Binary\">YXBwbGU=</password></user>")
                .unwrap();
        assert_eq!(params["user"]["password"], "apple");
    }
}
