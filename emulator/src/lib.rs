//! A Faspex 4 emulator: an upstream that answers the way the cited documents say Faspex 4.4 does.
//!
//! A crate of its own, for tests and the gateway's `demo`: the gateway does not need it to run,
//! and a packaging build of the gateway leaves it out. This file only lays the crate out and
//! names what is public; the modules, from the bottom up (each uses only those above it in this
//! table):
//!
//! | module | owns |
//! |---|---|
//! | `base` | HTML escaping, random tokens, the stop signal |
//! | `pattern` | the download pattern and the body that streams it with flat memory |
//! | `rails` | how Rails 3 on Rack reads a request: routing, method override, `params` (public: the tests compare it with the real Rails) |
//! | `catalog` | the seeded packages, external deliveries, invitation and dropbox passcodes, `faspe://` links |
//! | `pages` | the HTML pages, Atom feeds and entries, JSON documents and static assets |
//! | `http` | the response body type, response builders (the `404` among them), the one mapping from a fault to a response, request parsing, body draining |
//! | `emulator` | the cheap-to-clone handle ([`Emulator`]) over the shared state (users, sessions, bearer tokens, the event log), its configuration ([`EmulatorConfig`]), the password check |
//! | `gateway` | the HTTP Gateway under `/aspera/http-gwy`: streamed downloads (the byte pattern), uploads, WebSocket echo |
//! | `routes` | the request entry point, and the Faspex application under `/aspera/faspex`: login, logout, protected and public pages, the password forms |
//! | `h2c` | the h2c mode: upgrades answered as Apache with `Protocols h2c http/1.1` answers them, HTTP/2 (or a raw echo) after the `101` |
//! | `server` | the accept loop ([`Emulator::serve`]) and the hyper service ([`EmulatorService`]) |
//!
//! It reads every request the way Rails 3 on Rack does (`rails`): routes run for every method and
//! take `.format` suffixes, squeezed slashes and escapes; `params` merge the query, any body
//! (form, multipart, JSON, XML) and the path. So a `GET /aspera/faspex/login?user[name]=…&user[password]=…`
//! logs in, as it would on Faspex. Every password it checks is an [`EmulatorEvent::LoginAttempt`]
//! ([`Emulator::login_attempts`] counts the guesses that reached Faspex); a login issues a fresh
//! session cookie, and the cookie is rotated on `/aspera/faspex/account` and, when configured,
//! every N requests ([`EmulatorEvent::SessionRotated`]). Two of Faspex's own forms carry a password
//! for another purpose: `POST /aspera/faspex/admin/users` creates a local account (which can then
//! log in), `PUT /aspera/faspex/account/password` changes a local account's password.
//!
//! Faspex's accounts come in two kinds, as at a site whose Faspex also reads the directory:
//! [`EmulatorConfig::users`] (directory accounts) and local accounts that only Faspex knows
//! ([`EmulatorConfig::local_users`], and those an administrator creates at run time). Both log in
//! the same way. Logins are matched as Faspex's MySQL users table matches them ([`fold_login`]:
//! case, accents and trailing spaces ignored), passwords exactly. Two of Faspex's own security
//! settings can be switched on: "lock users after N failed logins"
//! ([`EmulatorConfig::faspex_lockout`], lifted only by [`Emulator::unlock_faspex_account`]) and
//! "prevent concurrent login" ([`EmulatorConfig::prevent_concurrent_login`]), so that tests can
//! show the gateway's own policies act first.
//!
//! What it knows of Faspex comes from `docs/faspex-http.md` (facts marked [V]/[D]) and the seed
//! tutorial on API downloads; where that is silent the behaviour is a plausible Rails default and
//! says so where it is implemented. Every response carries `X-IBM-Aspera: F4.4.1`.
//!
//! Every request is recorded twice: as an [`EmulatorEvent::Request`] among the other events, and
//! with its HTTP version and headers as a [`RequestSeen`] ([`Emulator::requests`]), so that tests
//! can say which headers reached Faspex, and over which protocol.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use faspex_emulator::{Emulator, EmulatorConfig};
//! let emulator = Emulator::new(EmulatorConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let stop = async { let _ = tokio::signal::ctrl_c().await; };
//! emulator.serve(listener, stop).await
//! # }
//! ```

#![forbid(unsafe_code)]

mod base;
mod catalog;
mod emulator;
mod gateway;
mod h2c;
mod http;
mod pages;
mod pattern;
pub mod rails;
mod routes;
mod server;

#[cfg(test)]
mod tests;

pub use catalog::{
    BIG_PACKAGE_ID, DROPBOX_PASSCODE, EXTERNAL_DELIVERY_ID, EXTERNAL_DELIVERY_PASSCODE,
    INVITATION_PASSCODE, PACKAGE_IDS,
};
pub use emulator::{
    fold_login, Emulator, EmulatorConfig, EmulatorEvent, LoginFailureStyle, LoginVia, RequestSeen,
    ACCOUNT_LOCKED_TEXT, CONCURRENT_LOGIN_TEXT, FASPEX_VERSION, LOGIN_FAILED_TEXT, SESSION_COOKIE,
};
pub use http::EmulatorBody;
pub use pattern::pattern_byte;
pub use server::EmulatorService;
