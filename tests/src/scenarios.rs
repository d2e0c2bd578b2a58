//! End-to-end scenarios, written once and run on both backends by
//! `tests/e2e_embedded.rs` and `tests/e2e_aws.rs`. Each drives the HTTP API
//! as a client would and reads mail where the user would.

use crate::system::{Mail, TestSystem};
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery staple";

pub fn unique() -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    (format!("user{}", &id[..12]), format!("u{}@example.com", &id[..12]))
}

/// Registers and verifies through the mailed link; returns (username, email).
pub async fn verified_user(sys: &TestSystem) -> (String, String) {
    let (username, email) = unique();
    let (st, b, _) =
        sys.post("/v1/register", json!({"username": username, "email": email, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{b}");
    let mail = sys.wait_mail(&email, 1).await;
    let token = token_from_link(&mail.link().expect("link in mail"));
    let (st, body, _) = sys.post("/v1/verify-email", json!({ "token": token })).await;
    assert_eq!(st, 200, "{body}");
    (username, email)
}

pub fn token_from_link(link: &str) -> String {
    link.split("token=").nth(1).expect("token in link").to_string()
}

/// `POST /v1/password/reset` with the token of the mailed `link`; the status
/// and body.
pub async fn reset_with_link(sys: &TestSystem, link: &str, new_password: &str) -> (u16, Value) {
    let (st, body, _) =
        sys.post("/v1/password/reset", json!({"token": token_from_link(link), "new_password": new_password})).await;
    (st, body)
}

/// Password step then code step; returns the token response.
pub async fn sign_in(sys: &TestSystem, identifier: &str, email: &str) -> Value {
    let before = sys.mails_to(email).await.len();
    let (st, body, _) = sys.post("/v1/login", json!({"identifier": identifier, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{body}");
    let challenge = body["challenge_id"].as_str().expect("challenge_id").to_string();
    let code = sys.wait_mail(email, before + 1).await.code().expect("code in mail");
    let (st, tokens, _) = sys.post("/v1/login/otp", json!({"challenge_id": challenge, "code": code})).await;
    assert_eq!(st, 200, "{tokens}");
    tokens
}

pub async fn full_journey(sys: &TestSystem, by_email: bool) {
    let (username, email) = unique();
    let (st, body, h) = sys
        .post("/v1/register", json!({"username": username.to_uppercase(), "email": email, "password": PASSWORD}))
        .await;
    assert_eq!(st, 202, "{body}");
    assert_eq!(h["cache-control"], "no-store");

    // The link lands on a page that only submits; a GET does not verify.
    let mail = sys.wait_mail(&email, 1).await;
    assert_eq!(mail.kind, "verify_email");
    let link = mail.link().expect("link");
    assert!(link.starts_with("http://127.0.0.1:3000/verify-email?token="), "{link}");
    let token = token_from_link(&link);
    let landing = sys.http.get(sys.url(&format!("/verify-email?token={token}"))).send().await.expect("landing");
    assert_eq!(landing.status(), 200);
    assert!(landing.text().await.expect("html").contains("method=\"post\""));
    let (st, body, _) = sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD})).await;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_credentials")), "GET must not verify");

    let (st, body, _) = sys.post("/v1/verify-email", json!({ "token": token })).await;
    assert_eq!(st, 200, "{body}");
    let (st, body, _) = sys.post("/v1/verify-email", json!({ "token": token })).await;
    assert_eq!((st, body["error"].as_str()), (400, Some("verification_token_used")));

    let identifier = if by_email { email.to_uppercase() } else { username.clone() };
    let tokens = sign_in(sys, &identifier, &email).await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["expires_in"].as_i64().expect("expires_in") <= 600);
    let access = tokens["access_token"].as_str().expect("access").to_string();
    let refresh = tokens["refresh_token"].as_str().expect("refresh").to_string();

    let (st, me) = sys.get_auth("/v1/me", &access).await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["username"], username);
    assert_eq!(me["email"], email);
    assert_eq!(me["email_verified"], true);

    // Rotation: the new refresh token works, the old one revokes the session.
    let (st, rotated, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": refresh })).await;
    assert_eq!(st, 200, "{rotated}");
    let refresh2 = rotated["refresh_token"].as_str().expect("refresh2").to_string();
    assert_ne!(refresh2, refresh);
    let access2 = rotated["access_token"].as_str().expect("access2").to_string();
    assert_eq!(sys.get_auth("/v1/me", &access2).await.0, 200);

    let (st, _, _) = sys.post("/v1/logout", json!({ "refresh_token": refresh2 })).await;
    assert_eq!(st, 204);
    assert_eq!(sys.get_auth("/v1/me", &access2).await.0, 401, "access token dead after logout");
    let (st, body, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": refresh2 })).await;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_refresh_token")));
}

