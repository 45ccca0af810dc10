//! `POST /admin/v1/clock`: moves the manual clock of a gateway started with
//! `faspex-gate run --manual-clock`, so that integration tests see idle and lockout expiry
//! without sleeping. Tests only: this module, the route and the option exist only in builds with
//! the `test-support` cargo feature, and a gateway on the wall clock answers the route `404`.
//!
//! The body is `{"advance_secs": N}` (N from 0 to one year; the clock never goes back); the
//! answer is the clock's new time, `{"now": "2026-01-01T01:00:00.000Z", "now_ms": …}`. The
//! sweeper acts on the new time at its next pass (within `SWEEP_EVERY`).

use std::time::Duration;

use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{self, Refused};
use crate::clock::{Clock, ManualClock};

/// The longest one call moves the clock.
const MAX_ADVANCE: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    advance_secs: u64,
}

/// Move `clock` forward by the body's `advance_secs`, and say where it stands now.
pub(super) async fn advance(clock: &ManualClock, body: Incoming) -> Result<Value, Refused> {
    let bytes = body::read(body).await?;
    let by = parse(&bytes)?;
    clock.advance(by);
    let now = clock.now();
    tracing::info!(advanced_s = by.as_secs(), now = %now, "manual clock moved");
    Ok(json!({ "now": now.rfc3339(), "now_ms": now.as_millis() }))
}

fn parse(bytes: &[u8]) -> Result<Duration, Refused> {
    let a: Advance = body::json_object(bytes, r#"{"advance_secs": 3600}"#)?;
    let by = Duration::from_secs(a.advance_secs);
    if by > MAX_ADVANCE {
        return Err(Refused::BadRequest(
            "advance_secs: at most a year at a time".into(),
        ));
    }
    Ok(by)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_says_how_far_and_nothing_else() {
        assert_eq!(
            parse(br#"{"advance_secs": 3600}"#).ok(),
            Some(Duration::from_secs(3600))
        );
        for bad in [
            &br#"{}"#[..],
            br#"{"advance_secs": -1}"#,
            br#"{"advance_secs": 1, "x": 2}"#,
            br#"[3600]"#,
            br#"{"advance_secs": 999999999999}"#,
            b"",
        ] {
            assert!(
                matches!(parse(bad), Err(Refused::BadRequest(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
