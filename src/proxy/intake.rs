//! Taking in a client's body before anything goes to Faspex: a body the gate must look into is
//! read whole, within a size and a time limit ([`read_client`]); a public body's head is read
//! ahead, so that a body that stalls holds no connection to Faspex ([`read_ahead`]).

use std::time::Duration;

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{client_body, full, read_limited, ProxyBody, ReadAhead, ReadError};
use super::error::GatewayError;
use super::gate;
use super::inflight::InflightGuard;
use super::upstream::transfer::{BodyIdle, TransferBody};

/// How much of a public request's body the gateway holds before it takes a connection to Faspex:
/// a body that stalls before this much has come holds none.
pub const PUBLIC_READ_AHEAD: usize = 64 * 1024;

/// The longest a login form may take to arrive, however it trickles.
const FORM_READ_LIMIT: Duration = Duration::from_secs(30);

/// Read a client's body the gateway must look into: at most `limit` bytes (`413`), within
/// [`FORM_READ_LIMIT`], never standing still longer than the body idle timeout.
pub async fn read_client(
    body: Incoming,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, GatewayError> {
    let mut body = TransferBody::new(client_body(body), idle, None).boxed_unsync();
    match tokio::time::timeout(FORM_READ_LIMIT, read_limited(&mut body, limit)).await {
        Err(_) => Err(GatewayError::ClientStalled(FORM_READ_LIMIT)),
        Ok(Err(ReadError::TooLarge)) => {
            // Let a client that sends a little too much finish sending, so that it reads
            // the 413 instead of a reset connection; a flood is cut off.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let mut drained = 0usize;
                while let Some(Ok(frame)) = body.frame().await {
                    drained += frame.data_ref().map_or(0, |d| d.len());
                    if drained > 1024 * 1024 {
                        break;
                    }
                }
            })
            .await;
            Err(gate::Refusal::TooLarge(limit).into())
        }
        Ok(Err(ReadError::Broken(e))) if e.is::<BodyIdle>() => {
            Err(GatewayError::ClientStalled(idle))
        }
        Ok(Err(ReadError::Broken(_))) => Err(GatewayError::ClientAborted),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// A public request's body, ready to forward: its first [`PUBLIC_READ_AHEAD`] bytes (or
/// all of it, when smaller) are read before a connection to Faspex is taken, so that a body
/// that stalls holds none. The request counts against its address (`inflight`) until the
/// last of its body has come.
pub async fn read_ahead(
    body: Incoming,
    idle: Duration,
    inflight: Option<InflightGuard>,
) -> Result<ProxyBody, GatewayError> {
    if body.is_end_stream() {
        return Ok(client_body(body));
    }
    let mut body = TransferBody::new(client_body(body), idle, None).boxed_unsync();
    let mut head = bytes::BytesMut::new();
    while head.len() < PUBLIC_READ_AHEAD {
        match body.frame().await {
            None => return Ok(full(head.freeze())),
            Some(Ok(frame)) => {
                // (trailers, which Rack never reads, are not forwarded)
                if let Ok(data) = frame.into_data() {
                    head.extend_from_slice(&data);
                }
            }
            Some(Err(e)) if e.is::<BodyIdle>() => return Err(GatewayError::ClientStalled(idle)),
            Some(Err(_)) => return Err(GatewayError::ClientAborted),
        }
        if body.is_end_stream() {
            return Ok(full(head.freeze()));
        }
    }
    Ok(ReadAhead::new(head.freeze(), body, inflight).boxed_unsync())
}
