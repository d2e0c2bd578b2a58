//! argon2id hashing on a dedicated pool of `threads` OS threads (usually one
//! per core): never on the async workers, so logins that saturate the CPU do
//! not stall cheap requests, and never on tokio's elastic blocking pool,
//! whose many threads would each keep a 19 MiB argon2 arena alive (measured:
//! 2 GB RSS under a login load before this pool, see the README).
//!
//! On Linux the pool's threads run under `SCHED_IDLE`: they take every cycle
//! nothing else wants, and the kernel preempts them at once when an async
//! worker wakes. With one hashing thread per core the CPU is saturated by
//! logins, and at normal priority a cheap request then waited behind a hash
//! for up to a scheduler slice (bench/run section 3 measured the p99 of
//! /v1/me, code verify and refresh at 39-53 ms under a login load before
//! this). The price: under a CPU load of cheap requests that never lets up,
//! password checks wait (the rate limits bound that load).

use crate::domain::Password;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of threads taking jobs from one queue.
struct Pool {
    tx: Mutex<mpsc::Sender<Job>>,
}

impl Pool {
    fn new(threads: usize) -> Result<Self, String> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // Hold the lock only to take a job, not to run it.
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the hasher was dropped
                        }
                    }
                })
                .map_err(|e| format!("starting the hash pool: {e}"))?;
        }
        Ok(Pool { tx: Mutex::new(tx) })
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
    /// A hash of a random password, verified against for unknown users so
    /// they cost the same time as a wrong password. Computed on the pool in
    /// the background at start (not on the start-up path), or on first use.
    dummy: Arc<tokio::sync::OnceCell<String>>,
    /// The random password and salt the dummy hash is made from.
    dummy_input: Arc<(String, [u8; 16])>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher").field("params", &self.params).finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// `threads`: how many hashes may run at once (usually the core count).
    pub fn new(settings: Argon2Settings, threads: usize, rng: &dyn crate::rng::SecureRng) -> Result<Self, String> {
        let params =
            Params::new(settings.m_kib, settings.t, settings.p, None).map_err(|e| format!("argon2 parameters: {e}"))?;
        let mut random = [0u8; 32];
        rng.fill(&mut random);
        let mut salt = [0u8; 16];
        rng.fill(&mut salt);
        let hasher = PasswordHasher {
            params,
            pool: Arc::new(Pool::new(threads)?),
            dummy: Arc::new(tokio::sync::OnceCell::new()),
            dummy_input: Arc::new((hex::encode(random), salt)),
        };
        // Warm the dummy hash off the start-up path.
        let (cell, make) = (hasher.dummy.clone(), hasher.dummy_job());
        let warm: Job = Box::new(move || {
            if let Ok(h) = make() {
                let _ = cell.set(h);
            }
        });
        if let Ok(tx) = hasher.pool.tx.lock() {
            let _ = tx.send(warm);
        }
        Ok(hasher)
    }

    fn dummy_job(&self) -> impl FnOnce() -> Result<String, String> + Send + 'static {
        let (params, input) = (self.params.clone(), self.dummy_input.clone());
        move || {
            let salt = SaltString::encode_b64(&input.1).map_err(|e| e.to_string())?;
            argon(&params).hash_password(input.0.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
        }
    }

    /// Hashes a new password into a PHC string.
    pub async fn hash(&self, password: &Password, rng: &dyn crate::rng::SecureRng) -> Result<String, crate::Error> {
        let mut salt = [0u8; 16];
        rng.fill(&mut salt);
        let params = self.params.clone();
        let pw = password.clone();
        self.run(move || {
            let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
            argon(&params)
                .hash_password(pw.expose().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// Verifies `password` against `phc`, or against the dummy hash when
    /// `phc` is `None`, which then always answers `false`.
    pub async fn verify(&self, password: &Password, phc: Option<&str>) -> Result<bool, crate::Error> {
        let (target, real) = match phc {
            Some(p) => (p.to_string(), true),
            None => (self.dummy.get_or_try_init(|| self.run(self.dummy_job())).await?.clone(), false),
        };
        let pw = password.clone();
        let ok = self
            .run(move || {
                let parsed = PasswordHash::new(&target).map_err(|e| format!("stored hash: {e}"))?;
                Ok(Argon2::default().verify_password(pw.expose().as_bytes(), &parsed).is_ok())
            })
            .await?;
        Ok(ok && real)
    }

    /// Whether a stored hash was made with weaker parameters than today's.
    pub fn needs_rehash(&self, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else { return true };
        let Ok(p) = Params::try_from(&parsed) else { return true };
        parsed.algorithm.as_str() != "argon2id"
            || p.m_cost() < self.params.m_cost()
            || p.t_cost() < self.params.t_cost()
            || p.p_cost() < self.params.p_cost()
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<T, crate::Error> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        self.pool
            .tx
            .lock()
            .map_err(|_| crate::Error::Internal("hash pool lock poisoned".into()))?
            .send(job)
            .map_err(|_| crate::Error::Internal("hash pool stopped".into()))?;
        result
            .await
            .map_err(|_| crate::Error::Internal("hash job dropped".into()))?
            .map_err(|e| crate::Error::Internal(e.into()))
    }
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
        assert!(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert!(h.verify(&pw, Some(&phc)).await.unwrap());
        for other in ["tr0ub4dor & 3", "Tr0ub4dor & 3 ", "Tr0ub4dor & "] {
            assert!(!h.verify(&Password::for_login(other.into()).unwrap(), Some(&phc)).await.unwrap());
        }
        assert!(!h.verify(&pw, None).await.unwrap(), "dummy never verifies");
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
            assert_eq!(h.run(policy_of_this_thread).await.unwrap(), SCHED_IDLE);
        }
        assert_eq!(policy_of_this_thread().unwrap(), SCHED_OTHER, "the test's own thread is untouched");
    }
}
