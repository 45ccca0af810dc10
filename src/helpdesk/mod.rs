//! The helpdesk console (`[helpdesk]`): a browser page on its own HTTPS listener where helpdesk
//! staff, signed in with their own directory account and members of `helpdesk.group`, see the
//! seats, sessions and locks, ask why someone cannot log in, and unlock, kick or lock accounts.
//! On only when both `helpdesk.listen` and `helpdesk.group` are set; docs/helpdesk.md is its
//! user documentation.
//!
//! - `listener.rs`: the HTTPS listener, its caps and `helpdesk.allowed_networks`;
//! - `console.rs`: the requests (sign-in, the page, the actions), their CSRF checks and audit;
//! - `sessions.rs`: console sessions, in this gateway's memory (15-minute idle timeout, at most
//!   four per account);
//! - `revoke.rs`: an administrator's kick or lock of a helpdesk person ends their sessions;
//! - `pages.rs`: the HTML and the style sheet.
//!
//! It adds no policy of its own: the sign-in is [`crate::policy::Policy::verify`] (the throttle
//! and lockout of any login, no seat), membership is [`crate::auth::Directory::member_of`], and
//! the actions are the admin API's operations, refusing the names it refuses.

mod console;
mod listener;
mod pages;
mod revoke;
mod sessions;

pub use console::{Console, COOKIE, SIGNIN_COOKIE};
pub use listener::HelpdeskServer;
pub use revoke::Revoker;
pub use sessions::IDLE_TIMEOUT;
