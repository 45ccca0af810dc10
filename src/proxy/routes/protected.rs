//! A protected request: it must carry a live session, by the request's own credentials (HTTP
//! [`basic`](super::basic), a [`bearer`](super::bearer) token) or by the gateway's cookie. A
//! Faspex cookie alone is never enough.

use http::{Request, Response};

use crate::policy::SessionGone;
use crate::proxy::body::ProxyBody;
use crate::proxy::context::Context;
use crate::proxy::dispatch;
use crate::proxy::error::GatewayError;
use crate::proxy::gate::Passed;
use crate::proxy::permit::{LiveSession, Permit};
use crate::proxy::request::{credentials, ClientSide, Credentials};
use crate::proxy::routes::bearer::Named;
use crate::proxy::routes::{basic, bearer};
use crate::proxy::session;

/// Serve a protected request on `path` (as classified). `token` holds the credentials a token
/// grant names, which must be its Basic ones; `password_form` marks a form that carries a
/// password of its own (Faspex's answer to it is never taken as a rotation of the session's
/// cookie).
pub async fn serve(
    cx: &Context,
    req: Request<ProxyBody>,
    side: &ClientSide,
    path: &str,
    gate: Passed,
    token: Option<Named>,
    password_form: bool,
) -> Result<Response<ProxyBody>, GatewayError> {
    let policy = &cx.policy;
    let creds = credentials(req.headers());
    if token.is_some() && !matches!(creds, Credentials::Basic { .. } | Credentials::Malformed) {
        // Faspex grants tokens for the credentials in the request: only ones the gateway
        // has checked may reach it.
        return Err(GatewayError::BadRequest(
            "the token endpoint takes HTTP Basic credentials",
        ));
    }
    match creds {
        Credentials::Basic { user, password } => {
            Box::pin(basic::serve(
                cx, req, side, path, &user, &password, token, gate,
            ))
            .await
        }
        Credentials::Bearer(token) => bearer::serve(cx, req, side, path, &token, gate).await,
        Credentials::Malformed => Err(GatewayError::BadRequest(
            "the Authorization header is malformed, not UTF-8, or of an unknown scheme",
        )),
        Credentials::None => {
            let Some(claims) = cx.cookies.verify(req.headers()) else {
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
            let resp = dispatch::pass(cx, req, side, Permit::cookie(gate, &session)).await?;
            // Faspex rotated its session cookie on a request that carried no credential:
            // keep the new one for the logout.
            let name = &cx.faspex.session_cookie;
            if !password_form {
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
