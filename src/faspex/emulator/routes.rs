//! The Faspex 4 application under `/aspera/faspex`, and the request entry point of the emulator.
//!
//! `handle` records the request, routes it, turns any [`Fault`] into a response and stamps
//! `X-IBM-Aspera` on whatever goes out. The routes fall in three groups:
//!
//! * **login**: the login page, the form login (session cookie), logout, the OAuth2 token grant;
//! * **protected**: mailboxes, packages, the JSON documents, `issue-token`, `send` and `/api/…`,
//!   reachable with a `_faspex_session` cookie, HTTP Basic credentials or an OAuth2 bearer token.
//!   Without them an API client gets `401` with `WWW-Authenticate: Basic realm="Faspex"` ("Faspex
//!   returns a HTTP response code of 401 Unauthorized for any request that does not contain valid
//!   credentials"), a browser a `302` to the login page;
//! * **public**: external deliveries, invitations and dropboxes (passcode in the query), static assets.
//!
//! Any other path or method is a `404`, as a Rails routing error would be.

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::catalog::{self, Package};
use super::http::{
    self, accepts, base_url, content_type_is, drain, html, query_param, read_limited, redirect,
    request_host, set_header, wants_xml, Fault, Resp, JSON_BODY_LIMIT, SMALL_BODY_LIMIT,
};
use super::pages::{self, EntryContext, Mailbox, Page, Submission};
use super::{
    gateway, Emulator, EmulatorEvent, LoginFailureStyle, FASPEX_VERSION, LOGIN_FAILED_TEXT,
    SESSION_COOKIE,
};

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

/// Answer one request. Never fails: faults become 4xx responses.
pub(super) async fn handle(
    emulator: &Emulator,
    stop: watch::Receiver<bool>,
    request: Request<Incoming>,
) -> Resp {
    let path_and_query = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |pq| pq.as_str().to_owned(),
    );
    emulator.record(EmulatorEvent::Request {
        method: request.method().to_string(),
        path_and_query,
    });
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

/// The non-empty segments of a path.
fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// The pages that need a signed-in user.
#[derive(Clone, Copy, Debug)]
enum Protected<'a> {
    /// The HTML list of a mailbox (`/inbox`, `/sent`, `/archive`).
    MailboxPage(Mailbox),
    /// The Atom feed of a mailbox (`/inbox.atom`, …).
    Feed(Mailbox),
    /// One package (`/received/{id}`, `/sent/{id}`): HTML, or an Atom entry for XML clients.
    Package(Mailbox, &'a str),
    /// The "New Package" page (`GET /send`).
    NewPackage,
    Me,
    Dropboxes,
    AddressBook,
    IssueToken,
    Send,
    /// The OAuth2 API (`/api/…`): the path after `api`.
    Api(&'a [&'a str]),
}

