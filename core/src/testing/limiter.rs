//! `RateLimiter`: fixed clock-aligned windows, exact counting under
//! concurrency, and all-or-nothing multi-key hits.

use super::Subject;
use super::fixtures::{limit_key, race};
use crate::StoreError;
use crate::clock::Timestamp;
use crate::ports::LimitKey;

/// A window start for every window length used here (a multiple of 3600).
const W: Timestamp = 1_700_002_800;
const MINUTE: i64 = 60;
const HOUR: i64 = 3600;

async fn hit(s: &Subject, keys: &[&LimitKey], now: Timestamp) -> Option<u64> {
    let keys: Vec<LimitKey> = keys.iter().map(|&k| k.clone()).collect();
    s.limiter.hit(&keys, now).await.expect("hit")
}

#[track_caller]
fn assert_refused(answer: Option<u64>, window: i64, what: &str) -> u64 {
    let Some(retry_after) = answer else { panic!("{what}: allowed, expected a refusal") };
    assert!(retry_after > 0 && retry_after <= window as u64, "{what}: retry_after {retry_after} not in 1..={window}");
    retry_after
}

pub async fn limiter_allows_exactly_limit_per_window(s: &Subject) {
    let key = limit_key(5, MINUTE);
    let now = W + 10;
    for n in 1..=key.limit {
        assert_eq!(hit(s, &[&key], now).await, None, "hit {n} of {} in the window", key.limit);
    }
    assert_refused(hit(s, &[&key], now).await, MINUTE, "the hit after the limit");
    assert_refused(hit(s, &[&key], W + MINUTE - 1).await, MINUTE, "a hit in the window's last second");

    let next = W + MINUTE;
    for n in 1..=key.limit {
        assert_eq!(hit(s, &[&key], next).await, None, "hit {n} in the next window");
    }
    assert_refused(hit(s, &[&key], next).await, MINUTE, "the hit after the limit in the next window");

    // Another key has its own count.
    assert_eq!(hit(s, &[&limit_key(5, MINUTE)], next).await, None, "a fresh key was refused: keys must count apart");
}

pub async fn limiter_counts_concurrent_hits_exactly(s: &Subject) {
    const RACERS: usize = 50;
    let key = limit_key(10, MINUTE);
    let now = W + 10;
    let results = race(RACERS, |_| {
        let limiter = s.limiter.clone();
        let keys = vec![key.clone()];
        async move { limiter.hit(&keys, now).await }
    })
    .await;
    let mut allowed = 0;
    for (i, r) in results.into_iter().enumerate() {
        match r.expect("hit") {
            None => allowed += 1,
            refused => {
                assert_refused(refused, MINUTE, &format!("racer {i}"));
            }
        }
    }
    assert_eq!(allowed, key.limit, "concurrent hits allowed: {allowed}, limit {}", key.limit);
}

pub async fn limiter_multi_key_is_all_or_nothing(s: &Subject) {
    let tight = limit_key(2, MINUTE);
    let loose = limit_key(5, MINUTE);
    let now = W + 10;
    for n in 1..=tight.limit {
        assert_eq!(hit(s, &[&tight, &loose], now).await, None, "multi-key hit {n}");
    }
    // The tight key refuses; the refused calls must not count on the loose one.
    for n in 1..=3 {
        assert_refused(hit(s, &[&tight, &loose], now).await, MINUTE, &format!("refused multi-key hit {n}"));
    }
    for n in tight.limit + 1..=loose.limit {
        assert_eq!(
            hit(s, &[&loose], now).await,
            None,
            "hit {n} on the loose key alone (a refused multi-key hit counted on it?)"
        );
    }
    assert_refused(hit(s, &[&loose], now).await, MINUTE, "the loose key over its limit");

    let next = W + MINUTE;
    assert_eq!(hit(s, &[&loose, &tight], next).await, None, "the next window is open on both keys");
}

pub async fn limiter_reports_longest_wait(s: &Subject) {
    let minute = limit_key(1, MINUTE);
    let hour = limit_key(1, HOUR);
    let now = W + 10;
    assert_eq!(hit(s, &[&minute], now).await, None);
    assert_eq!(hit(s, &[&hour], now).await, None);

    let alone = assert_refused(hit(s, &[&minute], now).await, MINUTE, "the full minute key alone");
    for keys in [[&minute, &hour], [&hour, &minute]] {
        let both = assert_refused(hit(s, &keys, now).await, HOUR, "both keys full");
        assert!(
            both > MINUTE as u64 && both > alone,
            "both keys full: retry_after {both} is not the hour key's wait (the minute key alone waits {alone})"
        );
    }
}

pub async fn limiter_merges_a_key_listed_twice_under_its_smallest_limit(s: &Subject) {
    let tight = limit_key(3, MINUTE);
    let loose = LimitKey { limit: 5, ..tight.clone() };
    let now = W + 10;
    assert_eq!(hit(s, &[&loose, &tight], now).await, None, "two copies, 2 hits of the 3 the tighter allows");
    // 2 + 2 > 3 in either order; the refusal counts nothing.
    assert_refused(hit(s, &[&tight, &loose], now).await, MINUTE, "two more copies, tight first");
    assert_refused(hit(s, &[&loose, &tight], now).await, MINUTE, "two more copies, loose first");
    assert_eq!(hit(s, &[&tight], now).await, None, "hit 3 of 3 (a refused call counted?)");
    assert_refused(hit(s, &[&tight], now).await, MINUTE, "hit 4 under a limit of 3");
}

pub async fn limiter_refuses_a_window_of_zero_and_counts_nothing(s: &Subject) {
    let ok = limit_key(1, MINUTE);
    let now = W + 10;
    for window_secs in [0, -MINUTE] {
        let bad = limit_key(1, window_secs);
        let keys = [ok.clone(), bad];
        match s.limiter.hit(&keys, now).await {
            Err(StoreError::Internal(_)) => {}
            other => panic!("a window of {window_secs} s: {other:?}, expected Err(Internal)"),
        }
    }
    assert_eq!(hit(s, &[&ok], now).await, None, "the calls with a bad window counted on the good key");
}