/// By default (no retry grace) the token a rotation replaced, sent again
/// at once by the same client, is a reuse: the whole session is revoked,
/// the token it was rotated into and its access token with it.
pub async fn refresh_reuse_revokes_session(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let old = tokens["refresh_token"].as_str().expect("refresh").to_string();
    let (st, rotated, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": old })).await;
    assert_eq!(st, 200);
    let (st, b, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": old })).await;
    assert_eq!((st, b["error"].as_str()), (401, Some("invalid_refresh_token")), "reuse of the replaced token: {b}");
    let (st, _, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": rotated["refresh_token"] })).await;
    assert_eq!(st, 401, "the whole session is revoked after reuse");
    let (st, _) = sys.get_auth("/v1/me", rotated["access_token"].as_str().expect("access")).await;
    assert_eq!(st, 401);
}

/// With a retry grace configured: the token a rotation replaced, sent
/// again by the same client, gets that rotation's token back (a retry
/// after a lost answer) and ends nothing; a token rotated twice is a reuse
/// and revokes the session.
pub async fn a_refresh_retried_within_the_grace_gets_the_same_token(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let old = tokens["refresh_token"].as_str().expect("refresh").to_string();
    let (st, rotated, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": old })).await;
    assert_eq!(st, 200);
    let new = rotated["refresh_token"].as_str().expect("new").to_string();
    // The answer was lost and the client sends it again: the same token.
    let (st, again, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": old })).await;
    assert_eq!((st, again["refresh_token"].as_str()), (200, Some(new.as_str())), "a retry: {again}");
    let (st, _) = sys.get_auth("/v1/me", again["access_token"].as_str().expect("access")).await;
    assert_eq!(st, 200, "the retry's access token");
    let (st, newest, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": new })).await;
    assert_eq!(st, 200);
    let (st, _, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": old })).await;
    assert_eq!(st, 401, "reuse of a token rotated twice");
    let (st, _, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": newest["refresh_token"] })).await;
    assert_eq!(st, 401, "the whole session is revoked after reuse");
    let (st, _) = sys.get_auth("/v1/me", newest["access_token"].as_str().expect("access")).await;
    assert_eq!(st, 401);
}

pub async fn register_conflicts(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let (other_user, other_email) = unique();
    // Username taken (case-insensitively): 409.
    let (st, body, _) = sys
        .post("/v1/register", json!({"username": username.to_uppercase(), "email": other_email, "password": PASSWORD}))
        .await;
    assert_eq!((st, body["error"].as_str()), (409, Some("username_taken")));
    // Email taken: the same 202 as a success, and the owner is told.
    let (st_new, body_new, _) =
        sys.post("/v1/register", json!({"username": unique().0, "email": unique().1, "password": PASSWORD})).await;
    let (st_taken, body_taken, _) = sys
        .post("/v1/register", json!({"username": other_user, "email": email.to_uppercase(), "password": PASSWORD}))
        .await;
    assert_eq!((st_new, &body_new), (st_taken, &body_taken));
    let notice = sys.wait_mail(&email, 2).await;
    assert_eq!(notice.kind, "signup_attempt", "{notice:?}");
    // The refused registration holds its username as a new account would
    // (whether the address had an account must not show in a later answer).
    let (st, body, _) =
        sys.post("/v1/register", json!({"username": other_user, "email": unique().1, "password": PASSWORD})).await;
    assert_eq!((st, body["error"].as_str()), (409, Some("username_taken")), "{body}");
}

pub async fn login_failures_look_alike(sys: &TestSystem) {
    let (username, _) = verified_user(sys).await;
    let (st1, b1, h1) =
        sys.post("/v1/login", json!({"identifier": username, "password": "wrong password entirely"})).await;
    let (st2, b2, h2) = sys
        .post("/v1/login", json!({"identifier": format!("nobody{username}"), "password": "wrong password entirely"}))
        .await;
    assert_eq!((st1, &b1), (401, &json!({"error": "invalid_credentials", "message": "invalid credentials"})));
    assert_eq!((st1, &b1), (st2, &b2));
    let names = |h: &reqwest::header::HeaderMap| {
        let mut v: Vec<String> = h
            .keys()
            .map(|k| k.to_string())
            .filter(|k| k != "x-request-id" && k != "date" && k != "content-length")
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&h1), names(&h2));

    // A locked account answers even its right password as an unknown user
    // is answered (the wrong password above was the first failure).
    let threshold = latchkey_core::config::Policy::default().login_lock_threshold;
    for _ in 1..threshold {
        let (st, _, _) =
            sys.post("/v1/login", json!({"identifier": username, "password": "wrong password entirely"})).await;
        assert_eq!(st, 401);
    }
    let (st3, b3, h3) = sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD})).await;
    assert_eq!((st3, &b3), (st2, &b2), "a locked account's right password answers unlike an unknown user");
    assert_eq!(names(&h3), names(&h2));
}

pub async fn wrong_codes_then_dead(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let (st, body, _) = sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD})).await;
    assert_eq!(st, 202);
    let challenge = body["challenge_id"].as_str().expect("challenge").to_string();
    let code = sys.wait_mail(&email, 2).await.code().expect("code");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in (0..6).rev() {
        let (st, body, _) = sys.post("/v1/login/otp", json!({"challenge_id": challenge, "code": wrong})).await;
        assert_eq!(
            (st, body["error"].as_str(), body["attempts_left"].as_u64()),
            (401, Some("otp_invalid"), Some(left)),
            "{body}"
        );
    }
    let (st, body, _) = sys.post("/v1/login/otp", json!({"challenge_id": challenge, "code": code})).await;
    assert_eq!((st, body["error"].as_str()), (401, Some("otp_exhausted")), "right code after the cap");
}

pub async fn wrong_then_right_code_once(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let (_, body, _) = sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD})).await;
    let challenge = body["challenge_id"].as_str().expect("challenge").to_string();
    let code = sys.wait_mail(&email, 2).await.code().expect("code");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (st, body, _) = sys.post("/v1/login/otp", json!({"challenge_id": challenge, "code": wrong})).await;
    assert_eq!((st, body["attempts_left"].as_u64()), (401, Some(5)));
    let (st, _, _) = sys.post("/v1/login/otp", json!({"challenge_id": challenge, "code": code})).await;
    assert_eq!(st, 200);
    let (st, body, _) = sys.post("/v1/login/otp", json!({"challenge_id": challenge, "code": code})).await;
    assert_eq!((st, body["error"].as_str()), (401, Some("otp_used")));
}

