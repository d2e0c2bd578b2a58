//! The per-instance send rate limit: a token bucket that holds sends to the
//! SES account's maximum send rate. Each Lambda instance (and each local
//! process) has its own; the configured rate is per instance.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// A token bucket: `rate` sends per second, up to `burst` at once. Callers
/// reserve a slot and sleep until it comes, so concurrent senders queue in
/// order and the rate holds however many tasks share the limiter.
#[derive(Debug)]
pub struct SendRateLimiter {
    /// `None`: no limit.
    rate: Option<f64>,
    burst: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// May go negative: slots already promised to waiting callers.
    tokens: f64,
    at: Instant,
}

impl SendRateLimiter {
    /// At most `per_sec` sends per second with bursts of `burst` (at least
    /// 1). A burst of 1 spaces sends evenly, which is what an SES account
    /// limit wants. A non-positive or non-finite rate means unlimited.
    pub fn new(per_sec: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        SendRateLimiter {
            rate: (per_sec.is_finite() && per_sec > 0.0).then_some(per_sec),
            burst,
            state: Mutex::new(Bucket { tokens: burst, at: Instant::now() }),
        }
    }

    pub fn unlimited() -> Self {
        Self::new(0.0, 1)
    }

    /// The configured rate, if any.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// Waits for a send slot. Returns `false` at once (taking nothing) if
    /// the slot would come after `deadline`.
    pub async fn acquire_before(&self, deadline: Instant) -> bool {
        let Some(rate) = self.rate else { return true };
        let wait = {
            let mut b = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(self.burst);
            b.at = now;
            let wait = if b.tokens >= 1.0 {
                Some(Duration::ZERO)
            } else {
                Duration::try_from_secs_f64((1.0 - b.tokens) / rate).ok()
            };
            // A wait too long to add to now is past any deadline.
            let Some(wait) = wait.filter(|&w| now.checked_add(w).is_some_and(|at| at <= deadline)) else {
                return false;
            };
            b.tokens -= 1.0;
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        true
    }

    /// Waits for a send slot, however long that takes.
    pub async fn acquire(&self) {
        // A deadline far enough away that it never refuses.
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let _ = self.acquire_before(far).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate_across_tasks() {
        let l = std::sync::Arc::new(SendRateLimiter::new(10.0, 1));
        let start = Instant::now();
        let tasks: Vec<_> = (0..21)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move {
                    l.acquire().await;
                    Instant::now()
                })
            })
            .collect();
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap());
        }
        let last = times.iter().max().unwrap().duration_since(start);
        // 21 sends at 10/s with a burst of 1: the first at once, the last at 2 s.
        assert!((last.as_secs_f64() - 2.0).abs() < 0.01, "{last:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_a_slot_past_the_deadline_without_taking_it() {
        let l = SendRateLimiter::new(1.0, 1);
        assert!(l.acquire_before(Instant::now()).await);
        assert!(!l.acquire_before(Instant::now() + Duration::from_millis(500)).await);
        // The refusal took nothing: the next slot is still 1 s after the first.
        let t = Instant::now();
        assert!(l.acquire_before(Instant::now() + Duration::from_secs(2)).await);
        assert!((t.elapsed().as_secs_f64() - 1.0).abs() < 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_so_slow_its_wait_is_no_duration_refuses_instead_of_panicking() {
        let l = SendRateLimiter::new(1e-20, 1);
        assert!(l.acquire_before(Instant::now()).await);
        // The next slot is 1e20 s away: more than a Duration or an Instant holds.
        assert!(!l.acquire_before(Instant::now() + Duration::from_secs(60)).await);
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let l = SendRateLimiter::unlimited();
        for _ in 0..1000 {
            assert!(l.acquire_before(Instant::now()).await);
        }
        assert_eq!(l.rate(), None);
    }
}
