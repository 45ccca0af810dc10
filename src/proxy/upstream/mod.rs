//! The upstream: forwarding to Faspex, over [`pool`]'s keep-alive connections, within
//! [`slots`]' bound on them, with [`headers`]' rules, redirect rewriting and the
//! response-header timeout; [`transfer`] keeps each body (and tunnel) moving.
//!
//! Bodies are never buffered here: the client's body is handed to the upstream connection as a
//! stream, and the upstream's body is handed back the same way, so a 10 GiB transfer costs the
//! same memory as a 1 KiB one. Only the wait for the upstream's response *headers*, counted from
//! the moment the request body has been sent in full, is bounded (`upstream.response_timeout`);
//! a body may stream for hours as long as it keeps moving (`server.body_idle_timeout`).
//!
//! [`Upstream::forward`] takes a [`Permit`]: a client's request reaches Faspex only with the
//! proof that it was checked, and only the request that proof was made for (the permit holds
//! it). The gateway's own requests ([`Upstream::logout`],
//! [`Upstream::check_basic`], [`Upstream::probe`]) carry no client's request.
//!
//! `failure.rs` says how forwarding fails.
//!
//! Since the pool opens a connection only for a request that holds a slot, and keeps idle only
//! connections such requests opened, the connections open to Faspex never outnumber the slots.

mod failure;
pub mod headers;
mod pool;
pub mod slots;
pub mod transfer;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::config::{ServerConfig, UpstreamConfig};
use crate::proxy::body::{full, ProxyBody};
use crate::proxy::permit::{Lane, Permit};
use crate::proxy::request::ClientSide;
use headers::{any_of, set_forwarded, strip_hop_by_hop, upgrade_protocol};
use pool::{ClientError, Pool, ResponseClock};
use slots::{AddressShare, SlotBody, Slots};
use transfer::TransferBody;

pub use failure::{ForwardError, UpstreamError};

/// The upstream Faspex server: a cheap-to-clone handle over its connection pool.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<UpstreamInner>,
}

struct UpstreamInner {
    pool: Arc<Pool>,
    slots: Slots,
    /// Response headers no client sees: `server.strip_response_headers`, and
    /// `Proxy-Authenticate` (meant for the proxy, never for the client).
    strip: Vec<HeaderName>,
    authority: Authority,
    /// `scheme://authority` as the upstream writes it in `Location` headers.
    origins: Vec<String>,
    response_timeout: Duration,
    /// How long a body may stand still before the transfer is aborted.
    body_idle_timeout: Duration,
    preserve_host: bool,
}