/// The kinds of every mail to `email`, oldest first, once a mail of kind
/// `last` is out: the caller asks for that one after the actions under
/// test, and mail goes out in order, so a mail they queued by mistake is out
/// by then too (a count taken at once could miss one still queued on the
/// embedded backend, whose consumer writes the outbox a moment later).
pub async fn mail_kinds_through(sys: &TestSystem, email: &str, last: &str) -> Vec<String> {
    for _ in 0..800 {
        let all = sys.mails_to(email).await;
        if all.iter().any(|m| m.kind == last) {
            return all.into_iter().map(|m| m.kind).collect();
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("no {last} mail to {email} within 20 s");
}

/// Asks for a standalone code to `email`, a mail to wait for (see
/// [`mail_kinds_through`]).
pub async fn send_a_last_mail(sys: &TestSystem, email: &str) {
    let (st, b, _) = sys.post("/otp", json!({"action": "send_otp", "email": email})).await;
    assert_eq!(st, 200, "{b}");
}

pub async fn resend_code_cooldown(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let (_, body, _) = sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD})).await;
    let challenge = body["challenge_id"].as_str().expect("challenge").to_string();
    let (st, body, h) = sys.post("/v1/login/otp/resend", json!({"challenge_id": challenge})).await;
    assert_eq!((st, body["error"].as_str()), (429, Some("rate_limited")));
    let retry: u64 = h["retry-after"].to_str().expect("retry-after").parse().expect("number");
    assert!((1..=60).contains(&retry), "{retry}");
    send_a_last_mail(sys, &email).await;
    assert_eq!(
        mail_kinds_through(sys, &email, "standalone_code").await,
        ["verify_email", "login_code", "standalone_code"],
        "no extra mail during the cooldown"
    );
}

pub async fn verification_link_errors(sys: &TestSystem) {
    let (_, email) = unique();
    let (st, _, _) =
        sys.post("/v1/register", json!({"username": unique().0, "email": email, "password": PASSWORD})).await;
    assert_eq!(st, 202);
    let token = token_from_link(&sys.wait_mail(&email, 1).await.link().expect("link"));
    let mut tampered = token.clone().into_bytes();
    tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    for bad in [tampered.as_str(), "short", ""] {
        let (st, body, _) = sys.post("/v1/verify-email", json!({ "token": bad })).await;
        assert_eq!((st, body["error"].as_str()), (400, Some("verification_token_invalid")), "{bad:?}");
    }
    // Still unverified after the bad attempts; the real token still works once.
    let (st, _, _) = sys.post("/v1/verify-email", json!({ "token": token })).await;
    assert_eq!(st, 200);
}

