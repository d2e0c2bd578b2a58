//! Property tests (proptest): normalisation of emails and usernames is
//! idempotent and case-blind as the README documents, and a password
//! verifies only for exactly what was typed.

use latchkey_core::domain::{Email, Password, Username, nfkc};
use latchkey_core::password_hasher::{Argon2Settings, PasswordHasher};
use latchkey_core::rng::OsSecureRng;
use proptest::prelude::*;
use unicode_normalization::UnicodeNormalization as _;

/// Addresses `Email::parse` must accept: an ASCII local part (letters in
/// mixed case, digits, `+ _ -`, and dots between them, never at either end
/// or doubled), a domain of host-name labels (a few non-ASCII letters in
/// mixed case, composed and decomposed; hyphens inside only), stray outer
/// spaces.
fn emailish() -> impl Strategy<Value = String> {
    // A label of ASCII letters and digits, or one with é in three forms
    // (NFC, upper case, decomposed) among them; hyphens inside only.
    let label = |ch: &str| {
        proptest::string::string_regex(&format!("{ch}({ch}|-){{0,10}}{ch}|{ch}"))
            .expect("a regex")
            // An `xn--` label is Punycode, checked as such: not a plain label.
            .prop_filter("not an A-label", |l| !l.to_ascii_lowercase().starts_with("xn--"))
    };
    let label = prop_oneof![2 => label("[a-zA-Z0-9]"), 1 => label("([a-zA-Z0-9]|[\u{e9}\u{c9}]|e\u{301})")];
    (
        " {0,2}",
        "[a-zA-Z0-9+_-]{1,10}(\\.[a-zA-Z0-9+_-]{1,10}){0,2}",
        proptest::collection::vec(label, 1..=2),
        "[a-zA-Z]{2,6}",
        " {0,2}",
    )
        .prop_map(|(lead, local, labels, tld, trail)| format!("{lead}{local}@{}.{tld}{trail}", labels.join(".")))
}

/// Address-like strings the parser may refuse: non-ASCII letters before
/// the `@` (composed and decomposed), edge and doubled dots, hyphens at a
/// label's ends.
fn looser_emailish() -> impl Strategy<Value = String> {
    " {0,2}[a-zA-Z0-9+._\u{e9}\u{c9}\u{301}\u{c5}\u{df}\u{130}\u{3a3}\u{1e9e}-]{1,24}@[a-zA-Z0-9\u{e9}-]{1,12}\\.[a-zA-Z]{2,6} {0,2}"
}

fn usernameish() -> impl Strategy<Value = String> {
    " ?[a-zA-Z0-9._\u{ff21}-\u{ff3a}\u{ff10}-\u{ff19}\u{2160}\u{fb01}-]{1,34} ?"
}

/// Usernames `Username::parse` must accept: 3 to 32 of letters, digits
/// and `. _ -`, a letter or digit at either end.
fn valid_username() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9._-]{1,30}[a-zA-Z0-9]"
}

/// Full-width forms of ASCII letters and digits (NFKC folds them back).
fn fullwidth(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap_or(c) } else { c })
        .collect()
}

