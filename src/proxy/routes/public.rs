//! A public path (or the login page): no session, no credentials. It counts under
//! `policy.public_requests_per_ip_per_minute`, and goes on with the gate's [`PublicPass`].

use http::{header, Response};

use crate::proxy::body::{full, ProxyBody};
use crate::proxy::classify;
use crate::proxy::context::Context;
use crate::proxy::dispatch;
use crate::proxy::error::GatewayError;
use crate::proxy::gate::{PublicPass, HTTP_GATEWAY_PREFIX};
use crate::proxy::inflight::InflightGuard;
use crate::proxy::intake;
use crate::proxy::permit::Permit;
use crate::proxy::request::{basic_credentials, ClientSide, Inspected};

/// Forward a public request on `path` (as classified). `inflight` is its place among its
/// address's public requests still arriving, held until its body has come.
pub async fn serve(
    cx: &Context,
    mut pass: PublicPass,
    body: Inspected,
    path: &str,
    side: &ClientSide,
    inflight: Option<InflightGuard>,
) -> Result<Response<ProxyBody>, GatewayError> {
    cx.policy
        .throttle_public(side.client_ip)
        .map_err(GatewayError::PublicThrottled)?;
    // Public paths need no credentials, so none go with them: Faspex must never check a
    // password the gateway has not (that would bypass the lockout). Rails' Basic support
    // decodes whatever follows the scheme, whatever the scheme, so every `Authorization` goes.
    // Only the HTTP Gateway, a separate service that takes Faspex's transfer tokens there,
    // keeps its non-Basic ones.
    let transfer = classify::under_prefix(path, HTTP_GATEWAY_PREFIX);
    if !transfer || basic_credentials(&pass.head().headers) {
        pass.remove_header(header::AUTHORIZATION);
    }
    let body = match body {
        Inspected::Read(bytes) => full(bytes),
        Inspected::Stream(body) => intake::read_ahead(body, cx.body_idle_timeout, inflight).await?,
    };
    dispatch::pass(cx, side, Permit::public(pass, body)).await
}
