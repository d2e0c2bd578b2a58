use unicode_normalization::UnicodeNormalization;

/// An email address, normalised: trimmed, NFC, lower-cased as a whole.
///
/// latchkey treats the local part case-insensitively (as every large mail
/// provider does) so `Bob@Example.com` and `bob@example.com` are one account.
/// Plus-addressing is kept: `bob+x@example.com` is a different address. The
/// syntax check is deliberately plain (one `@`, a non-empty local part of at
/// most 64 bytes, a dotted domain, no spaces or control characters, 254 bytes
/// in all); the verification mail is the real proof.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, crate::Error> {
        let err = |r: &str| crate::Error::validation("email", r);
        if raw.len() > 1024 {
            return Err(err("is too long"));
        }
        let s: String = raw.trim().nfc().collect::<String>().to_lowercase();
        if s.len() > 254 {
            return Err(err("is too long"));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(err("must not contain spaces or control characters"));
        }
        let Some((local, domain)) = s.split_once('@') else {
            return Err(err("is not a valid email address"));
        };
        if local.is_empty() || local.len() > 64 || domain.contains('@') {
            return Err(err("is not a valid email address"));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(err("is not a valid email address"));
        }
        if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
            return Err(err("is not a valid email address"));
        }
        if domain.chars().any(|c| matches!(c, '<' | '>' | '(' | ')' | '[' | ']' | ',' | ';' | ':' | '\\' | '"')) {
            return Err(err("is not a valid email address"));
        }
        if local.chars().any(|c| matches!(c, '<' | '>' | '(' | ')' | '[' | ']' | ',' | ';' | ':' | '\\' | '"')) {
            return Err(err("is not a valid email address"));
        }
        Ok(Email(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address with most of the local part hidden, for logs.
    pub fn masked(&self) -> String {
        match self.0.split_once('@') {
            Some((l, d)) => format!("{}***@{d}", l.chars().next().unwrap_or('*')),
            None => "***".into(),
        }
    }
}

impl TryFrom<String> for Email {
    type Error = crate::Error;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Email::parse(&s)
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(Email::parse("  Bob@Example.COM ").unwrap().as_str(), "bob@example.com");
        assert_eq!(Email::parse("bob+tag@example.com").unwrap().as_str(), "bob+tag@example.com");
        assert_eq!(Email::parse("Ünïcode@exämple.de").unwrap().as_str(), "ünïcode@exämple.de");
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "bob",
            "bob@",
            "@x.com",
            "bob@localhost",
            "a@b@c.com",
            "bo b@x.com",
            "bob@x.com\r\nBcc: e@x.com",
            "bob..x@x.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn idempotent() {
        let e = Email::parse("MiXeD+Tag@Example.org").unwrap();
        assert_eq!(Email::parse(e.as_str()).unwrap(), e);
    }
}
