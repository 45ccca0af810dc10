//! The Faspex logouts the gateways owe, shared by all of them: when a step of the library ends a
//! session the person did not end through the gateway (idle, absolute, an admin kick, replaced by
//! another client) and it had a Faspex cookie, the same atomic step appends an entry to the
//! stream `logouts` (see `policy.lua`). Whichever gateway ended it, any gateway may send it.
//!
//! Every gateway reads the stream in the consumer group `gateways` (one consumer each): an entry
//! is handed to one of them, which sends the logout, marks the entry sent (`lo:<id>`, kept a
//! day) and acknowledges it. An entry a gateway took but never acknowledged (it died, or lost
//! Redis, mid-way) is claimed by another after [`CLAIM_AFTER`], so each logout is sent **at least
//! once**. Sending it twice is harmless (Faspex's logout of an ended session just redirects); the
//! mark tells a second sending apart, and [`Delivered::Again`] is counted
//! (`faspex_gate_logout_duplicates_total`). A gateway that dies after sending but before marking
//! leaves a second sending that is not told apart; that is the one case the count misses.

use std::time::Duration;

use super::store::RedisStore;
use crate::store::StoreError;

/// How long an entry another consumer took may stay unacknowledged before this one claims it.
pub const CLAIM_AFTER: Duration = Duration::from_secs(30);

/// How many entries one read takes.
const BATCH: usize = 32;

/// How long the "sent once" mark of an entry lives.
const MARK_TTL: Duration = Duration::from_secs(24 * 3600);

/// One owed logout: the stream entry and the Faspex cookie to log out with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwedLogout {
    pub id: String,
    pub cookie: String,
}

/// What marking an entry sent found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// The first sending.
    First,
    /// Another consumer had sent it already.
    Again,
}

type Entries = Vec<(String, Vec<(String, String)>)>;

fn entries(v: redis::Value) -> Entries {
    // XREADGROUP: [[stream, [[id, [field, value, ...]], ...]]]; XAUTOCLAIM: [next, [[id, [...]]], ...].
    fn entry(v: &redis::Value) -> Option<(String, Vec<(String, String)>)> {
        let redis::Value::Array(parts) = v else {
            return None;
        };
        let id: String = redis::from_redis_value_ref(parts.first()?).ok()?;
        let fields: Vec<String> = match parts.get(1) {
            Some(f) => redis::from_redis_value_ref(f).unwrap_or_default(),
            None => Vec::new(),
        };
        let pairs = fields
            .chunks(2)
            .filter_map(|c| Some((c.first()?.clone(), c.get(1)?.clone())))
            .collect();
        Some((id, pairs))
    }
    let list = |v: &redis::Value| -> Entries {
        match v {
            redis::Value::Array(items) => items.iter().filter_map(entry).collect(),
            _ => Vec::new(),
        }
    };
    match v {
        redis::Value::Array(top) => match top.first() {
            // XAUTOCLAIM: the cursor first, then the entries.
            Some(redis::Value::BulkString(_) | redis::Value::SimpleString(_)) => {
                top.get(1).map(list).unwrap_or_default()
            }
            // XREADGROUP: one [stream, entries] per stream.
            _ => top
                .iter()
                .flat_map(|s| match s {
                    redis::Value::Array(p) => p.get(1).map(list).unwrap_or_default(),
                    _ => Vec::new(),
                })
                .collect(),
        },
        redis::Value::Map(m) => m.iter().flat_map(|(_, v)| list(v)).collect(),
        _ => Vec::new(),
    }
}

fn owed(e: Entries) -> Vec<OwedLogout> {
    e.into_iter()
        .map(|(id, fields)| OwedLogout {
            cookie: fields
                .into_iter()
                .find(|(k, _)| k == "cookie")
                .map(|(_, v)| v)
                .unwrap_or_default(),
            id,
        })
        .collect()
}

impl RedisStore {
    fn stream(&self) -> String {
        format!("{}logouts", self.options().root())
    }

