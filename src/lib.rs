//! faspex-gate: a policy-enforcing authentication gateway for IBM Aspera Faspex.
//!
//! # The path of a request
//!
//! ```text
//!  accept ─► TLS ─► HTTP/1.1 or /2 ─► classify ───────► gate ──────────────┬─► route ──────────────────────────────► Permit ─► forward ─► Faspex
//!  server    server::tls  server      proxy::classify    proxy::gate         │   proxy::routes                    proxy::permit  proxy::upstream
//!  (conn: per-address and total caps)  (route, path)     (reads as Rack does;│
//!                                                         a credential passes│ public ──────────────────────────────► Permit::public
//!                                                         only where checked)│ protected: cookie / Basic / bearer
//!                                                                            │   proxy::request ─► policy::sessions ─► Permit::cookie/basic/bearer
//!                                                                            │   (Basic with a session: auth::cache or policy::login's recheck ─► Confirmed;
//!                                                                            │    Basic without one: a login, as below, ─► Permit::login)
//!                                                                            │ login: policy::login
//!                                                                            │   resolve ─► throttle ─► lockout ─► auth::Directory ─► one_client ─► seats
//!                                                                            │   ─► PendingLogin ─────────────────────► Permit::login
//!                                                                            └ logout: policy ends the session ─► Faspex's logout (proxy::ends)
//!
//!  Faspex's answer ─► a login's seat is kept or given back (PendingLogin::confirm / reject / refuse);
//!                     a bearer token Faspex issues is tied to its session, Faspex's cookie kept
//!                     (policy: add_bearer, set_upstream_cookie);
//!                     a Basic session whose credentials Faspex stops taking ends (proxy::routes::basic)
//!                  ─► proxy::error maps any refusal to its status, once ─► the access log (proxy::access, log)
//! ```
//!
//! The forwarder takes a [`proxy::permit::Permit`], and only the checks can make one, so a route
//! that skips its check does not compile. The four policies are each one file, one hop from
//! here: [`policy::seats`], [`policy::one_client`], [`policy::timeouts`], [`policy::lockout`]
//! (and [`policy::throttle`]); the [`store`] keeps their state and applies them atomically, and
//! [`store::conformance`](store) is the suite every store must pass.
//!
//! # Modules, top down
//!
//! - [`cli`], [`app`] (building the gateway from a configuration, loading its files, SIGHUP
//!   reload), [`demo`]: the commands a person runs.
//! - [`admin`]: the admin listener (`/metrics`, `/healthz`, `/readyz`, the admin API) and the
//!   `faspex-gate admin` client.
//! - [`helpdesk`]: the helpdesk console, a browser page on its own HTTPS listener for unlocks,
//!   kicks and locks, signed in with a directory account in `helpdesk.group`.
//! - [`server`]: listeners, the connection caps, TLS with a handshake timeout, header limits and
//!   timeouts, the swappable certificate and graceful shutdown.
//! - [`proxy`]: the request handler, laid out along the request: body types ([`proxy::body`])
//!   and request reading ([`proxy::request`], [`proxy::classify`], [`proxy::gate`]) at the
//!   bottom; one file a route ([`proxy::routes`]); the upstream ([`proxy::upstream`]: pool,
//!   slots, header rules, streaming); the handler ([`proxy::handler`]) on top. [`proxy::error`]
//!   is the one place that turns a refusal into a response; [`proxy::pages`] renders what people
//!   see; [`proxy::session`] is the gateway's cookie.
//! - [`conn`]: what a client connection is to both the server and the proxy.
//! - [`policy`]: the engine, independent of HTTP and LDAP: the login pipeline, session lookups,
//!   admin operations and the rules above.
//! - [`auth`]: the [`auth::Directory`] seam where one credential check runs, and its backends:
//!   LDAP / Active Directory ([`auth::ldap`]), a users file of argon2id hashes ([`auth::file`]),
//!   Faspex's own local accounts ([`auth::local`]); the verification cache ([`auth::cache`]).
//! - [`store`]: the [`store::PolicyStore`] trait (one atomic step per operation), the durable
//!   embedded backend, and the Redis backend (a function library that mirrors the rules, for
//!   several gateways on one Redis).
//! - [`metrics`], [`audit`], [`log`]: what operators read: Prometheus metrics, the audit log,
//!   the service and access logs (text or JSON, `log.format`).
//! - [`faspex`]: Faspex knowledge (how Rack reads parameters). The Faspex 4 emulator the demo
//!   and tests run against is the workspace's `faspex-emulator` crate (the default-on
//!   `emulator` feature).
//! - At the bottom, imported by the rest and importing none of it: [`config`] (checks syntax,
//!   values and that files exist; loads nothing), [`account`] (names as the directory compares
//!   them), [`tls`] (certificates and the client TLS configuration), [`clock`] (the injected
//!   clock every decision that depends on time takes `now` from), [`util`].
//!
//! `tests/layers.rs` checks that no file imports, through others, back into itself (a `mod.rs`
//! and its own files included), and that the bottom (`config`, `account`, `tls`, `clock`,
//! `util`) imports nothing above it.
#![forbid(unsafe_code)]

pub mod account;
pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn;
pub mod demo;
pub mod faspex;
pub mod helpdesk;
pub mod log;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod store;
pub mod tls;
pub mod util;
