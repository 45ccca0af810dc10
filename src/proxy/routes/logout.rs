//! Logout: the gateway ends the session itself and answers with a redirect to the login page;
//! nothing goes to Faspex on the request's own account. The Faspex session is logged out with
//! the cookie the gateway kept, as for every session it ends.

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Response, StatusCode};

use crate::proxy::body::{full, ProxyBody};
use crate::proxy::context::Context;
use crate::proxy::error::GatewayError;
use crate::proxy::pages::{self, html};
use crate::proxy::request::{same_origin_request, ClientSide};
use crate::store::EndReason;

/// Logout: the gateway ends the session itself (its seat is free) and logs the Faspex
/// session out with the cookie it kept, as for every session it ends; the browser is sent
/// to the login page. A GET ends it only when the browser marks it same-origin: a link on
/// another site gets a page asking to confirm with a button (a POST). Without a session of
/// the gateway's, nothing ends and it counts as a public request.
pub async fn serve(
    cx: &Context,
    parts: &Parts,
    side: &ClientSide,
) -> Result<Response<ProxyBody>, GatewayError> {
    let had_cookie = cx.cookies.present(&parts.headers);
    let claims = cx.cookies.verify(&parts.headers);
    if claims.is_some() && !same_origin_request(parts, side) {
        let mut resp = html(
            StatusCode::OK,
            pages::confirm_logout(&cx.faspex.logout_path),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(resp);
    }
    let ended = match claims {
        Some(claims) => cx.policy.end(claims.key(), EndReason::Logout).await?,
        None => None,
    };
    match ended {
        Some(s) => {
            if let Some(c) = s.upstream_cookie {
                cx.logouts.queue(c.to_string());
            }
        }
        None => cx
            .policy
            .throttle_public(side.client_ip)
            .map_err(GatewayError::PublicThrottled)?,
    }
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(to) = HeaderValue::from_str(&cx.faspex.login_path) {
        resp.headers_mut().insert(header::LOCATION, to);
    }
    if had_cookie {
        if let Some(clear) = cx.cookies.clear() {
            resp.headers_mut().append(header::SET_COOKIE, clear);
        }
    }
    Ok(resp)
}
