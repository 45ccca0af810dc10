//! The Faspex 4 application under `/aspera/faspex`, and the request entry point of the emulator.
//!
//! `handle` records the request, routes it, turns any [`Fault`] into a response and stamps
//! `X-IBM-Aspera` on whatever goes out. Static assets are served first (Apache serves Rails'
//! `public/` folder before Rails sees a request); everything else is read by [`rails::read`]
//! exactly as Rails 3 reads it (routes for every method, `.format` suffixes, squeezed slashes,
//! method override, parameters from the query and any body) and dispatched on its action:
//!
//! * **login**: the login page, the form login (session cookie; it runs for every method and
//!   reads `user[name]`/`user[password]` wherever Rails finds them), logout, the OAuth2 token grant
//!   (HTTP Basic, or `username`/`password` parameters);
//! * **protected**: mailboxes, packages, the JSON documents, `issue-token`, `send`, `/api/…`, the
//!   account page and the two password forms (an administrator creating a local account, a user
//!   changing a local password), reachable with a `_faspex_session` cookie, HTTP Basic credentials
//!   or an OAuth2 bearer token. Without them an API client gets `401` with
//!   `WWW-Authenticate: Basic realm="Faspex"`, a browser a `302` to the login page;
//! * **public**: external deliveries, invitations and dropboxes (passcode in the parameters).
//!
//! Anything else is a `404`, as a Rails routing error would be. A session cookie is rotated (a new
//! value in `Set-Cookie`, the old one valid until the new one is used) on every visit to
//! `/aspera/faspex/account` and, when configured, every N requests.

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::base::{random_bytes, random_hex};
use crate::catalog::{self, Package};
use crate::emulator::{
    fold_login, Emulator, EmulatorEvent, LocalAccount, LoginFailureStyle, LoginVia, Opens, Refusal,
    Session, ACCOUNT_LOCKED_TEXT, CONCURRENT_LOGIN_TEXT, FASPEX_VERSION, LOGIN_FAILED_TEXT,
    SESSION_COOKIE,
};
use crate::gateway;
use crate::http::{
    self, accepts, base_url, content_type_is, drain, html, not_found, redirect, request_host,
    set_header, wants_xml, Fault, Resp, JSON_BODY_LIMIT,
};
use crate::pages::{self, EntryContext, Mailbox, Page, Submission};
use crate::rails::{self, Action, RailsRequest, ReadError, Reading};

/// Where the login page lives; failed logins and unauthenticated browsers are sent here.
const LOGIN_PATH: &str = "/aspera/faspex/login";

/// Where a successful login lands.
const INBOX_PATH: &str = "/aspera/faspex/inbox";

/// What Rails' HTTP Basic filter answers a request without valid credentials.
const BASIC_DENIED: &str = "HTTP Basic: Access denied.\n";

/// The `WWW-Authenticate` challenge of a `401`.
const BASIC_CHALLENGE: &str = "Basic realm=\"Faspex\"";

/// The lifetime announced for OAuth2 access tokens (not enforced).
const TOKEN_LIFETIME_SECONDS: u64 = 3600;

/// How much of a body is read before routing (Rack::MethodOverride and the parameter parsers read
/// it). Larger bodies reach only the actions that stream them (public submissions); any other
/// action answers `413`.
const PREFETCH_LIMIT: usize = JSON_BODY_LIMIT;

/// Answer one request. Never fails: faults become 4xx responses.
pub(crate) async fn handle(
    emulator: &Emulator,
    stop: watch::Receiver<bool>,
    request: Request<Incoming>,
) -> Resp {
    emulator.record_request(&request);
    let mut response = match route(emulator, stop, request).await {
        Ok(response) => response,
        Err(fault) => fault.into_response(),
    };
    response.headers_mut().insert(
        HeaderName::from_static("x-ibm-aspera"),
        HeaderValue::from_static(FASPEX_VERSION),
    );
    response
}

/// A request body as far as it was read before routing.
enum Body {
    /// All of it.
    Complete(Bytes),
    /// The first [`PREFETCH_LIMIT`] bytes or more, and the rest still to come.
    Partial(Bytes, Incoming),
}

impl Body {
    async fn prefetch(mut body: Incoming) -> Result<Body, Fault> {
        let mut head = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Fault::BadRequest("request body could not be read"))?;
            if let Some(data) = frame.data_ref() {
                head.extend_from_slice(data);
                if head.len() > PREFETCH_LIMIT {
                    return Ok(Body::Partial(head.into(), body));
                }
            }
        }
        Ok(Body::Complete(head.into()))
    }

    /// The whole body, or `413` when it is larger than the prefetch.
    fn complete(&self) -> Result<&Bytes, Fault> {
        match self {
            Body::Complete(bytes) => Ok(bytes),
            Body::Partial(..) => Err(Fault::TooLarge),
        }
    }

    /// Read the rest and count every byte.
    async fn drain(self) -> Result<u64, Fault> {
        match self {
            Body::Complete(bytes) => Ok(bytes.len() as u64),
            Body::Partial(head, rest) => Ok(head.len() as u64 + drain(rest).await?),
        }
    }
}

