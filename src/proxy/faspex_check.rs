//! Faspex checking one of its own accounts for an HTTP Basic caller (`auth.local_accounts =
//! "faspex"`): `GET /aspera/faspex/me` with the caller's credentials, before the caller's own
//! request goes anywhere.
//!
//! A check of its own, rather than the caller's request taken as the check, because:
//! - the caller's request may be an upload whose body, or a `POST` whose effect, must not reach
//!   Faspex before its credentials are known good;
//! - it runs inside the engine's check like a directory bind: parallel identical requests share
//!   one check, the lockout's places bound how many reach Faspex at once, and a success fills
//!   the verification cache, so a Basic caller's later requests ask no one.
//!
//! A browser's login form is not checked here: Faspex's answer to the login itself is the check
//! (see `routes/login.rs`), so a local account signs in once.

use std::time::Duration;

use async_trait::async_trait;

use super::upstream::Upstream;
use crate::auth::{Directory, DirectoryError, Verdict};

/// Faspex 4's "who am I" API action, which answers any signed-in account.
pub const ME_PATH: &str = "/aspera/faspex/me";

/// Faspex as the checker of its own accounts' passwords.
pub struct FaspexCheck {
    upstream: Upstream,
    /// How long Faspex may take to answer (`upstream.response_timeout`).
    limit: Duration,
}

impl FaspexCheck {
    pub fn new(upstream: Upstream, limit: Duration) -> Self {
        FaspexCheck { upstream, limit }
    }
}

/// Faspex's answer as a verdict: a 2xx is its account's, a 5xx (or no answer) is no verdict,
/// anything else (401, 403, a redirect to the login page, another refusal) is a wrong password.
pub fn verdict(status: http::StatusCode) -> Option<Verdict> {
    if status.is_success() {
        Some(Verdict::Accepted)
    } else if status.is_server_error() {
        None
    } else {
        Some(Verdict::Rejected)
    }
}

#[async_trait]
impl Directory for FaspexCheck {
    async fn verify(&self, account: &str, password: &str) -> Result<Verdict, DirectoryError> {
        if password.is_empty() {
            return Ok(Verdict::Rejected);
        }
        let status = self
            .upstream
            .check_basic(ME_PATH, account, password, self.limit)
            .await
            .map_err(|e| DirectoryError(format!("Faspex could not check the account: {e}")))?;
        verdict(status).ok_or_else(|| {
            DirectoryError(format!("Faspex answered the account check with {status}"))
        })
    }

    async fn probe(&self) -> Result<(), DirectoryError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn statuses_are_verdicts_or_none() {
        assert_eq!(verdict(StatusCode::OK), Some(Verdict::Accepted));
        assert_eq!(verdict(StatusCode::NO_CONTENT), Some(Verdict::Accepted));
        for s in [401, 403, 302, 404, 422] {
            assert_eq!(
                verdict(StatusCode::from_u16(s).unwrap()),
                Some(Verdict::Rejected),
                "{s}"
            );
        }
        for s in [500, 502, 503, 504] {
            assert_eq!(verdict(StatusCode::from_u16(s).unwrap()), None, "{s}");
        }
    }
}