async fn route(
    emulator: &Emulator,
    stop: watch::Receiver<bool>,
    request: Request<Incoming>,
) -> Result<Resp, Fault> {
    let path = request.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/aspera/http-gwy/") {
        return gateway::route(emulator, stop, request, &segments(rest)).await;
    }
    let rest = match path.strip_prefix("/aspera/faspex") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => return Ok(not_found(request.headers())),
    };
    let segments = segments(rest);
    let method = request.method().clone();
    let protected = match (&method, segments.as_slice()) {
        (&Method::GET, []) => return root(emulator, &request),
        (&Method::GET, ["login"] | ["login", "new"]) => return Ok(login_page(None)),
        (&Method::POST, ["login"]) => return login(emulator, request).await,
        (&Method::GET | &Method::POST | &Method::DELETE, ["logout"]) => {
            return logout(emulator, &request)
        }
        (&Method::POST, ["auth", "oauth2", "token"]) => {
            return oauth_token(emulator, request).await
        }
        (&Method::GET, [folder @ ("javascripts" | "stylesheets" | "images"), name]) => {
            return Ok(asset(folder, name, request.headers()))
        }
        (&Method::GET, ["external_deliveries", id]) => {
            return external_delivery(emulator, &request, id)
        }
        (&Method::GET, ["external", "submissions", "new"]) => {
            return Ok(submission_form(Submission::Invitation, &request))
        }
        (&Method::POST, ["external", "submissions"]) => {
            return submission(Submission::Invitation, request).await
        }
        (&Method::GET, ["external", "dropbox_submissions", "new"]) => {
            return Ok(submission_form(Submission::Dropbox, &request))
        }
        (&Method::POST, ["external", "dropbox_submissions"]) => {
            return submission(Submission::Dropbox, request).await
        }
        (&Method::GET, ["inbox"]) => Protected::MailboxPage(Mailbox::Inbox),
        (&Method::GET, ["sent"]) => Protected::MailboxPage(Mailbox::Sent),
        (&Method::GET, ["archive"]) => Protected::MailboxPage(Mailbox::Archive),
        (&Method::GET, ["inbox.atom"]) => Protected::Feed(Mailbox::Inbox),
        (&Method::GET, ["sent.atom"]) => Protected::Feed(Mailbox::Sent),
        (&Method::GET, ["archive.atom"]) => Protected::Feed(Mailbox::Archive),
        (&Method::GET, ["received", id]) => Protected::Package(Mailbox::Inbox, id),
        (&Method::GET, ["sent", id]) => Protected::Package(Mailbox::Sent, id),
        (&Method::GET, ["send"]) => Protected::NewPackage,
        (&Method::GET, ["me"]) => Protected::Me,
        (&Method::GET, ["dropboxes"]) => Protected::Dropboxes,
        (&Method::GET, ["address-book"]) => Protected::AddressBook,
        (&Method::POST, ["issue-token"]) => Protected::IssueToken,
        (&Method::POST, ["send"]) => Protected::Send,
        (_, ["api", rest @ ..]) => Protected::Api(rest),
        _ => return Ok(not_found(request.headers())),
    };
    let Some(user) = authenticate(emulator, request.headers())? else {
        return unauthenticated(request.headers());
    };
    match protected {
        Protected::MailboxPage(mailbox) => Ok(html(
            StatusCode::OK,
            pages::mailbox_page(&user, mailbox, emulator.catalog().packages()),
        )),
        Protected::Feed(mailbox) => feed(emulator, &request, &user, mailbox),
        Protected::Package(mailbox, id) => package(emulator, &request, &user, mailbox, id),
        Protected::NewPackage => Ok(html(
            StatusCode::OK,
            pages::message_page(
                "New Package",
                "Packages are sent with the Aspera Connect plug-in or the API (POST /aspera/faspex/send).",
            ),
        )),
        Protected::Me => Ok(http::json(StatusCode::OK, &pages::me_json(&user))),
        Protected::Dropboxes => Ok(http::json(StatusCode::OK, &pages::dropboxes_json())),
        Protected::AddressBook => {
            let users: Vec<String> = emulator.config().users.iter().map(|(u, _)| u.clone()).collect();
            Ok(http::json(StatusCode::OK, &pages::address_book_json(&users)))
        }
        Protected::IssueToken => issue_token(request).await,
        Protected::Send => send(emulator, request).await,
        Protected::Api(rest) => Ok(api(emulator, &method, rest, &user)),
    }
}

/// `GET /aspera/faspex/`: the inbox for a signed-in user, else the login page.
fn root(emulator: &Emulator, request: &Request<Incoming>) -> Result<Resp, Fault> {
    let base = base_url(request.headers());
    match authenticate(emulator, request.headers())? {
        Some(_) => redirect(&format!("{base}{INBOX_PATH}")),
        None => redirect(&format!("{base}{LOGIN_PATH}")),
    }
}

/// The login page, with a fresh Rails `authenticity_token` (not checked on the POST: the emulator
/// keeps no pre-login session to check it against).
fn login_page(flash: Option<&str>) -> Resp {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(http::random_bytes(32));
    html(StatusCode::OK, pages::login_page(flash, &token))
}

/// `POST /aspera/faspex/login`: a form with `user[name]` and `user[password]`.
async fn login(emulator: &Emulator, request: Request<Incoming>) -> Result<Resp, Fault> {
    if !content_type_is(request.headers(), "application/x-www-form-urlencoded") {
        return Err(Fault::UnsupportedMediaType(
            "expected Content-Type: application/x-www-form-urlencoded",
        ));
    }
    let (parts, body) = request.into_parts();
    let form = read_limited(body, SMALL_BODY_LIMIT).await?;
    let (mut name, mut password) = (String::new(), String::new());
    for (key, value) in url::form_urlencoded::parse(&form) {
        match key.as_ref() {
            "user[name]" => name = value.into_owned(),
            "user[password]" => password = value.into_owned(),
            _ => {}
        }
    }
    let base = base_url(&parts.headers);
    let Some(account) = emulator.check_password(&name, &password) else {
        emulator.record(EmulatorEvent::LoginRefused { user: name });
        return match emulator.config().login_failure {
            LoginFailureStyle::Rerender => Ok(login_page(Some(LOGIN_FAILED_TEXT))),
            LoginFailureStyle::RedirectToLogin => redirect(&format!("{base}{LOGIN_PATH}")),
        };
    };
    let cookie = http::random_hex(32);
    {
        let mut state = emulator.state();
        // Like Rails' reset_session on login: a session the client already had ends here.
        if let Some(old) = session_cookie(&parts.headers) {
            state.sessions.remove(&old);
        }
        state.sessions.insert(cookie.clone(), account.clone());
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

/// `GET /aspera/faspex/logout`: end the session, expire the cookie, back to the login page.
fn logout(emulator: &Emulator, request: &Request<Incoming>) -> Result<Resp, Fault> {
    let user = session_cookie(request.headers())
        .and_then(|cookie| emulator.state().sessions.remove(&cookie));
    emulator.record(EmulatorEvent::Logout { user });
    let mut response = redirect(&format!("{}{LOGIN_PATH}", base_url(request.headers())))?;
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

/// The account a request acts for: from `Authorization` (Basic, checked and recorded, or an OAuth2
/// bearer token) when present, else from the session cookie. `None` when the credentials are
/// missing or wrong.
fn authenticate(emulator: &Emulator, headers: &HeaderMap) -> Result<Option<String>, Fault> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| Fault::BadRequest("malformed Authorization header"))?
            .trim();
        let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return check_basic(emulator, credentials);
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            return Ok(emulator
                .state()
                .bearer_tokens
                .get(credentials.trim())
                .cloned());
        }
        return Ok(None);
    }
    Ok(session_cookie(headers).and_then(|cookie| emulator.state().sessions.get(&cookie).cloned()))
}

