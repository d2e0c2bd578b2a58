//! Fixed-window rate limits. A counter row per (key, window start); windows
//! are aligned to the clock (`start = now - now mod window`). All keys of one
//! call are checked and counted in one transaction: all or none.

use super::EmbeddedStore;
use crate::clock::Timestamp;
use crate::ports::{LimitCounter, LimitKey, RateLimiter, StoreResult};
use async_trait::async_trait;
use rusqlite::OptionalExtension;

#[async_trait]
impl RateLimiter for EmbeddedStore {
    async fn hit(&self, keys: &[LimitKey], now: Timestamp) -> StoreResult<Option<u64>> {
        let counters = LimitCounter::of(keys, now)?;
        if counters.is_empty() {
            return Ok(None);
        }
        self.db()
            .tx(move |tx| {
                let mut counts = Vec::with_capacity(counters.len());
                let mut refused: Option<u64> = None;
                for c in &counters {
                    let count = tx
                        .prepare_cached("SELECT count FROM rate_limits WHERE key = ?1 AND window_start = ?2")?
                        .query_row(rusqlite::params![c.key, c.window_start], |r| r.get::<_, u32>(0))
                        .optional()?
                        .unwrap_or(0);
                    if c.refuses(count) {
                        let wait = c.retry_after(now);
                        refused = Some(refused.map_or(wait, |r| r.max(wait)));
                    }
                    counts.push(count.saturating_add(c.hits));
                }
                if refused.is_some() {
                    // Nothing counted: the transaction writes nothing.
                    return Ok(refused);
                }
                // Finished windows are deleted by the sweep (`sweep_expired`).
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO rate_limits (key, window_start, count, expires_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (key, window_start) DO UPDATE SET count = excluded.count, \
                     expires_at = MAX(expires_at, excluded.expires_at)",
                )?;
                for (c, count) in counters.iter().zip(counts) {
                    upsert.execute(rusqlite::params![c.key, c.window_start, count, c.window_end])?;
                }
                Ok(None)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{T0, store};
    use super::*;

    fn key(k: &str, limit: u32, window_secs: i64) -> LimitKey {
        LimitKey { key: k.into(), limit, window_secs }
    }

    #[tokio::test]
    async fn counts_up_to_the_limit_then_tells_how_long_to_wait() {
        let (s, _) = store();
        // T0 = 1_700_000_000 is 20 s into its minute.
        let now = T0;
        assert_eq!(now.rem_euclid(60), 20);
        let k = [key("login:ip:1", 3, 60)];
        for _ in 0..3 {
            assert_eq!(s.hit(&k, now).await.unwrap(), None);
        }
        assert_eq!(s.hit(&k, now).await.unwrap(), Some(40));
        assert_eq!(s.hit(&k, now + 39).await.unwrap(), Some(1));
        // The next window starts fresh.
        assert_eq!(s.hit(&k, now + 40).await.unwrap(), None);
    }

    #[tokio::test]
    async fn all_keys_or_none_and_the_longest_wait() {
        let (s, _) = store();
        let now = T0; // 20 s into the minute, 800 s into the hour
        assert_eq!(now.rem_euclid(3600), 800);
        let ip = key("ip", 1, 60);
        let id = key("id", 5, 3600);
        let other = key("other", 1, 60);
        assert_eq!(s.hit(&[ip.clone(), id.clone()], now).await.unwrap(), None);
        // `ip` refuses, so neither `id` nor `other` is counted.
        assert_eq!(s.hit(&[other.clone(), ip.clone(), id.clone()], now).await.unwrap(), Some(40));
        assert_eq!(s.hit(std::slice::from_ref(&other), now).await.unwrap(), None, "other was not counted");
        for _ in 0..3 {
            assert_eq!(s.hit(std::slice::from_ref(&id), now).await.unwrap(), None);
        }
        // id has had 4 hits; one more fills it, then both refuse: the longest wait wins.
        assert_eq!(s.hit(std::slice::from_ref(&id), now).await.unwrap(), None);
        assert_eq!(s.hit(&[ip, id], now).await.unwrap(), Some(2800));
    }

    #[tokio::test]
    async fn a_key_listed_twice_counts_twice() {
        let (s, _) = store();
        let k = key("dup", 1, 60);
        assert_eq!(s.hit(&[k.clone(), k.clone()], T0).await.unwrap(), Some(40));
        assert_eq!(s.hit(&[k], T0).await.unwrap(), None, "the refused call counted nothing");
    }

    #[tokio::test]
    async fn finished_windows_are_left_to_the_sweep_which_deletes_them_in_batches() {
        let (s, clock) = store();
        for i in 0..1_200 {
            s.hit(&[key(&format!("k{i}"), 5, 60)], T0).await.unwrap();
        }
        let rows = |s: &EmbeddedStore| {
            let db = s.db().clone();
            async move {
                db.tx(|tx| Ok(tx.query_row("SELECT count(*) FROM rate_limits", [], |r| r.get::<_, i64>(0))?))
                    .await
                    .unwrap()
            }
        };
        // The next minute: a hit adds its own window and deletes nothing (no
        // work on a request's thread however many windows just ended).
        s.hit(&[key("a", 5, 60)], T0 + 60).await.unwrap();
        assert_eq!(rows(&s).await, 1_201);
        // The sweep, on the store's clock, takes the 1 200 finished ones (in
        // batches), not the live one.
        clock.set(T0 + 60);
        assert_eq!(s.sweep_expired().await.unwrap().rate_limits, 1_200);
        assert_eq!(rows(&s).await, 1);
        assert_eq!(s.hit(&[key("a", 1, 60)], T0 + 60).await.unwrap(), Some(40), "the live window still counts");
    }

    #[tokio::test]
    async fn counters_are_not_in_the_change_feed() {
        let (s, _) = store();
        s.hit(&[key("x", 5, 60)], T0).await.unwrap();
        assert!(s.changes_after(0, 10).await.unwrap().is_empty());
    }
}