pub async fn resend_verification_is_generic(sys: &TestSystem) {
    let (_, email) = unique();
    let (st, _, _) =
        sys.post("/v1/register", json!({"username": unique().0, "email": email, "password": PASSWORD})).await;
    assert_eq!(st, 202);
    let (st_known, b_known, _) = sys.post("/v1/verify-email/resend", json!({ "email": email })).await;
    let (st_unknown, b_unknown, _) = sys.post("/v1/verify-email/resend", json!({ "email": unique().1 })).await;
    assert_eq!((st_known, &b_known), (202, &b_unknown));
    assert_eq!(st_unknown, 202);
    // Within the 60 s cooldown, no second mail was sent.
    send_a_last_mail(sys, &email).await;
    assert_eq!(mail_kinds_through(sys, &email, "standalone_code").await, ["verify_email", "standalone_code"]);
}

pub async fn standalone_otp(sys: &TestSystem) {
    let (_, email) = unique();
    let (st, body, _) = sys.post("/otp", json!({"action": "send_otp", "email": email})).await;
    assert_eq!((st, &body), (200, &json!({"message": "OTP sent successfully"})));
    let code = sys.wait_mail(&email, 1).await.code().expect("code");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (st, body, _) = sys.post("/otp", json!({"action": "verify_otp", "email": email, "otp": wrong})).await;
    assert_eq!((st, body["message"].as_str()), (401, Some("Invalid OTP")));
    let (st, body, _) = sys.post("/otp", json!({"action": "verify_otp", "email": email, "otp": code})).await;
    assert_eq!((st, &body), (200, &json!({"message": "OTP verified successfully"})));
    let (st, _, _) = sys.post("/otp", json!({"action": "verify_otp", "email": email, "otp": code})).await;
    assert_eq!(st, 404, "a verified code cannot verify again");
    // Seed contract errors.
    for (body, field) in [
        (json!({"action": "send_otp"}), "email"),
        (json!({"action": "verify_otp", "email": email}), "otp"),
        (json!({"action": "verify_otp", "otp": "123456"}), "email"),
        (json!({"action": "dance"}), "action"),
        (json!({"action": "send_otp", "email": 5}), "email"),
        (json!({"action": "verify_otp", "email": email, "otp": "12345"}), "otp"),
        (json!({"action": "send_otp", "email": "not-an-address"}), "email"),
        (json!([{}, null]), "body"),
        (json!(["send_otp", "a@example.com"]), "body"),
    ] {
        let (st, b, _) = sys.post("/otp", body.clone()).await;
        assert_eq!((st, b["field"].as_str()), (400, Some(field)), "{body}: {b}");
        assert!(b["message"].is_string(), "{b}");
    }
    assert_eq!(sys.post("/otp", json!({"action": "verify_otp", "email": unique().1, "otp": "123456"})).await.0, 404);
    // Cooldown on a second send.
    let (st, _, h) = sys.post("/otp", json!({"action": "send_otp", "email": email})).await;
    assert_eq!(st, 429);
    assert!(h.contains_key("retry-after"));
}

pub async fn standalone_otp_cap(sys: &TestSystem) {
    let (_, email) = unique();
    assert_eq!(sys.post("/otp", json!({"action": "send_otp", "email": email})).await.0, 200);
    let code = sys.wait_mail(&email, 1).await.code().expect("code");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..6 {
        assert_eq!(sys.post("/otp", json!({"action": "verify_otp", "email": email, "otp": wrong})).await.0, 401);
    }
    let (st, body, _) = sys.post("/otp", json!({"action": "verify_otp", "email": email, "otp": code})).await;
    assert_eq!((st, body["message"].as_str().map(|m| m.starts_with("Maximum attempts"))), (403, Some(true)));
    // The answer says when a new code can be had, which is what a send then
    // answers: not before this one expires (10 minutes from its send).
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("once this one expires (within 10 minutes)"), "{message}");
    let (st, b, h) = sys.post("/otp", json!({"action": "send_otp", "email": email})).await;
    let wait: u64 = h.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(st == 429 && (540..=600).contains(&wait), "{st} {wait} {b}");
}