    /// Make the consumer group (and the stream) if missing; from the stream's start, so that
    /// nothing owed before the first gateway read it is skipped.
    async fn owed_group(&self) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(self.stream())
            .arg("gateways")
            .arg("0")
            .arg("MKSTREAM");
        match self
            .command::<redis::Value>(&cmd, "making the logouts' consumer group")
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::Remote { reason }) if reason.contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The logouts owed that `consumer` should send now: entries another consumer left
    /// unacknowledged for `claim_after`, then new ones.
    pub async fn owed_logouts(
        &self,
        consumer: &str,
        claim_after: Duration,
    ) -> Result<Vec<OwedLogout>, StoreError> {
        self.ready().await?;
        self.owed_group().await?;
        let mut claim = redis::cmd("XAUTOCLAIM");
        claim
            .arg(self.stream())
            .arg("gateways")
            .arg(consumer)
            .arg(claim_after.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(BATCH);
        let mut out = owed(entries(
            self.command(&claim, "claiming owed logouts").await?,
        ));
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg("gateways")
            .arg(consumer)
            .arg("COUNT")
            .arg(BATCH)
            .arg("STREAMS")
            .arg(self.stream())
            .arg(">");
        out.extend(owed(entries(
            self.command(&read, "reading owed logouts").await?,
        )));
        Ok(out)
    }

    /// Record that the logout of entry `id` was sent: mark it, acknowledge and delete it. Says
    /// whether it had been sent before.
    pub async fn logout_sent(&self, id: &str) -> Result<Delivered, StoreError> {
        let root = self.options().root();
        let mut mark = redis::cmd("SET");
        mark.arg(format!("{root}lo:{id}"))
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(MARK_TTL.as_millis() as u64);
        let first: Option<String> = self.command(&mark, "marking a logout sent").await?;
        let mut ack = redis::cmd("XACK");
        ack.arg(self.stream()).arg("gateways").arg(id);
        let _: i64 = self.command(&ack, "acknowledging a logout").await?;
        let mut del = redis::cmd("XDEL");
        del.arg(self.stream()).arg(id);
        let _: i64 = self.command(&del, "deleting a sent logout").await?;
        Ok(if first.is_some() {
            Delivered::First
        } else {
            Delivered::Again
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::server::RedisServer;
    use super::super::tests::{admission, seats, store, t0};
    use super::super::Time;
    use super::Delivered;
    use crate::store::{EndReason, PolicyStore, SessionKey};

    const HOUR: Duration = Duration::from_secs(3600);

    /// The ends that owe Faspex a logout (idle, admin, replaced) put one entry each in the
    /// stream, in the step that ends the session; a person's own logout and a session without a
    /// Faspex cookie put none. An entry a consumer took and never recorded is claimed by another
    /// once it has waited; a second recording says `Again`.
    #[tokio::test(flavor = "multi_thread")]
    async fn owed_logouts_survive_the_gateway_that_took_them() {
        let server = RedisServer::start();
        let s = store(&server, "outbox", Time::Given).await;
        let now = t0();
        for (key, account) in [("k1", "ann"), ("k2", "bob"), ("k3", "cid"), ("k4", "dan")] {
            s.admit(admission(key, account, now), seats(10))
                .await
                .unwrap();
        }
        for key in ["k1", "k2", "k3"] {
            let cookie = format!("_faspex_session={key}");
            assert!(s
                .set_upstream_cookie(&SessionKey(key.into()), Some(cookie))
                .await
                .unwrap());
        }
        // ann logs out herself (no logout owed); bob is kicked; cid and dan go idle (dan has no
        // Faspex cookie).
        s.end_session(&SessionKey("k1".into()), EndReason::Logout)
            .await
            .unwrap();
        s.end_account("bob", EndReason::Admin).await.unwrap();
        let swept = s
            .sweep(
                now + HOUR + Duration::from_secs(1),
                seats(10).timeouts,
                HOUR,
            )
            .await
            .unwrap();
        assert_eq!(swept.ended.len(), 2);

        // Gateway a takes both, then "dies" before recording them.
        let claim = Duration::from_millis(200);
        let taken = s.owed_logouts("a", claim).await.unwrap();
        let mut cookies: Vec<_> = taken.iter().map(|o| o.cookie.clone()).collect();
        cookies.sort();
        assert_eq!(cookies, ["_faspex_session=k2", "_faspex_session=k3"]);
        // Gateway b finds nothing new, and a's are not yet old enough to claim.
        assert!(s.owed_logouts("b", claim).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(400)).await;
        let claimed = s.owed_logouts("b", claim).await.unwrap();
        assert_eq!(claimed, taken, "b claims what a left");
        for o in &claimed {
            assert_eq!(s.logout_sent(&o.id).await.unwrap(), Delivered::First);
        }
        // a comes back and records what it had sent: told apart as a second sending.
        assert_eq!(s.logout_sent(&taken[0].id).await.unwrap(), Delivered::Again);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(s.owed_logouts("b", claim).await.unwrap().is_empty());
        assert!(s.owed_logouts("c", claim).await.unwrap().is_empty());
    }
}
