//! OAuth2 for API clients: a request with a bearer token Faspex issued to a session goes on
//! with that session's permit; the token grant (a Basic caller's `POST` to the token path) may
//! name only its own checked credentials, and the token Faspex answers with is tied to the
//! caller's session, to die with it.

use http::{header, Response};

use crate::proxy::body::{full, read_limited, ProxyBody, ReadError};
use crate::proxy::context::Context;
use crate::proxy::dispatch;
use crate::proxy::error::GatewayError;
use crate::proxy::gate::{plan, Passed, LOGIN_READ_LIMIT};
use crate::proxy::permit::{LiveSession, Permit};
use crate::proxy::request::ClientSide;
use crate::proxy::upstream::UpstreamError;
use crate::store::SessionKey;

/// The most the gateway reads of a token response.
pub const READ_LIMIT: usize = LOGIN_READ_LIMIT;

/// A request with a bearer token: it goes on with the session the token belongs to. An API
/// client's credentials are its token: no Faspex session rides along.
pub async fn serve<P: plan::Session>(
    cx: &Context,
    gate: Passed<P>,
    body: ProxyBody,
    side: &ClientSide,
    path: &str,
    token: &str,
) -> Result<Response<ProxyBody>, GatewayError> {
    match LiveSession::by_bearer(&cx.policy, token, path).await? {
        Ok(session) => dispatch::pass(cx, side, Permit::bearer(gate, body, &session)).await,
        Err(_) => Err(GatewayError::NoSession(None)),
    }
}

/// A token grant's request, before it goes on as its Basic caller's: the gate's mark for it
/// becomes one a request may be forwarded with only here, once the credentials it names are
/// found to be the ones in its `Authorization` ([`Passed::grant`]): Faspex is never asked for a
/// token for other credentials than the ones the gateway checks. The gateway reads the answer,
/// so it must come as plain JSON. Returns the mark and the Basic credentials (user, password).
pub fn grant(
    cx: &Context,
    gate: Passed<plan::Token>,
) -> Result<(Passed<plan::Protected>, String, String), GatewayError> {
    let policy = &cx.policy;
    let (mut gate, user, password) = gate.grant(|name| policy.account(name).ok())?;
    gate.remove_header(header::ACCEPT_ENCODING);
    Ok((gate, user, password))
}

/// After an API request on session `key`: a token response ties its access token to it.
pub async fn after_api(
    cx: &Context,
    resp: Response<ProxyBody>,
    key: &SessionKey,
    token_request: bool,
) -> Result<Response<ProxyBody>, GatewayError> {
    if !token_request || !resp.status().is_success() {
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let mut body = body;
    let bytes = read_limited(&mut body, READ_LIMIT)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge => GatewayError::TooLarge(READ_LIMIT),
            ReadError::Broken(e) => GatewayError::Upstream(UpstreamError::Protocol(e)),
        })?;
    match access_token(&bytes) {
        Some(token) => {
            if !cx.policy.add_bearer(key, &token).await? {
                // The session ended meanwhile: the token must not outlive it unseen.
                return Err(GatewayError::NoSession(None));
            }
        }
        None => tracing::warn!(
            status = parts.status.as_u16(),
            "Faspex answered a token request without an access token the gateway can read"
        ),
    }
    Ok(Response::from_parts(parts, full(bytes)))
}

/// The `access_token` of an OAuth2 token response.
fn access_token(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("access_token")?
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}
