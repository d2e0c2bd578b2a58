//! argon2id hashing on a dedicated pool of `threads` OS threads (usually one
//! per core), each hashing in memory of its own that it reuses (`Memory`,
//! given back after `KEEP_MEMORY_IDLE` without work): never on the threads
//! serving HTTP, so logins that saturate the CPU do
//! not stall cheap requests, and never on tokio's elastic blocking pool,
//! whose many threads would each keep a 19 MiB argon2 arena alive (measured:
//! 2 GB RSS under a login load before this pool).
//!
//! On Linux the pool's threads run under `SCHED_IDLE`: they take every cycle
//! nothing else wants, and the kernel preempts them at once when a thread
//! serving HTTP wakes. With one hashing thread per core the CPU is saturated by
//! logins, and at normal priority a cheap request then waited behind a hash
//! for up to a scheduler slice (bench/run section 3 measured the p99 of
//! /v1/me, code verify and refresh at 39-53 ms under a login load before
//! this). The price: under a CPU load of cheap requests that never lets up,
//! password checks wait (the rate limits bound that load).
//!
//! A job whose request is gone by the time a thread takes it (the client
//! hung up while it was queued) is skipped: before, a load generator that
//! stopped with 32 logins queued left the pool hashing for nobody for
//! another 0.55-0.64 s of CPU (measured after `wrk -c32`; 0.16 s after
//! `-c8`), time taken from whatever ran next. A request is gone when its
//! future is dropped, or, for a request run to its end whether or not its
//! client stays (the HTTP server's, so that no flow stops between two of
//! its writes), when its [`Caller`] says so.

use crate::domain::{Password, nfkc};
use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, AssociatedData, Block, Params, ParamsBuilder, Version};
use std::borrow::Cow;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

type Job = Box<dyn FnOnce(&mut Memory) + Send + 'static>;

tokio::task_local! {
    static CALLER: Caller;
}

/// Whether the client a request is served for is still there, for work
/// that runs on after its client hung up (so that a flow is never cut off
/// between two of its writes): a hash asked for by such a request is
/// skipped once the client is gone, if no thread has taken it yet, as one
/// whose request future was dropped is. See [`Caller::serve`].
#[derive(Clone, Debug, Default)]
pub struct Caller(Arc<std::sync::atomic::AtomicBool>);

impl Caller {
    /// Runs `work` as the work of this caller: the hashes it asks for are
    /// skipped once [`Caller::hung_up`] was called.
    pub async fn serve<F: std::future::Future>(self, work: F) -> F::Output {
        CALLER.scope(self, work).await
    }

    /// The client is gone: nobody will read the answer.
    pub fn hung_up(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`Caller::hung_up`] was called.
    pub fn is_gone(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The caller the current task serves, if it runs under [`Caller::serve`].
    pub fn current() -> Option<Caller> {
        CALLER.try_with(Caller::clone).ok()
    }
}

/// A pool thread gives its argon2 memory back after this long without a
/// job, so an idle service does not keep `threads` x 19 MiB.
const KEEP_MEMORY_IDLE: Duration = Duration::from_secs(5);

/// argon2's working memory (`m` KiB), owned by one pool thread and reused
/// by every hash it runs. argon2's own `hash_password` and `verify_password`
/// allocate it per call; under a login load glibc kept those 19 MiB chunks
/// in several arenas (measured: 240-290 MiB RSS after 4 s of logins at 32
/// connections, with four arenas of 57 MiB each, against 64 MiB with big
/// allocations forced to mmap, which instead page-faulted each hash).
#[derive(Default)]
pub struct Memory(Vec<Block>);

/// The least capacity the blocks are allocated with: more than 32 MiB,
/// glibc's highest dynamic mmap threshold on 64-bit (mallopt(3)), so the
/// buffer is always a mapping of its own and dropping it gives the memory
/// back to the system (a 19 MiB chunk would come from an arena, which keeps
/// it). Pages past the blocks in use are never touched and cost no RSS.
const RESERVE_BYTES: usize = (32 << 20) + 4096;

impl Memory {
    fn blocks(&mut self, params: &Params) -> &mut [Block] {
        let n = params.block_count();
        if self.0.len() < n {
            if self.0.capacity() < n {
                self.0 = Vec::with_capacity(n.max(RESERVE_BYTES.div_ceil(std::mem::size_of::<Block>())));
            }
            self.0.resize(n, Block::default());
        }
        &mut self.0[..n]
    }
}

/// argon2's associated data (the PHC string's `data` parameter, `bmZrYw`)
/// on every hash made here: the password was hashed in its NFKC form, so
/// `é` typed as one code point or as `e` and a combining accent, or `ﬁ` as
/// a ligature or two letters, is one password (NIST SP 800-63B-4 3.1.1.2:
/// normalise with NFKC or NFKD before hashing). Being argon2's input, the
/// mark cannot be taken off a hash to make it check the password as typed.
/// A hash without it (made before it existed) checks the password exactly
/// as typed and is rehashed at the owner's next login ([`PasswordHasher::needs_rehash`]).
pub const NFKC_MARK: &[u8] = b"nfkc";

/// What argon2 hashes for `password` under `params`: its NFKC form if the
/// parameters carry [`NFKC_MARK`], else exactly what was typed.
fn input<'a>(password: &'a str, params: &Params) -> Cow<'a, str> {
    if params.data() == NFKC_MARK { nfkc(password) } else { Cow::Borrowed(password) }
}

