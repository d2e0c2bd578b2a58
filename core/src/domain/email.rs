use unicode_normalization::UnicodeNormalization;

/// An email address, normalised: trimmed, NFC, lower-cased as a whole,
/// its domain in its ASCII form (IDNA, `xn--` labels). Input must also be
/// its own NFKC form (no full-width or other compatibility characters) and
/// ASCII before the `@` (see [`Email::parse`]).
///
/// latchkey treats the local part case-insensitively (as every large mail
/// provider does) so `Bob@Example.com` and `bob@example.com` are one account.
/// Plus-addressing is kept: `bob+x@example.com` is a different address. The
/// syntax check is deliberately plain (one `@`, a non-empty local part of at
/// most 64 bytes, a dotted domain whose labels are host-name labels, no
/// spaces or control characters, 254 bytes in all); the verification mail is
/// the real proof.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    /// An address given as input: the rules of [`Email::parse_stored`], no
    /// Unicode format characters, nothing but ASCII before the `@`, and a
    /// domain that IDNA (UTS #46) maps to a host name, which is kept in its
    /// ASCII form: `a@bücher.de`, `a@BÜCHER.de` and `a@xn--bcher-kva.de` are
    /// one address, `a@xn--bcher-kva.de`. Mail goes out through SES, which
    /// takes only that: no Unicode in a domain (it must be Punycode) and
    /// none before the `@` at all (SMTPUTF8 is not supported), so such an
    /// address could never be sent its link or code.
    pub fn parse(raw: &str) -> Result<Self, crate::Error> {
        let email = Self::parse_stored(raw)?;
        if email.0.chars().any(shows_as_nothing) {
            // Invisible, or reordering what follows (a right-to-left
            // override turns a log line around): never part of a real
            // mailbox's name, and two such addresses would look alike.
            return Err(crate::Error::validation("email", "must not contain invisible formatting characters"));
        }
        if email.0.nfkc().ne(email.0.chars()) {
            // Full-width letters, ligatures, superscripts and the like: a
            // mail system that maps them (IDNA does, for the domain) would
            // deliver `ａlice@ｅｘａｍｐｌｅ.com` to alice@example.com, so
            // accepting them would make a second account for one inbox,
            // outside its mail limits and its taken-address notice.
            return Err(crate::Error::validation(
                "email",
                "must be written with ordinary characters (not full-width or other compatibility forms)",
            ));
        }
        let local = email.0.rsplit_once('@').map_or("", |(l, _)| l);
        if !local.is_ascii() {
            return Err(crate::Error::validation(
                "email",
                "must be plain ASCII before the @ (mail cannot be delivered to other mailbox names)",
            ));
        }
        // Mail is routed to a host name, whose labels are letters, digits
        // and inner hyphens (RFC 1123), in any script through IDNA.
        // `x@example.com%40evil.com` or `x@-example.com` reach no mailbox
        // and only confuse whoever reads the address.
        let not_a_host = || crate::Error::validation("email", "has a domain that is not a valid host name");
        let ascii = Self::ascii_domain_form(&email.0).ok_or_else(not_a_host)?;
        let domain = ascii.rsplit_once('@').map_or("", |(_, d)| d);
        if !domain.split('.').all(is_host_label) {
            return Err(not_a_host());
        }
        // The ASCII form is longer than the Unicode one: held to the same
        // limits.
        Self::parse_stored(&ascii)
    }

    /// `address` with its domain mapped by IDNA (UTS #46, non-transitional:
    /// lower case, Punycode for other scripts, `xn--` labels checked), with
    /// ASCII limited to letters, digits and hyphens (STD3), no hyphen at
    /// either end of a label, and the length limits of DNS; the local part
    /// is left as it is. `None` if the domain does not map. What input is
    /// kept as, and what a migration brings stored addresses to.
    pub fn ascii_domain_form(address: &str) -> Option<String> {
        use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
        let (local, domain) = address.rsplit_once('@')?;
        let ascii = Uts46::new()
            .to_ascii(domain.as_bytes(), AsciiDenyList::STD3, Hyphens::CheckFirstLast, DnsLength::Verify)
            .ok()?;
        Some(format!("{local}@{ascii}"))
    }

    /// An address as stored (read back from a store, a queued mail job):
    /// the rules every stored address was held to. Format characters were
    /// accepted before they were refused at input, and the accounts stored
    /// with them must still read.
    pub fn parse_stored(raw: &str) -> Result<Self, crate::Error> {
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

    /// The mailbox the address delivers to, as the limits on mail to any
    /// address count it: the local part's `+tag` dropped (`bob+x@example.com`
    /// and `bob@example.com` reach one inbox at the providers that support
    /// tags), and at Gmail its dots too, with `googlemail.com` as
    /// `gmail.com` (Gmail ignores them), so aliases do not multiply the mail
    /// one inbox can be sent.
    pub fn mailbox_key(&self) -> String {
        let Some((local, domain)) = self.0.split_once('@') else { return self.0.clone() };
        let base = match local.split_once('+') {
            Some((base, _)) if !base.is_empty() => base,
            _ => local,
        };
        match domain {
            "gmail.com" | "googlemail.com" => {
                let undotted: String = base.chars().filter(|c| *c != '.').collect();
                if undotted.is_empty() { self.0.clone() } else { format!("{undotted}@gmail.com") }
            }
            _ => format!("{base}@{domain}"),
        }
    }

    /// The address with most of the local part hidden, for logs.
    pub fn masked(&self) -> String {
        match self.0.split_once('@') {
            Some((l, d)) => format!("{}@{d}", mask_local_part(l)),
            None => "***".into(),
        }
    }
}

