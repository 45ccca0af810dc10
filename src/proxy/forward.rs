//! Forwarding to the Faspex upstream: header rewriting (hop-by-hop removal, `X-Forwarded-*`,
//! `Host`), redirect rewriting, and the response-header timeout, over the keep-alive connections
//! of [`super::client`].
//!
//! Bodies are never buffered here: the client's body is handed to the upstream connection as a
//! stream, and the upstream's body is handed back the same way, so a 10 GiB transfer costs the
//! same memory as a 1 KiB one. Only the wait for the upstream's response *headers*, counted from
//! the moment the request body has been sent in full, is bounded (`upstream.response_timeout`);
//! a body may stream for hours as long as it keeps moving (`server.body_idle_timeout`).
//!
//! Connections to Faspex are bounded (`upstream.max_connections`): every request holds an
//! [`UpstreamSlot`] from before it is sent until its response body ends (or, after a 101, until
//! its tunnel closes). A request that finds none free waits up to `upstream.connect_timeout`,
//! then gets 503. Public requests ([`Lane::Public`]) may hold at most three quarters of the slots
//! (at least one): the last quarter is kept for requests that carry a session, so that a flood of
//! anonymous requests can never starve logged-in users. Since the pool opens a connection only
//! for a request that holds a slot, and keeps idle only connections such requests opened, the
//! connections open to Faspex never outnumber the slots.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;

use super::client::{ClientError, Pool};
use super::transfer::TransferBody;
use crate::config::{ServerConfig, UpstreamConfig};

/// Errors from any body the gateway streams.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request the gateway forwards and every response it returns.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why the upstream did not give us response headers. Mapped to 502/504 by the error module.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to the upstream: {0}")]
    Connect(#[source] BoxError),
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the upstream broke the protocol or the connection: {0}")]
    Protocol(#[source] BoxError),
    /// Every connection to Faspex this request may use was taken for `{0:?}`.
    #[error("all connections to the upstream were busy for {0:?}")]
    Busy(Duration),
}

/// Why a forwarded request failed: the upstream's fault, or the client's own body.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The client's request body stood still for the idle timeout.
    #[error("the client sent nothing for {0:?}")]
    ClientStalled(Duration),
    /// The client's request body broke off (the client went away, or sent a bad chunk).
    #[error("the client's request body broke off: {0}")]
    ClientAborted(#[source] BoxError),
}

/// Marks an error as coming from the client's side of the request body.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ClientBodyError(BoxError);

/// A client's request body as the gateway forwards it: its errors marked as the client's.
pub fn client_body(body: Incoming) -> ProxyBody {
    body.map_err(|e| BoxError::from(ClientBodyError(e.into())))
        .boxed_unsync()
}

impl ForwardError {
    /// Sort a failed request upstream: a cause in the client's own body is the client's fault.
    fn classify(e: ClientError) -> ForwardError {
        let e = match e {
            ClientError::Connect(e) => return UpstreamError::Connect(e).into(),
            ClientError::Http(e) => e,
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
        while let Some(c) = cause {
            if let Some(idle) = c.downcast_ref::<super::transfer::BodyIdle>() {
                return ForwardError::ClientStalled(idle.0);
            }
            if let Some(ClientBodyError(inner)) = c.downcast_ref::<ClientBodyError>() {
                return ForwardError::ClientAborted(inner.to_string().into());
            }
            cause = c.source();
        }
        UpstreamError::Protocol(e.into()).into()
    }
}

impl UpstreamError {
    /// The `kind` label of `faspex_gate_upstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::Busy(_) => "busy",
        }
    }
}

