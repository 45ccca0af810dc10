//! How forwarding fails: the upstream's fault ([`UpstreamError`]: connect, timeout, protocol,
//! busy) or the client's own body ([`ForwardError`]). The one error-to-response place
//! (`proxy/error.rs`) maps them to statuses.

use std::time::Duration;

use super::pool::ClientError;
use super::transfer;
use crate::conn::stall::WriteStalled;
use crate::proxy::body::{BoxError, ClientBodyError};

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

impl ForwardError {
    /// Sort a failed request upstream: a cause in the client's own body is the client's fault.
    pub(super) fn classify(e: ClientError) -> ForwardError {
        let e = match e {
            ClientError::Connect(e) => return UpstreamError::Connect(e).into(),
            ClientError::Timeout(d) => return UpstreamError::Timeout(d).into(),
            ClientError::Http(e) => e,
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
        while let Some(c) = cause {
            if let Some(idle) = c.downcast_ref::<transfer::BodyIdle>() {
                return ForwardError::ClientStalled(idle.0);
            }
            if let Some(ClientBodyError(inner)) = c.downcast_ref::<ClientBodyError>() {
                return ForwardError::ClientAborted(inner.to_string().into());
            }
            // Faspex read nothing of the request for `server.body_idle_timeout`, and did not
            // answer: it did not answer in time (504, `kind=timeout`), not a broken protocol.
            if let Some(WriteStalled(limit)) = c
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|e| e.downcast_ref::<WriteStalled>())
            {
                return UpstreamError::Timeout(*limit).into();
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
