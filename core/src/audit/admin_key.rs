//! The admin credential: a bearer key of which only the SHA-256 is
//! configured, compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured SHA-256 of the admin bearer key.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminKeyHash([u8; 32]);

impl std::fmt::Debug for AdminKeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKeyHash([redacted])")
    }
}

impl AdminKeyHash {
    /// From 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s.trim()).ok()?;
        Some(AdminKeyHash(bytes.try_into().ok()?))
    }

    /// The hash of `key` (for setting one up, and tests).
    pub fn of_key(key: &str) -> Self {
        AdminKeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Shortest admin key that can match. Admin requests are limited per
    /// client (`RateLimits::admin_ip`), which many addresses get around;
    /// the key's length is what makes online guessing hopeless (generate it
    /// with `openssl rand -base64 32`: 44 characters).
    pub const MIN_KEY_CHARS: usize = 24;

    /// Whether `presented` is the admin key. The hashes are compared in
    /// constant time; a key shorter than `MIN_KEY_CHARS` never matches.
    pub fn matches(&self, presented: &str) -> bool {
        if presented.chars().count() < Self::MIN_KEY_CHARS {
            return false;
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(digest.ct_eq(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_key() {
        let key = "s3cret-admin-key-0123456789";
        let h = AdminKeyHash::from_hex(&hex::encode(Sha256::digest(key.as_bytes()))).unwrap();
        assert_eq!(h, AdminKeyHash::of_key(key));
        assert!(h.matches(key));
        assert!(!h.matches("s3cret-admin-key-0123456788"));
        assert!(!h.matches(""));
        // A key too short to resist guessing never matches, even if it is
        // the configured one.
        let short = "s3cret-admin-key";
        assert!(!AdminKeyHash::of_key(short).matches(short));
        assert!(AdminKeyHash::from_hex("abcd").is_none());
        assert!(AdminKeyHash::from_hex(&"zz".repeat(32)).is_none());
    }
}