/// What the forwarder needs to know about the client side of one request.
#[derive(Debug, Clone)]
pub struct ClientSide {
    /// The address of the end client: the socket peer, or from `X-Forwarded-For` when the peer
    /// is a trusted proxy.
    pub client_ip: IpAddr,
    /// The socket peer's address.
    pub peer_ip: IpAddr,
    /// Whether the socket peer is a configured trusted proxy (its `X-Forwarded-*` are kept).
    pub peer_trusted: bool,
    /// The scheme the client used to reach the gateway: the listener's, or a trusted proxy's
    /// `X-Forwarded-Proto`.
    pub scheme: &'static str,
    /// The authority the client asked for (`Host`, or `:authority` in HTTP/2).
    pub host: Option<HeaderValue>,
    /// The public host name for rewritten redirects: `host`, or a trusted proxy's
    /// `X-Forwarded-Host`.
    pub public_host: Option<HeaderValue>,
}

/// The upstream Faspex server: a cheap-to-clone handle over its connection pool.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<UpstreamInner>,
}

/// Whose request a connection to Faspex is for: public requests may not take the slots kept
/// for requests with a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// No session: public paths, the login page, a login before it is checked.
    Public,
    /// A request that carries a live session (or a checked login), and the gateway's own.
    Session,
}

/// A request's hold on one of the `upstream.max_connections`, released when dropped.
#[derive(Debug)]
pub struct UpstreamSlot {
    _all: tokio::sync::OwnedSemaphorePermit,
    _public: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A public request's place in its address's share ([`AddressShare`]).
    _address: Option<AddressShare>,
}

/// A public request's place among the connections to Faspex one address may hold, taken by the
/// handler and put in the request's extensions: the slot keeps it as long as it lasts.
#[derive(Clone, Debug)]
pub struct AddressShare(pub Arc<dyn std::any::Any + Send + Sync>);

/// How many connections to Faspex one address's public requests may hold: a quarter of the
/// public share (at least one), so that one address alone cannot take it all.
pub fn address_share(max: usize) -> u32 {
    u32::try_from((public_share(max) / 4).max(1)).unwrap_or(u32::MAX)
}

/// The slots of `upstream.max_connections`, and the share public requests may hold.
struct Slots {
    all: Arc<tokio::sync::Semaphore>,
    public: Arc<tokio::sync::Semaphore>,
    /// How long a request waits for a slot (`upstream.connect_timeout`).
    wait: Duration,
}

impl Slots {
    fn new(max: usize, wait: Duration) -> Slots {
        let max = max.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Slots {
            all: Arc::new(tokio::sync::Semaphore::new(max)),
            public: Arc::new(tokio::sync::Semaphore::new(public_share(max))),
            wait,
        }
    }

    /// A slot for `lane`, waiting at most `wait`.
    async fn take(&self, lane: Lane) -> Result<UpstreamSlot, UpstreamError> {
        // Nearly always a slot is free: take it without arming a timer.
        let public = match lane {
            Lane::Public => self.public.clone().try_acquire_owned().ok(),
            Lane::Session => None,
        };
        if lane == Lane::Session || public.is_some() {
            if let Ok(all) = self.all.clone().try_acquire_owned() {
                return Ok(UpstreamSlot {
                    _all: all,
                    _public: public,
                    _address: None,
                });
            }
        }
        drop(public);
        let take = async {
            let public = match lane {
                Lane::Public => Some(self.public.clone().acquire_owned().await.ok()?),
                Lane::Session => None,
            };
            let all = self.all.clone().acquire_owned().await.ok()?;
            Some(UpstreamSlot {
                _all: all,
                _public: public,
                _address: None,
            })
        };
        match tokio::time::timeout(self.wait, take).await {
            Ok(Some(slot)) => Ok(slot),
            _ => Err(UpstreamError::Busy(self.wait)),
        }
    }
}

/// How many of `max` connections public requests may hold: three quarters, at least one.
pub fn public_share(max: usize) -> usize {
    (max - max / 4).max(1)
}

/// A body that holds its request's [`UpstreamSlot`] until it ends or is dropped.
struct SlotBody<B> {
    inner: B,
    slot: Option<UpstreamSlot>,
}

