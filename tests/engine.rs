//! The policy engine on its own: over the embedded store in a folder and the system clock, with
//! no one listening to its events. `state.rs` drives it across process deaths; the policy
//! benchmark (`benches/policy.rs`, which includes this file) measures it.

use std::path::Path;
use std::sync::Arc;

use faspex_gate::clock::SystemClock;
use faspex_gate::config::PolicyConfig;
use faspex_gate::policy::{CheckRules, LoginRequest, Observer, Policy, PolicyEvent};
use faspex_gate::store::embedded::EmbeddedStore;
use faspex_gate::store::{ClientId, ClientKind};

/// An observer that ignores every event.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &PolicyEvent<'_>) {}
}

/// An engine on `cfg` and `checks` over the store in `dir`, and that store.
pub fn open(dir: &Path, cfg: PolicyConfig, checks: CheckRules) -> (Policy, Arc<EmbeddedStore>) {
    let store = Arc::new(EmbeddedStore::open(dir).expect("the store opens"));
    let policy = Policy::new(
        cfg,
        checks,
        store.clone(),
        Arc::new(SystemClock),
        Arc::new(Quiet),
    );
    (policy, store)
}

/// A browser's login of `user` with `password`, from `ip` by `client` with `agent`, taking over
/// nothing.
pub fn browser_login<'a>(
    user: &'a str,
    password: &'a str,
    ip: &str,
    agent: &'a str,
    client: String,
) -> LoginRequest<'a> {
    LoginRequest {
        username: user,
        password,
        ip: ip.parse().unwrap(),
        agent,
        client: ClientId(client.into()),
        kind: ClientKind::Browser,
        takeover: false,
    }
}