/// argon2's tag of `password` with `salt`, `len` bytes long, computed in
/// `memory` with `argon`'s algorithm, version and parameters.
fn tag(argon: &Argon2<'_>, memory: &mut Memory, password: &[u8], salt: Salt<'_>, len: usize) -> Result<Output, String> {
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(|e| e.to_string())?;
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = out.get_mut(..len).ok_or("argon2 output length: at most 64 bytes in a PHC string")?;
    argon
        .hash_password_into_with_memory(password, salt_bytes, &mut *out, memory.blocks(argon.params()))
        .map_err(|e| e.to_string())?;
    Output::new(out).map_err(|e| e.to_string())
}

/// Hashes `password` with `salt` into a PHC string, in `memory`: the same
/// string as `Argon2::hash_password` of [`input`] (a unit test holds them
/// equal).
pub fn hash_in(memory: &mut Memory, params: &Params, password: &str, salt: &SaltString) -> Result<String, String> {
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let hash = tag(&argon(params), memory, input(password, params).as_bytes(), salt.as_salt(), len)?;
    phc(params, salt, hash)
}

/// The argon2id PHC string of `hash` made with `params` and `salt`.
fn phc(params: &Params, salt: &SaltString, hash: Output) -> Result<String, String> {
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(hash),
    };
    Ok(phc.to_string())
}

/// What an unknown user's password is verified against: a PHC string with
/// today's parameters, a random salt and a random tag of a real hash's
/// length. Verifying against it costs exactly what verifying a real hash
/// does (argon2 of the password with that salt, then the comparison), and
/// no password matches it (it would have to hash to 256 random bits). It
/// needs no argon2 run to make: a dummy made by hashing a random password
/// cost every start one hash (19 MiB touched and ~14 ms of CPU beside the
/// start-up, which on the api's one vCPU was CPU taken from the cold init).
fn dummy_phc(params: &Params, rng: &dyn crate::rng::SecureRng) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rng.fill(&mut salt);
    let mut tag = [0u8; Output::MAX_LENGTH];
    let tag = &mut tag[..params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    rng.fill(tag);
    phc(
        params,
        &SaltString::encode_b64(&salt).map_err(|e| e.to_string())?,
        Output::new(tag).map_err(|e| e.to_string())?,
    )
}

/// Whether `password` matches the PHC string `phc` (any argon2 variant,
/// version and parameters it names), computed in `memory`: the same answer
/// as argon2's `verify_password` of [`input`] (a unit test holds them
/// equal), with the hashes compared in constant time. Only an unreadable
/// `phc` is an error.
pub fn verify_in(memory: &mut Memory, password: &str, phc: &str) -> Result<bool, String> {
    let parsed = PasswordHash::new(phc).map_err(|e| format!("stored hash: {e}"))?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return Ok(false) };
    let computed = (|| -> Option<Output> {
        let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
        let version = parsed.version.map(Version::try_from).transpose().ok()?.unwrap_or_default();
        let params = Params::try_from(&parsed).ok()?;
        let password = input(password, &params);
        tag(&Argon2::new(algorithm, version, params), memory, password.as_bytes(), salt, expected.len()).ok()
    })();
    // `Output`'s equality is constant-time.
    Ok(computed.is_some_and(|c| c == expected))
}