/// One request being answered: its head, how Rails read it, its body.
struct Call<'a> {
    emulator: &'a Emulator,
    parts: Parts,
    reading: Reading,
    body: Body,
}

impl Call<'_> {
    fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// A string parameter.
    fn param(&self, keys: &[&str]) -> Option<String> {
        self.reading.param(keys).map(str::to_owned)
    }

    /// The `:format` the request asks for (path suffix or `format` parameter).
    fn format(&self) -> Option<String> {
        self.param(&["format"]).map(|f| f.to_ascii_lowercase())
    }
}

async fn route(
    emulator: &Emulator,
    stop: watch::Receiver<bool>,
    request: Request<Incoming>,
) -> Result<Resp, Fault> {
    let path = request.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/aspera/http-gwy/") {
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        return gateway::route(emulator, stop, request, &segments).await;
    }
    // Apache serves the static files of Rails' public/ folder before Rails sees the request.
    if matches!(request.method().as_str(), "GET" | "HEAD") {
        if let Some((folder, name)) = path
            .strip_prefix("/aspera/faspex/")
            .and_then(|rest| rest.split_once('/'))
        {
            if matches!(folder, "javascripts" | "stylesheets" | "images") {
                if let Some(response) = asset(folder, name) {
                    return Ok(response);
                }
            }
        }
    }
    let (parts, body) = request.into_parts();
    let body = Body::prefetch(body).await?;
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let seen: &[u8] = match &body {
        Body::Complete(bytes) => bytes,
        Body::Partial(..) => &[],
    };
    let reading = rails::read(&RailsRequest {
        method: parts.method.as_str(),
        target: &target,
        content_type: http::header_str(&parts.headers, header::CONTENT_TYPE),
        method_override: http::header_str(&parts.headers, "x-http-method-override"),
        body: seen,
    });
    let Some(action) = reading.action else {
        if let Err(ReadError::UnknownMethod(_)) = reading.params {
            return Ok(http::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed\n".to_owned(),
            ));
        }
        return Ok(not_found(&parts.headers));
    };
    let streams = matches!(
        action,
        Action::CreateSubmission
            | Action::CreateDropboxSubmission
            | Action::NotFound
            | Action::RelayPackage
    );
    if matches!(body, Body::Partial(..)) && !streams {
        return Err(Fault::TooLarge);
    }
    // Rails refuses a request whose parameters do not parse with a 400 once the action reads them;
    // `send` reads its JSON body itself and answers its own errors.
    if let Err(error) = &reading.params {
        if !streams && action != Action::CreateDelivery {
            return Ok(http::text(StatusCode::BAD_REQUEST, format!("{error}\n")));
        }
    }
    let call = Call {
        emulator,
        parts,
        reading,
        body,
    };
    dispatch(call, action).await
}

async fn dispatch(call: Call<'_>, action: Action) -> Result<Resp, Fault> {
    let emulator = call.emulator;
    match action {
        Action::Home => return root(&call),
        Action::Login => return login(&call),
        Action::LoginForm => return Ok(login_page(None)),
        Action::Logout => return logout(&call),
        Action::OauthToken => return oauth_token(&call),
        Action::NotFound | Action::RelayPackage => return Ok(not_found(call.headers())),
        Action::ExternalDelivery => return external_delivery(&call),
        Action::NewSubmission => return Ok(submission_form(Submission::Invitation, &call)),
        Action::NewDropboxSubmission => return Ok(submission_form(Submission::Dropbox, &call)),
        Action::CreateSubmission => return submission(Submission::Invitation, call).await,
        Action::CreateDropboxSubmission => return submission(Submission::Dropbox, call).await,
        _ => {}
    }
    // Everything else needs a signed-in user.
    let Some(identity) = authenticate(emulator, call.headers(), action == Action::Account)? else {
        return unauthenticated(call.headers());
    };
    let user = identity.user.clone();
    let mut response = match action {
        Action::Inbox => mailbox(&call, &user, Mailbox::Inbox),
        Action::Sent => mailbox(&call, &user, Mailbox::Sent),
        Action::Archive => mailbox(&call, &user, Mailbox::Archive),
        Action::ReceivedPackage => package(&call, &user, Mailbox::Inbox),
        Action::SentPackage => package(&call, &user, Mailbox::Sent),
        Action::NewDelivery => Ok(html(
            StatusCode::OK,
            pages::message_page(
                "New Package",
                "Packages are sent with the Aspera Connect plug-in or the API (POST /aspera/faspex/send).",
            ),
        )),
        Action::CreateDelivery => send(&call),
        Action::Me => Ok(http::json(StatusCode::OK, &pages::me_json(&user))),
        Action::Dropboxes => Ok(http::json(StatusCode::OK, &pages::dropboxes_json())),
        Action::AddressBook => {
            let users: Vec<String> = emulator.config().users.iter().map(|(u, _)| u.clone()).collect();
            Ok(http::json(StatusCode::OK, &pages::address_book_json(&users)))
        }
        Action::IssueToken => issue_token(&call),
        Action::Api => Ok(api(&call, &user)),
        Action::Account => Ok(html(StatusCode::OK, pages::account_page(&user, None))),
        Action::AdminUsers => Ok(admin_users_page(&call, &user, &[], StatusCode::OK)),
        Action::CreateUser => create_user(&call, &user),
        Action::EditPassword => Ok(html(StatusCode::OK, pages::password_form(&user, &[]))),
        Action::UpdatePassword => update_password(&call, &user),
        _ => Ok(not_found(call.headers())),
    }?;
    if let Some(cookie) = identity.new_cookie {
        set_header(
            &mut response,
            header::SET_COOKIE,
            &format!("{SESSION_COOKIE}={cookie}; path=/; HttpOnly"),
        );
    }
    Ok(response)
}

