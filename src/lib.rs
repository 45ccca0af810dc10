//! faspex-gate: a policy-enforcing authentication gateway for IBM Aspera Faspex.
//!
//! # Layout
//!
//! A request flows through the modules in this order:
//!
//! ```text
//!  accept ──► TLS ──► HTTP/1.1 or HTTP/2 ──► classify ──► credential gate ──► credentials / session ──► policy ──► forward ──► log
//!  server     server::tls   server            proxy::classify  proxy::gate        auth (Directory)      policy      proxy::upstream proxy (access log)
//! ```
//!
//! - [`server`]: listeners, the connection cap, TLS with a handshake timeout, header limits and
//!   timeouts, the swappable certificate and graceful shutdown.
//! - [`proxy`]: the request handler, laid out along the request. [`proxy::classify`] decides
//!   the route on the normalised path (public, login, logout, protected, denied, the gateway's
//!   own) and the path that is forwarded; [`proxy::gate`] reads the query and any form-type body
//!   as Rails would ([`faspex::rack`]) and lets a credential through only where the gateway
//!   checks it (the login form, the token grant's Basic credentials, a configured password form
//!   with a live session), refusing every other request that carries one; [`proxy::request`]
//!   reads the credentials (HTTP Basic, a bearer token, the gateway's cookie from
//!   [`proxy::session`]); a route of [`proxy::routes`] runs its check (a live session from the
//!   engine, or a login through it) and makes the [`proxy::permit::Permit`] without which
//!   nothing is forwarded; [`proxy::upstream`] streams the request to Faspex and the response
//!   back, over keep-alive connections; [`proxy::error`] is the one place that turns a refusal
//!   into a response; [`proxy::pages`] renders what people see; [`proxy::ends`] logs Faspex out
//!   when the gateway ends a session.
//! - [`conn`]: what a client connection is to both the server and the proxy (its address, its
//!   places under the connection caps).
//! - [`auth`]: the [`auth::Directory`] seam where one credential check runs, and its backends:
//!   LDAP / Active Directory ([`auth::ldap`]) and a users file of argon2id hashes
//!   ([`auth::file`]); the verification cache for HTTP Basic callers ([`auth::cache`]).
//! - [`policy`]: the engine, independent of HTTP and LDAP, over a [`store`]; each policy's rule
//!   in a file named after it: [`policy::seats`], [`policy::one_client`], [`policy::timeouts`],
//!   [`policy::lockout`], and [`policy::throttle`] (per-address throttles and the global ceiling
//!   on credential checks).
//! - [`store`]: the [`store::PolicyStore`] trait (one atomic step per operation, applying the
//!   rules; it persists and decides nothing) and the durable embedded backend.
//! - [`metrics`]: the Prometheus registry, fed by the engine's events and the proxy's requests.
//! - [`audit`]: the audit log (JSON lines) of logins, lockouts, session ends and admin actions.
//! - [`log`]: the service log on stderr, text or JSON (`log.format`), and the access log's
//!   writer.
//! - [`admin`]: the admin listener (`/metrics`, `/healthz`, `/readyz`, the admin API) and the
//!   `faspex-gate admin` client.
//! - [`clock`]: the injected clock every decision that depends on time takes `now` from, and
//!   the manual clock that tests move.
//! - [`config`]: raw configuration structs, validated into typed ones.
//! - [`faspex`]: Faspex knowledge (how Rack reads parameters). The Faspex 4 emulator the demo
//!   and tests run against is the workspace's `faspex-emulator` crate.
//! - [`demo`], [`app`], [`cli`]: the commands a person runs; [`app`] also applies a new
//!   configuration on SIGHUP.
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
pub mod log;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod store;
pub mod tls;
pub mod util;
