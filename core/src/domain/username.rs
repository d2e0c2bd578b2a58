use unicode_normalization::UnicodeNormalization;

/// A username, normalised: NFKC, lower case, trimmed.
///
/// Rules: 3 to 32 characters from `a-z`, `0-9`, `.`, `_`, `-`, starting and
/// ending with a letter or digit, and containing no `@` (so it can never be
/// mistaken for an email at login). `Alice` and `alice` are the same user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

impl Username {
    pub const MIN: usize = 3;
    pub const MAX: usize = 32;

    pub fn parse(raw: &str) -> Result<Self, crate::Error> {
        let err = |r: &str| crate::Error::validation("username", r);
        if raw.len() > 256 {
            return Err(err("must be at most 32 characters"));
        }
        let s: String = raw.trim().nfkc().collect::<String>().to_lowercase();
        let n = s.chars().count();
        if !(Self::MIN..=Self::MAX).contains(&n) {
            return Err(err("must be 3 to 32 characters"));
        }
        if !s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')) {
            return Err(err("may contain only letters a-z, digits, '.', '_' and '-'"));
        }
        let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        if !edge_ok(s.chars().next()) || !edge_ok(s.chars().last()) {
            return Err(err("must start and end with a letter or digit"));
        }
        Ok(Username(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Username {
    type Error = crate::Error;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Username::parse(&s)
    }
}

impl From<Username> for String {
    fn from(u: Username) -> String {
        u.0
    }
}

impl std::fmt::Display for Username {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_width() {
        assert_eq!(Username::parse(" Alice ").unwrap().as_str(), "alice");
        assert_eq!(Username::parse("ＡＬＩＣＥ").unwrap().as_str(), "alice");
    }

    #[test]
    fn rejects_bad_shapes() {
        for bad in ["ab", "a".repeat(33).as_str(), "al ice", "al@ice", "-alice", "alice.", "al\r\nice", "ali\u{0}ce"] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn normalisation_is_idempotent() {
        let once = Username::parse("Bob.Smith_1").unwrap();
        assert_eq!(Username::parse(once.as_str()).unwrap(), once);
    }
}
