//! One client per account: an account is live on one client at a time.
//!
//! A login from the client that already holds the account's session renews that session in
//! place. A login from another client is refused while the account is live elsewhere
//! (`policy.one_client_per_account = "reject"`), or replaces the other client's sessions
//! (`"replace"`, or the 409 page's "sign the other client out", a take-over). The replaced sessions
//! end only once Faspex confirms the new login: the store hands them back, the engine ends them.
//!
//! The rule is [`decide`]. The embedded store's admission ([`crate::store::tables`]) calls it
//! inside its one atomic step, over the account's live sessions. The Redis store's library
//! (`src/store/redis/policy.lua`) mirrors it in `faspex_gate_v2_admit`, exactly, and the one place
//! where it must agree is the store conformance suite, `src/store/conformance.rs` (its
//! `one_client_*` checks).

use crate::config::OneClient;
use crate::store::{ClientId, Session, SessionKey};

/// What a login may do about the account's live sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Clients {
    /// The account is live on another client and may not be replaced: refuse, naming that
    /// client's session.
    OtherClient { active: SessionKey },
    /// Go ahead.
    Admit {
        /// The same client's sessions: the new one renews them (they end now, unreported).
        renews: Vec<SessionKey>,
        /// Other clients' sessions: they end once the login is confirmed.
        replaces: Vec<SessionKey>,
    },
}

/// The decision for a login from `client` of an account whose live sessions are `sessions` (in
/// the order they began), under `rule`, with or without a take-over.
pub fn decide<'a>(
    sessions: impl IntoIterator<Item = &'a Session>,
    client: &ClientId,
    rule: OneClient,
    takeover: bool,
) -> Clients {
    let (renews, replaces): (Vec<&Session>, Vec<&Session>) =
        sessions.into_iter().partition(|s| s.client == *client);
    if let Some(active) = replaces.first() {
        if rule == OneClient::Reject && !takeover {
            return Clients::OtherClient {
                active: active.key.clone(),
            };
        }
    }
    Clients::Admit {
        renews: renews.into_iter().map(|s| s.key.clone()).collect(),
        replaces: replaces.into_iter().map(|s| s.key.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::store::{AccountKind, ClientKind};

    fn session(key: &str, client: &str) -> Session {
        Session {
            key: SessionKey(key.into()),
            account: "ann".into(),
            client: ClientId(client.into()),
            kind: ClientKind::Browser,
            ip: "192.0.2.1".parse().unwrap(),
            agent: "test".into(),
            started: Timestamp::ZERO,
            last_activity: Timestamp::ZERO,
            upstream_cookie: None,
            bearer: Vec::new(),
            account_kind: AccountKind::Directory,
        }
    }

    #[test]
    fn another_client_is_refused_or_replaced_and_the_same_one_renews() {
        let live = [session("k1", "c1"), session("k2", "c2")];
        let c1 = ClientId("c1".into());
        let c3 = ClientId("c3".into());
        assert_eq!(
            decide(&live[..1], &c1, OneClient::Reject, false),
            Clients::Admit {
                renews: vec![SessionKey("k1".into())],
                replaces: vec![]
            }
        );
        assert_eq!(
            decide(&live, &c3, OneClient::Reject, false),
            Clients::OtherClient {
                active: SessionKey("k1".into())
            }
        );
        let replaced = Clients::Admit {
            renews: vec![],
            replaces: vec![SessionKey("k1".into()), SessionKey("k2".into())],
        };
        assert_eq!(decide(&live, &c3, OneClient::Replace, false), replaced);
        assert_eq!(decide(&live, &c3, OneClient::Reject, true), replaced);
        assert_eq!(
            decide(&[], &c3, OneClient::Reject, false),
            Clients::Admit {
                renews: vec![],
                replaces: vec![]
            }
        );
    }
}
