//! The gateway's own pages (under `/_faspex-gate/`): the page a browser sees when its session
//! has ended. Nothing here goes to Faspex.

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::proxy::body::ProxyBody;
use crate::proxy::context::Context;
use crate::proxy::error::GatewayError;
use crate::proxy::pages::{self, html};
use crate::store::EndReason;

/// The gateway's own pages.
pub fn serve(
    cx: &Context,
    req: &Request<Incoming>,
    path: &str,
) -> Result<Response<ProxyBody>, GatewayError> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match path {
        "/_faspex-gate/expired" if get => {
            let why = req.uri().query().and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "reason")
                    .and_then(|(_, v)| match v.as_ref() {
                        "absolute" => Some(EndReason::Absolute),
                        "replaced" => Some(EndReason::Replaced),
                        "admin" => Some(EndReason::Admin),
                        _ => None,
                    })
            });
            let mut resp = html(StatusCode::OK, pages::ended(&cx.site, why));
            if let Some(clear) = cx.cookies.clear() {
                resp.headers_mut().append(header::SET_COOKIE, clear);
            }
            Ok(resp)
        }
        _ => Err(GatewayError::NotFound),
    }
}