/// `/aspera/faspex/`: the inbox for a signed-in user, else the login page.
fn root(call: &Call<'_>) -> Result<Resp, Fault> {
    let base = base_url(call.headers());
    match authenticate(call.emulator, call.headers(), false)? {
        Some(_) => redirect(&format!("{base}{INBOX_PATH}")),
        None => redirect(&format!("{base}{LOGIN_PATH}")),
    }
}

/// The login page, with a fresh Rails `authenticity_token` (not checked on the POST: the emulator
/// keeps no pre-login session to check it against).
fn login_page(flash: Option<&str>) -> Resp {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(random_bytes(32));
    html(StatusCode::OK, pages::login_page(flash, &token))
}

/// A credential parameter as Faspex's `User.authenticate` would take it: a string as is, a
/// number or boolean as Ruby's `to_s`, nothing as empty; `None` for arrays, hashes and files.
fn credential(value: Option<&Value>) -> Option<String> {
    match value {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(_) => None,
    }
}

/// The login action (`/aspera/faspex/login`, every method): `user[name]` and `user[password]`
/// from wherever Rails found them (query, form, multipart, JSON, XML). A `GET` or `HEAD` without
/// `user` shows the login page.
fn login(call: &Call<'_>) -> Result<Resp, Fault> {
    let emulator = call.emulator;
    let user = call.reading.value(&["user"]);
    if user.is_none() && matches!(call.reading.method.as_str(), "GET" | "HEAD") {
        return Ok(login_page(None));
    }
    let (name, password) = match user {
        None | Some(Value::Null) => (Some(String::new()), Some(String::new())),
        Some(Value::Object(fields)) => (
            credential(fields.get("name")),
            credential(fields.get("password")),
        ),
        // `params[:user][:name]` on a string: Rails answers 500.
        Some(_) => {
            return Ok(html(
                StatusCode::INTERNAL_SERVER_ERROR,
                pages::message_page(
                    "We're sorry, but something went wrong.",
                    "We've been notified about this issue and we'll take a look at it shortly.",
                ),
            ))
        }
    };
    let base = base_url(call.headers());
    let own_cookie = session_cookie(call.headers());
    let verdict = match (&name, &password) {
        (Some(name), Some(password)) => emulator.check_login(
            name,
            password,
            LoginVia::Form,
            Opens::Session {
                replacing: own_cookie.as_deref(),
            },
        ),
        _ => {
            // An array or a hash where a string belongs: no account matches it.
            emulator.record(EmulatorEvent::LoginAttempt {
                user: name.clone().unwrap_or_default(),
                ok: false,
                via: LoginVia::Form,
            });
            Err(Refusal::Wrong)
        }
    };
    let account = match verdict {
        Ok(account) => account,
        Err(refusal) => {
            emulator.record(EmulatorEvent::LoginRefused {
                user: name.unwrap_or_default(),
            });
            let flash = match refusal {
                Refusal::Wrong => LOGIN_FAILED_TEXT,
                Refusal::Locked | Refusal::LockedNow(_) => ACCOUNT_LOCKED_TEXT,
                Refusal::Concurrent(_) => CONCURRENT_LOGIN_TEXT,
            };
            return match emulator.config().login_failure {
                LoginFailureStyle::Rerender => Ok(login_page(Some(flash))),
                LoginFailureStyle::RedirectToLogin => redirect(&format!("{base}{LOGIN_PATH}")),
            };
        }
    };
    let cookie = random_hex(32);
    {
        let mut state = emulator.state();
        // Like Rails' reset_session on login: a session the client already had ends here.
        if let Some(old) = own_cookie {
            end_session(&mut state.sessions, &old);
        }
        state.sessions.insert(
            cookie.clone(),
            Session {
                user: account.clone(),
                requests: 0,
                successor: None,
                predecessor: None,
            },
        );
    }
    emulator.record(EmulatorEvent::Login { user: account });
    let mut response = redirect(&format!("{base}{INBOX_PATH}"))?;
    set_header(
        &mut response,
        header::SET_COOKIE,
        &format!("{SESSION_COOKIE}={cookie}; path=/; HttpOnly"),
    );
    Ok(response)
}

