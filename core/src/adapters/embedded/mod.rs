//! The embedded backend: every store port on one SQLite database, a change
//! feed beside the data (the local stand-in for DynamoDB Streams), and a mail
//! queue whose consumer writes `.eml` files to an outbox directory.
//!
//! One `rusqlite::Connection` sits behind a mutex. Each port method runs
//! inside one `BEGIN IMMEDIATE` transaction, so every method is atomic and
//! all methods are serialised: a guard read and the write that depends on it
//! can never interleave with another writer. The connection holds the file's
//! lock for its whole life (`locking_mode = EXCLUSIVE`): one process per
//! database, and no lock system calls per transaction.
//!
//! Where a method runs. A transaction is short (tens of microseconds: no
//! lock system calls, no fsync at commit in WAL mode with `synchronous =
//! NORMAL`), shorter than the two thread switches of a hand-off to another
//! thread and back. So it runs inline on the calling thread whenever the
//! connection is free. Only what could wait runs on tokio's blocking pool
//! instead: a call from an async worker that finds the connection busy, and
//! the WAL checkpoint (it writes the database file and fsyncs), which is
//! never left to a commit on an async worker (`wal_autocheckpoint` is off)
//! but done by the next transaction that runs off the workers, after
//! [`CHECKPOINT_EVERY`] commits. The background services (mail consumer,
//! audit feed) run on threads of their own ([`spawn_background`]) where
//! everything runs inline. Measured on the login path: the voluntary thread
//! switches per login outside the argon2 pool fell from ~36 to ~8 and the
//! runner's CPU outside argon2 from ~2.2 to ~0.9 ms (bench/run section 2b).

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
mod sweep;

pub use changes::{Change, ChangeEntity, ChangeOp};
pub use consumer::{
    EMBEDDED_RETRY, MAX_DELIVERY_ATTEMPTS, MailConsumer, STOP_GRACE, embedded_deliverer, spawn_mail_consumer,
};
pub use mail_ledger::EmbeddedMailLedger;
pub use mail_queue::SqliteMailQueue;
pub use outbox::{Outbox, prune_outbox};
pub use sweep::Swept;

use crate::StoreError;
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::ports::StoreResult;
use rusqlite::{Connection, ErrorCode};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::Duration;

/// Commits between WAL checkpoints (~2-4 pages each: about SQLite's default
/// of 1000 pages).
const CHECKPOINT_EVERY: u32 = 400;

