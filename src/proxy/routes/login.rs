//! The login form's POST: throttle, lockout, credential check and admission in the login
//! pipeline, then Faspex's own login with the [`PendingLogin`]'s permit. The gateway's cookie is
//! set only when Faspex confirms; else the seat is given back ([`refused_upstream`]).

use bytes::Bytes;
use http::{header, Response};

use crate::policy::{LoginRequest, PendingLogin};
use crate::proxy::body::{full, ProxyBody};
use crate::proxy::context::Context;
use crate::proxy::dispatch;
use crate::proxy::error::{GatewayError, Refusal};
use crate::proxy::gate::{plan, Passed};
use crate::proxy::pages::{LoginForm, TAKEOVER_FIELD};
use crate::proxy::permit::Permit;
use crate::proxy::request::{user_agent, ClientSide};
use crate::proxy::session::{self, SessionCookies};
use crate::store::{ClientKind, EndReason};

/// The login form's POST: throttle, lockout, credential check and admission, then Faspex's
/// own login. Only when Faspex confirms it does the browser get the gateway's cookie.
///
/// `username` and `password` are the credentials the gate read from the form, exactly as
/// Rails reads them; the form Faspex gets is rebuilt from the fields read here, with no
/// query string and no `Content-Encoding`.
pub async fn serve(
    cx: &Context,
    mut gate: Passed<plan::Login>,
    bytes: &[u8],
    username: String,
    password: String,
    side: &ClientSide,
) -> Result<Response<ProxyBody>, GatewayError> {
    let f = &cx.faspex;
    // The fields as the gate read them (Rack's reading: spaces after a separator dropped),
    // so that the form Faspex gets is the one checked.
    let mut params = Vec::new();
    crate::faspex::rack::form_params(bytes, &mut params)?;
    let pairs: Vec<(String, String)> = params
        .into_iter()
        .map(|p| (p.name, String::from_utf8_lossy(&p.value).into_owned()))
        .collect();
    if pairs.iter().filter(|(k, _)| k == TAKEOVER_FIELD).count() > 1 {
        return Err(GatewayError::BadRequest(
            "the login form repeats a credential field",
        ));
    }
    let takeover = pairs.iter().any(|(k, v)| k == TAKEOVER_FIELD && v == "1");
    let form = LoginForm {
        username: username.clone(),
        hidden: pairs
            .iter()
            .filter(|(k, _)| {
                *k != f.username_field && *k != f.password_field && k != TAKEOVER_FIELD
            })
            .cloned()
            .collect(),
        username_field: f.username_field.clone(),
        password_field: f.password_field.clone(),
    };
    // Faspex gets exactly the fields checked here, less the gateway's own, and no query
    // string: Rails would let a query parameter override the form's credentials.
    let forward_body = {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs.iter().filter(|(k, _)| k != TAKEOVER_FIELD) {
            out.append_pair(k, v);
        }
        Bytes::from(out.finish())
    };
    // No query string, no `Content-Encoding`, no method override: the form as rebuilt here.
    gate.as_form(forward_body.len())?;
    let parts = gate.head();

    let previous = cx.cookies.verify(&parts.headers);
    let client = match &previous {
        Some(claims) => claims.client(),
        None => SessionCookies::new_client()?,
    };
    let agent = user_agent(&parts.headers);
    let login = LoginRequest {
        username: &username,
        password: &password,
        ip: side.client_ip,
        agent: &agent,
        client: client.clone(),
        kind: ClientKind::Browser,
        takeover,
    };
    let pending = match cx.policy.login_pending(login, &cx.directory).await {
        Ok(p) => p,
        Err(refused) => {
            return Err(GatewayError::Refused(Box::new(Refusal {
                refused,
                form: Some(form),
            })))
        }
    };

    // No Faspex cookie goes along: one the browser sent could name another account's live
    // Faspex session, which a login action that skips an already signed-in session would
    // hand back as this login's. (Rails 3 answers a form whose authenticity token has no
    // session by resetting the session and going on with the login.)
    let permit = Permit::login(gate, full(forward_body), &pending);
    let sent = dispatch::send(cx, side, permit).await;
    let mut resp = match sent {
        Ok(resp) => resp,
        Err(e) => {
            refused_upstream(pending).await;
            return Err(e);
        }
    };
    if !login_succeeded(cx, &resp, side) {
        // One of Faspex's own accounts: its answer is the check. A refusal is a wrong
        // password, answered as the directory's is; an error is no verdict.
        if pending.faspex_checks() && !resp.status().is_server_error() {
            let refused = pending.reject().await;
            return Err(GatewayError::Refused(Box::new(Refusal {
                refused,
                form: None,
            })));
        }
        refused_upstream(pending).await;
        return Ok(resp);
    }

    // Faspex has logged the person in. Keep its session cookie with ours.
    let name = &f.session_cookie;
    // Only from Faspex's answer to the login checked here: a cookie the browser sent could
    // name another account's Faspex session.
    let faspex_cookie = session::set_cookie_pair(resp.headers(), name);
    if faspex_cookie.is_none() {
        tracing::warn!(
            cookie = %name,
            "Faspex accepted a login without the session cookie faspex.session_cookie names; \
             the gateway cannot log that Faspex session out when it ends the session"
        );
    }
    let admitted = pending.admitted().clone();
    let saved = cx
        .policy
        .set_upstream_cookie(&admitted.session.key, faspex_cookie.clone())
        .await;
    let issued = cx.cookies.issue(&admitted.token, &client);
    let failure = match (saved, issued) {
        (Ok(true), Some(cookie)) => {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
            None
        }
        (Ok(false), _) => Some(GatewayError::NoSession(None)),
        (Err(e), _) => Some(GatewayError::Store(e)),
        (Ok(true), None) => Some(GatewayError::Store(crate::store::StoreError::Closed)),
    };
    if let Some(e) = failure {
        // The session ended meanwhile (another login from this browser renewed it), or it
        // could not be saved: give the seat back and log the Faspex session out again.
        tracing::warn!(error = %e, "a login Faspex accepted could not be kept");
        refused_upstream(pending).await;
        if let Some(c) = faspex_cookie {
            cx.logouts.queue(c);
        }
        return Err(e);
    }
    pending.confirm().await;
    // This browser's earlier session, if it was another (another account's): it ends now.
    if let Some(old) = previous.map(|c| c.key().clone()) {
        if old != admitted.session.key {
            match cx.policy.end(&old, EndReason::Logout).await {
                Ok(Some(ended)) => {
                    if let Some(c) = ended
                        .upstream_cookie
                        .filter(|c| Some(&**c) != faspex_cookie.as_deref())
                    {
                        cx.logouts.queue(c.to_string());
                    }
                }
                Ok(None) => {}
                // Faspex has answered and the new session is live: the answer goes out.
                Err(e) => {
                    tracing::error!(error = %e, "could not end a browser's earlier session")
                }
            }
        }
    }
    Ok(resp)
}

/// Faspex refused (or never answered) a login the engine admitted: give the seat back.
pub async fn refused_upstream(pending: PendingLogin) {
    if let Err(e) = pending.refuse().await {
        tracing::error!(error = %e, "could not roll back a login Faspex refused");
    }
}

/// The contract's rule: a login succeeded when Faspex answers 3xx with a `Location` on the
/// same origin and outside the login path.
fn login_succeeded(cx: &Context, resp: &Response<ProxyBody>, side: &ClientSide) -> bool {
    if !resp.status().is_redirection() {
        return false;
    }
    let Some(loc) = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(host) = side.public_host.as_ref().and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Ok(base) = url::Url::parse(&format!(
        "{}://{}{}",
        side.scheme, host, cx.faspex.login_path
    )) else {
        return false;
    };
    let Ok(target) = base.join(loc) else {
        return false;
    };
    let origin = target.origin().ascii_serialization();
    let same_origin = target.origin() == base.origin() || cx.upstream.origins().contains(&origin);
    same_origin && !cx.gate.profile.is_login_page(target.path())
}