/// Remove a session and every value rotated from or into it; the account it signed in.
fn end_session(
    sessions: &mut std::collections::HashMap<String, Session>,
    cookie: &str,
) -> Option<String> {
    let session = sessions.remove(cookie)?;
    let mut next = session.successor.clone();
    while let Some(value) = next {
        next = sessions.remove(&value).and_then(|s| s.successor);
    }
    let mut previous = session.predecessor.clone();
    while let Some(value) = previous {
        previous = sessions.remove(&value).and_then(|s| s.predecessor);
    }
    Some(session.user)
}

/// `/aspera/faspex/logout`: end the session, expire the cookie, back to the login page.
fn logout(call: &Call<'_>) -> Result<Resp, Fault> {
    let user = session_cookie(call.headers())
        .and_then(|cookie| end_session(&mut call.emulator.state().sessions, &cookie));
    call.emulator.record(EmulatorEvent::Logout { user });
    let mut response = redirect(&format!("{}{LOGIN_PATH}", base_url(call.headers())))?;
    set_header(
        &mut response,
        header::SET_COOKIE,
        &format!("{SESSION_COOKIE}=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly"),
    );
    Ok(response)
}

/// The `_faspex_session` cookie of a request, if any.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// HTTP Basic credentials: (user, password). Malformed ones are a `400`.
fn basic_credentials(encoded: &str) -> Result<(String, String), Fault> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use base64::Engine as _;
    const MALFORMED: Fault = Fault::BadRequest("malformed HTTP Basic credentials");
    let encoded = encoded.trim();
    let decoded = STANDARD
        .decode(encoded)
        .or_else(|_| STANDARD_NO_PAD.decode(encoded))
        .map_err(|_| MALFORMED)?;
    let decoded = String::from_utf8(decoded).map_err(|_| MALFORMED)?;
    let (user, password) = decoded.split_once(':').ok_or(MALFORMED)?;
    Ok((user.to_owned(), password.to_owned()))
}

/// Who a request acts for.
struct Identity {
    user: String,
    /// A rotated session cookie value to send back.
    new_cookie: Option<String>,
}

/// The account a request acts for: from `Authorization` (Basic, checked and recorded, or an OAuth2
/// bearer token) when present, else from the session cookie. `None` when the credentials are
/// missing or wrong. A session cookie counts the request and may be rotated (always when `rotate`).
fn authenticate(
    emulator: &Emulator,
    headers: &HeaderMap,
    rotate: bool,
) -> Result<Option<Identity>, Fault> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| Fault::BadRequest("malformed Authorization header"))?
            .trim();
        let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
        let user = if scheme.eq_ignore_ascii_case("basic") {
            check_basic(emulator, credentials)?
        } else if scheme.eq_ignore_ascii_case("bearer") {
            emulator
                .state()
                .bearer_tokens
                .get(credentials.trim())
                .cloned()
        } else {
            None
        };
        return Ok(user.map(|user| Identity {
            user,
            new_cookie: None,
        }));
    }
    let Some(cookie) = session_cookie(headers) else {
        return Ok(None);
    };
    Ok(use_session(emulator, &cookie, rotate))
}

/// Use a session cookie value: its predecessor is dropped (the new value has arrived), the request
/// is counted, and the value is rotated when due. The old value stays valid until the new one is
/// used; a request with the old value meanwhile is sent the same new value again.
fn use_session(emulator: &Emulator, cookie: &str, rotate: bool) -> Option<Identity> {
    let every = emulator.config().rotate_session_every;
    let mut state = emulator.state();
    let session = state.sessions.get_mut(cookie)?;
    session.requests += 1;
    let user = session.user.clone();
    let predecessor = session.predecessor.take();
    let pending = session.successor.clone();
    let due = rotate || every.is_some_and(|n| n > 0 && session.requests % u64::from(n) == 0);
    if let Some(old) = predecessor {
        state.sessions.remove(&old);
    }
    if let Some(pending) = pending {
        return Some(Identity {
            user,
            new_cookie: Some(pending),
        });
    }
    if !due {
        return Some(Identity {
            user,
            new_cookie: None,
        });
    }
    let new = random_hex(32);
    if let Some(session) = state.sessions.get_mut(cookie) {
        session.successor = Some(new.clone());
    }
    state.sessions.insert(
        new.clone(),
        Session {
            user: user.clone(),
            requests: 0,
            successor: None,
            predecessor: Some(cookie.to_owned()),
        },
    );
    state.rotations += 1;
    drop(state);
    emulator.record(EmulatorEvent::SessionRotated {
        user: user.clone(),
        old: cookie.to_owned(),
        new: new.clone(),
    });
    Some(Identity {
        user,
        new_cookie: Some(new),
    })
}

