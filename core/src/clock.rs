//! Time enters the flows through this port, so tests can freeze it and cross
//! an expiry boundary exactly.

use std::sync::atomic::{AtomicI64, Ordering};

/// Seconds since the Unix epoch, UTC.
pub type Timestamp = i64;

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct FixedClock(AtomicI64);

impl FixedClock {
    pub fn new(at: Timestamp) -> Self {
        FixedClock(AtomicI64::new(at))
    }
    pub fn set(&self, at: Timestamp) {
        self.0.store(at, Ordering::SeqCst);
    }
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a Lambda handler keeps back from its invocation's deadline to
/// answer Lambda (the batch functions' `lambda_deadline` margin).
pub const LAMBDA_ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_millis(1500);

/// The deadline of a Lambda invocation, from the context's epoch
/// milliseconds, less `margin` for answering.
pub fn lambda_deadline(deadline_epoch_ms: u64, margin: std::time::Duration) -> tokio::time::Instant {
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let left = std::time::Duration::from_millis(deadline_epoch_ms.saturating_sub(now_ms));
    tokio::time::Instant::now() + left.saturating_sub(margin)
}

/// RFC 3339 in UTC, for API responses.
pub fn rfc3339(ts: Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}
