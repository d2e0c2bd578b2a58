//! The domain parsers behind every identifier: no panic on any input, and
//! what they accept is already normalised (parsing it again changes nothing)
//! and free of control characters (nothing that could forge a log line).
#![no_main]

use latchkey_core::domain::{Email, LoginIdentifier, OtpCode, Username};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(e) = Email::parse(s) {
        assert_eq!(Email::parse(e.as_str()).ok().as_ref(), Some(&e), "email not idempotent: {s:?}");
        assert!(!e.as_str().chars().any(char::is_control));
        let _ = e.masked();
    }
    if let Ok(u) = Username::parse(s) {
        assert_eq!(Username::parse(u.as_str()).ok().as_ref(), Some(&u), "username not idempotent: {s:?}");
        assert!(u.as_str().bytes().all(|b| b.is_ascii_graphic()));
    }
    if let Ok(id) = LoginIdentifier::parse(s) {
        assert!(!id.as_key().chars().any(char::is_control));
    }
    if let Ok(c) = OtpCode::parse(s, "code") {
        assert!(c.expose().len() == 6 && c.expose().bytes().all(|b| b.is_ascii_digit()), "{s:?}");
    }
});