/// Check and record HTTP Basic credentials: the account name when they are right.
fn check_basic(emulator: &Emulator, encoded: &str) -> Result<Option<String>, Fault> {
    let (user, password) = basic_credentials(encoded)?;
    let account = emulator.check_password(&user, &password, LoginVia::Basic);
    emulator.record(EmulatorEvent::BasicAuth {
        user: account.clone().unwrap_or(user),
        ok: account.is_some(),
    });
    Ok(account)
}

/// What a request without valid credentials gets: a browser (no `Authorization`, and HTML
/// accepted or a cookie sent) is sent to the login page; anyone else gets `401` and the Basic
/// challenge.
fn unauthenticated(headers: &HeaderMap) -> Result<Resp, Fault> {
    let browser = !headers.contains_key(header::AUTHORIZATION)
        && (accepts(headers, "text/html") || headers.contains_key(header::COOKIE));
    if browser {
        return redirect(&format!("{}{LOGIN_PATH}", base_url(headers)));
    }
    let mut response = http::text(StatusCode::UNAUTHORIZED, BASIC_DENIED.to_owned());
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(BASIC_CHALLENGE),
    );
    Ok(response)
}

/// The `406` of a format an action does not render.
fn not_acceptable() -> Resp {
    http::text(StatusCode::NOT_ACCEPTABLE, "Not Acceptable\n".to_owned())
}

/// The `403` of a public link with a wrong passcode.
fn forbidden_link(headers: &HeaderMap) -> Resp {
    let message = "This link is not valid. It may have expired, or the passcode is wrong.";
    if wants_xml(headers) {
        return http::xml(StatusCode::FORBIDDEN, pages::xml_error(message));
    }
    html(
        StatusCode::FORBIDDEN,
        pages::message_page("Access denied", message),
    )
}

/// The context of Atom entries answered to this request.
fn entry_context<'a>(
    base: &'a str,
    transfer_host: &'a str,
    user: &'a str,
    token: Option<&'a str>,
) -> EntryContext<'a> {
    EntryContext {
        base,
        transfer_host,
        user,
        token,
    }
}

/// `/inbox`, `/sent`, `/archive`: the HTML list, or with `.atom` (or `.xml`) the Atom feed.
fn mailbox(call: &Call<'_>, user: &str, mailbox: Mailbox) -> Result<Resp, Fault> {
    match call.format().as_deref() {
        None | Some("html") => Ok(html(
            StatusCode::OK,
            pages::mailbox_page(user, mailbox, call.emulator.catalog().packages()),
        )),
        Some("atom" | "xml") => feed(call, user, mailbox),
        Some(_) => Ok(not_acceptable()),
    }
}

/// The Atom feed of a mailbox with `count`, and `page` (from 1) or `startIndex` (from 0).
fn feed(call: &Call<'_>, user: &str, mailbox: Mailbox) -> Result<Resp, Fault> {
    let newest_first: Vec<&Package> = call.emulator.catalog().packages().iter().rev().collect();
    let page = paging(call, newest_first.len())?;
    let shown: Vec<&Package> = newest_first
        .iter()
        .skip(page.start)
        .take(page.count)
        .copied()
        .collect();
    let base = base_url(call.headers());
    let host = request_host(call.headers());
    let cx = entry_context(&base, &host, user, None);
    Ok(http::atom(pages::atom_feed(
        mailbox,
        &shown,
        newest_first.len(),
        &page,
        &cx,
    )))
}

/// The slice of a feed the parameters ask for.
fn paging(call: &Call<'_>, total: usize) -> Result<Page, Fault> {
    let number = |name: &str| -> Result<Option<usize>, Fault> {
        call.param(&[name])
            .map(|value| {
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| Fault::BadRequest("count, page and startIndex must be numbers"))
            })
            .transpose()
    };
    let count = number("count")?.unwrap_or(10);
    if count == 0 || count > 100_000 {
        return Err(Fault::BadRequest("count must be between 1 and 100000"));
    }
    if let Some(start) = number("startIndex")? {
        let next = start.saturating_add(count);
        return Ok(Page {
            start,
            count,
            next_query: (next < total).then(|| format!("startIndex={next}&count={count}")),
            self_query: format!("startIndex={start}&count={count}"),
        });
    }
    let page = number("page")?.unwrap_or(1);
    if page == 0 {
        return Err(Fault::BadRequest("page starts at 1"));
    }
    let start = (page - 1).saturating_mul(count);
    let more = start.saturating_add(count) < total;
    Ok(Page {
        start,
        count,
        next_query: more.then(|| format!("page={}&count={count}", page + 1)),
        self_query: format!("page={page}&count={count}"),
    })
}