/// A fixed set of threads taking jobs from one queue.
struct Pool {
    queue: Arc<Queue>,
}

/// The jobs waiting, and whether the pool is shut.
#[derive(Default)]
struct QueueState {
    jobs: std::collections::VecDeque<Job>,
    shut: bool,
}

/// The pool's queue. Each thread waits on `ready` with a timeout of its
/// own. (With one receiver behind a mutex, a thread waited for the mutex
/// before it could start its timeout, and the thread that had just timed
/// out could take the mutex back first, so its release of memory depended
/// on the other's luck.)
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

impl Pool {
    fn new(threads: usize) -> Result<Self, String> {
        let queue = Arc::new(Queue::default());
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    lower_priority();
                    let mut memory = Memory::default();
                    // `None`: the pool is shut.
                    while let Some(job) = queue.next(KEEP_MEMORY_IDLE) {
                        match job {
                            // A job that panics is that job's failure (its
                            // caller gets "hash job dropped"), not the end of
                            // this thread: a pool with no threads left would
                            // leave every later login waiting for ever.
                            Some(job) => {
                                let run = std::panic::AssertUnwindSafe(|| job(&mut memory));
                                if std::panic::catch_unwind(run).is_err() {
                                    memory = Memory::default();
                                }
                            }
                            None => memory = Memory::default(),
                        }
                    }
                })
                .map_err(|e| format!("starting the hash pool: {e}"))?;
        }
        Ok(Pool { queue })
    }

    fn submit(&self, job: Job) -> Result<(), &'static str> {
        let mut state = self.queue.state.lock().map_err(|_| "hash pool lock poisoned")?;
        state.jobs.push_back(job);
        drop(state);
        self.queue.ready.notify_one();
        Ok(())
    }
}

impl Queue {
    /// The next job (`Some(Some(job))`), or `Some(None)` after `idle`
    /// without one, or `None` once the pool is shut. The lock is held only
    /// to take a job, never while one runs.
    fn next(&self, idle: Duration) -> Option<Option<Job>> {
        let mut state = self.state.lock().ok()?;
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return Some(Some(job));
            }
            if state.shut {
                return None;
            }
            let (guard, waited) = self.ready.wait_timeout(state, idle).ok()?;
            state = guard;
            if waited.timed_out() && state.jobs.is_empty() && !state.shut {
                return Some(None);
            }
        }
    }
}

impl Drop for Pool {
    /// The hasher is gone: its threads finish the queued jobs and end.
    fn drop(&mut self) {
        if let Ok(mut state) = self.queue.state.lock() {
            state.shut = true;
        }
        self.queue.ready.notify_all();
    }
}

/// Puts the calling thread under `SCHED_IDLE` (Linux); elsewhere, or if the
/// kernel refuses, the thread keeps its normal priority and says so once.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
            tracing::warn!(error = ?e, "hash pool: SCHED_IDLE refused; hashing at normal priority");
        }
    }
}

/// argon2id cost parameters. Defaults are the ASVS/OWASP floor:
/// m = 19456 KiB, t = 2, p = 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Settings {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Default for Argon2Settings {
    fn default() -> Self {
        Argon2Settings { m_kib: 19456, t: 2, p: 1 }
    }
}

