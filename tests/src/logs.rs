//! Log lines captured as JSON, for tests of what the code logs.

use serde_json::Value;
use std::sync::{Arc, Mutex};

/// The log lines written while [`Captured::install`]'s guard lives, on the
/// thread that installed it.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

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
    /// Makes a JSON subscriber (fields flattened, INFO and up) writing here
    /// the thread's default until the guard is dropped.
    pub fn install() -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    /// Takes the lines written so far.
    pub fn take(&self) -> Vec<Value> {
        let bytes = std::mem::take(&mut *self.0.lock().expect("lock"));
        String::from_utf8(bytes)
            .expect("utf-8 log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON log line"))
            .collect()
    }
}