/// A link that downloads `package` through the HTTP Gateway, with a fresh transfer token.
fn download_href(package: &Package) -> String {
    format!(
        "/aspera/http-gwy/v1/download/{}?token={}",
        package.id,
        catalog::transfer_token()
    )
}

/// `/received/{id}` and `/sent/{id}`: an Atom entry for XML clients (or `.xml`), HTML otherwise.
fn package(call: &Call<'_>, user: &str, mailbox: Mailbox) -> Result<Resp, Fault> {
    let headers = call.headers();
    let Some(package) = call
        .param(&["id"])
        .and_then(|id| id.parse::<u64>().ok())
        .and_then(|id| call.emulator.catalog().package(id))
    else {
        return Ok(not_found(headers));
    };
    let xml = match call.format().as_deref() {
        None => wants_xml(headers),
        Some("xml" | "atom") => true,
        Some("html") => false,
        Some(_) => return Ok(not_acceptable()),
    };
    if xml {
        let base = base_url(headers);
        let host = request_host(headers);
        let cx = entry_context(&base, &host, user, None);
        return Ok(http::xml(
            StatusCode::OK,
            pages::atom_entry(package, mailbox, &cx, true),
        ));
    }
    Ok(html(
        StatusCode::OK,
        pages::package_page(user, package, &download_href(package)),
    ))
}

/// `POST /issue-token?direction=down|up` with an `application/vnd.aspera.url-list+xml` body:
/// a transfer token, as plain text.
fn issue_token(call: &Call<'_>) -> Result<Resp, Fault> {
    if !content_type_is(call.headers(), "application/vnd.aspera.url-list+xml") {
        return Err(Fault::UnsupportedMediaType(
            "expected Content-Type: application/vnd.aspera.url-list+xml",
        ));
    }
    match call.param(&["direction"]).as_deref() {
        Some("down" | "up") => {}
        _ => return Err(Fault::BadRequest("direction must be down or up")),
    }
    let body = call.body.complete()?;
    let body = std::str::from_utf8(body).map_err(|_| Fault::BadRequest("url-list is not UTF-8"))?;
    if !(body.contains("<url-list") && body.contains("<url") && body.contains("href=")) {
        return Err(Fault::BadRequest(
            "expected an url-list naming at least one url",
        ));
    }
    Ok(http::text(StatusCode::OK, catalog::transfer_token()))
}

/// `POST /send` with `{"delivery":{"title":…,"recipients":[…],…}}`: a transfer spec for the
/// upload. Problems come back as `200` with `{"error":{"user_message":…}}`, as Faspex does.
fn send(call: &Call<'_>) -> Result<Resp, Fault> {
    let body = call.body.complete()?;
    let error = |user_message: &str, internal: &str| {
        Ok(http::json(
            StatusCode::OK,
            &pages::send_error(user_message, internal),
        ))
    };
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => return error("The package could not be created.", &e.to_string()),
    };
    let Some(delivery) = value.get("delivery").and_then(Value::as_object) else {
        return error("The package could not be created.", "missing delivery");
    };
    let title = delivery.get("title").and_then(Value::as_str).unwrap_or("");
    if title.trim().is_empty() {
        return error("Title can't be blank", "delivery.title is missing or empty");
    }
    let recipients = delivery
        .get("recipients")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Value::as_str).count())
        .unwrap_or(0);
    if recipients == 0 {
        return error(
            "Please specify at least one recipient",
            "delivery.recipients is missing or empty",
        );
    }
    let id = {
        let mut state = call.emulator.state();
        state.packages_sent += 1;
        5000 + state.packages_sent
    };
    let base = base_url(call.headers());
    let host = request_host(call.headers());
    Ok(http::json(
        StatusCode::OK,
        &json!({
            "delivery_id": id,
            "xfer_sessions": [{
                "direction": "send",
                "remote_host": host,
                "remote_user": "faspex",
                "ssh_port": 33001,
                "fasp_port": 33001,
                "authentication": "token",
                "token": catalog::transfer_token(),
                "cookie": format!("aspera.faspex20:u:{id}"),
                "target_rate_kbps": 45000,
                "min_rate_kbps": 0,
                "rate_policy": "fair",
                "cipher": "aes-128",
                "http_fallback": true,
                "http_fallback_port": 443,
                "create_dir": true,
                "destination_root": "/",
                "paths": [{"destination": format!("PKG - {title}")}]
            }],
            "links": {"status": format!("{base}/aspera/faspex/sent/{id}")}
        }),
    ))
}

