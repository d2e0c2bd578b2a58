//! Every request DTO of routes::auth (the JSON bodies of /v1/*), and any
//! JSON value: any bytes give Ok or a 400/413-style ApiError, never a panic
//! (deep nesting, invalid UTF-8, huge numbers, duplicate keys).
#![no_main]

use latchkey_api::extract::parse_json;
use latchkey_api::routes::auth::{
    ChallengeReq, CodeReq, CurrentPasswordReq, EmailChangeReq, EmailReq, LoginReq, PasswordReq, RefreshReq,
    RegisterReq, ResetReq, TokenReq,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_json::<RegisterReq>(data);
    let _ = parse_json::<LoginReq>(data);
    let _ = parse_json::<CodeReq>(data);
    let _ = parse_json::<ChallengeReq>(data);
    let _ = parse_json::<RefreshReq>(data);
    let _ = parse_json::<TokenReq>(data);
    let _ = parse_json::<EmailReq>(data);
    let _ = parse_json::<PasswordReq>(data);
    let _ = parse_json::<CurrentPasswordReq>(data);
    let _ = parse_json::<ResetReq>(data);
    let _ = parse_json::<EmailChangeReq>(data);
    let _ = parse_json::<serde_json::Value>(data);
});