#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    pool: Arc<Pool>,
    /// Verified against for unknown users, so they cost the same time as
    /// a wrong password ([`dummy_phc`]).
    dummy: Arc<str>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher").field("params", &self.params).finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// `threads`: how many hashes may run at once (usually the core count).
    pub fn new(settings: Argon2Settings, threads: usize, rng: &dyn crate::rng::SecureRng) -> Result<Self, String> {
        let params = marked(settings.m_kib, settings.t, settings.p).map_err(|e| format!("argon2 parameters: {e}"))?;
        let dummy = dummy_phc(&params, rng)?.into();
        Ok(PasswordHasher { params, pool: Arc::new(Pool::new(threads)?), dummy })
    }

    /// Hashes a new password into a PHC string.
    pub async fn hash(&self, password: &Password, rng: &dyn crate::rng::SecureRng) -> Result<String, crate::Error> {
        let mut salt = [0u8; 16];
        rng.fill(&mut salt);
        let params = self.params.clone();
        let pw = password.clone();
        self.run(move |memory| {
            let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
            hash_in(memory, &params, pw.expose(), &salt)
        })
        .await
    }

    /// Verifies `password` against `phc`, or against the dummy hash when
    /// `phc` is `None`, which then always answers `false`.
    pub async fn verify(&self, password: &Password, phc: Option<&str>) -> Result<bool, crate::Error> {
        let (target, real) = match phc {
            Some(p) => (p.to_string(), true),
            None => (self.dummy.to_string(), false),
        };
        let pw = password.clone();
        let ok = self.run(move |memory| verify_in(memory, pw.expose(), &target)).await?;
        Ok(ok && real)
    }

    /// Whether a stored hash was made with weaker parameters than today's,
    /// or of the password as typed (without [`NFKC_MARK`]).
    pub fn needs_rehash(&self, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else { return true };
        let Ok(p) = Params::try_from(&parsed) else { return true };
        parsed.algorithm.as_str() != "argon2id"
            || p.data() != NFKC_MARK
            || p.m_cost() < self.params.m_cost()
            || p.t_cost() < self.params.t_cost()
            || p.p_cost() < self.params.p_cost()
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Memory) -> Result<T, String> + Send + 'static,
    ) -> Result<T, crate::Error> {
        let (done, result) = tokio::sync::oneshot::channel();
        let caller = Caller::current();
        let asker = caller.clone();
        let job: Job = Box::new(move |memory| {
            // Its request was dropped while the job waited, or its client
            // hung up: nobody would read the answer, and the ~18 ms of
            // argon2 would only delay the jobs queued behind it. (The flow
            // that asked gets an error, before any write that depends on
            // the hash.)
            if done.is_closed() || caller.as_ref().is_some_and(Caller::is_gone) {
                return;
            }
            let _ = done.send(f(memory));
        });
        self.pool.submit(job).map_err(|e| crate::Error::Internal(e.into()))?;
        result
            .await
            .map_err(|_| match asker {
                // Skipped: the client hung up while the job waited.
                Some(c) if c.is_gone() => crate::Error::ClientGone,
                _ => crate::Error::Internal("hash job dropped".into()),
            })?
            .map_err(|e| crate::Error::Internal(e.into()))
    }
}

/// argon2id's parameters `m` KiB, `t`, `p` with [`NFKC_MARK`] as the
/// associated data: what every hash made here uses.
fn marked(m: u32, t: u32, p: u32) -> Result<Params, argon2::Error> {
    ParamsBuilder::new().m_cost(m).t_cost(t).p_cost(p).data(AssociatedData::new(NFKC_MARK)?).build()
}