pub async fn bad_inputs(sys: &TestSystem) {
    let raw = |body: &'static str| {
        let req = sys.http.post(sys.url("/v1/register")).header("content-type", "application/json").body(body);
        async move {
            let r = req.send().await.expect("send");
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (st, body) = raw("{not json").await;
    assert_eq!((st, body["error"].as_str()), (400, Some("malformed_json")));
    // A whole registration with anything but whitespace after it: refused,
    // and nothing is registered (the same names register below).
    let (username, email) = unique();
    let good = json!({"username": username, "email": email, "password": PASSWORD}).to_string();
    for tail in ["{}", "]]]", "\u{0}garbage", ", 1"] {
        let req = sys.http.post(sys.url("/v1/register")).header("content-type", "application/json");
        let r = req.body(format!("{good}{tail}")).send().await.expect("send");
        let st = r.status().as_u16();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        assert_eq!((st, body["error"].as_str()), (400, Some("malformed_json")), "{tail:?}: {body}");
    }
    let req = sys.http.post(sys.url("/v1/register")).header("content-type", "application/json");
    assert_eq!(req.body(format!("{good} \n")).send().await.expect("send").status(), 202, "whitespace after it");
    let (st, body) = raw(r#"{"username": 5, "email": "a@b.co", "password": "x"}"#).await;
    assert_eq!((st, body["field"].as_str()), (400, Some("username")), "{body}");
    let (st, body) = raw(r#"{"username": "abc", "password": "x"}"#).await;
    assert_eq!((st, body["field"].as_str()), (400, Some("email")), "{body}");
    let (st, body) =
        raw(r#"{"username": "abc", "email": "not-an-email", "password": "correct horse battery staple"}"#).await;
    assert_eq!((st, body["field"].as_str()), (400, Some("email")), "{body}");
    let (st, body, _) =
        sys.post("/v1/register", json!({"username": "abc", "email": "a@example.com", "password": "short"})).await;
    assert_eq!((st, body["field"].as_str()), (400, Some("password")));
    let big = "x".repeat(20 * 1024);
    let (st, body, _) =
        sys.post("/v1/register", json!({"username": "abc", "email": "a@example.com", "password": big})).await;
    assert_eq!((st, body["error"].as_str()), (413, Some("payload_too_large")));
    let long = "p".repeat(2000);
    let (st, body, _) = sys.post("/v1/login", json!({"identifier": "abc", "password": long})).await;
    assert_eq!((st, body["field"].as_str()), (400, Some("password")));
    let (st, body, _) = sys.post("/v1/login/otp", json!({"challenge_id": "nope", "code": "12"})).await;
    assert_eq!((st, body["field"].as_str()), (400, Some("challenge_id")));
    let (st, body, _) = sys
        .post("/v1/register", json!({"username": "bad\r\nname", "email": "a@example.com", "password": PASSWORD}))
        .await;
    assert_eq!((st, body["field"].as_str()), (400, Some("username")));
    let r = sys.http.post(sys.url("/v1/login")).body("identifier=a").send().await.expect("send");
    assert_eq!(r.status(), 415);
    // A rejected registration wrote nothing: the same names register fine.
    let (username, email) = unique();
    let _ = sys.post("/v1/register", json!({"username": username, "email": email, "password": "short"})).await;
    assert_eq!(
        sys.post("/v1/register", json!({"username": username, "email": email, "password": PASSWORD})).await.0,
        202
    );
    assert_eq!(sys.wait_mail(&email, 1).await.kind, "verify_email");
}

pub async fn headers_everywhere(sys: &TestSystem) {
    let checks = [
        sys.http.get(sys.url("/healthz")).send().await.expect("healthz"),
        sys.http.get(sys.url("/nope")).send().await.expect("404"),
        sys.http.get(sys.url("/v1/login")).send().await.expect("405"),
        sys.http
            .post(sys.url("/v1/login"))
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .expect("400"),
        sys.http.get(sys.url("/v1/me")).send().await.expect("401"),
        sys.http.get(sys.url("/.well-known/jwks.json")).send().await.expect("jwks"),
        sys.http.get(sys.url("/verify-email?token=abc")).send().await.expect("page"),
    ];
    let expected = [200, 404, 405, 400, 401, 200, 200];
    for (r, want) in checks.iter().zip(expected) {
        assert_eq!(r.status().as_u16(), want, "{}", r.url());
        let h = r.headers();
        assert_eq!(h["strict-transport-security"], "max-age=63072000; includeSubDomains");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cross-origin-opener-policy"], "same-origin");
        let csp = h["content-security-policy"].to_str().expect("csp");
        for d in ["default-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"] {
            assert!(csp.contains(d), "{csp}");
        }
        assert!(h["content-type"].to_str().expect("ct").contains("charset=utf-8"), "{}", r.url());
        assert!(!h.contains_key("server") && !h.contains_key("x-powered-by"));
    }
    assert_eq!(checks[0].headers()["cache-control"], "no-store");
}

pub async fn jwks_verifies_tokens(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let jwks: Value =
        sys.http.get(sys.url("/.well-known/jwks.json")).send().await.expect("jwks").json().await.expect("json");
    let key = &jwks["keys"][0];
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str(), key["alg"].as_str()),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    let access = tokens["access_token"].as_str().expect("access");
    let header: Value = {
        use base64::Engine;
        let h = access.split('.').next().expect("header");
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).expect("b64")).expect("json")
    };
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], key["kid"]);
}

