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

/// The most of an answer the gateway's own requests to Faspex (its logouts and account checks)
/// read, to keep their connection; their answers are a redirect, a page or a small JSON.
const DRAINED_BODY: usize = 1024 * 1024;

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
        // (read before the hop-by-hop headers go; only a 101 keeps it)
        let resp_upgrade = switching
            .then(|| upgrade_protocol(resp.headers()))
            .flatten();
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
            // Read to its end so that the connection can serve again, but no more than
            // `DRAINED_BODY`: a longer answer is dropped with its connection, not held.
            let body = http_body_util::Limited::new(resp.into_body(), DRAINED_BODY);
            let _ = tokio::time::timeout(limit, body.collect()).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn upstream_at(url: &str) -> Upstream {
        let cfg = UpstreamConfig {
            url: url.parse().unwrap(),
            ca_file: None,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            preserve_host: false,
            max_connections: 4,
        };
        let server = ServerConfig {
            listen: None,
            http_listen: None,
            trusted_proxies: Vec::new(),
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_connections: 100,
            max_connections_per_ip: 10,
            ipv6_prefix_len: 64,
            hsts: None,
            strip_response_headers: Vec::new(),
            workers: 1,
            shutdown_timeout: Duration::from_secs(1),
            body_idle_timeout: Duration::from_secs(30),
        };
        Upstream::new(&cfg, &server).unwrap()
    }

    /// A Faspex that answers an account check with a body that never ends (a hostile or broken
    /// one: its `me` is a small JSON) is read for at most `DRAINED_BODY`, then dropped with its
    /// connection: the check neither buffers it nor waits out its time limit.
    #[tokio::test]
    async fn the_gateways_own_requests_read_at_most_a_mebibyte_of_an_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(AtomicUsize::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let (sent2, cut2) = (Arc::clone(&sent), Arc::clone(&cut));
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the check's request never came");
                head.extend_from_slice(&buf[..n]);
            }
            let chunk = {
                let mut c = b"10000\r\n".to_vec();
                c.extend(std::iter::repeat_n(b'x', 0x10000));
                c.extend_from_slice(b"\r\n");
                c
            };
            let start = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            if stream.write_all(start).await.is_err() {
                return;
            }
            while stream.write_all(&chunk).await.is_ok() {
                sent2.fetch_add(0x10000, Ordering::SeqCst);
            }
            cut2.store(true, Ordering::SeqCst);
        });
        let up = upstream_at(&format!("http://{addr}"));
        let started = std::time::Instant::now();
        let status = up
            .check_basic("/aspera/faspex/me", "ann", "pw", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(status, http::StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the check waited {:?} for an endless answer",
            started.elapsed()
        );
        // The connection is closed: Faspex's writes fail soon after, with little more than the
        // mebibyte (and the sockets' buffers) sent.
        for _ in 0..100 {
            if cut.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            cut.load(Ordering::SeqCst),
            "the connection was kept reading"
        );
        let sent = sent.load(Ordering::SeqCst);
        assert!(sent < 32 * 1024 * 1024, "{sent} bytes were read");
    }
}
