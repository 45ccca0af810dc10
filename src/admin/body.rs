//! What the admin API refuses and why ([`Refused`]), and reading a call's body: at most
//! [`MAX_BODY`] bytes, and a JSON body only as an object of the fields the call knows.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

/// The largest request body read (a lock's `{"for": …}`, a clock's `{"advance_secs": …}`).
pub(super) const MAX_BODY: usize = 4096;

/// Why an admin call is refused; the API maps each to its status.
pub(super) enum Refused {
    BadRequest(String),
    NotFound,
    Method(&'static str),
    TooLarge,
    Store(String),
}

/// The whole body, refused when it is larger than [`MAX_BODY`] or breaks off.
pub(super) async fn read(body: Incoming) -> Result<Bytes, Refused> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Refused::TooLarge),
        Err(_) => Err(Refused::BadRequest("the body could not be read".into())),
    }
}

/// A JSON body read as `T`: an object and nothing else (serde would read a struct from an array
/// too, `["1h"]`, which docs/operations.md says gets 400). `example` is the object the refusal shows.
pub(super) fn json_object<T: DeserializeOwned>(bytes: &[u8], example: &str) -> Result<T, Refused> {
    let bad = |e: String| {
        Refused::BadRequest(format!(
            "the body must be a JSON object like {example}: {e}"
        ))
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(bad("not an object".into()));
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}