/// A forgotten password: the mailed link sets a new one once, every session
/// ends, the old password stops working, and the owner is told; a link asked
/// for right after works. Asking for
/// an unknown address answers the same and mails nothing.
pub async fn password_reset_by_mail(sys: &TestSystem) {
    const NEW: &str = "velvet orbit harbor lantern";
    const NEWER: &str = "amber quarry whistle meadow";
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let refresh = tokens["refresh_token"].as_str().expect("refresh").to_string();

    let unknown = format!("nobody-{}@example.com", unique().0);
    let (st_unknown, body_unknown, _) = sys.post("/v1/password/forgot", json!({ "email": unknown })).await;
    let before = sys.mails_to(&email).await.len();
    let (st, body, h) = sys.post("/v1/password/forgot", json!({ "email": email.to_uppercase() })).await;
    assert_eq!((st, &body), (st_unknown, &body_unknown), "a known address answers differently");
    assert_eq!((st, h["cache-control"].to_str().ok()), (202, Some("no-store")), "{body}");
    let mail = sys.wait_mail(&email, before + 1).await;
    assert_eq!(mail.kind, "password_reset");
    let link = mail.link().expect("link");
    assert!(link.starts_with("http://127.0.0.1:3000/password/reset?token="), "{link}");
    let token = token_from_link(&link);

    // The link's page only shows a form.
    let landing = sys.http.get(sys.url(&format!("/password/reset?token={token}"))).send().await.expect("landing");
    assert_eq!(landing.status(), 200);
    assert!(landing.text().await.expect("html").contains("name=\"new_password\""));

    let (st, body, _) = sys.post("/v1/password/reset", json!({ "token": token, "new_password": "short" })).await;
    assert_eq!(
        (st, body["error"].as_str(), body["field"].as_str()),
        (400, Some("invalid_request"), Some("new_password"))
    );
    let (st, body, _) = sys.post("/v1/password/reset", json!({ "token": token, "new_password": NEW })).await;
    assert_eq!((st, body["status"].as_str()), (200, Some("password_reset")), "{body}");
    let device = body["device_token"].as_str().expect("a device token for the client that reset");
    assert_eq!(device.split('.').count(), 4, "{device}");
    let (st, body, _) = sys.post("/v1/password/reset", json!({ "token": token, "new_password": NEW })).await;
    assert_eq!((st, body["error"].as_str()), (400, Some("reset_link_invalid")), "a second use");
    // A link asked for right after the reset (most often in its second; a
    // link from before the reset must die, one from after it must not).
    let (st, body, _) = sys.post("/v1/password/forgot", json!({ "email": email })).await;
    assert_eq!(st, 202, "{body}");
    sys.wait_mail(&email, before + 3).await;
    let mails = sys.mails_to(&email).await;
    let told: Vec<&Mail> = mails.iter().filter(|m| m.kind == "password_changed").collect();
    assert_eq!(told.len(), 1, "the owner is told once");
    assert!(told[0].text.contains("reset link"), "{}", told[0].text);
    let links: Vec<String> = mails
        .iter()
        .filter(|m| m.kind == "password_reset")
        .map(|m| token_from_link(&m.link().expect("link")))
        .filter(|t| *t != token)
        .collect();
    assert_eq!(links.len(), 1, "one more link");
    let (st, body, _) = sys.post("/v1/password/reset", json!({ "token": links[0], "new_password": NEWER })).await;
    assert_eq!((st, body["status"].as_str()), (200, Some("password_reset")), "a link asked for after a reset: {body}");

    let (st, _, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": refresh })).await;
    assert_eq!(st, 401, "a session from before the reset lives on");
    for old in [PASSWORD, NEW] {
        let (st, body, _) = sys.post("/v1/login", json!({"identifier": username, "password": old})).await;
        assert_eq!((st, body["error"].as_str()), (401, Some("invalid_credentials")), "an old password works");
    }
    let (st, body, _) = sys.post("/v1/login", json!({"identifier": username, "password": NEWER})).await;
    assert_eq!(st, 202, "{body}");
    assert_eq!(sys.mails_to(&unknown).await.len(), 0, "an unknown address got mail");
}

/// A password is one password however its characters were typed (it is
/// hashed in NFKC form): registered with `é` as `e` and a combining accent,
/// it signs in with `é` precomposed and with a full-width letter, and not
/// without the accent; a reset to a decomposed password likewise.
pub async fn one_password_however_typed(sys: &TestSystem) {
    const NFD: &str = "Cafe\u{301} crie sous les nuages violets";
    const NFC: &str = "Caf\u{e9} crie sous les nuages violets";
    const WIDE: &str = "Caf\u{e9} crie sous les nuages violet\u{ff53}";
    let (username, email) = unique();
    let (st, body, _) = sys.post("/v1/register", json!({"username": username, "email": email, "password": NFD})).await;
    assert_eq!(st, 202, "{body}");
    let token = token_from_link(&sys.wait_mail(&email, 1).await.link().expect("link in mail"));
    let (st, body, _) = sys.post("/v1/verify-email", json!({ "token": token })).await;
    assert_eq!(st, 200, "{body}");

    let login = |password: &'static str| {
        let identifier = username.clone();
        async move { sys.post("/v1/login", json!({"identifier": identifier, "password": password})).await }
    };
    let (st, body, _) = login(NFC).await;
    assert_eq!(st, 202, "precomposed: {body}");
    let challenge = body["challenge_id"].as_str().expect("challenge_id").to_string();
    let code = sys.wait_mail(&email, 2).await.code().expect("code in mail");
    let (st, tokens, _) = sys.post("/v1/login/otp", json!({"challenge_id": challenge, "code": code})).await;
    assert_eq!(st, 200, "{tokens}");
    let (st, body, _) = login(WIDE).await;
    assert_eq!(st, 202, "a full-width letter: {body}");
    let (st, body, _) = login("Cafe crie sous les nuages violets").await;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_credentials")), "without the accent");

    // A reset to a decomposed password; it signs in precomposed.
    let before = sys.mails_to(&email).await.len();
    let (st, body, _) = sys.post("/v1/password/forgot", json!({ "email": email })).await;
    assert_eq!(st, 202, "{body}");
    let link = sys.wait_mail(&email, before + 1).await.link().expect("reset link");
    let (st, body) = reset_with_link(sys, &link, "Nin\u{303}o sin lanternas bajo la lluvia").await;
    assert_eq!(st, 200, "{body}");
    let (st, body, _) = login("Ni\u{f1}o sin lanternas bajo la lluvia").await;
    assert_eq!(st, 202, "the new password precomposed: {body}");
    let (st, body, _) = login(NFC).await;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_credentials")), "the old password");
}