fn argon(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::OsSecureRng;

    #[tokio::test]
    async fn verifies_exactly_what_was_typed() {
        let h = PasswordHasher::new(Argon2Settings { m_kib: 1024, t: 1, p: 1 }, 2, &OsSecureRng).unwrap();
        let pw = Password::for_login("Tr0ub4dor & 3".into()).unwrap();
        let phc = h.hash(&pw, &OsSecureRng).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1,data=bmZrYw$"), "{phc}");
        assert!(h.verify(&pw, Some(&phc)).await.unwrap());
        for other in ["tr0ub4dor & 3", "Tr0ub4dor & 3 ", "Tr0ub4dor & "] {
            assert!(!h.verify(&Password::for_login(other.into()).unwrap(), Some(&phc)).await.unwrap());
        }
        assert!(!h.verify(&pw, None).await.unwrap(), "dummy never verifies");
    }

    #[tokio::test]
    async fn the_dummy_is_a_real_hash_in_all_but_its_password() {
        let h = PasswordHasher::new(Argon2Settings { m_kib: 1024, t: 1, p: 1 }, 1, &OsSecureRng).unwrap();
        let real = h.hash(&Password::for_login("Tr0ub4dor & 3".into()).unwrap(), &OsSecureRng).await.unwrap();
        let (dummy, real) = (PasswordHash::new(&h.dummy).unwrap(), PasswordHash::new(&real).unwrap());
        // What a verify computes is read from the PHC string: the same
        // algorithm, version, parameters (with the NFKC mark), salt length
        // and tag length is the same argon2 run as a wrong password's.
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(Params::try_from(&dummy).unwrap(), Params::try_from(&real).unwrap());
        assert_eq!(dummy.salt.unwrap().len(), real.salt.unwrap().len());
        assert_eq!(dummy.hash.unwrap().len(), real.hash.unwrap().len());
        // Random per hasher, and nothing verifies against it.
        let other = PasswordHasher::new(Argon2Settings { m_kib: 1024, t: 1, p: 1 }, 1, &OsSecureRng).unwrap();
        assert_ne!(h.dummy, other.dummy);
        for pw in ["Tr0ub4dor & 3", "", "x"] {
            assert!(!verify_in(&mut Memory::default(), pw, &h.dummy).unwrap());
        }
    }

    #[test]
    fn hashing_in_reused_memory_matches_argon2s_own_functions() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let mut memory = Memory::default();
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        // The memory grows and shrinks in use between parameter sets, and is
        // dirty from the hash before.
        for (m, t, p) in [(1024, 1, 1), (4096, 2, 1), (2048, 3, 2), (1024, 1, 1)] {
            let params = Params::new(m, t, p, None).unwrap();
            let ours = hash_in(&mut memory, &params, "Tr0ub4dor & 3", &salt).unwrap();
            let theirs = argon(&params).hash_password(b"Tr0ub4dor & 3", &salt).unwrap().to_string();
            assert_eq!(ours, theirs);
            assert!(verify_in(&mut memory, "Tr0ub4dor & 3", &ours).unwrap());
            assert!(!verify_in(&mut memory, "Tr0ub4dor & 4", &ours).unwrap());
            // Marked: argon2's own hash of the NFKC form, with the mark as
            // its associated data.
            let params = marked(m, t, p).unwrap();
            let ours = hash_in(&mut memory, &params, "Cafe\u{301} \u{fb01}x", &salt).unwrap();
            let theirs = argon(&params).hash_password("Caf\u{e9} fix".as_bytes(), &salt).unwrap().to_string();
            assert_eq!(ours, theirs);
            assert!(ours.contains(",data=bmZrYw$"), "{ours}");
            assert!(verify_in(&mut memory, "Caf\u{e9} fix", &ours).unwrap());
        }
        // Hashes made by others: another variant, version, tag length.
        for (alg, version, out_len) in [
            (Algorithm::Argon2i, Version::V0x13, 32),
            (Algorithm::Argon2d, Version::V0x10, 16),
            (Algorithm::Argon2id, Version::V0x13, 64),
        ] {
            let params = Params::new(1024, 2, 1, Some(out_len)).unwrap();
            let phc = Argon2::new(alg, version, params).hash_password(b"pw", &salt).unwrap().to_string();
            let parsed = PasswordHash::new(&phc).unwrap();
            for pw in ["pw", "pW", ""] {
                assert_eq!(
                    verify_in(&mut memory, pw, &phc).unwrap(),
                    Argon2::default().verify_password(pw.as_bytes(), &parsed).is_ok(),
                    "{phc} / {pw:?}"
                );
            }
            assert!(verify_in(&mut memory, "pw", &phc).unwrap());
        }
        // Unreadable: an error; readable but not verifiable: false.
        assert!(verify_in(&mut memory, "pw", "not a phc string").is_err());
        assert!(!verify_in(&mut memory, "pw", "$argon2id$v=19$m=1024,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZg").unwrap());
        assert!(
            !verify_in(&mut memory, "pw", "$scrypt$ln=15,r=8,p=1$MDEyMzQ1Njc4OWFiY2RlZg$YWJjZGVmZ2hpamtsbW5vcA")
                .unwrap()
        );
    }

    #[test]
    fn every_idle_pool_thread_times_out_and_a_shut_pool_ends_them() {
        let queue = Arc::new(Queue::default());
        // Both waiting at once: each gets its own timeout (behind a mutex'd
        // receiver, one of them could wait for ever).
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let q = queue.clone();
                std::thread::spawn(move || matches!(q.next(Duration::from_millis(50)), Some(None)))
            })
            .collect();
        for w in waiters {
            assert!(w.join().unwrap(), "an idle thread did not time out");
        }
        // A queued job is taken before any timeout.
        let (tx, rx) = std::sync::mpsc::channel();
        let job: Job = Box::new(move |_| tx.send(42).unwrap());
        queue.state.lock().unwrap().jobs.push_back(job);
        match queue.next(Duration::from_secs(60)) {
            Some(Some(job)) => job(&mut Memory::default()),
            _ => panic!("the queued job was not taken"),
        }
        assert_eq!(rx.recv().unwrap(), 42);
        // Shut: jobs still queued are run first, then the threads end.
        let (tx, rx) = std::sync::mpsc::channel();
        let job: Job = Box::new(move |_| tx.send(7).unwrap());
        queue.state.lock().unwrap().jobs.push_back(job);
        queue.state.lock().unwrap().shut = true;
        match queue.next(Duration::from_secs(60)) {
            Some(Some(job)) => job(&mut Memory::default()),
            _ => panic!("a queued job was dropped at shutdown"),
        }
        assert_eq!(rx.recv().unwrap(), 7);
        assert!(queue.next(Duration::from_secs(60)).is_none());
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_thread_goes_on() {
        let h = PasswordHasher::new(Argon2Settings { m_kib: 1024, t: 1, p: 1 }, 1, &OsSecureRng).unwrap();
        let failed = h.run(|_| -> Result<(), String> { panic!("a bug in a job") }).await;
        assert!(matches!(&failed, Err(crate::Error::Internal(m)) if m.to_string() == "hash job dropped"), "{failed:?}");
        // The pool's one thread is still there (without it, this would
        // wait for ever).
        let pw = Password::for_login("Tr0ub4dor & 3".into()).unwrap();
        let phc = tokio::time::timeout(std::time::Duration::from_secs(30), h.hash(&pw, &OsSecureRng))
            .await
            .expect("no pool thread took the job")
            .unwrap();
        assert!(h.verify(&pw, Some(&phc)).await.unwrap());
    }

    #[tokio::test]
    async fn a_job_whose_caller_is_gone_is_not_run() {
        let h = PasswordHasher::new(Argon2Settings { m_kib: 1024, t: 1, p: 1 }, 1, &OsSecureRng).unwrap();
        // The pool's one thread is held until `release`.
        let (release, held) = std::sync::mpsc::channel::<()>();
        h.pool
            .submit(Box::new(move |_| {
                let _ = held.recv();
            }))
            .unwrap();
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let gone = tokio::time::timeout(
            Duration::from_millis(50),
            h.run(move |_| {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }),
        )
        .await;
        assert!(gone.is_err(), "the held pool ran the job: {gone:?}");
        release.send(()).unwrap();
        // Jobs are taken in order: once this one is answered, the one
        // before it was taken too.
        let after = tokio::time::timeout(Duration::from_secs(30), h.run(|_| Ok(7))).await;
        assert_eq!(after.expect("the pool is stuck").unwrap(), 7);
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst), "a job whose caller was dropped ran");
    }

    #[tokio::test]
    async fn a_job_whose_callers_client_hung_up_is_not_run() {
        let h = Arc::new(PasswordHasher::new(Argon2Settings { m_kib: 1024, t: 1, p: 1 }, 1, &OsSecureRng).unwrap());
        let (release, held) = std::sync::mpsc::channel::<()>();
        h.pool
            .submit(Box::new(move |_| {
                let _ = held.recv();
            }))
            .unwrap();
        let caller = Caller::default();
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let pool = h.clone();
        let asked = tokio::spawn(caller.clone().serve(async move {
            pool.run(move |_| {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
            .await
        }));
        // Queued behind the held job; the client goes while it waits, and
        // the request runs on.
        tokio::time::sleep(Duration::from_millis(50)).await;
        caller.hung_up();
        release.send(()).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), asked).await.expect("the pool is stuck").unwrap();
        assert!(matches!(answer, Err(crate::Error::ClientGone)), "a skipped hash is an error to the flow: {answer:?}");
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst), "a job whose client hung up ran");
        // A caller still there is served.
        let after = Caller::default().serve(h.run(|_| Ok(7))).await;
        assert_eq!(after.unwrap(), 7);
    }

    #[tokio::test]
    async fn one_password_however_its_characters_were_typed_and_older_hashes_as_typed() {
        let h = PasswordHasher::new(Argon2Settings { m_kib: 1024, t: 1, p: 1 }, 2, &OsSecureRng).unwrap();
        let pw = |s: &str| Password::for_login(s.into()).unwrap();
        // Precomposed; decomposed with a ligature; full-width.
        let (nfc, nfd, wide) =
            ("Caf\u{e9} fix 42", "Cafe\u{301} \u{fb01}x 42", "Caf\u{e9} \u{ff46}ix \u{ff14}\u{ff12}");
        let phc = h.hash(&pw(nfd), &OsSecureRng).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1,data=bmZrYw$"), "{phc}");
        assert!(!h.needs_rehash(&phc));
        for same in [nfc, nfd, wide] {
            assert!(h.verify(&pw(same), Some(&phc)).await.unwrap(), "{same:?}");
        }
        for other in ["Cafe fix 42", "caf\u{e9} fix 42", "Caf\u{e9} fix 4"] {
            assert!(!h.verify(&pw(other), Some(&phc)).await.unwrap(), "{other:?}");
        }
        // The mark is argon2's input: taken off, the hash checks nothing,
        // not even the NFKC form it was made of.
        let stripped = phc.replace(",data=bmZrYw", "");
        assert!(!h.verify(&pw(nfc), Some(&stripped)).await.unwrap());
        // A hash made before the mark: exactly what was typed, and due for
        // a rehash.
        use argon2::password_hash::PasswordHasher as _;
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let old = argon(&Params::new(1024, 1, 1, None).unwrap()).hash_password(nfc.as_bytes(), &salt).unwrap();
        let old = old.to_string();
        assert!(h.verify(&pw(nfc), Some(&old)).await.unwrap());
        assert!(!h.verify(&pw(nfd), Some(&old)).await.unwrap());
        assert!(h.needs_rehash(&old));
    }

    #[tokio::test]
    async fn rehash_when_parameters_rise() {
        let weak = PasswordHasher::new(Argon2Settings { m_kib: 1024, t: 1, p: 1 }, 1, &OsSecureRng).unwrap();
        let strong = PasswordHasher::new(Argon2Settings { m_kib: 2048, t: 2, p: 1 }, 1, &OsSecureRng).unwrap();
        let phc = weak.hash(&Password::for_login("x".into()).unwrap(), &OsSecureRng).await.unwrap();
        assert!(strong.needs_rehash(&phc));
        assert!(!weak.needs_rehash(&phc));
    }

    /// The scheduling policy of the thread a job runs on: field 41 of
    /// /proc/thread-self/stat (after the parenthesised name).
    #[cfg(target_os = "linux")]
    fn policy_of_this_thread() -> Result<u32, String> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").map_err(|e| e.to_string())?;
        let after_name = stat.rsplit_once(") ").ok_or("no name in stat")?.1;
        // after_name starts at field 3; policy is field 41.
        after_name.split(' ').nth(41 - 3).ok_or("short stat")?.parse().map_err(|e| format!("{e}"))
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_yield_to_everything_else() {
        const SCHED_OTHER: u32 = 0;
        const SCHED_IDLE: u32 = 5;
        let h = PasswordHasher::new(Argon2Settings { m_kib: 1024, t: 1, p: 1 }, 2, &OsSecureRng).unwrap();
        for _ in 0..4 {
            assert_eq!(h.run(|_| policy_of_this_thread()).await.unwrap(), SCHED_IDLE);
        }
        assert_eq!(policy_of_this_thread().unwrap(), SCHED_OTHER, "the test's own thread is untouched");
    }
}
