use super::Secret;

/// A candidate password, exactly as typed: no trimming, no case folding, no
/// truncation (ASVS 6.2.8). `Debug` is redacted.
#[derive(Clone)]
pub struct Password(Secret<String>);

/// The password rules (SECURITY.md "Passwords").
#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    /// Minimum length in code points (8..=64, default 12).
    pub min_chars: usize,
    /// Minimum zxcvbn score, 0..=4 (default 3).
    pub min_score: u8,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy { min_chars: 12, min_score: 3 }
    }
}

impl Password {
    /// Longest accepted password, in code points.
    pub const MAX_CHARS: usize = 128;
    /// A password field longer than this (in bytes) is refused before any
    /// other work, hashing included.
    pub const MAX_FIELD_BYTES: usize = 1024;

    /// Wraps what the user typed for a login attempt: only the size guard.
    pub fn for_login(raw: String) -> Result<Self, crate::Error> {
        if raw.len() > Self::MAX_FIELD_BYTES {
            return Err(crate::Error::validation("password", "must be at most 1024 bytes"));
        }
        if raw.is_empty() {
            return Err(crate::Error::validation("password", "must not be empty"));
        }
        Ok(Password(Secret::new(raw)))
    }

    /// Checks a new password against the policy. `context` holds the
    /// username and email, which the password must not be built from.
    pub fn new_checked(raw: String, policy: &PasswordPolicy, context: &[&str]) -> Result<Self, crate::Error> {
        let err = |r: String| crate::Error::Validation { field: "password", reason: r };
        if raw.len() > Self::MAX_FIELD_BYTES {
            return Err(err("must be at most 1024 bytes".into()));
        }
        let n = raw.chars().count();
        if n < policy.min_chars {
            return Err(err(format!("must be at least {} characters", policy.min_chars)));
        }
        if n > Self::MAX_CHARS {
            return Err(err(format!("must be at most {} characters", Self::MAX_CHARS)));
        }
        // Compared as typed and in compatibility form too (only for this
        // check; the password stays as typed): `ＡＬＩＣＥ` is `alice`, as
        // the username itself was folded.
        let (lower, folded) = (raw.to_lowercase(), fold(&raw));
        for c in context.iter().filter(|c| c.chars().count() >= 3) {
            if lower.contains(&c.to_lowercase()) || folded.contains(&fold(c)) {
                return Err(err("must not contain your username or email address".into()));
            }
        }
        let estimate = zxcvbn::zxcvbn(&raw, context);
        let score = estimate.score() as u8;
        if score < policy.min_score {
            let hint = estimate
                .feedback()
                .and_then(|f| f.warning().map(|w| w.to_string()))
                .unwrap_or_else(|| "it is too easy to guess".into());
            return Err(err(format!("is too weak ({hint}); try a longer passphrase of unrelated words")));
        }
        Ok(Password(Secret::new(raw)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

/// NFKC, lower-cased: the form usernames are kept in.
fn fold(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    s.nfkc().collect::<String>().to_lowercase()
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(p: &str) -> Result<Password, crate::Error> {
        Password::new_checked(p.into(), &PasswordPolicy::default(), &["alice", "alice@example.com"])
    }

    #[test]
    fn accepts_a_passphrase() {
        assert!(check("correct horse battery staple").is_ok());
    }

    #[test]
    fn refuses_short_common_and_personal() {
        assert!(check("Sh0rt!").is_err());
        assert!(check("password1234").is_err());
        assert!(check("alice-is-my-name-2024").is_err());
        // The username or address in full-width letters, which fold to
        // them, in passphrases strong enough otherwise.
        let personal =
            |p: &str| matches!(check(p), Err(crate::Error::Validation { reason, .. }) if reason.contains("username"));
        assert!(check("Alyce plays banjo under violet thunderclouds").is_ok());
        assert!(personal("ＡＬＩＣＥ plays banjo under violet thunderclouds"));
        assert!(personal("banjo under violet thunderclouds ａｌｉｃｅ＠ｅｘａｍｐｌｅ．ｃｏｍ"));
        assert!(check(&"x".repeat(129)).is_err());
        assert!(check(&"é".repeat(600)).is_err());
    }

    #[test]
    fn reason_names_the_rule() {
        match check("short") {
            Err(crate::Error::Validation { field, reason }) => {
                assert_eq!(field, "password");
                assert!(reason.contains("at least 12"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