/// An input, and whether the parser must accept it (arbitrary strings may
/// legitimately be refused; the generators of valid input must not be).
fn valid_or_any(
    valid: impl Strategy<Value = String>,
    other: impl Strategy<Value = String>,
) -> impl Strategy<Value = (bool, String)> {
    prop_oneof![valid.prop_map(|s| (true, s)), other.prop_map(|s| (false, s)), any::<String>().prop_map(|s| (false, s))]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn email_normalisation_is_idempotent((must_parse, raw) in valid_or_any(emailish(), looser_emailish())) {
        let parsed = Email::parse(&raw);
        prop_assert!(parsed.is_ok() || !must_parse, "{:?} refused: {:?}", raw, parsed);
        // Anything else it accepts is held to the same properties.
        if let Ok(e) = parsed {
            let again = Email::parse(e.as_str());
            prop_assert_eq!(again.as_ref().ok(), Some(&e), "{:?} -> {:?} -> {:?}", raw, e.as_str(), again);
            prop_assert!(!e.as_str().chars().any(|c| c.is_control() || c.is_whitespace()));
            prop_assert_eq!(e.as_str(), e.as_str().trim());
            prop_assert!(e.as_str().is_ascii(), "kept in ASCII form: {:?}", e.as_str());
        }
    }

    #[test]
    fn email_case_and_outer_space_do_not_matter(raw in emailish()) {
        let e = Email::parse(&raw);
        prop_assert!(e.is_ok(), "{:?} refused: {:?}", raw, e);
        let e = e.unwrap();
        for shouted in [format!("  {}\t", raw.to_ascii_uppercase()), raw.to_uppercase(), raw.to_lowercase()] {
            prop_assert_eq!(Email::parse(&shouted).ok(), Some(e.clone()), "{:?} vs {:?}", shouted, raw);
        }
        // Plus-addressing is kept: the tag is part of the address.
        let (local, domain) = e.as_str().split_once('@').expect("an @");
        let tagged = Email::parse(&format!("{local}+tag@{domain}"));
        prop_assert!(tagged.is_ok(), "{:?}", tagged);
        prop_assert_ne!(tagged.unwrap(), e);
    }

    #[test]
    fn username_normalisation_is_idempotent((must_parse, raw) in valid_or_any(valid_username(), usernameish())) {
        let parsed = Username::parse(&raw);
        prop_assert!(parsed.is_ok() || !must_parse, "{:?} refused: {:?}", raw, parsed);
        // Anything else it accepts is held to the same properties.
        if let Ok(u) = parsed {
            prop_assert_eq!(Username::parse(u.as_str()).ok(), Some(u.clone()), "{:?}", raw);
            prop_assert!(u.as_str().chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c)));
            prop_assert!((Username::MIN..=Username::MAX).contains(&u.as_str().len()));
        }
    }

    #[test]
    fn username_case_and_width_do_not_matter(raw in valid_username()) {
        let u = Username::parse(&raw);
        prop_assert!(u.is_ok(), "{:?} refused: {:?}", raw, u);
        let u = u.unwrap();
        prop_assert_eq!(u.as_str(), raw.to_ascii_lowercase());
        for variant in [raw.to_ascii_uppercase(), fullwidth(&raw), fullwidth(&raw.to_ascii_uppercase()), format!(" {raw} ")] {
            prop_assert_eq!(Username::parse(&variant).ok(), Some(u.clone()), "{:?} vs {:?}", variant, raw);
        }
    }
}

/// One hash per case is the cost here: cheap argon2 parameters, few cases.
fn hasher() -> PasswordHasher {
    PasswordHasher::new(Argon2Settings { m_kib: 1024, t: 1, p: 1 }, 2, &OsSecureRng).expect("hasher")
}

fn near_misses(p: &str) -> Vec<String> {
    let mut v = vec![
        p.to_uppercase(),
        p.to_lowercase(),
        format!("{p} "),
        format!(" {p}"),
        format!("{p}\0"),
        p.chars().take(p.chars().count().saturating_sub(1)).collect(),
        p.chars().skip(1).collect(),
        p.chars().rev().collect(),
        format!("{p}{p}"),
    ];
    // Truncation at 72 bytes (bcrypt's limit) must not make a longer
    // password equal to its prefix.
    if p.len() > 72 {
        v.push(
            p.chars()
                .scan(0, |n, c| {
                    (*n + c.len_utf8() <= 72).then(|| {
                        *n += c.len_utf8();
                        c
                    })
                })
                .collect(),
        );
    }
    // A near miss is another password only if it is another in the form
    // passwords are hashed in.
    v.retain(|q| nfkc(q) != nfkc(p));
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn a_password_verifies_only_for_itself(
        pw in "[ -~\u{e9}\u{301}\u{df}\u{1f511}]{1,100}",
        other in "[ -~]{0,40}",
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let h = hasher();
            let p = Password::for_login(pw.clone()).expect("login-sized password");
            let phc = h.hash(&p, &OsSecureRng).await.expect("hash");
            prop_assert!(!phc.contains(&pw) || pw.len() < 4, "the hash contains the password");
            prop_assert!(h.verify(&p, Some(&phc)).await.expect("verify"));
            // The same characters composed or decomposed are the same
            // password (it is hashed in NFKC form).
            for same in [pw.nfc().collect::<String>(), pw.nfd().collect::<String>()] {
                let same_pw = Password::for_login(same.clone()).expect("login-sized password");
                prop_assert!(h.verify(&same_pw, Some(&phc)).await.expect("verify"), "{:?} not as {:?}", same, pw);
            }
            let mut misses = near_misses(&pw);
            if other != pw {
                misses.push(other.clone());
            }
            for q in misses {
                let Ok(q_pw) = Password::for_login(q.clone()) else { continue };
                prop_assert!(!h.verify(&q_pw, Some(&phc)).await.expect("verify"), "{:?} verified as {:?}", q, pw);
            }
            // No stored hash (unknown user): never a match.
            prop_assert!(!h.verify(&p, None).await.expect("verify"));
            Ok(())
        })?;
    }
}
