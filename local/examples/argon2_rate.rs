//! Raw argon2id verify rate at the configured parameters (the physical limit
//! of password logins on this machine), on `--threads` OS threads for
//! `--secs` seconds. Prints one line; asserts nothing. Used by `bench/run`.
//!   cargo run --release -p latchkey-local --example argon2_rate -- --threads 2 --secs 3

use argon2::password_hash::{PasswordHasher as _, SaltString};
use argon2::{Algorithm, Argon2, AssociatedData, ParamsBuilder, Version};
use latchkey_core::password_hasher::{Memory, NFKC_MARK, verify_in};
use std::time::{Duration, Instant};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads = arg("--threads", 1).max(1) as usize;
    let secs = arg("--secs", 3);
    // The runner's parameters: LATCHKEY_ARGON2_M_KIB / _T / _P, defaults 19456 / 2 / 1.
    let (m, t, p) =
        (env_u32("LATCHKEY_ARGON2_M_KIB", 19456), env_u32("LATCHKEY_ARGON2_T", 2), env_u32("LATCHKEY_ARGON2_P", 1));
    // With the service's mark: its hashes are of the password's NFKC form.
    let mark = AssociatedData::new(NFKC_MARK).map_err(|e| e.to_string())?;
    let params = ParamsBuilder::new().m_cost(m).t_cost(t).p_cost(p).data(mark).build().map_err(|e| e.to_string())?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let salt = SaltString::encode_b64(b"latchkey-bench-salt").map_err(|e| e.to_string())?;
    let phc = argon.hash_password(b"correct horse battery staple", &salt).map_err(|e| e.to_string())?.to_string();
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let phc = phc.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                // Verify the way the service's hash pool does: parse the
                // stored PHC string, take the parameters from it, hash in
                // memory this thread keeps.
                let mut memory = Memory::default();
                while Instant::now() < until {
                    if verify_in(&mut memory, "correct horse battery staple", &phc)? {
                        n += 1;
                    }
                }
                Ok::<u64, String>(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| "a hashing thread panicked")??;
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "argon2id m={m} t={t} p={p} threads={threads} verifies={total} secs={took:.2} rate={:.2}",
        total as f64 / took
    );
    Ok(())
}