/// The OAuth2 token grant (`/auth/oauth2/token`, every method): HTTP Basic credentials, or
/// `username`/`password` parameters from wherever Rails found them, and `grant_type=password`.
/// An access token for the `/api/…` routes.
fn oauth_token(call: &Call<'_>) -> Result<Resp, Fault> {
    let emulator = call.emulator;
    let basic = http::header_str(call.headers(), header::AUTHORIZATION)
        .map(str::trim)
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, credentials)| credentials.to_owned());
    let account = match basic {
        Some(credentials) => check_basic(emulator, &credentials)?,
        None => match (
            call.reading.value(&["username"]),
            call.reading.value(&["password"]),
        ) {
            (None, None) => None,
            (username, password) => match (credential(username), credential(password)) {
                (Some(username), Some(password)) => {
                    emulator.check_password(&username, &password, LoginVia::Token)
                }
                (username, _) => {
                    emulator.record(EmulatorEvent::LoginAttempt {
                        user: username.unwrap_or_default(),
                        ok: false,
                        via: LoginVia::Token,
                    });
                    None
                }
            },
        },
    };
    let Some(account) = account else {
        let mut response = http::json(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "invalid_client"}),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(BASIC_CHALLENGE),
        );
        return Ok(response);
    };
    if call.param(&["grant_type"]).as_deref() != Some("password") {
        return Ok(http::json(
            StatusCode::BAD_REQUEST,
            &json!({"error": "unsupported_grant_type"}),
        ));
    }
    let token = random_hex(32);
    emulator
        .state()
        .bearer_tokens
        .insert(token.clone(), account);
    Ok(http::json(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": TOKEN_LIFETIME_SECONDS,
            "scope": call.param(&["scope"]).unwrap_or_else(|| "admin".to_owned())
        }),
    ))
}