/// Check and record HTTP Basic credentials: the account name when they are right.
fn check_basic(emulator: &Emulator, encoded: &str) -> Result<Option<String>, Fault> {
    let (user, password) = basic_credentials(encoded)?;
    let account = emulator.check_password(&user, &password);
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

/// The `404` of an unknown path or record: XML for XML clients, a Rails-like page otherwise.
pub(super) fn not_found(headers: &HeaderMap) -> Resp {
    if wants_xml(headers) {
        return http::xml(StatusCode::NOT_FOUND, pages::xml_error("Not found"));
    }
    html(
        StatusCode::NOT_FOUND,
        pages::message_page(
            "The page you were looking for doesn't exist.",
            "You may have mistyped the address or the page may have moved.",
        ),
    )
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

/// `GET /{inbox,sent,archive}.atom` with `count`, and `page` (from 1) or `startIndex` (from 0).
fn feed(
    emulator: &Emulator,
    request: &Request<Incoming>,
    user: &str,
    mailbox: Mailbox,
) -> Result<Resp, Fault> {
    let newest_first: Vec<&Package> = emulator.catalog().packages().iter().rev().collect();
    let page = paging(request.uri(), newest_first.len())?;
    let shown: Vec<&Package> = newest_first
        .iter()
        .skip(page.start)
        .take(page.count)
        .copied()
        .collect();
    let base = base_url(request.headers());
    let host = request_host(request.headers());
    let cx = entry_context(&base, &host, user, None);
    Ok(http::atom(pages::atom_feed(
        mailbox,
        &shown,
        newest_first.len(),
        &page,
        &cx,
    )))
}

/// The slice of a feed a query asks for.
fn paging(uri: &hyper::Uri, total: usize) -> Result<Page, Fault> {
    let number = |name: &str| -> Result<Option<usize>, Fault> {
        query_param(uri, name)
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

/// `GET /received/{id}` and `/sent/{id}`: an Atom entry for XML clients, HTML otherwise.
fn package(
    emulator: &Emulator,
    request: &Request<Incoming>,
    user: &str,
    mailbox: Mailbox,
    id: &str,
) -> Result<Resp, Fault> {
    let headers = request.headers();
    let Some(package) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| emulator.catalog().package(id))
    else {
        return Ok(not_found(headers));
    };
    if wants_xml(headers) {
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
async fn issue_token(request: Request<Incoming>) -> Result<Resp, Fault> {
    if !content_type_is(request.headers(), "application/vnd.aspera.url-list+xml") {
        return Err(Fault::UnsupportedMediaType(
            "expected Content-Type: application/vnd.aspera.url-list+xml",
        ));
    }
    match query_param(request.uri(), "direction").as_deref() {
        Some("down" | "up") => {}
        _ => return Err(Fault::BadRequest("direction must be down or up")),
    }
    let body = read_limited(request.into_body(), SMALL_BODY_LIMIT).await?;
    let body =
        std::str::from_utf8(&body).map_err(|_| Fault::BadRequest("url-list is not UTF-8"))?;
    if !(body.contains("<url-list") && body.contains("<url") && body.contains("href=")) {
        return Err(Fault::BadRequest(
            "expected an url-list naming at least one url",
        ));
    }
    Ok(http::text(StatusCode::OK, catalog::transfer_token()))
}

/// `POST /send` with `{"delivery":{"title":…,"recipients":[…],…}}`: a transfer spec for the
/// upload. Problems come back as `200` with `{"error":{"user_message":…}}`, as Faspex does.
async fn send(emulator: &Emulator, request: Request<Incoming>) -> Result<Resp, Fault> {
    let (parts, body) = request.into_parts();
    let body = read_limited(body, JSON_BODY_LIMIT).await?;
    let error = |user_message: &str, internal: &str| {
        Ok(http::json(
            StatusCode::OK,
            &pages::send_error(user_message, internal),
        ))
    };
    let value: Value = match serde_json::from_slice(&body) {
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
        let mut state = emulator.state();
        state.packages_sent += 1;
        5000 + state.packages_sent
    };
    let base = base_url(&parts.headers);
    let host = request_host(&parts.headers);
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

/// `POST /auth/oauth2/token` with Basic credentials and `grant_type=password`: an access token
/// for the `/api/…` routes.
async fn oauth_token(emulator: &Emulator, request: Request<Incoming>) -> Result<Resp, Fault> {
    let (parts, body) = request.into_parts();
    let form = read_limited(body, SMALL_BODY_LIMIT).await?;
    let field = |name: &str| {
        url::form_urlencoded::parse(&form)
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
            .or_else(|| query_param(&parts.uri, name))
    };
    let basic = http::header_str(&parts.headers, header::AUTHORIZATION)
        .map(str::trim)
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, credentials)| credentials.to_owned());
    let account = match basic {
        Some(credentials) => check_basic(emulator, &credentials)?,
        None => None,
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
    if field("grant_type").as_deref() != Some("password") {
        return Ok(http::json(
            StatusCode::BAD_REQUEST,
            &json!({"error": "unsupported_grant_type"}),
        ));
    }
    let token = http::random_hex(32);
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
            "scope": field("scope").unwrap_or_else(|| "admin".to_owned())
        }),
    ))
}

/// The v4 API under `/api/…`: `GET /api/v1/me` (also `/api/me`) and `GET /api/users`.
fn api(emulator: &Emulator, method: &Method, rest: &[&str], user: &str) -> Resp {
    let users = &emulator.config().users;
    let id_of = |name: &str| {
        users
            .iter()
            .position(|(u, _)| u == name)
            .map_or(0, |i| i + 1)
    };
    match (method, rest) {
        (&Method::GET, ["v1", "me"] | ["me"]) => {
            http::json(StatusCode::OK, &pages::api_user_json(id_of(user), user))
        }
        (&Method::GET, ["users"] | ["v1", "users"]) => {
            let list: Vec<Value> = users
                .iter()
                .map(|(name, _)| pages::api_user_json(id_of(name), name))
                .collect();
            http::json(StatusCode::OK, &Value::Array(list))
        }
        _ => http::json(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

/// `GET /javascripts/…`, `/stylesheets/…`, `/images/…`.
fn asset(folder: &str, name: &str, headers: &HeaderMap) -> Resp {
    match pages::asset(folder, name) {
        Some((content_type, body)) => {
            let mut response = http::respond(StatusCode::OK, content_type, http::full(body));
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000"),
            );
            response
        }
        None => not_found(headers),
    }
}

/// `GET /external_deliveries/{id}?passcode=…`: the package for an outside recipient, without an
/// account. A wrong or missing passcode is a `403`, an unknown delivery a `404`. `expiration` is
/// accepted and ignored.
fn external_delivery(
    emulator: &Emulator,
    request: &Request<Incoming>,
    id: &str,
) -> Result<Resp, Fault> {
    let headers = request.headers();
    let catalog = emulator.catalog();
    let Some(delivery) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| catalog.external_delivery(id))
    else {
        return Ok(not_found(headers));
    };
    if query_param(request.uri(), "passcode").as_deref() != Some(delivery.passcode) {
        return Ok(forbidden_link(headers));
    }
    let Some(package) = catalog.package(delivery.package_id) else {
        return Ok(not_found(headers));
    };
    if wants_xml(headers) {
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
fn link_passcode(request: &Request<Incoming>) -> Option<String> {
    query_param(request.uri(), "passcode").or_else(|| query_param(request.uri(), "token"))
}

/// `GET /external/submissions/new` and `/external/dropbox_submissions/new`: the upload form.
fn submission_form(kind: Submission, request: &Request<Incoming>) -> Resp {
    let expected = match kind {
        Submission::Invitation => catalog::INVITATION_PASSCODE,
        Submission::Dropbox => catalog::DROPBOX_PASSCODE,
    };
    match link_passcode(request) {
        Some(passcode) if passcode == expected => {
            html(StatusCode::OK, pages::submission_form(kind, &passcode))
        }
        _ => not_found(request.headers()),
    }
}

/// `POST /external/submissions` and `/external/dropbox_submissions`: the body (of any size) is
/// drained and counted, and a confirmation page says how many bytes arrived.
async fn submission(kind: Submission, request: Request<Incoming>) -> Result<Resp, Fault> {
    let bytes = drain(request.into_body()).await?;
    Ok(html(
        StatusCode::OK,
        pages::submission_received(kind, bytes),
    ))
}