impl<B> http_body::Body for SlotBody<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let mut polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        // Trailers are dropped: no client of Faspex's needs them, and they would carry past
        // `server.strip_response_headers` what the head may not.
        if matches!(&polled, std::task::Poll::Ready(Some(Ok(f))) if f.is_trailers()) {
            polled = std::task::Poll::Ready(None);
        }
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_))))
            || self.inner.is_end_stream()
        {
            self.slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

struct UpstreamInner {
    pool: Arc<Pool>,
    slots: Slots,
    /// Response headers no client sees (`server.strip_response_headers`).
    strip: Vec<HeaderName>,
    authority: Authority,
    /// `scheme://authority` as the upstream writes it in `Location` headers.
    origins: Vec<String>,
    response_timeout: Duration,
    /// How long a body may stand still before the transfer is aborted.
    body_idle_timeout: Duration,
    preserve_host: bool,
}

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1), plus the
/// proxy-authorisation pair, which is meant for us and not for Faspex.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Client-address headers that an untrusted client could use to lie to Faspex about who it is.
/// The gateway only vouches for `X-Forwarded-For` and `X-Real-IP`, so these go whoever sent them.
const CLIENT_ADDRESS_HEADERS: [HeaderName; 12] = [
    header::FORWARDED,
    HeaderName::from_static("client-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("fastly-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("x-originating-ip"),
    HeaderName::from_static("x-remote-addr"),
    HeaderName::from_static("x-remote-ip"),
    HeaderName::from_static("x-forwarded"),
    HeaderName::from_static("forwarded-for"),
];

/// What a trusted balancer may tell Faspex about the original request, and an untrusted client
/// may not (Rack reads `X-Forwarded-Scheme` and `X-Forwarded-Ssl` as well as `-Proto`).
const PROXY_ONLY_HEADERS: [HeaderName; 7] = [
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-original-host"),
];

// Header names are constants, not `&str`s: a `&str` name is parsed and lower-case-checked on
// every lookup, and these lookups run several times per request.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

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

        let tls = crate::server::tls::client_config(cfg.ca_file.as_deref())?;
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
        let pool = Pool::new(connector, target, cfg.connect_timeout);
        let mut origins = vec![format!("{}://{}", scheme, authority)];
        if cfg.url.port().is_none() {
            origins.push(format!("{scheme}://{host}:{port}"));
        }
        Ok(Upstream {
            inner: Arc::new(UpstreamInner {
                pool,
                slots: Slots::new(cfg.max_connections, cfg.connect_timeout),
                strip: server.strip_response_headers.clone(),
                authority,
                origins,
                response_timeout: cfg.response_timeout,
                body_idle_timeout,
                preserve_host: cfg.preserve_host,
            }),
        })
    }

    /// Forward one request and wait (bounded) for the response headers. The request's URI path
    /// and query go upstream exactly as the client sent them; both bodies stream, each under the
    /// idle timeout. The request holds a connection slot of `lane` until its response body ends;
    /// after a 101 the slot is in the response's extensions, for the tunnel to hold.
    pub async fn forward(
        &self,
        mut req: Request<ProxyBody>,
        side: &ClientSide,
        lane: Lane,
    ) -> Result<Response<ProxyBody>, ForwardError> {
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
        strip_hop_by_hop(headers);
        // (the gate refuses any request that carries it; it never goes upstream)
        headers.remove(HTTP2_SETTINGS);
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
        let fut = inner.pool.send(req);
        tokio::pin!(fut);
        let result = tokio::select! {
            biased;
            r = &mut fut => Ok(r),
            _ = sent_rx => tokio::time::timeout(inner.response_timeout, &mut fut).await,
        };
        let mut resp = match result {
            Err(_) => return Err(UpstreamError::Timeout(inner.response_timeout).into()),
            Ok(Err(e)) => return Err(ForwardError::classify(e)),
            Ok(Ok(resp)) => resp,
        };

        let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        let resp_upgrade = upgrade_protocol(resp.headers());
        let headers = resp.headers_mut();
        strip_hop_by_hop(headers);
        headers.remove(header::PROXY_AUTHENTICATE);
        if switching {
            if let Some(proto) = resp_upgrade {
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, proto);
            }
        }
        // (one pass over the answer's few names first: most carry none of them)
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
    pub async fn logout(
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
    pub async fn check_basic(
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
                super::error::full(Bytes::new()),
                inner.body_idle_timeout,
                None,
            ))
            .map_err(|e| UpstreamError::Protocol(e.into()))?;
        for (name, value) in extra {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        let resp = tokio::time::timeout(limit, inner.pool.send(req))
            .await
            .map_err(|_| UpstreamError::Timeout(limit))?
            .map_err(|e| match e {
                ClientError::Connect(e) => UpstreamError::Connect(e),
                ClientError::Http(e) => UpstreamError::Protocol(e.into()),
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

/// HTTP/1.1's `h2c` upgrade settings (RFC 7540 §3.2.1).
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The protocol a request or response asks to upgrade to, when `Connection` lists `upgrade`.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Whether any of `names` is among `headers`. One pass over the few names a message has, with
/// no hashing: removing each of the fifteen names in turn, on every request and response, was
/// a few percent of a small request.
fn any_of(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    headers.keys().any(|k| names.contains(k))
}

/// Remove hop-by-hop headers, including every header that `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // `Connection` is one of them: a message without any has nothing else to strip.
    if !any_of(headers, &HOP_BY_HOP) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Set `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP`. A trusted proxy's own values are
/// kept (and the chain extended); an untrusted client's are replaced, along with every other
/// header it could use to claim another address.
fn set_forwarded(headers: &mut HeaderMap, side: &ClientSide) {
    let (xff, xfp, xfh) = (&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST);
    let client_ip = ip_value(side.client_ip);
    // Room for the four set below, so that the map grows once at most.
    headers.reserve(4);
    if any_of(headers, &CLIENT_ADDRESS_HEADERS) {
        for name in &CLIENT_ADDRESS_HEADERS {
            headers.remove(name);
        }
    }
    if let Some(peer) = side.peer_trusted.then_some(side.peer_ip) {
        // Extend the chain with the proxy we got the request from, as nginx's
        // `$proxy_add_x_forwarded_for` does.
        let mut chain: Vec<String> = headers
            .get_all(xff)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        chain.push(peer.to_string());
        let value = chain.join(", ");
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(xff, v);
        }
        if !headers.contains_key(xfp) {
            headers.insert(xfp, HeaderValue::from_static(side.scheme));
        }
        if !headers.contains_key(xfh) {
            if let Some(h) = &side.host {
                headers.insert(xfh, h.clone());
            }
        }
    } else {
        if any_of(headers, &PROXY_ONLY_HEADERS) {
            for name in &PROXY_ONLY_HEADERS {
                headers.remove(name);
            }
        }
        headers.insert(xff, client_ip.clone());
        headers.insert(xfp, HeaderValue::from_static(side.scheme));
        match &side.host {
            Some(h) => {
                headers.insert(xfh, h.clone());
            }
            None => {
                headers.remove(xfh);
            }
        }
    }
    headers.insert(X_REAL_IP, client_ip);
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut text = String::with_capacity(15);
    crate::util::push_ip(&mut text, ip);
    // An IP address always renders as a valid header value.
    HeaderValue::from_maybe_shared(Bytes::from(text))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The end client's address. The socket peer, unless the peer is a trusted proxy: then the
/// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> (IpAddr, bool) {
    // On a dual-stack listener an IPv4 peer is `::ffff:a.b.c.d`: the same address as the
    // IPv4 one `trusted_proxies` names, and the one limits and logs should show.
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&ip.to_canonical()));
    if !is_trusted(&peer) {
        return (peer, false);
    }
    let mut entries: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    while let Some(entry) = entries.pop() {
        match parse_xff_entry(entry) {
            Some(ip) if is_trusted(&ip) => continue,
            Some(ip) => return (ip.to_canonical(), true),
            None => break,
        }
    }
    (peer, true)
}

