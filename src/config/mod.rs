//! faspex-gate's configuration: reading the TOML file and the `FASPEX_GATE__…` environment,
//! validating every value, and the typed [`Config`] the rest of the gateway reads.
//!
//! It sits at the bottom of the crate and checks syntax, values, and that the files it names
//! exist and can be read; the secret files (`session.secret_file`, `admin.token_file`,
//! `auth.ldap.bind_password_file`) are read too, since their contents are values. It parses
//! nothing else: the users file and the certificates are read when the app is built
//! (`app::Loaded`), and an error there names its key like any other ([`Config::error`]).
//!
//! The keys and defaults are the interface contract's (`## Configuration`), plus
//! `server.shutdown_timeout` and `server.body_idle_timeout`; `config/faspex-gate.example.toml` documents each of them.
//!
//! Layers:
//! - `raw.rs`: serde structs that mirror the file, with the defaults; unknown keys are errors;
//! - `env.rs`: the environment overrides, merged over the file by the `config` crate;
//! - `validate.rs`: raw values to typed ones ([`Config`]); every bad value is an error naming its
//!   key, never a silent default;
//! - `secret.rs`: [`Secret`] and the checks on secret files;
//! - `redact.rs`: [`Config::redacted`], the effective configuration without secrets;
//! - `reload.rs`: what a reload may change, said once: the [`RestartOnly`] keys, and a new
//!   configuration applied over the running one ([`Reload`]).

mod env;
mod model;
mod raw;
mod redact;
mod reload;
mod secret;
mod validate;

#[cfg(test)]
mod tests;

pub use model::*;
pub(crate) use redact::url as redact_url;
pub use reload::{Reload, RestartOnly};
pub use secret::Secret;
