//! OAuth2 for API clients: a request with a bearer token Faspex issued to a session goes on
//! with that session's permit; the token grant (a Basic caller's `POST` to the token path) may
//! name only its own checked credentials, and the token Faspex answers with is tied to the
//! caller's session, to die with it.

use http::{header, Request, Response};

use crate::proxy::body::{full, read_limited, ProxyBody, ReadError};
use crate::proxy::context::Context;
use crate::proxy::dispatch;
use crate::proxy::error::GatewayError;
use crate::proxy::gate::{Passed, LOGIN_READ_LIMIT};
use crate::proxy::permit::{LiveSession, Permit};
use crate::proxy::request::ClientSide;
use crate::proxy::upstream::UpstreamError;
use crate::store::SessionKey;

/// The most the gateway reads of a token response.
pub const READ_LIMIT: usize = LOGIN_READ_LIMIT;

/// The credentials a token grant names in its form.
pub struct Named {
    pub username: Option<String>,
    pub password: Option<String>,
}

/// A request with a bearer token: it goes on with the session the token belongs to. An API
/// client's credentials are its token: no Faspex session rides along.
pub async fn serve(
    cx: &Context,
    req: Request<ProxyBody>,
    side: &ClientSide,
    path: &str,
    token: &str,
    gate: Passed,
) -> Result<Response<ProxyBody>, GatewayError> {
    match LiveSession::by_bearer(&cx.policy, token, path).await? {
        Ok(session) => dispatch::pass(cx, req, side, Permit::bearer(gate, &session)).await,
        Err(_) => Err(GatewayError::NoSession(None)),
    }
}

/// A token grant's request, before it goes on with the Basic caller's credentials (`user`,
/// `password`): Faspex is never asked for a token for other credentials than the ones the
/// gateway checks. The gateway reads the answer, so it must come as plain JSON.
pub fn grant(
    cx: &Context,
    req: &mut Request<ProxyBody>,
    named: Named,
    user: &str,
    password: &str,
) -> Result<(), GatewayError> {
    let policy = &cx.policy;
    let same_user = named
        .username
        .as_deref()
        .is_none_or(|v| policy.account(v).ok() == policy.account(user).ok());
    let same_password = named.password.as_deref().is_none_or(|v| v == password);
    if !same_user || !same_password {
        return Err(GatewayError::BadRequest(
            "the token request names other credentials than its Authorization",
        ));
    }
    req.headers_mut().remove(header::ACCEPT_ENCODING);
    Ok(())
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