/// The v4 API under `/api/…`: `GET /api/v1/me` (also `/api/me`) and `GET /api/users`.
fn api(call: &Call<'_>, user: &str) -> Resp {
    let users = &call.emulator.config().users;
    let id_of = |name: &str| {
        users
            .iter()
            .position(|(u, _)| u == name)
            .map_or(0, |i| i + 1)
    };
    let path = call.param(&["path"]).unwrap_or_default();
    let rest: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (call.reading.method.as_str(), rest.as_slice()) {
        ("GET", ["v1", "me"] | ["me"]) => {
            http::json(StatusCode::OK, &pages::api_user_json(id_of(user), user))
        }
        ("GET", ["users"] | ["v1", "users"]) => {
            let list: Vec<Value> = users
                .iter()
                .map(|(name, _)| pages::api_user_json(id_of(name), name))
                .collect();
            http::json(StatusCode::OK, &Value::Array(list))
        }
        _ => http::json(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

/// The admin page listing every account, with `errors` above the "new local user" form.
fn admin_users_page(call: &Call<'_>, user: &str, errors: &[&str], status: StatusCode) -> Resp {
    let mut accounts: Vec<String> = call
        .emulator
        .config()
        .users
        .iter()
        .map(|(u, _)| u.clone())
        .collect();
    accounts.extend(call.emulator.local_accounts());
    html(status, pages::admin_users_page(user, &accounts, errors))
}

/// `POST /admin/users` with `user[login]`, `user[email]`, `user[password]` and
/// `user[password_confirmation]`: a local collaborator account, which can then log in. The
/// emulator has no roles: any signed-in user administers.
fn create_user(call: &Call<'_>, by: &str) -> Result<Resp, Fault> {
    let field = |name: &str| call.param(&["user", name]).unwrap_or_default();
    let (login, email, password, confirmation) = (
        field("login"),
        field("email"),
        field("password"),
        field("password_confirmation"),
    );
    let mut errors = Vec::new();
    let taken = call.emulator.is_directory_user(&login)
        || call
            .emulator
            .state()
            .local_accounts
            .contains_key(&fold_login(&login));
    if login.trim().is_empty() {
        errors.push("Login can't be blank");
    } else if taken {
        errors.push("Login has already been taken");
    }
    if !email.contains('@') {
        errors.push("Email is invalid");
    }
    if password.is_empty() {
        errors.push("Password can't be blank");
    } else if password != confirmation {
        errors.push("Password doesn't match confirmation");
    }
    if !errors.is_empty() {
        return Ok(admin_users_page(
            call,
            by,
            &errors,
            StatusCode::UNPROCESSABLE_ENTITY,
        ));
    }
    call.emulator.state().local_accounts.insert(
        fold_login(&login),
        LocalAccount {
            login: login.clone(),
            password,
        },
    );
    call.emulator.record(EmulatorEvent::LocalAccountCreated {
        by: by.to_owned(),
        login,
    });
    redirect(&format!(
        "{}/aspera/faspex/admin/users",
        base_url(call.headers())
    ))
}

/// `PUT /account/password` (a form `POST` with `_method=put`) with `user[current_password]`,
/// `user[password]` and `user[password_confirmation]`. Only local accounts have a password here;
/// a directory user's is the directory's.
fn update_password(call: &Call<'_>, user: &str) -> Result<Resp, Fault> {
    let refuse = |errors: &[&str]| {
        Ok(html(
            StatusCode::UNPROCESSABLE_ENTITY,
            pages::password_form(user, errors),
        ))
    };
    if call.emulator.is_directory_user(user) {
        return refuse(&["Your password is managed by your organization's directory"]);
    }
    let current = call
        .param(&["user", "current_password"])
        .unwrap_or_default();
    let password = call.param(&["user", "password"]).unwrap_or_default();
    let confirmation = call
        .param(&["user", "password_confirmation"])
        .unwrap_or_default();
    if call
        .emulator
        .check_password(user, &current, LoginVia::CurrentPassword)
        .is_none()
    {
        return refuse(&["Current password is incorrect"]);
    }
    if password.is_empty() {
        return refuse(&["Password can't be blank"]);
    }
    if password != confirmation {
        return refuse(&["Password doesn't match confirmation"]);
    }
    if let Some(account) = call
        .emulator
        .state()
        .local_accounts
        .get_mut(&fold_login(user))
    {
        account.password = password;
    }
    call.emulator.record(EmulatorEvent::PasswordChanged {
        user: user.to_owned(),
    });
    redirect(&format!(
        "{}/aspera/faspex/account",
        base_url(call.headers())
    ))
}

/// `GET /javascripts/…`, `/stylesheets/…`, `/images/…`: `None` for a file that is not there.
fn asset(folder: &str, name: &str) -> Option<Resp> {
    let (content_type, body) = pages::asset(folder, name)?;
    let mut response = http::respond(StatusCode::OK, content_type, http::full(body));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000"),
    );
    Some(response)
}

/// `/external_deliveries/{id}?passcode=…`: the package for an outside recipient, without an
/// account. A wrong or missing passcode is a `403`, an unknown delivery a `404`. `expiration` is
/// accepted and ignored.
fn external_delivery(call: &Call<'_>) -> Result<Resp, Fault> {
    let headers = call.headers();
    let catalog = call.emulator.catalog();
    let Some(delivery) = call
        .param(&["id"])
        .and_then(|id| id.parse::<u64>().ok())
        .and_then(|id| catalog.external_delivery(id))
    else {
        return Ok(not_found(headers));
    };
    if call.param(&["passcode"]).as_deref() != Some(delivery.passcode) {
        return Ok(forbidden_link(headers));
    }
    let Some(package) = catalog.package(delivery.package_id) else {
        return Ok(not_found(headers));
    };
    let xml = wants_xml(headers) || matches!(call.format().as_deref(), Some("xml" | "atom"));
    if xml {
        let base = base_url(headers);
        let host = request_host(headers);
        let token = catalog::transfer_token();
        let cx = entry_context(&base, &host, delivery.recipient, Some(&token));
        return Ok(http::xml(
            StatusCode::OK,
            pages::atom_entry(package, Mailbox::Inbox, &cx, true),
        ));
    }
    Ok(html(
        StatusCode::OK,
        pages::external_delivery_page(package, &download_href(package)),
    ))
}

/// The passcode of a public submission link: `passcode=`, or `token=` in some versions.
fn link_passcode(call: &Call<'_>) -> Option<String> {
    call.param(&["passcode"]).or_else(|| call.param(&["token"]))
}

/// `/external/submissions/new` and `/external/dropbox_submissions/new`: the upload form.
fn submission_form(kind: Submission, call: &Call<'_>) -> Resp {
    let expected = match kind {
        Submission::Invitation => catalog::INVITATION_PASSCODE,
        Submission::Dropbox => catalog::DROPBOX_PASSCODE,
    };
    match link_passcode(call) {
        Some(passcode) if passcode == expected => {
            html(StatusCode::OK, pages::submission_form(kind, &passcode))
        }
        _ => not_found(call.headers()),
    }
}

/// `POST /external/submissions` and `/external/dropbox_submissions`: the body (of any size) is
/// drained and counted, and a confirmation page says how many bytes arrived.
async fn submission(kind: Submission, call: Call<'_>) -> Result<Resp, Fault> {
    let bytes = call.body.drain().await?;
    Ok(html(
        StatusCode::OK,
        pages::submission_received(kind, bytes),
    ))
}
