//! The request path from a parsed HTTP request to a response, laid out along the request:
//!
//! - at the bottom, [`body`] (the body type and its builders) and [`request`] (who sent the
//!   request, its host and origin, its credentials);
//! - [`classify`] decides the route on the normalised path, and [`gate`], the credential gate,
//!   reads the request as Rails would and lets a credential through only where the gateway
//!   checks it: what it passes carries its mark ([`gate::Pass`]);
//! - [`permit`]: a client's request reaches Faspex only with a [`permit::Permit`], made from
//!   the gate's mark and the evidence of a check (a public pass, a live session, a checked
//!   login, a bearer token tied to a session);
//! - [`routes`], one file per route, each running its check: **public** paths (and the login
//!   page) under `public_requests_per_ip_per_minute`, holding no seat and carrying no
//!   credentials; the **login** form's POST (throttle, lockout, credential check, admission,
//!   then Faspex's own login; the gateway's cookie is set only when Faspex confirms, else the
//!   seat is given back); **logout** (the gateway ends the session and logs Faspex out);
//!   **protected** requests, which need a live session: HTTP **Basic** (one client per address
//!   and User-Agent, the verification cache, a login on the first request), a **bearer** token
//!   Faspex issued to a session, or the gateway's cookie. A Faspex cookie alone is never enough;
//! - [`dispatch`] hands a permitted request to [`upstream`] (pool, slots, header rules,
//!   transfer), which streams it to Faspex and the answer back;
//! - [`error`] is the one place that turns a refusal into a response; [`pages`] renders what
//!   people see; [`access`] is the access log;
//! - [`handler`] on top: [`Gateway`], the outer handler that times, answers errors and logs
//!   every request, and the inner one that runs the steps above.
//!
//! Beside the path: [`context`] (what every request shares), [`intake`] (reading a client's
//! body), [`session`] (the gateway's cookie), [`streams`] (a session's tunnels and downloads),
//! [`inflight`] (public requests per address), [`ends`] (Faspex logouts when a session ends),
//! [`faspex_check`] (Faspex as the credential check of its own accounts).

pub mod access;
pub mod body;
pub mod classify;
pub mod context;
pub mod dispatch;
pub mod ends;
pub mod error;
pub mod faspex_check;
pub mod gate;
pub mod handler;
pub mod inflight;
pub mod intake;
pub mod pages;
pub mod permit;
pub mod request;
pub mod routes;
pub mod session;
pub mod streams;
pub mod upstream;

pub use error::GatewayError;
pub use handler::Gateway;
