//! A protected request: it must carry a live session, by the request's own credentials (HTTP
//! [`basic`](super::basic), a [`bearer`](super::bearer) token) or by the gateway's cookie. A
//! Faspex cookie alone is never enough.

use http::Response;

use crate::policy::SessionGone;
use crate::proxy::body::ProxyBody;
use crate::proxy::context::Context;
use crate::proxy::dispatch;
use crate::proxy::error::GatewayError;
use crate::proxy::gate::{plan, Passed};
use crate::proxy::permit::{LiveSession, Permit};
use crate::proxy::request::{credentials, ClientSide, Credentials};
use crate::proxy::routes::{basic, bearer};
use crate::proxy::session;

/// Serve a protected request on `path` (as classified), under a session plan `P`: a protected
/// request, or a password form (a form that carries a password of its own: Faspex's answer to
/// it is never taken as a rotation of the session's cookie).
pub async fn serve<P: plan::Session + plan::Admits>(
    cx: &Context,
    gate: Passed<P>,
    body: ProxyBody,
    side: &ClientSide,
    path: &str,
) -> Result<Response<ProxyBody>, GatewayError> {
    let policy = &cx.policy;
    match credentials(&gate.head().headers) {
        Credentials::Basic { user, password } => {
            Box::pin(basic::serve(
                cx, gate, body, side, path, &user, &password, false,
            ))
            .await
        }
        Credentials::Bearer(token) => bearer::serve(cx, gate, body, side, path, &token).await,
        Credentials::Malformed => Err(GatewayError::BadRequest(
            "the Authorization header is malformed, not UTF-8, or of an unknown scheme",
        )),
        Credentials::None => {
            let Some(claims) = cx.cookies.verify(&gate.head().headers) else {
                return Err(GatewayError::NoSession(None));
            };
            let key = claims.key();
            let session = match LiveSession::by_cookie(policy, key, path).await? {
                Ok(s) => s,
                Err(SessionGone::Expired(why)) => return Err(GatewayError::NoSession(Some(why))),
                Err(SessionGone::Unknown) => return Err(GatewayError::NoSession(cx.memo.why(key))),
            };
            // The session's own Faspex session, whatever Faspex cookie the browser sent:
            // a gateway session never rides on another account's Faspex session.
            let resp = dispatch::pass(cx, side, Permit::cookie(gate, body, &session)).await?;
            // Faspex rotated its session cookie on a request that carried no credential:
            // keep the new one for the logout.
            let name = &cx.faspex.session_cookie;
            if !P::PASSWORD_FORM {
                if let Some(fresh) = session::set_cookie_pair(resp.headers(), name) {
                    if session.upstream_cookie.as_deref() != Some(fresh.as_str()) {
                        if let Err(e) = policy.set_upstream_cookie(&session.key, Some(fresh)).await
                        {
                            // Faspex has answered: the answer goes out whatever the store
                            // says.
                            tracing::error!(error = %e, "could not keep Faspex's rotated cookie");
                        }
                    }
                }
            }
            Ok(resp)
        }
    }
}

/// Serve a token grant on `path` (as classified): only an HTTP Basic caller's, naming no other
/// credentials than its own ([`bearer::grant`]); it then goes on as that caller's request, and
/// the token Faspex answers with is tied to the caller's session.
pub async fn token(
    cx: &Context,
    gate: Passed<plan::Token>,
    body: ProxyBody,
    side: &ClientSide,
    path: &str,
) -> Result<Response<ProxyBody>, GatewayError> {
    // Faspex grants tokens for the credentials in the request: only ones the gateway has
    // checked may reach it.
    let (gate, user, password) = bearer::grant(cx, gate)?;
    Box::pin(basic::serve(
        cx, gate, body, side, path, &user, &password, true,
    ))
    .await
}
