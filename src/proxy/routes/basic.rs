//! An HTTP Basic caller: one client per (source address, User-Agent). Its first request (and
//! the first after its session ends) is a login, forwarded with the pending login's permit and
//! kept only when Faspex takes the credentials; later ones go on with its live session's permit
//! once the credentials are confirmed, by the verification cache or by a fresh check under the
//! same lockout ([`live_session`]). A Basic session whose credentials Faspex stops taking ends.

use http::{Response, StatusCode};

use crate::policy::LoginRequest;
use crate::proxy::body::ProxyBody;
use crate::proxy::context::Context;
use crate::proxy::dispatch;
use crate::proxy::error::GatewayError;
use crate::proxy::gate::{plan, Passed};
use crate::proxy::permit::{ByBasic, Confirmed, LiveSession, Permit};
use crate::proxy::request::{basic_challenge, user_agent, ClientSide};
use crate::proxy::routes::bearer;
use crate::proxy::routes::login::refused_upstream;
use crate::store::{ClientKind, EndReason};

/// Serve a Basic caller's request on `path` (as classified), with the credentials (`user`,
/// `password`) of its `Authorization`. `token_request` marks a token grant the bearer grant let
/// on: the token Faspex answers with is tied to the caller's session.
#[allow(clippy::too_many_arguments)]
pub async fn serve<P: plan::Session + plan::Admits>(
    cx: &Context,
    gate: Passed<P>,
    body: ProxyBody,
    side: &ClientSide,
    path: &str,
    user: &str,
    password: &str,
    token_request: bool,
) -> Result<Response<ProxyBody>, GatewayError> {
    let policy = &cx.policy;
    let agent = user_agent(&gate.head().headers);
    let client = LoginRequest::basic_client(side.client_ip, &agent);
    let login = LoginRequest {
        username: user,
        password,
        ip: side.client_ip,
        agent: &agent,
        client: client.clone(),
        kind: ClientKind::Basic,
        takeover: false,
    };

    if let Some((account, session)) = live_session(cx, &login, path).await? {
        let resp = dispatch::pass(cx, side, Permit::basic(gate, body, &session)).await?;
        if basic_challenge(&resp) {
            // Faspex no longer takes these credentials: neither may the gateway.
            policy.cache().forget(&account);
            if let Err(e) = policy.end(&session.key, EndReason::Rollback).await {
                tracing::error!(error = %e, "could not end a session Faspex refused");
            }
            return Ok(resp);
        }
        return bearer::after_api(cx, resp, &session.key, token_request).await;
    }

    let pending = policy.login_pending(login, &cx.directory).await?;
    let key = pending.admitted().session.key.clone();
    let sent = dispatch::pass(cx, side, Permit::login(gate, body, &pending)).await;
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => {
            // The login never reached Faspex, or Faspex never answered: no seat is kept.
            refused_upstream(pending).await;
            return Err(e);
        }
    };
    if resp.status() == StatusCode::UNAUTHORIZED {
        // Faspex refused credentials the directory accepted.
        refused_upstream(pending).await;
        return Ok(resp);
    }
    pending.confirm().await;
    bearer::after_api(cx, resp, &key, token_request).await
}

/// The caller's live session, with its account, when its credentials are confirmed: by the
/// verification cache, or (when the cache cannot say but a session is live) by a fresh check
/// under the lockout. `None` when the request must log in.
async fn live_session(
    cx: &Context,
    login: &LoginRequest<'_>,
    path: &str,
) -> Result<Option<(String, LiveSession<ByBasic>)>, GatewayError> {
    let policy = &cx.policy;
    let Ok(account) = policy.account(login.username) else {
        return Ok(None);
    };
    let client = &login.client;
    let confirmed = match Confirmed::by_cache(policy, &account, login.password) {
        Some(c) => c,
        None if policy.client_session_peek(&account, client).await?.is_ok() => {
            Confirmed::by_recheck(policy, login, &cx.directory).await?
        }
        None => return Ok(None),
    };
    let live = LiveSession::of_client(policy, &confirmed, client, path)
        .await?
        .ok();
    Ok(live.map(|session| (account, session)))
}
