//! The embedded backend: every store port on one SQLite database, a change
//! feed beside the data (the local stand-in for DynamoDB Streams), and a mail
//! queue whose consumer writes `.eml` files to an outbox directory.
//!
//! One `rusqlite::Connection` sits behind a mutex. Each port method runs on
//! the blocking pool inside one `BEGIN IMMEDIATE` transaction, so every
//! method is atomic and all methods are serialised: a guard read and the
//! write that depends on it can never interleave with another writer, and
//! `BEGIN IMMEDIATE` keeps that true against another process opening the
//! same file.

pub mod audit;
mod changes;
mod consumer;
mod limiter;
mod mail_ledger;
mod mail_queue;
mod outbox;
mod records;
mod schema;
mod store;

pub use changes::{Change, ChangeEntity, ChangeOp};
pub use consumer::{EMBEDDED_RETRY, MAX_DELIVERY_ATTEMPTS, embedded_deliverer, spawn_mail_consumer};
pub use mail_ledger::EmbeddedMailLedger;
pub use mail_queue::SqliteMailQueue;
pub use outbox::Outbox;

use crate::StoreError;
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::ports::StoreResult;
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How long a statement waits for another process's lock before the call
/// fails with `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite store. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Db,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

/// The shared pieces: the connection, the clock that stamps change rows
/// and mail jobs, and the mail consumer's wake-up.
#[derive(Clone)]
pub(crate) struct Db {
    conn: Arc<Mutex<Connection>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) mail_ready: Arc<tokio::sync::Notify>,
    /// Signalled after a commit that wrote change-feed rows (wakes the
    /// audit feed driver, so it need not poll).
    pub(crate) changes_ready: Arc<tokio::sync::Notify>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the database at `path`, with WAL, foreign
    /// keys and a busy timeout, and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(StoreError::internal)?;
        }
        Self::from_connection(Connection::open(path)?)
    }

    /// A private database that lives as long as this store and its clones.
    pub fn in_memory() -> StoreResult<Self> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(mut conn: Connection) -> StoreResult<Self> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // An in-memory database answers "memory"; that is fine.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        schema::migrate(&mut conn)?;
        Ok(EmbeddedStore {
            db: Db {
                conn: Arc::new(Mutex::new(conn)),
                clock: Arc::new(SystemClock),
                mail_ready: Arc::new(tokio::sync::Notify::new()),
                changes_ready: Arc::new(tokio::sync::Notify::new()),
            },
        })
    }

    /// Uses `clock` to stamp change rows and mail jobs (default: the wall
    /// clock). Affects this handle and the clones made from it afterwards.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.db.clock = clock;
        self
    }

    /// The mail queue on this database.
    pub fn mail_queue(&self) -> SqliteMailQueue {
        SqliteMailQueue::new(self)
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }
}

impl Db {
    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Takes a change-feed wake-up if one is waiting; whether one was (tests).
    #[cfg(test)]
    pub(crate) fn changes_ready_pending(&self) -> bool {
        use futures::FutureExt as _;
        self.changes_ready.notified().now_or_never().is_some()
    }

    /// Runs `f` on the blocking pool inside one `BEGIN IMMEDIATE`
    /// transaction, committed only if `f` succeeds. On `Err` the transaction
    /// rolls back, so a refused guard writes nothing.
    pub(crate) async fn tx<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(&rusqlite::Transaction<'_>) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let changes_ready = Arc::clone(&self.changes_ready);
        tokio::task::spawn_blocking(move || {
            // A panic inside `f` rolled its transaction back while unwinding,
            // so the connection behind a poisoned lock is still sound.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            if !conn.is_autocommit() {
                // A rollback that failed earlier left a transaction open.
                conn.execute_batch("ROLLBACK")?;
            }
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            changes::take_recorded();
            let out = f(&tx)?;
            tx.commit()?;
            if changes::take_recorded() {
                changes_ready.notify_one();
            }
            Ok(out)
        })
        .await
        .map_err(StoreError::internal)?
    }
}

/// Busy and locked databases are worth retrying; everything else that
/// reaches here (constraint violations included) is a bug or corrupt data.
/// Contract conflicts are decided by explicit checks in the transaction,
/// never by catching a constraint error.
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::unavailable(e),
            _ => StoreError::internal(e),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::EmbeddedStore;
    use crate::clock::FixedClock;
    use std::path::PathBuf;
    use std::sync::Arc;

    pub const T0: i64 = 1_700_000_000;

    pub fn store() -> (EmbeddedStore, Arc<FixedClock>) {
        let clock = Arc::new(FixedClock::new(T0));
        let store = EmbeddedStore::in_memory().unwrap().with_clock(clock.clone());
        (store, clock)
    }

    /// A fresh directory under the system temp dir, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new() -> Self {
            let name = format!("latchkey-embedded-{}", uuid::Uuid::new_v4().simple());
            let p = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::TempDir;
    use super::*;

    #[test]
    fn opens_a_file_in_wal_mode_and_reopens_it() {
        let dir = TempDir::new();
        let path = dir.0.join("sub").join("db.sqlite3");
        drop(EmbeddedStore::open(&path).unwrap());
        let store = EmbeddedStore::open(&path).unwrap();
        let conn = store.db.conn.lock().unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0)).unwrap();
        assert_eq!(fk, 1);
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, schema::VERSION);
    }

    #[test]
    fn busy_and_locked_are_unavailable_others_internal() {
        let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
        assert!(matches!(StoreError::from(busy), StoreError::Unavailable(_)));
        let locked = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_LOCKED), None);
        assert!(matches!(StoreError::from(locked), StoreError::Unavailable(_)));
        let unique =
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE), None);
        assert!(matches!(StoreError::from(unique), StoreError::Internal(_)));
    }
}

/// The shared storage contract suite, run against this store.
#[cfg(all(test, feature = "testing"))]
mod contract {
    crate::contract_suite!(async {
        crate::testing::Subject::from_store(super::EmbeddedStore::in_memory().expect("in-memory store"))
    });
}
