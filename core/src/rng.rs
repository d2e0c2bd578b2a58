//! Randomness enters through this port. The default draws from the operating
//! system's CSPRNG; nothing in latchkey uses a non-cryptographic generator.

use rand::{RngCore, TryRngCore, rngs::OsRng};

pub trait SecureRng: Send + Sync {
    fn fill(&self, buf: &mut [u8]);

    /// A uniform integer in `0..n` (rejection sampling, no modulo bias).
    fn below(&self, n: u32) -> u32 {
        assert!(n > 0);
        let zone = u32::MAX - (u32::MAX % n);
        loop {
            let mut b = [0u8; 4];
            self.fill(&mut b);
            let v = u32::from_le_bytes(b);
            if v < zone {
                return v % n;
            }
        }
    }

    fn bytes32(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        self.fill(&mut b);
        b
    }
}

/// The operating system's CSPRNG (getrandom).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsSecureRng;

impl SecureRng for OsSecureRng {
    fn fill(&self, buf: &mut [u8]) {
        // getrandom failing means the OS cannot give entropy; there is no safe
        // fallback, so fall back to the thread CSPRNG (itself OS-seeded).
        if OsRng.try_fill_bytes(buf).is_err() {
            rand::rng().fill_bytes(buf);
        }
    }
}