/// Past this many commits without a checkpoint, async workers stop running
/// transactions inline, so the next one goes to the blocking pool and
/// checkpoints (bounds the WAL when nothing else runs off the workers).
const INLINE_DEBT_LIMIT: u32 = 4 * CHECKPOINT_EVERY;

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 128;

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
    /// Commits since the last WAL checkpoint.
    commits: Arc<AtomicU32>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the database at `path`, with WAL, foreign
    /// keys and the file lock held for its life, and brings its schema up to
    /// date.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(StoreError::internal)?;
        }
        own_file(path).map_err(|e| StoreError::internal(format!("{}: {e}", path.display())))?;
        let conn = Connection::open(path)?;
        // Held by another process: say so at once rather than after a wait.
        // (Once open, this connection holds the lock, so nothing waits.)
        conn.busy_timeout(Duration::ZERO)?;
        Self::from_connection(conn).map_err(|e| match e {
            StoreError::Unavailable(_) => StoreError::unavailable(format!(
                "{} is in use by another process (one latchkey per data directory)",
                path.display()
            )),
            other => other,
        })
    }

    /// A private database that lives as long as this store and its clones.
    pub fn in_memory() -> StoreResult<Self> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(mut conn: Connection) -> StoreResult<Self> {
        // One process owns the database: its first write takes the file lock
        // for as long as the connection lives, so no transaction after that
        // makes a lock system call, and the WAL index lives in this process's
        // memory rather than a shared-memory file (set before WAL mode is
        // entered, as SQLite requires). A second process on the same file
        // gets "database is locked" at open.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        // An in-memory database answers "memory"; that is fine.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // 16 MiB of page cache (the default is 2 MiB): the working set of a
        // busy runner stays in memory instead of being re-read from the WAL.
        conn.pragma_update(None, "cache_size", -16_384)?;
        // Checkpoints are run by `Db::tx`, off the async workers.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // Room for every statement the store prepares (~45). rusqlite's
        // default of 16 is smaller than one login's round of statements, so
        // the LRU cache evicted statements between uses and they were parsed
        // again (perf under a login load: SQL parsing fell from 0.11% to
        // 0.01% of the runner's samples with this).
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        schema::migrate(&mut conn)?;
        Ok(EmbeddedStore {
            db: Db {
                conn: Arc::new(Mutex::new(conn)),
                clock: Arc::new(SystemClock),
                mail_ready: Arc::new(tokio::sync::Notify::new()),
                changes_ready: Arc::new(tokio::sync::Notify::new()),
                commits: Arc::new(AtomicU32::new(0)),
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

    /// Runs `f` inside one `BEGIN IMMEDIATE` transaction, committed only if
    /// `f` succeeds; on `Err` the transaction rolls back, so a refused guard
    /// writes nothing. Inline when the connection is free (and not from an
    /// async worker while a checkpoint is long overdue), else on the
    /// blocking pool; see the module documentation.
    pub(crate) async fn tx<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let background = on_background_thread();
        if background || self.commits.load(Ordering::Relaxed) < INLINE_DEBT_LIMIT {
            let free = match self.conn.try_lock() {
                Ok(conn) => Some(conn),
                // A panic inside an earlier `f` rolled its transaction back
                // while unwinding, so the connection is still sound.
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(mut conn) = free {
                // As on the blocking pool, a panic in `f` is this call's
                // error (its transaction rolled back while unwinding).
                return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(&mut conn, f, background)))
                    .unwrap_or_else(|_| Err(StoreError::internal("store call panicked")));
            }
        }
        let db = self.clone();
        blocking(move || {
            let mut conn = db.conn.lock().unwrap_or_else(PoisonError::into_inner);
            db.run(&mut conn, f, true)
        })
        .await
        .map_err(StoreError::internal)?
    }

    /// One transaction on `conn`, then a WAL checkpoint if one is due and
    /// `may_checkpoint` (this thread may block).
    fn run<T>(
        &self,
        conn: &mut Connection,
        f: impl FnOnce(&Connection) -> StoreResult<T>,
        may_checkpoint: bool,
    ) -> StoreResult<T> {
        if !conn.is_autocommit() {
            // A rollback that failed earlier left a transaction open.
            cached(conn, "ROLLBACK")?;
        }
        let tx = OpenTx::begin(conn)?;
        changes::take_recorded();
        let out = f(tx.conn)?;
        tx.commit()?;
        let commits = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if may_checkpoint && commits >= CHECKPOINT_EVERY {
            // PASSIVE: copies what it can and waits for nobody. The data is
            // committed either way; a failed checkpoint is retried later.
            match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                Ok(()) => self.commits.store(0, Ordering::Relaxed),
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; retried after the next commit"),
            }
        }
        if changes::take_recorded() {
            self.changes_ready.notify_one();
        }
        Ok(out)
    }
}

/// Runs one of the few statements every transaction runs (`BEGIN
/// IMMEDIATE`, `COMMIT`, `ROLLBACK`) from the statement cache: rusqlite's
/// `Transaction` runs them through `execute_batch`, which parses the SQL
/// again each time (two parses per transaction, ~3.5% of a login's CPU
/// outside argon2 under a login load, perf).
fn cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// A `BEGIN IMMEDIATE` transaction on `conn`: committed by `commit`, rolled
/// back when dropped before that (an `Err` from the work, a failed commit,
/// or a panic unwinding through it).
struct OpenTx<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> OpenTx<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        cached(conn, "BEGIN IMMEDIATE")?;
        Ok(OpenTx { conn, open: true })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        cached(self.conn, "COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl Drop for OpenTx<'_> {
    fn drop(&mut self) {
        if self.open && !self.conn.is_autocommit() {
            // A failed rollback leaves the transaction open; the next
            // `Db::run` rolls it back before it begins.
            let _ = cached(self.conn, "ROLLBACK");
        }
    }
}

/// Creates `dir` and any missing parents readable by the owner only (0700
/// on Unix; directories that exist keep their mode).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    private_dir_builder().recursive(true).create(dir)?;
    owner_only(dir)
}

