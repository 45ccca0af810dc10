//! The routes, one file each, as the handler dispatches on the gate's [`Pass`]: each runs its
//! check and forwards with the [`Permit`] the check made, or answers itself.
//!
//! - [`public`]: public paths and the login page, with no credentials;
//! - [`login`]: the login form's POST, through the login pipeline and Faspex's own login;
//! - [`logout`]: the gateway ends the session and logs Faspex out;
//! - [`protected`]: everything else, which needs a live session, by the gateway's cookie or by
//!   the request's own credentials: [`basic`] (HTTP Basic, with the verification cache) or
//!   [`bearer`] (a token Faspex issued to a session, and the token grant that ties one to it);
//! - [`own`]: the gateway's own pages.
//!
//! [`Pass`]: super::gate::Pass
//! [`Permit`]: super::permit::Permit

pub mod basic;
pub mod bearer;
pub mod login;
pub mod logout;
pub mod own;
pub mod protected;
pub mod public;
