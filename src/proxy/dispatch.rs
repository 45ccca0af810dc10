//! The verbs that hand a checked request to Faspex, each taking the request's [`Permit`]:
//! [`send`] (the cookie allow-list, then [`Upstream::forward`](super::upstream::Upstream::forward))
//! and [`pass`] (a client's request as the gate read it: a WebSocket upgrade joined once Faspex
//! agrees, a session's tunnels and long responses bound to its session).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use super::access::AccessRecord;
use super::body::{full, ProxyBody};
use super::context::Context;
use super::error::GatewayError;
use super::permit::{Lane, Permit};
use super::request::ClientSide;
use super::session;
use super::streams;
use super::upstream::headers::upgrade_protocol;
use super::upstream::slots::{AddressShare, UpstreamSlot};
use super::upstream::transfer::tunnel;
use super::upstream::UpstreamError;
use crate::conn::ConnPermit;

/// Forward a client's request as the gate read it, body streaming or read, with a WebSocket
/// upgrade joined once Faspex agrees. `permit` says whose request it is: the session it belongs
/// to (its tunnels and long responses end with it) and the Faspex cookie that goes with it.
///
/// Boxed: forwarding's state (the upstream exchange, about 3.7 KB) would otherwise sit inside
/// every future that awaits it, up to the request's own, which hyper keeps in a slot of that size
/// for as long as the connection is open, requests or none. Boxed here, it takes that room only
/// while a request is being forwarded (one allocation per request).
pub(super) fn pass<'a>(
    cx: &'a Context,
    side: &'a ClientSide,
    permit: Permit<'a>,
) -> Pin<Box<impl Future<Output = Result<Response<ProxyBody>, GatewayError>> + Send + 'a>> {
    // (allocated first and the future written into it: `Box::pin(forward(..))` would build the
    // whole 3.7 KB on the stack and copy it over, where this writes the few hundred bytes of its
    // start in place)
    Box::into_pin(Box::write(Box::new_uninit(), forward(cx, side, permit)))
}

/// [`pass`]'s work.
async fn forward(
    cx: &Context,
    side: &ClientSide,
    mut permit: Permit<'_>,
) -> Result<Response<ProxyBody>, GatewayError> {
    let public = permit.lane() == Lane::Public;
    let req = permit.request_mut();
    // A WebSocket upgrade (the gate lets no other ask): keep hold of the client's side of
    // the connection so that, once Faspex agrees with a 101, the two can be joined.
    let client_upgrade =
        if req.version() <= http::Version::HTTP_11 && upgrade_protocol(req.headers()).is_some() {
            Some(hyper::upgrade::on(&mut *req))
        } else {
            None
        };

    let conn_permit = req.extensions_mut().remove::<ConnPermit>();
    if public && client_upgrade.is_some() {
        // One address's public tunnels may hold only its share of the connections to
        // Faspex: a tunnel lasts as long as a byte crosses it now and then. (Short requests
        // are not held to it: 50 browsers behind one NAT address load a page's assets at
        // once.)
        let key = crate::conn::address_key(side.client_ip, cx.ipv6_prefix_len);
        let Some(share) = cx.public_upstream.enter(key, cx.address_share) else {
            cx.metrics.refused("public_inflight");
            return Err(GatewayError::PublicInflight);
        };
        req.extensions_mut().insert(AddressShare(Arc::new(share)));
    }
    // Whose request it is: its tunnels and long responses end with its session.
    let owner = permit.session();
    let mut resp = send(cx, side, permit).await?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // Faspex switched protocols without being asked: nothing sane to relay.
            return Err(GatewayError::Upstream(UpstreamError::Protocol(
                "101 Switching Protocols without an upgrade request".into(),
            )));
        };
        // Only the protocol that was asked for (the gate lets only WebSocket ask).
        let agreed = upgrade_protocol(resp.headers())
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if !agreed {
            return Err(GatewayError::Upstream(UpstreamError::Protocol(
                "101 Switching Protocols to another protocol than the one asked for".into(),
            )));
        }
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let slot = resp.extensions_mut().remove::<Arc<UpstreamSlot>>();
        let hold = owner.map(|k| cx.streams.hold(k));
        let idle = cx.body_idle_timeout;
        let (log_tx, log_rx) = tokio::sync::oneshot::channel::<AccessRecord>();
        tokio::spawn(async move {
            // The client's connection slot and the upstream connection's are held for as
            // long as the tunnel is open.
            let _held = (conn_permit, slot);
            let ended = async {
                match &hold {
                    Some(h) => h.ended().await,
                    None => std::future::pending().await,
                }
            };
            let end = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let client = TokioIo::new(client);
                    let upstream = TokioIo::new(upstream);
                    let end = tunnel(client, upstream, idle, ended).await;
                    if let Err(e) = &end.outcome {
                        tracing::debug!(error = %e, "a tunnel ended with an error");
                    }
                    Some(end)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    None
                }
            };
            if let Ok(record) = log_rx.await {
                match &end {
                    Some(e) => record.log_tunnel(e.up, e.down, e.outcome.is_ok()),
                    None => record.log_tunnel(0, 0, false),
                }
            }
        });
        let (mut parts, _) = resp.into_parts();
        parts.extensions.insert(TunnelLog::new(log_tx));
        return Ok(Response::from_parts(parts, full(Bytes::new())));
    }

    // A long response of a session's (a download) ends when the session does.
    if let Some(key) = owner {
        if streams::long(resp.body()) {
            let hold = cx.streams.hold(key);
            return Ok(resp.map(|body| streams::SessionBound::new(body, hold).boxed_unsync()));
        }
    }
    Ok(resp)
}

/// Send a request to Faspex over a connection of the permit's lane. Its cookies are an
/// allow-list: the permit's Faspex cookie (the session's own) and `faspex.forward_cookies`; the
/// gateway's own and every other cookie stay here.
pub(super) async fn send(
    cx: &Context,
    side: &ClientSide,
    mut permit: Permit<'_>,
) -> Result<Response<ProxyBody>, GatewayError> {
    let cookie = permit.faspex_cookie();
    session::allow_cookies(
        permit.request_mut().headers_mut(),
        &cx.faspex.forward_cookies,
        cookie,
    );
    Ok(cx.upstream.forward(permit, side).await?)
}

/// Put on a 101 response by [`pass`]: the outer handler hands the request's access
/// record to the tunnel, which writes the line when it closes.
#[derive(Clone)]
pub(super) struct TunnelLog(
    Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<AccessRecord>>>>,
);

impl TunnelLog {
    fn new(tx: tokio::sync::oneshot::Sender<AccessRecord>) -> Self {
        TunnelLog(Arc::new(std::sync::Mutex::new(Some(tx))))
    }

    pub(super) fn send(self, record: AccessRecord) {
        let tx = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(record);
        }
    }
}
