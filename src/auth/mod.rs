//! Credentials: password hashes for the `file` backend (LDAP, the verification cache and session
//! tokens join here in later work).

pub mod password;
