//! What every request of the gateway shares: the settings in force when it arrived (swapped
//! whole by a reload) and the gateway's state that outlives them (the public in-flight counts,
//! the sessions' open streams, the memo of ended sessions). The routes and the forwarding verbs
//! take it as `cx`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::classify::{DenyPrefix, RouteProfile};
use super::ends::{EndedMemo, Ends, FaspexLogouts};
use super::error::GatewayError;
use super::gate::{Gate, PasswordForm};
use super::inflight::{InflightGuard, PublicInflight};
use super::pages::Site;
use super::session::SessionCookies;
use super::streams::SessionStreams;
use super::upstream::{self, Upstream};
use crate::auth::Directory;
use crate::config::{Config, FaspexConfig};
use crate::metrics::Metrics;
use crate::policy::Policy;

/// The settings and state one request runs on.
pub struct Context {
    /// Which paths are public, denied, the login form, or the gateway's own, and which
    /// credentials a request may carry to Faspex.
    pub(super) gate: Gate,
    /// Faspex, over its pool of keep-alive connections.
    pub(super) upstream: Upstream,
    /// Peers whose `X-Forwarded-For` is believed.
    pub(super) trusted_proxies: Vec<ipnet::IpNet>,
    /// How long an upgraded tunnel, or a body the gateway reads, may be silent.
    pub(super) body_idle_timeout: Duration,
    /// The four policies, the throttles and the verification cache.
    pub(super) policy: Policy,
    /// Where credential checks go.
    pub(super) directory: Arc<dyn Directory>,
    /// The gateway's session cookie; its name also marks a request as a browser's.
    pub(super) cookies: Arc<SessionCookies>,
    /// Why sessions ended lately, for the page a returning browser sees.
    pub(super) memo: Arc<EndedMemo>,
    /// Faspex logouts, for a login Faspex accepted that the gateway could not keep.
    pub(super) logouts: FaspexLogouts,
    /// The sessions' open tunnels and long responses, ended with their session.
    pub(super) streams: Arc<SessionStreams>,
    /// Public requests still arriving, per address, and how many may be.
    pub(super) inflight: Arc<PublicInflight>,
    pub(super) public_inflight_per_ip: u32,
    /// Connections to Faspex held for public requests, per address, and how many may be.
    pub(super) public_upstream: Arc<PublicInflight>,
    pub(super) address_share: u32,
    /// `server.ipv6_prefix_len`: an IPv6 "address" for the per-address counts.
    pub(super) ipv6_prefix_len: u8,
    /// `Strict-Transport-Security` for the HTTPS listener's answers.
    pub(super) hsts: Option<HeaderValue>,
    /// What the pages say.
    pub(super) site: Site,
    /// Faspex's form field names, its session cookie and its token path.
    pub(super) faspex: FaspexConfig,
    /// Requests by route and status, latency, upstream errors.
    pub(super) metrics: Arc<Metrics>,
}

impl Context {
    /// The settings of `cfg` over an engine, a credential backend and the upstream. `ends` holds
    /// the memo, the Faspex logouts and the streams the engine's [`SessionEnds`] observer feeds.
    ///
    /// [`SessionEnds`]: super::ends::SessionEnds
    pub fn new(
        cfg: &Config,
        policy: Policy,
        directory: Arc<dyn Directory>,
        upstream: Upstream,
        ends: Ends,
        metrics: Arc<Metrics>,
    ) -> Context {
        let clock = policy.clock();
        Context {
            gate: gate(cfg),
            upstream,
            body_idle_timeout: cfg.server.body_idle_timeout,
            trusted_proxies: cfg.server.trusted_proxies.clone(),
            policy,
            directory,
            cookies: Arc::new(SessionCookies::new(
                &cfg.session.cookie_name,
                cfg.session.secret.expose(),
                clock,
            )),
            memo: ends.memo,
            logouts: ends.logouts,
            streams: ends.streams,
            inflight: PublicInflight::new(),
            public_inflight_per_ip: cfg.policy.public_inflight_per_ip,
            public_upstream: PublicInflight::new(),
            address_share: upstream::slots::address_share(cfg.upstream.max_connections),
            ipv6_prefix_len: cfg.server.ipv6_prefix_len,
            hsts: cfg.server.hsts.clone(),
            site: site(cfg),
            faspex: cfg.faspex.clone(),
            metrics,
        }
    }

    /// The settings of `cfg`, the configuration in force after a reload (its restart-only keys,
    /// [`crate::config::RestartOnly`], are the running ones), and the new credential backend,
    /// over this context's state: what was built from the restart-only keys and lives on (the
    /// upstream pool, the session cookie's key) is kept.
    pub(super) fn reloaded(&self, cfg: &Config, directory: Arc<dyn Directory>) -> Context {
        let old = self;
        Context {
            gate: gate(cfg),
            upstream: old.upstream.clone(),
            body_idle_timeout: cfg.server.body_idle_timeout,
            trusted_proxies: cfg.server.trusted_proxies.clone(),
            policy: old.policy.clone(),
            directory,
            cookies: Arc::clone(&old.cookies),
            memo: Arc::clone(&old.memo),
            logouts: old.logouts.clone(),
            streams: Arc::clone(&old.streams),
            inflight: Arc::clone(&old.inflight),
            public_inflight_per_ip: cfg.policy.public_inflight_per_ip,
            public_upstream: Arc::clone(&old.public_upstream),
            address_share: upstream::slots::address_share(cfg.upstream.max_connections),
            ipv6_prefix_len: cfg.server.ipv6_prefix_len,
            hsts: cfg.server.hsts.clone(),
            site: site(cfg),
            faspex: cfg.faspex.clone(),
            metrics: Arc::clone(&old.metrics),
        }
    }

    /// Count a request with no session against its address (an IPv6 address by its prefix, as
    /// for the connection limit) while it arrives (429 beyond `policy.public_inflight_per_ip`).
    pub(super) fn enter_public(&self, ip: IpAddr) -> Result<InflightGuard, GatewayError> {
        let key = crate::conn::address_key(ip, self.ipv6_prefix_len);
        self.inflight
            .enter(key, self.public_inflight_per_ip)
            .ok_or_else(|| {
                self.metrics.refused("public_inflight");
                GatewayError::PublicInflight
            })
    }
}

fn gate(cfg: &Config) -> Gate {
    let f = &cfg.faspex;
    Gate::new(
        route_profile(cfg),
        &f.username_field,
        &f.password_field,
        f.password_forms
            .iter()
            .map(|r| PasswordForm {
                method: r.method.clone(),
                path: r.path.clone(),
            })
            .collect(),
        f.max_inspected_body,
    )
}

fn route_profile(cfg: &Config) -> RouteProfile {
    RouteProfile {
        login_path: cfg.faspex.login_path.clone(),
        logout_path: cfg.faspex.logout_path.clone(),
        token_path: cfg.faspex.token_path.clone(),
        public_prefixes: cfg.faspex.public_paths.clone(),
        deny: cfg
            .faspex
            .deny
            .iter()
            .map(|d| DenyPrefix {
                method: d.method.clone(),
                prefix: d.prefix.clone(),
            })
            .collect(),
    }
}

fn site(cfg: &Config) -> Site {
    Site {
        helpdesk: cfg.pages.helpdesk.clone(),
        tz: cfg.pages.tz.clone(),
        login_path: cfg.faspex.login_path.clone(),
    }
}