impl Upstream {
    /// Build the connection pool. An `https` upstream is verified against the system roots plus
    /// `upstream.ca_file`.
    pub fn new(cfg: &UpstreamConfig, server: &ServerConfig) -> anyhow::Result<Self> {
        let body_idle_timeout = server.body_idle_timeout;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));

        let tls = crate::tls::client_config(cfg.ca_file.as_deref())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);

        let scheme = match cfg.url.scheme() {
            "https" => Scheme::HTTPS,
            _ => Scheme::HTTP,
        };
        let host = cfg
            .url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("upstream.url has no host"))?;
        let port = cfg.url.port_or_known_default().unwrap_or(80);
        let authority: Authority = match cfg.url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        }
        .parse()?;
        let target = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()?;
        // A pooled connection becomes ready as soon as its task has seen the last response end;
        // one that takes as long as a connect would is given up.
        let pool = Pool::new(connector, target, cfg.connect_timeout, body_idle_timeout);
        let mut origins = vec![format!("{}://{}", scheme, authority)];
        if cfg.url.port().is_none() {
            origins.push(format!("{scheme}://{host}:{port}"));
        }
        Ok(Upstream {
            inner: Arc::new(UpstreamInner {
                pool,
                slots: Slots::new(cfg.max_connections, cfg.connect_timeout),
                strip: {
                    let mut strip = server.strip_response_headers.clone();
                    if !strip.contains(&header::PROXY_AUTHENTICATE) {
                        strip.push(header::PROXY_AUTHENTICATE);
                    }
                    strip
                },
                authority,
                origins,
                response_timeout: cfg.response_timeout,
                body_idle_timeout,
                preserve_host: cfg.preserve_host,
            }),
        })
    }

    /// Forward the request `permit` was made for, and says was checked, and wait (bounded) for the response
    /// headers. The request's URI path and query go upstream exactly as the client sent them;
    /// both bodies stream, each under the idle timeout. The request holds a connection slot of
    /// the permit's [`Lane`] until its response body ends; after a 101 the slot is in the
    /// response's extensions, for the tunnel to hold.
    pub async fn forward(
        &self,
        permit: Permit<'_>,
        side: &ClientSide,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        let (mut req, lane) = permit.into_request();
        let address = req.extensions_mut().remove::<AddressShare>();
        let mut slot = self.inner.slots.take(lane).await?;
        slot._address = address;
        let idle = self.inner.body_idle_timeout;
        let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
        let mut req = req.map(|body| TransferBody::new(body, idle, Some(sent_tx)));
        let inner = &self.inner;
        let upgrade = upgrade_protocol(req.headers());

        // Origin-form, as HTTP/1.1 sends it to a server (not a proxy).
        let path_and_query = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path_and_query);
        *req.version_mut() = Version::HTTP_11;

        let headers = req.headers_mut();
        // (`HTTP2-Settings` is one of them: the gate refuses any request that carries it)
        strip_hop_by_hop(headers);
        if let Some(proto) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto.clone());
        }
        set_forwarded(headers, side);
        let host = match (&side.host, inner.preserve_host) {
            (Some(h), true) => h.clone(),
            _ => HeaderValue::from_str(inner.authority.as_str())
                .map_err(|e| UpstreamError::Protocol(e.into()))?,
        };
        headers.insert(header::HOST, host);

        // Faspex answers an upload after its last byte: the response clock starts once the
        // request body has been sent (or has failed), not before.
        let clock = ResponseClock {
            started: sent_rx,
            limit: inner.response_timeout,
        };
        let mut resp = match inner.pool.send(req, Some(clock)).await {
            Err(e) => return Err(ForwardError::classify(e)),
            Ok(resp) => resp,
        };

        let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        let resp_upgrade = upgrade_protocol(resp.headers());
        let headers = resp.headers_mut();
        strip_hop_by_hop(headers);
        if switching {
            if let Some(proto) = resp_upgrade {
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, proto);
            }
        }
        // (`Proxy-Authenticate` among them; one pass over the answer's few names first: most
        // carry none of them)
        if any_of(headers, &inner.strip) {
            for name in &inner.strip {
                headers.remove(name);
            }
        }
        self.rewrite_location(headers, side);
        if switching {
            resp.extensions_mut().insert(Arc::new(slot));
            return Ok(resp.map(|body| TransferBody::new(body, idle, None).boxed_unsync()));
        }
        Ok(resp.map(|body| {
            SlotBody {
                inner: TransferBody::new(body, idle, None),
                slot: Some(slot),
            }
            .boxed_unsync()
        }))
    }

    /// Log a Faspex session out: `GET logout_path` with its cookie, as the browser would have.
    /// The response is read and dropped. Faspex's own licence count thereby stays in step.
    pub(crate) async fn logout(
        &self,
        logout_path: &str,
        cookie: &str,
    ) -> Result<http::StatusCode, UpstreamError> {
        let cookie =
            HeaderValue::from_str(cookie).map_err(|e| UpstreamError::Protocol(e.into()))?;
        self.get(
            logout_path,
            Some(cookie),
            "faspex-gate (session ended)",
            self.inner.response_timeout,
            true,
        )
        .await
    }

    /// Ask Faspex whether `user` and `password` are one of its accounts': `GET path` (its
    /// `/aspera/faspex/me`) with them as HTTP Basic credentials, as an API client would. The
    /// status is returned; the body is read and dropped. Nothing of the credentials is logged.
    pub(crate) async fn check_basic(
        &self,
        path: &str,
        user: &str,
        password: &str,
        limit: Duration,
    ) -> Result<http::StatusCode, UpstreamError> {
        use base64::Engine as _;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
            .map_err(|e| UpstreamError::Protocol(e.into()))?;
        value.set_sensitive(true);
        self.get_with(
            path,
            &[
                (header::AUTHORIZATION, value),
                (header::ACCEPT, HeaderValue::from_static("application/json")),
            ],
            "faspex-gate (account check)",
            limit,
            true,
        )
        .await
    }

    /// Whether Faspex answers now (`/readyz`): `GET path` (the login page), with its headers
    /// within `limit`. Its status is returned; the body is not read (the connection is closed).
    pub async fn probe(
        &self,
        path: &str,
        limit: Duration,
    ) -> Result<http::StatusCode, UpstreamError> {
        self.get(path, None, "faspex-gate (readiness check)", limit, false)
            .await
    }

    async fn get(
        &self,
        path: &str,
        cookie: Option<HeaderValue>,
        agent: &'static str,
        limit: Duration,
        read_body: bool,
    ) -> Result<http::StatusCode, UpstreamError> {
        let headers: Vec<(HeaderName, HeaderValue)> =
            cookie.into_iter().map(|c| (header::COOKIE, c)).collect();
        self.get_with(path, &headers, agent, limit, read_body).await
    }

    async fn get_with(
        &self,
        path: &str,
        extra: &[(HeaderName, HeaderValue)],
        agent: &'static str,
        limit: Duration,
        read_body: bool,
    ) -> Result<http::StatusCode, UpstreamError> {
        let inner = &self.inner;
        let _slot = tokio::time::timeout(limit, inner.slots.take(Lane::Session))
            .await
            .map_err(|_| UpstreamError::Busy(limit))??;
        let uri: Uri = path
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamError::Protocol(e.into()))?;
        let host = HeaderValue::from_str(inner.authority.as_str())
            .map_err(|e| UpstreamError::Protocol(e.into()))?;
        let mut req = Request::get(uri)
            .header(header::HOST, host)
            .header(header::USER_AGENT, agent)
            .body(TransferBody::new(
                full(Bytes::new()),
                inner.body_idle_timeout,
                None,
            ))
            .map_err(|e| UpstreamError::Protocol(e.into()))?;
        for (name, value) in extra {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        let resp = tokio::time::timeout(limit, inner.pool.send(req, None))
            .await
            .map_err(|_| UpstreamError::Timeout(limit))?
            .map_err(|e| match e {
                ClientError::Connect(e) => UpstreamError::Connect(e),
                ClientError::Http(e) => UpstreamError::Protocol(e.into()),
                ClientError::Timeout(d) => UpstreamError::Timeout(d),
            })?;
        let status = resp.status();
        if read_body {
            let _ = tokio::time::timeout(limit, resp.into_body().collect()).await;
        }
        Ok(status)
    }

    /// The upstream's origins (`scheme://authority`, with and without the default port).
    pub fn origins(&self) -> &[String] {
        &self.inner.origins
    }

    /// A `Location` that names the upstream's own origin is rewritten to the public origin, so
    /// that a browser never learns (or tries to reach) the internal address.
    fn rewrite_location(&self, headers: &mut HeaderMap, side: &ClientSide) {
        let Some(host) = side.public_host.as_ref().and_then(|h| h.to_str().ok()) else {
            return;
        };
        let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
            return;
        };
        for origin in &self.inner.origins {
            if let Some(rest) = loc.strip_prefix(origin.as_str()) {
                if rest.is_empty() || rest.starts_with(['/', '?', '#']) {
                    let new = format!("{}://{}{}", side.scheme, host, rest);
                    if let Ok(v) = HeaderValue::from_str(&new) {
                        headers.insert(header::LOCATION, v);
                    }
                    return;
                }
            }
        }
    }
}