/// Takes the group and other bits off an existing file or directory (one
/// restored with `cp` under a umask of 022, say): what the data directory
/// holds is the owner's only.
pub fn owner_only(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// A `DirBuilder` that makes directories readable by the owner only.
pub(crate) fn private_dir_builder() -> std::fs::DirBuilder {
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b
}

/// Makes the database file at `path` (and a WAL beside it) readable by its
/// owner only: it holds password hashes, and mail jobs with live links and
/// codes until they are sent. A new file is created 0600 before SQLite
/// opens it (SQLite gives the WAL the database file's mode); one that exists
/// loses any group and other bits.
fn own_file(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let wal = path.with_file_name(format!("{}-wal", path.file_name().unwrap_or_default().to_string_lossy()));
        for p in [path, wal.as_path()] {
            match std::fs::metadata(p) {
                Ok(_) => owner_only(p)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && p == path => {
                    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(p) {
                        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                        _ => {}
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

thread_local! {
    /// Set on the threads [`spawn_background`] starts: blocking is fine there.
    static BACKGROUND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn on_background_thread() -> bool {
    BACKGROUND.with(std::cell::Cell::get)
}

/// Runs blocking work (a file write, a waiting transaction) where it may
/// block: inline on a background-service thread, else on tokio's blocking
/// pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, tokio::task::JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if on_background_thread() { Ok(f()) } else { tokio::task::spawn_blocking(f).await }
}

/// Runs a background service (`service`, a future that runs until dropped)
/// on a thread of its own named `name`, on a current-thread runtime, where
/// the store's calls run inline. The returned task finishes when the thread
/// does; aborting it (or dropping its runtime) stops the thread at the
/// service's next await.
pub(crate) fn spawn_background<F>(name: &str, service: F) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name(name.to_string()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "background service: no runtime; not running");
                return;
            }
        };
        BACKGROUND.with(|b| b.set(true));
        let service_name = std::thread::current().name().unwrap_or("background").to_string();
        runtime.block_on(async move {
            use futures::FutureExt;
            tokio::select! {
                ran = std::panic::AssertUnwindSafe(service).catch_unwind() => {
                    if ran.is_err() {
                        // A bug. Left to itself the process would go on
                        // without it (no mail sent, no audit trail): it stops
                        // instead, to be started again whole.
                        tracing::error!(service = %service_name, "background service panicked; the process stops");
                        std::process::exit(70);
                    }
                }
                _ = stopped => {}
            }
        });
        drop(done);
    });
    if let Err(e) = &thread {
        tracing::error!(error = %e, service = name, "background service: thread not started");
    }
    tokio::spawn(async move {
        // Dropped on abort: `stopped` resolves and the thread ends.
        let _stop = stop;
        if thread.is_ok() {
            let _ = finished.await;
        }
    })
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
    use crate::domain::{Challenge, ChallengeId, Email, RequestMeta, User, UserId, Username};
    use crate::rng::OsSecureRng;
    use std::path::PathBuf;
    use std::sync::Arc;

    pub const T0: i64 = 1_700_000_000;

    /// The audit key the tests seal and verify with.
    pub fn key() -> crate::keys::AuditKey {
        crate::keys::AuditKey::new(vec![5; 32]).unwrap()
    }

    /// A new unverified user made at `T0`, as registration builds it.
    pub fn user(name: &str, email: &str) -> User {
        User {
            id: UserId::random(&OsSecureRng),
            username: Username::parse(name).unwrap(),
            email: Email::parse(email).unwrap(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            verified: false,
            created_at: T0,
            failed_logins: 0,
            locked_until: None,
            otp_failures: 0,
            verification_sent_at: Some(T0),
            sessions_valid_after: None,
            password_reset_at: None,
            password_resets: 0,
            password_epoch: 0,
            email_changes: 0,
            meta: RequestMeta { request_id: Some("req-1".into()), ip: Some("203.0.113.7".into()), user_agent: None },
        }
    }

    /// A new login challenge of `u`'s, made at `T0`, its code (hashed as
    /// `code_hash`) valid for 5 minutes.
    pub fn challenge(u: &User, code_hash: &str) -> Challenge {
        Challenge {
            id: ChallengeId::random(&OsSecureRng),
            user_id: u.id,
            code_hash: code_hash.into(),
            created_at: T0,
            expires_at: T0 + 300,
            last_sent_at: T0,
            resends: 0,
            failures: 0,
            attempts: 0,
            password_epoch: 0,
            used_at: None,
            meta: u.meta.clone(),
        }
    }

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

    fn thread_name() -> Option<String> {
        std::thread::current().name().map(str::to_string)
    }

    fn thread_id() -> std::thread::ThreadId {
        std::thread::current().id()
    }

    #[tokio::test]
    async fn background_services_call_the_store_inline_on_their_own_thread() {
        let (s, _) = test_support::store();
        let (named, name) = tokio::sync::oneshot::channel();
        let (ended, end) = std::sync::mpsc::channel::<()>();
        struct OnDrop(std::sync::mpsc::Sender<()>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let db = s.db().clone();
        let task = spawn_background("bg-test", async move {
            let _guard = OnDrop(ended);
            let inside = db.tx(|_| Ok(thread_name())).await.unwrap();
            let _ = named.send(inside);
            std::future::pending::<()>().await;
        });
        assert_eq!(name.await.unwrap().as_deref(), Some("bg-test"));
        // Aborting the task stops the service on its thread.
        task.abort();
        let end = tokio::task::spawn_blocking(move || end.recv_timeout(Duration::from_secs(5))).await.unwrap();
        end.expect("the service was dropped");
    }

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

    /// The database holds password hashes and, until they are sent, mails
    /// with live links: the probe read a reset link out of a world-readable
    /// copy and took the account over.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_database_and_its_directory_are_the_owners_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = TempDir::new();
        let path = dir.0.join("data").join("db.sqlite3");
        let store = EmbeddedStore::open(&path).unwrap();
        store.db().tx(|tx| Ok(tx.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")?)).await.unwrap();
        assert_eq!(mode(&dir.0.join("data")), 0o700);
        assert_eq!(mode(&path), 0o600);
        let wal = dir.0.join("data").join("db.sqlite3-wal");
        assert_eq!(mode(&wal), 0o600, "SQLite gives the WAL the database's mode");
        drop(store);
        // Made readable by others before (or by hand), with a WAL left
        // beside it (an empty one, as a crash at the right moment leaves):
        // both tightened at open.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!((mode(&path), mode(&wal)), (0o600, 0o600));
        drop(store);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_runs_inline_when_the_connection_is_free_else_on_the_blocking_pool() {
        let (s, _) = test_support::store();
        // Free: on the calling worker, no hand-off.
        let caller = tokio::spawn({
            let s = s.clone();
            async move { (thread_id(), s.db().tx(|_| Ok(thread_id())).await.unwrap()) }
        });
        let (worker, ran_on) = caller.await.unwrap();
        assert_eq!(ran_on, worker);
        // Busy (another thread holds the connection): the caller does not
        // wait on a worker; the pool waits instead, and the call still succeeds.
        let (held, release) = std::sync::mpsc::channel::<()>();
        let (locked, is_locked) = std::sync::mpsc::channel::<()>();
        let conn = s.db().conn.clone();
        let holder = std::thread::spawn(move || {
            let _guard = conn.lock().unwrap();
            locked.send(()).unwrap();
            let _ = release.recv();
        });
        is_locked.recv().unwrap();
        let (polled, first_poll_done) = tokio::sync::oneshot::channel::<()>();
        let pending = tokio::spawn({
            let s = s.clone();
            async move {
                let worker = thread_id();
                let mut call = std::pin::pin!(s.db().tx(|_| Ok(thread_id())));
                // The first poll is where `tx` chooses, while the holder
                // still has the connection: it hands the call to the pool
                // (which then waits for the lock) and returns.
                let first = futures::poll!(call.as_mut());
                let _ = polled.send(());
                let ran_on = match first {
                    std::task::Poll::Ready(out) => out,
                    std::task::Poll::Pending => call.await,
                };
                (worker, ran_on.unwrap())
            }
        });
        // Released only once the choice is made, so it is made against a
        // held lock however slowly the task was scheduled. A call that
        // waited for the lock on its worker instead would never come back
        // from that poll: after a while the lock is released anyway, so the
        // test fails instead of hanging.
        let chose = tokio::time::timeout(Duration::from_secs(30), first_poll_done).await;
        held.send(()).unwrap();
        holder.join().unwrap();
        assert!(chose.is_ok(), "the call blocked its worker waiting for the connection");
        let (worker, ran_on) = pending.await.unwrap();
        assert_ne!(ran_on, worker);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoints_run_off_the_workers_and_a_long_overdue_one_stops_inline_calls() {
        let (s, _) = test_support::store();
        let db = s.db().clone();
        let on_worker = |db: Db| async move {
            tokio::spawn(async move { (thread_id(), db.tx(|_| Ok(thread_id())).await.unwrap()) }).await.unwrap()
        };
        // Inline commits on a worker only add to the debt.
        for _ in 0..CHECKPOINT_EVERY + 5 {
            let (worker, ran_on) = on_worker(db.clone()).await;
            assert_eq!(ran_on, worker);
        }
        assert_eq!(db.commits.load(Ordering::Relaxed), CHECKPOINT_EVERY + 5);
        // Past the limit, a worker's call goes to the blocking pool, which
        // checkpoints after its commit.
        db.commits.store(INLINE_DEBT_LIMIT, Ordering::Relaxed);
        let (worker, ran_on) = on_worker(db.clone()).await;
        assert_ne!(ran_on, worker);
        assert_eq!(db.commits.load(Ordering::Relaxed), 0);
        // A background thread checkpoints inline once one is due.
        db.commits.store(CHECKPOINT_EVERY, Ordering::Relaxed);
        let (done, result) = tokio::sync::oneshot::channel();
        let bg = db.clone();
        let _task = spawn_background("bg-checkpoint", async move {
            let _ = done.send(bg.tx(|_| Ok(thread_name())).await.unwrap());
            std::future::pending::<()>().await;
        });
        assert_eq!(result.await.unwrap().as_deref(), Some("bg-checkpoint"));
        assert_eq!(db.commits.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_panic_in_a_transaction_is_an_error_and_leaves_the_store_usable() {
        let (s, _) = test_support::store();
        let err = s
            .db()
            .tx(|tx| -> StoreResult<()> {
                tx.execute_batch("CREATE TABLE t (x INTEGER)")?;
                panic!("boom")
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Internal(_)), "{err:?}");
        // Rolled back, and the connection still works.
        let tables: i64 = s
            .db()
            .tx(|tx| Ok(tx.query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 't'", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(tables, 0);
    }

    #[tokio::test]
    async fn an_error_in_a_transaction_rolls_it_back_and_the_next_one_commits() {
        let (s, _) = test_support::store();
        s.db().tx(|tx| Ok(tx.execute_batch("CREATE TABLE t (x INTEGER)")?)).await.unwrap();
        let err = s
            .db()
            .tx(|tx| -> StoreResult<()> {
                tx.execute("INSERT INTO t VALUES (1)", [])?;
                Err(StoreError::internal("refused"))
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Internal(_)), "{err:?}");
        assert!(s.db().conn.lock().unwrap().is_autocommit(), "rolled back at once, not left open");
        s.db().tx(|tx| Ok(tx.execute("INSERT INTO t VALUES (2)", []).map(drop)?)).await.unwrap();
        let rows: Vec<i64> = s
            .db()
            .tx(|tx| {
                assert!(!tx.is_autocommit(), "the work runs inside a transaction");
                let mut st = tx.prepare("SELECT x FROM t ORDER BY x")?;
                let rows = st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<i64>>>()?;
                Ok(rows)
            })
            .await
            .unwrap();
        assert_eq!(rows, vec![2]);
        assert!(s.db().conn.lock().unwrap().is_autocommit(), "nothing left open");
    }

    #[test]
    fn a_second_process_on_the_same_file_is_refused_at_open() {
        let dir = TempDir::new();
        let path = dir.0.join("db.sqlite3");
        let first = EmbeddedStore::open(&path).unwrap();
        // Another connection stands in for another process: SQLite's file
        // locks are per connection.
        let err = EmbeddedStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let reason = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
        assert!(reason.contains("in use by another process"), "{reason}");
        drop(first);
        EmbeddedStore::open(&path).unwrap();
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