/// A local part as logs show it: its first character, then `***`.
pub fn mask_local_part(local: &str) -> String {
    format!("{}***", local.chars().next().unwrap_or('*'))
}

/// One label of a host name in its ASCII form: 1-63 bytes of letters,
/// digits and hyphens, not at either end.
fn is_host_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Characters that show as nothing: Unicode's format characters (general
/// category Cf), the other default-ignorable code points (variation
/// selectors, the combining grapheme joiner, Hangul fillers, ...), the
/// private-use planes and the blank braille pattern (Unicode 15). They
/// render invisibly or change how the text around them is shown.
fn shows_as_nothing(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x2800
            | 0x3164
            | 0xE000..=0xF8FF
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
            | 0xF0000..=0xFFFFF
            | 0x100000..=0x10FFFF
    )
}

/// Deserialising reads a stored address ([`Email::parse_stored`]); input
/// goes through [`Email::parse`].
impl TryFrom<String> for Email {
    type Error = crate::Error;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Email::parse_stored(&s)
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
        assert_eq!(Email::parse("Bob@Exämple.DE").unwrap().as_str(), "bob@xn--exmple-cua.de");
    }

    /// A domain in any script is one address with its ASCII form, which is
    /// what is kept (and what SES takes); `xn--` labels are checked.
    #[test]
    fn domains_are_kept_in_their_ascii_form() {
        for same in ["a@bücher.de", "A@BÜCHER.DE", "a@bu\u{308}cher.de", "a@xn--bcher-kva.de", "a@XN--BCHER-KVA.de"] {
            assert_eq!(Email::parse(same).expect(same).as_str(), "a@xn--bcher-kva.de", "{same:?}");
        }
        assert_eq!(Email::parse("x@例え.テスト").unwrap().as_str(), "x@xn--r8jz45g.xn--zckzah");
        assert_eq!(Email::parse("x@παράδειγμα.gr").unwrap().as_str(), "x@xn--hxajbheg2az3al.gr");
        // Not a valid A-label, or not one IDNA allows: no host name.
        for bad in ["a@xn--a.com", "a@xn--bcher-kva-.de", "a@xn--ls8h.la\u{200D}.com", "a@b\u{FFFD}cher.de"] {
            let e = Email::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("host name") || e.to_string().contains("invisible"), "{bad:?}: {e}");
        }
        // The ASCII form is held to the length limits: 63 bytes a label.
        let long = format!("a@{}.de", "ü".repeat(60));
        assert!(Email::parse(&long).expect_err("too long a label").to_string().contains("host name"));
        assert_eq!(Email::ascii_domain_form("ünï@exämple.de").as_deref(), Some("ünï@xn--exmple-cua.de"));
        assert_eq!(Email::ascii_domain_form("a@exa_mple.com"), None);
    }

    /// SES takes nothing but ASCII before the `@`: such an address could
    /// never be sent its link or code, so it is refused with the reason.
    #[test]
    fn local_parts_are_ascii() {
        for bad in ["Ünïcode@example.de", "zoë@example.com", "用户@example.cn", "οδος@x.gr"] {
            let e = Email::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("plain ASCII before the @"), "{bad:?}: {e}");
        }
        // Stored before the rule: still reads.
        assert_eq!(Email::parse_stored("Ünïcode@exämple.de").unwrap().as_str(), "ünïcode@exämple.de");
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
            "bidi\u{202E}evil@example.com",
            "zw\u{200D}@example.com",
            "bom\u{FEFF}@example.com",
            "wj\u{2060}x@example.com",
            "tag\u{E0041}@example.com",
            "lrm@exam\u{200E}ple.com",
            "normtest@example.com\u{200B}",
            "soft\u{AD}hyphen@example.com",
            "cgj\u{34F}@example.com",
            "hangul\u{3164}@example.com",
            "braille\u{2800}@example.com",
            "vs\u{FE0F}@example.com",
            "vs\u{E0100}@example.com",
            "pua\u{E000}@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// An address stored before format characters were refused still
    /// reads back (a store decodes through `TryFrom`), but is not input.
    #[test]
    fn stored_addresses_with_format_characters_still_read() {
        let stored = "soft\u{AD}hyphen@example.com";
        assert!(Email::parse(stored).is_err());
        let e = Email::try_from(stored.to_string()).expect("a stored address reads");
        assert_eq!(e.as_str(), stored);
        assert!(Email::try_from("bob@x.com\r\nBcc: e@x.com".to_string()).is_err(), "the other rules hold");
    }

    /// Compatibility forms would reach the plain address's inbox through a
    /// mail system that maps them: refused at input, read when stored.
    #[test]
    fn compatibility_characters_are_not_input() {
        for bad in [
            "alice@\u{FF45}\u{FF58}\u{FF41}\u{FF4D}\u{FF50}\u{FF4C}\u{FF45}.com",
            "\u{FF41}lice@example.com",
            "\u{FB01}nn@example.com",
            "x\u{00B2}@example.com",
            "long\u{017F}@example.com",
        ] {
            let e = Email::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("compatibility"), "{bad:?}: {e}");
            assert!(Email::parse_stored(bad).is_ok(), "{bad:?} stored before the rule no longer reads");
        }
        assert!(Email::parse("unicode@exämple.de").is_ok(), "composed letters are ordinary");
    }

    #[test]
    fn input_domains_are_host_names() {
        for ok in [
            "a@example.com",
            "a@mail-1.example.co.uk",
            "a@bücher.de",
            "a@xn--bcher-kva.de",
            "a@1.2.3.com",
            "a@ab--cd.com",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "x@example.com%40evil.com",
            "x@-example.com",
            "x@example-.com",
            "x@exa_mple.com",
            "x@exa!mple.com",
            "x@example.c*m",
            &format!("x@{}.com", "a".repeat(64)),
        ] {
            let e = Email::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("host name") || e.to_string().contains("valid"), "{bad:?}: {e}");
        }
        // Stored before the rule: still reads.
        assert!(Email::parse_stored("x@exa_mple.com").is_ok());
    }

    #[test]
    fn tags_share_their_mailbox_key() {
        let key = |raw: &str| Email::parse(raw).unwrap().mailbox_key();
        assert_eq!(key("bob+0@example.com"), "bob@example.com");
        assert_eq!(key("Bob+a+b@Example.com"), "bob@example.com");
        assert_eq!(key("bob@example.com"), "bob@example.com");
        // A local part that is all tag keeps its own key.
        assert_eq!(key("+x@example.com"), "+x@example.com");
        // Gmail ignores dots, and googlemail.com is gmail.com.
        assert_eq!(key("g.m.box+a@googlemail.com"), "gmbox@gmail.com");
        assert_eq!(key("gm.box@gmail.com"), "gmbox@gmail.com");
        // Elsewhere a dot is part of the name.
        assert_eq!(key("v.ic@example.com"), "v.ic@example.com");
    }

    #[test]
    fn idempotent() {
        let e = Email::parse("MiXeD+Tag@Example.org").unwrap();
        assert_eq!(Email::parse(e.as_str()).unwrap(), e);
    }
}
