//! Log lines captured as JSON, for tests of what the code logs.

use serde_json::Value;
use std::sync::{Arc, Mutex, OnceLock};

/// The process's log lines, as JSON, from the first [`Captured::global`] on.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

static GLOBAL: OnceLock<Captured> = OnceLock::new();

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Installs, once per process, a JSON subscriber (fields flattened,
    /// INFO and up) as the global default, writing to the buffer returned.
    /// Global, not a thread's own default: tracing caches per call site
    /// whether any subscriber wants it, and a site first reached by another
    /// test's thread (which has no subscriber) can stay cached as unwanted,
    /// so a thread's own capture missed lines when tests ran side by side.
    /// Every thread's lines land here: filter by what is the test's own.
    pub fn global() -> Captured {
        GLOBAL
            .get_or_init(|| {
                let captured = Captured::default();
                let writer = captured.clone();
                let subscriber = tracing_subscriber::fmt()
                    .json()
                    .flatten_event(true)
                    .with_max_level(tracing::Level::INFO)
                    .with_writer(move || writer.clone())
                    .finish();
                tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
                tracing::callsite::rebuild_interest_cache();
                captured
            })
            .clone()
    }

    /// Takes the lines written so far (by every thread).
    pub fn take(&self) -> Vec<Value> {
        let bytes = std::mem::take(&mut *self.0.lock().expect("lock"));
        String::from_utf8(bytes)
            .expect("utf-8 log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON log line"))
            .collect()
    }
}
