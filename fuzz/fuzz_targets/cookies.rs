//! Cookie header parsing for the browser pages: any header bytes give a
//! value of at most 512 bytes or none, never a panic.
#![no_main]

use http::{HeaderMap, HeaderValue, header::COOKIE};
use latchkey_api::pages::cookies::{CSRF, PRE, SESSION, get};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for part in data.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(part) {
            headers.append(COOKIE, v);
        }
    }
    for name in [SESSION, PRE, CSRF] {
        if let Some(v) = get(&headers, name) {
            assert!(!v.is_empty() && v.len() <= 512);
        }
    }
});