/// An owner deletes their account over HTTP: the current password is
/// required and checked (a wrong one is named, and nothing is deleted);
/// then every session of it ends, on `/v1/me` and refresh, the password no
/// longer signs in, the owner is mailed, and both names are free at once.
pub async fn account_deletion(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let other = sign_in(sys, &email, &email).await;
    let access = tokens["access_token"].as_str().expect("access").to_string();

    let (st, body, _) = sys.post("/v1/me/delete", json!({ "current_password": PASSWORD })).await;
    assert_eq!((st, body["error"].as_str()), (401, Some("unauthorized")), "no token: {body}");
    let (st, body) = sys.post_auth("/v1/me/delete", &access, json!({})).await;
    assert_eq!((st, body["field"].as_str()), (400, Some("current_password")), "{body}");
    let (st, body) = sys.post_auth("/v1/me/delete", &access, json!({ "current_password": "not it at all" })).await;
    assert_eq!((st, body["field"].as_str()), (400, Some("current_password")), "{body}");
    let (st, body) = sys.get_auth("/v1/me", &access).await;
    assert_eq!(st, 200, "a wrong password deleted the account: {body}");

    let before = sys.mails_to(&email).await.len();
    let (st, body) = sys.post_auth("/v1/me/delete", &access, json!({ "current_password": PASSWORD })).await;
    assert_eq!(st, 204, "{body}");
    assert_eq!(sys.wait_mail(&email, before + 1).await.kind, "account_deleted");
    for t in [&tokens, &other] {
        let (st, _) = sys.get_auth("/v1/me", t["access_token"].as_str().expect("access")).await;
        assert_eq!(st, 401, "a session of the deleted account on /v1/me");
        let (st, _, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": t["refresh_token"] })).await;
        assert_eq!(st, 401, "a session of the deleted account refreshed");
    }
    let (st, body, _) = sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD})).await;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_credentials")), "{body}");
    let (st, body) = sys.post_auth("/v1/me/delete", &access, json!({ "current_password": PASSWORD })).await;
    assert_eq!(st, 401, "deleted twice: {body}");

    // Both names at once: a new account, verified through a new link.
    let (st, body, _) =
        sys.post("/v1/register", json!({"username": username, "email": email, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{body}");
    let mail = sys.wait_mail(&email, before + 2).await;
    assert_eq!(mail.kind, "verify_email", "the address is free: a new account's link, not a notice");
    let (st, body, _) =
        sys.post("/v1/verify-email", json!({ "token": token_from_link(&mail.link().expect("link")) })).await;
    assert_eq!(st, 200, "{body}");
    sign_in(sys, &username, &email).await;
}

/// An address change over HTTP: asked with the password, made by the link
/// mailed to the new address (once), told to the old one both times; the
/// account then signs in by the new address, and the old one is free.
/// An address whose domain is in another script is one account with its
/// ASCII (`xn--`) form, however it is typed, and its mail goes to that form
/// (the only one SES takes); one with anything but ASCII before the `@` is
/// refused, saying why (no mail could reach it).
pub async fn international_addresses(sys: &TestSystem) {
    let (username, ascii) = unique();
    let local = ascii.split('@').next().expect("a local part");
    let stored = format!("{local}@xn--bcher-kva.example");
    let typed = format!("{}@BU\u{308}CHER.example", local.to_uppercase());
    let (st, body, _) =
        sys.post("/v1/register", json!({"username": username, "email": typed, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{body}");
    let link = sys.wait_mail(&stored, 1).await.link().expect("the link, mailed to the ASCII form");
    let (st, body, _) = sys.post("/v1/verify-email", json!({ "token": token_from_link(&link) })).await;
    assert_eq!(st, 200, "{body}");
    let tokens = sign_in(sys, &format!("{local}@bücher.example"), &stored).await;
    let (st, me) = sys.get_auth("/v1/me", tokens["access_token"].as_str().expect("access")).await;
    assert_eq!((st, me["email"].as_str()), (200, Some(stored.as_str())), "{me}");
    // Its ASCII form, typed, is the same address: taken (the owner is told).
    let (st, _, _) =
        sys.post("/v1/register", json!({"username": unique().0, "email": stored, "password": PASSWORD})).await;
    assert_eq!(st, 202);
    assert_eq!(sys.wait_mail(&stored, 3).await.kind, "signup_attempt");
    // Not ASCII before the @: refused, saying why, and nothing is mailed.
    let (name, _) = unique();
    let (st, body, _) = sys
        .post(
            "/v1/register",
            json!({"username": name, "email": format!("zoë{local}@example.com"), "password": PASSWORD}),
        )
        .await;
    assert_eq!((st, body["field"].as_str()), (400, Some("email")), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("plain ASCII before the @")), "{body}");
    let (st, body, _) =
        sys.post("/otp", json!({"action": "send_otp", "email": format!("zoë{local}@example.com")})).await;
    assert_eq!((st, body["field"].as_str()), (400, Some("email")), "{body}");
}

pub async fn address_change(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let access = tokens["access_token"].as_str().expect("access").to_string();
    let new = format!("moved-{email}");
    let ask = |password: &str, to: &str| json!({ "current_password": password, "new_email": to });

    let (st, body, _) = sys.post("/v1/me/email", ask(PASSWORD, &new)).await;
    assert_eq!((st, body["error"].as_str()), (401, Some("unauthorized")), "no token: {body}");
    for (req, field) in [
        (json!({ "new_email": new }), "current_password"),
        (json!({ "current_password": PASSWORD }), "new_email"),
        (ask("not it at all", &new), "current_password"),
        (ask(PASSWORD, "not an address"), "new_email"),
        (ask(PASSWORD, &email), "new_email"),
    ] {
        let (st, body) = sys.post_auth("/v1/me/email", &access, req.clone()).await;
        assert_eq!((st, body["field"].as_str()), (400, Some(field)), "{req}: {body}");
    }

    let before = sys.mails_to(&email).await.len();
    let (st, body) = sys.post_auth("/v1/me/email", &access, ask(PASSWORD, &new)).await;
    assert_eq!(st, 202, "{body}");
    let link = sys.wait_mail(&new, 1).await;
    assert_eq!(link.kind, "email_change_link");
    assert_eq!(sys.wait_mail(&email, before + 1).await.kind, "email_change_notice");
    let token = token_from_link(&link.link().expect("link"));
    let (_, me) = sys.get_auth("/v1/me", &access).await;
    assert_eq!(me["email"].as_str(), Some(email.as_str()), "moved before the link");

    let (st, body, _) = sys.post("/v1/email/confirm", json!({ "token": format!("x{token}") })).await;
    assert_eq!((st, body["error"].as_str()), (400, Some("email_change_link_invalid")), "{body}");
    let (st, body, _) = sys.post("/v1/email/confirm", json!({ "token": token })).await;
    assert_eq!((st, body["status"].as_str(), body["email"].as_str()), (200, Some("email_changed"), Some(new.as_str())));
    let (st, body, _) = sys.post("/v1/email/confirm", json!({ "token": token })).await;
    assert_eq!((st, body["error"].as_str()), (400, Some("email_change_link_invalid")), "used twice: {body}");
    assert_eq!(sys.wait_mail(&email, before + 2).await.kind, "email_change_notice");
    let (_, me) = sys.get_auth("/v1/me", &access).await;
    assert_eq!(me["email"].as_str(), Some(new.as_str()), "{me}");

    // Sign-in by the new address (its code mailed there); the old is free.
    sign_in(sys, &new, &new).await;
    let (st, body, _) = sys.post("/v1/login", json!({"identifier": email, "password": PASSWORD})).await;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_credentials")), "{body}");
    let (other, _) = unique();
    let (st, body, _) =
        sys.post("/v1/register", json!({"username": other, "email": email, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{body}");
    let mail = sys.wait_mail(&email, before + 3).await;
    assert_eq!(mail.kind, "verify_email", "the old address is free: a new account's link, not a notice");
}
