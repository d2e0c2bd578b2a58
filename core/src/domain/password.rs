use super::Secret;
use std::borrow::Cow;

/// A candidate password, exactly as typed: no trimming, no case folding, no
/// truncation (ASVS 6.2.8). It is checked and hashed in NFKC form
/// ([`nfkc`], `password_hasher::NFKC_MARK`), so the same characters typed
/// on two keyboards are one password. `Debug` is redacted.
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

    /// Checks a new password against the policy, in the form it is hashed
    /// in (NFKC, [`nfkc`]): `ＡＬＩＣＥ` is `alice` there, as the username
    /// itself was folded. Its length is counted in code points both as
    /// typed and in that form, and must be within the limits in both (a
    /// ligature such as `ﷺ` is one code point typed and 18 in NFKC; `é`
    /// typed as `e` and a combining accent is two typed and one in NFKC).
    /// `context` holds the username and email, which the password must not
    /// be built from. The password is kept as typed.
    pub fn new_checked(raw: String, policy: &PasswordPolicy, context: &[&str]) -> Result<Self, crate::Error> {
        let err = |r: String| crate::Error::Validation { field: "password", reason: r };
        if raw.len() > Self::MAX_FIELD_BYTES {
            return Err(err("must be at most 1024 bytes".into()));
        }
        let form = nfkc(&raw);
        let (typed, normal) = (raw.chars().count(), form.chars().count());
        if typed.min(normal) < policy.min_chars {
            return Err(err(format!("must be at least {} characters", policy.min_chars)));
        }
        if typed.max(normal) > Self::MAX_CHARS {
            return Err(err(format!("must be at most {} characters", Self::MAX_CHARS)));
        }
        // Also as typed: a combining mark after a name joins its last
        // letter in NFKC (`alice` and U+0301 is `alicé`).
        let (lower, folded) = (raw.to_lowercase(), form.to_lowercase());
        for c in context.iter().filter(|c| c.chars().count() >= 3) {
            if lower.contains(&c.to_lowercase()) || folded.contains(&nfkc(c).to_lowercase()) {
                return Err(err("must not contain your username or email address".into()));
            }
        }
        let estimate = zxcvbn::zxcvbn(&form, context);
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

/// `s` in NFKC form (borrowed when it already is, as ASCII always is): the
/// form passwords are hashed and checked in (`password_hasher::NFKC_MARK`).
pub fn nfkc(s: &str) -> Cow<'_, str> {
    use unicode_normalization::{IsNormalized, UnicodeNormalization as _, is_nfkc_quick};
    match is_nfkc_quick(s.chars()) {
        IsNormalized::Yes => Cow::Borrowed(s),
        IsNormalized::No | IsNormalized::Maybe => Cow::Owned(s.nfkc().collect()),
    }
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
    fn the_rules_apply_to_the_form_that_is_hashed() {
        let reason = |p: &str| match check(p) {
            Err(crate::Error::Validation { reason, .. }) => reason,
            other => panic!("{p:?}: {other:?}"),
        };
        // Twelve code points typed, six in NFKC (`e` and a combining
        // accent is one `é`): too short. The same six precomposed twice
        // over: long enough in both.
        assert!(reason(&"e\u{301}".repeat(6)).contains("at least 12"));
        assert!(check("x\u{e9}ke\u{301}lo\u{301} brisa\u{301}nte vuela").is_ok());
        // 13 code points typed, 234 in NFKC: too long, as 129 typed are.
        assert!(reason(&"\u{fdfa}".repeat(13)).contains("at most 128"));
        // Judged as hashed: full-width `password1234` is `password1234`.
        assert!(
            reason("\u{ff50}\u{ff41}\u{ff53}\u{ff53}\u{ff57}\u{ff4f}\u{ff52}\u{ff44}\u{ff11}\u{ff12}\u{ff13}\u{ff14}")
                .contains("too weak")
        );
        // The name as typed, its last letter joined by a combining accent.
        assert!(reason("alice\u{301} plays banjo under violet thunderclouds").contains("username"));
        // Kept as typed: the hash normalises it.
        let typed = "Cafe\u{301} crie sous les nuages violets";
        assert_eq!(check(typed).unwrap().expose(), typed);
        assert_eq!(nfkc("plain ascii"), std::borrow::Cow::Borrowed("plain ascii"));
        assert_eq!(nfkc("\u{fb01}"), "fi");
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