/// An `X-Forwarded-For` entry: an IP, possibly with a port or in brackets.
fn parse_xff_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(sa) = entry.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<ipnet::IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let peer: IpAddr = "127.0.0.9".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &nets(&["10.0.0.0/8"])), (peer, false));
    }

    #[test]
    fn trusted_peer_walks_the_chain_from_the_right() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let (ip, trusted) = client_ip(peer, &h, &nets(&["10.0.0.0/8"]));
        assert!(trusted);
        assert_eq!(ip, "1.2.3.4".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn response_trailers_are_dropped() {
        use http_body_util::BodyExt;
        let mut trailers = HeaderMap::new();
        trailers.insert("x-ibm-aspera", HeaderValue::from_static("F4.4.2"));
        let frames = vec![
            Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(b"body"))),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let slots = Slots::new(1, Duration::from_secs(1));
        let slot = slots.take(Lane::Public).await.unwrap();
        let body = SlotBody {
            inner: inner.boxed_unsync(),
            slot: Some(slot),
        };
        let collected = body.collect().await.unwrap();
        assert!(collected.trailers().is_none());
        assert_eq!(collected.to_bytes(), "body");
        assert!(
            slots.take(Lane::Public).await.is_ok(),
            "the slot came back at the end"
        );
    }

    #[test]
    fn a_dual_stack_listeners_mapped_peer_is_the_ipv4_proxy() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("9.9.9.9"));
        let peer: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let (ip, trusted) = client_ip(peer, &h, &nets(&["127.0.0.1/32"]));
        assert!(trusted);
        assert_eq!(ip, "9.9.9.9".parse::<IpAddr>().unwrap());
        // An untrusted mapped peer is its IPv4 address.
        let (ip, trusted) = client_ip(peer, &h, &nets(&["10.0.0.0/8"]));
        assert!(!trusted);
        assert_eq!(ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_in_the_chain_stops_the_walk() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, nonsense"),
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &nets(&["10.0.0.0/8"])).0, peer);
    }

    #[test]
    fn hop_by_hop_headers_go_including_connection_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        let side = ClientSide {
            client_ip: "127.0.0.7".parse().unwrap(),
            peer_ip: "127.0.0.7".parse().unwrap(),
            peer_trusted: false,
            scheme: "https",
            host: Some(HeaderValue::from_static("gate.example")),
            public_host: Some(HeaderValue::from_static("gate.example")),
        };
        set_forwarded(&mut h, &side);
        assert_eq!(h["x-forwarded-for"], "127.0.0.7");
        assert_eq!(h["x-real-ip"], "127.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "gate.example");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn spoofable_headers_go_even_through_a_trusted_proxy() {
        let mut h = HeaderMap::new();
        h.insert("client-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("true-client-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-forwarded-ssl", HeaderValue::from_static("on"));
        for name in [
            "cf-connecting-ip",
            "x-cluster-client-ip",
            "x-originating-ip",
            "x-remote-addr",
        ] {
            h.insert(name, HeaderValue::from_static("6.6.6.6"));
        }
        let side = ClientSide {
            client_ip: "203.0.113.9".parse().unwrap(),
            peer_ip: "10.0.0.1".parse().unwrap(),
            peer_trusted: true,
            scheme: "https",
            host: None,
            public_host: None,
        };
        let mut trusted = h.clone();
        set_forwarded(&mut trusted, &side);
        for gone in [
            "client-ip",
            "true-client-ip",
            "forwarded",
            "cf-connecting-ip",
            "x-cluster-client-ip",
            "x-originating-ip",
            "x-remote-addr",
        ] {
            assert!(!trusted.contains_key(gone), "{gone}");
        }
        assert_eq!(
            trusted["x-forwarded-ssl"], "on",
            "the balancer's own word is kept"
        );
        let mut untrusted = h;
        set_forwarded(
            &mut untrusted,
            &ClientSide {
                peer_trusted: false,
                ..side
            },
        );
        assert!(!untrusted.contains_key("x-forwarded-ssl"));
    }
}
