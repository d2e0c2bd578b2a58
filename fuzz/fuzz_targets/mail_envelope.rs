//! Queued mail jobs (SQS bodies, outbox rows) as the worker parses them.
#![no_main]

use latchkey_core::mail::MailEnvelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(env) = MailEnvelope::from_json(s) {
        // What parses round-trips.
        let again = MailEnvelope::from_json(&env.to_json()).expect("round trip");
        assert_eq!(again.to_json(), env.to_json());
    }
});
