//! What an attacker tries, end to end, against the real Router on a loopback
//! port: every attack below runs once on the embedded store and once on
//! DynamoDB + SQS in the emulator (`mod embedded` / `mod aws` at the bottom).
//! Each test states its pass criterion in its assertions; each criterion is
//! one a broken implementation would fail.
//!
//! Attacks covered elsewhere (and not repeated here) are listed in
//! docs/security.md: expiry boundaries and lock periods under a frozen clock
//! (core/tests/flows.rs), JWT forgery (core/src/flows/tokens.rs), cookies and
//! CSRF (tests/tests/pages_browser.rs), the code-generator uniformity check
//! (core/src/domain/otp_code.rs).

use futures::future::join_all;
use latchkey_tests::scenarios::{PASSWORD, sign_in, token_from_link, unique, verified_user};
use latchkey_tests::system::TestSystem;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// Header names, minus the ones that legitimately differ per response.
fn header_names(h: &HeaderMap) -> Vec<String> {
    let mut v: Vec<String> = h
        .keys()
        .map(|k| k.to_string())
        .filter(|k| k != "x-request-id" && k != "date" && k != "content-length")
        .collect();
    v.sort();
    v
}

/// The SECURITY.md header set ("Headers on every response, errors included").
fn assert_security_headers(h: &HeaderMap, status: u16, what: &str) {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("{what}: no {n}"));
    assert_eq!(get("strict-transport-security"), "max-age=63072000; includeSubDomains", "{what}");
    assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
    assert!(
        matches!(get("referrer-policy"), "no-referrer" | "strict-origin-when-cross-origin"),
        "{what}: {}",
        get("referrer-policy")
    );
    assert_eq!(get("cross-origin-opener-policy"), "same-origin", "{what}");
    let csp = get("content-security-policy");
    for d in ["default-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"] {
        assert!(csp.contains(d), "{what}: CSP {csp} lacks {d}");
    }
    if status == 204 {
        // No body, so nothing to type.
        assert!(!h.contains_key("content-type"), "{what}: {:?}", h.get("content-type"));
    } else {
        assert!(get("content-type").to_ascii_lowercase().contains("charset=utf-8"), "{what}: {}", get("content-type"));
    }
    assert!(!h.contains_key("server") && !h.contains_key("x-powered-by"), "{what}: server detail leaked");
}

fn wrong_code(code: &str) -> &'static str {
    if code == "000000" { "111111" } else { "000000" }
}

/// Starts a login for a verified user; returns (challenge id, mailed code).
async fn start_login(sys: &TestSystem, username: &str, email: &str) -> (String, String) {
    let before = sys.mails_to(email).await.len();
    let (st, body, _) = sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{body}");
    let challenge = body["challenge_id"].as_str().expect("challenge_id").to_string();
    let code = sys.wait_mail(email, before + 1).await.code().expect("code in mail");
    (challenge, code)
}

async fn raw_post(sys: &TestSystem, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value, HeaderMap) {
    let r = sys.http.post(sys.url(path)).header("content-type", content_type).body(body).send().await.expect("send");
    let st = r.status().as_u16();
    let h = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    (st, serde_json::from_str(&text).unwrap_or(Value::String(text)), h)
}

/// Sends a login whose password is `n` bytes as a chunked body (no
/// Content-Length) over a raw connection; returns the status.
async fn chunked_login(sys: &TestSystem, username: &str, n: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = sys.base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = "POST /v1/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let mut body = format!("{{\"identifier\":\"{username}\",\"password\":\"").into_bytes();
    body.extend(std::iter::repeat_n(b'a', n));
    body.extend_from_slice(b"\"}");
    let _ = conn.write_all(head.as_bytes()).await;
    for chunk in body.chunks(8192) {
        // The server may answer and close before the body is through.
        if conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_err()
            || conn.write_all(chunk).await.is_err()
            || conn.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut buf = vec![0u8; 12];
    conn.read_exact(&mut buf).await.expect("status line");
    String::from_utf8_lossy(&buf[9..12]).parse().expect("status code")
}

/// POSTs to `path` a head that declares a JSON body of `len` bytes and
/// sends none of it: the limit must be enforced on the declared length,
/// before any of the body is read. Returns the whole response. (Sending a
/// real 1 MiB body races the server's close: it answers 413 without reading
/// the body, and the unread bytes make the kernel reset the connection,
/// which can discard the answer before the client reads it.)
async fn declared_too_large(sys: &TestSystem, path: &str, len: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = sys.base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\
         Connection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.expect("head");
    let mut answer = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), conn.read_to_string(&mut answer))
        .await
        .expect("no answer before the body: the server waited for it")
        .expect("read the answer");
    answer
}

// ---------------------------------------------------------------- enumeration

/// Unknown user vs wrong password: same status, body and header names.
pub async fn enum_login(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let wrong = json!({"identifier": username, "password": "not the password at all"});
    let (st1, b1, h1) = sys.post("/v1/login", wrong).await;
    let (st2, b2, h2) =
        sys.post("/v1/login", json!({"identifier": unique().0, "password": "not the password at all"})).await;
    let (st3, b3, h3) =
        sys.post("/v1/login", json!({"identifier": unique().1, "password": "not the password at all"})).await;
    let (st4, b4, h4) =
        sys.post("/v1/login", json!({"identifier": email, "password": "not the password either"})).await;
    assert_eq!((st1, &b1), (401, &json!({"error": "invalid_credentials", "message": "invalid credentials"})));
    for (st, b, h) in [(st2, b2, h2), (st3, b3, h3), (st4, b4, h4)] {
        assert_eq!((st, &b), (st1, &b1));
        assert_eq!(header_names(&h), header_names(&h1));
    }
}

/// Register with a taken email vs a fresh one: same status, body, header names.
pub async fn enum_register(sys: &TestSystem) {
    let (_, email) = verified_user(sys).await;
    let (st_new, b_new, h_new) =
        sys.post("/v1/register", json!({"username": unique().0, "email": unique().1, "password": PASSWORD})).await;
    let (st_taken, b_taken, h_taken) =
        sys.post("/v1/register", json!({"username": unique().0, "email": email, "password": PASSWORD})).await;
    assert_eq!(st_new, 202, "{b_new}");
    assert_eq!((st_taken, &b_taken), (st_new, &b_new));
    assert_eq!(header_names(&h_taken), header_names(&h_new));
}

/// One registration through the browser page (`/register`), as a browser
/// without JavaScript sends it: returns the status (303 accepted, 409 taken).
async fn register_page(sys: &TestSystem, username: &str, email: &str) -> u16 {
    let page = sys.http.get(sys.url("/register")).send().await.expect("GET /register");
    let cookies: Vec<String> = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|c| c.to_str().ok()?.split(';').next().map(str::to_string))
        .collect();
    let body = page.text().await.expect("page body");
    let at = body.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    let csrf = &body[at..at + body[at..].find('"').expect("end of the csrf value")];
    let form = [("csrf", csrf), ("username", username), ("email", email), ("password", PASSWORD)];
    let r = sys
        .http
        .post(sys.url("/register"))
        .header("cookie", cookies.join("; "))
        .header("sec-fetch-site", "same-origin")
        .header("origin", sys.base.as_str())
        .form(&form)
        .send()
        .await
        .expect("POST /register");
    r.status().as_u16()
}

/// The username probe (found live): register a username with the target
/// address, then the same username with an address of one's own. Were
/// nothing kept of a registration refused for a taken email, the second
/// answer would tell: 202 (the target has an account) or 409 (the first
/// registration made one). Both answers must be the same for a taken and a
/// free target, on the API and on the browser page; the held username is
/// no account to sign in to.
pub async fn enum_register_username_probe(sys: &TestSystem) {
    let (_, taken) = verified_user(sys).await;
    let mut runs = Vec::new();
    // A free target for each probe (the API's registration makes it taken).
    for [target, page_target] in [[unique().1, unique().1], [taken.clone(), taken.clone()]] {
        let (username, _) = unique();
        let mut answers = Vec::new();
        for email in [target, unique().1] {
            let (st, b, h) =
                sys.post("/v1/register", json!({"username": username, "email": email, "password": PASSWORD})).await;
            answers.push((st, b, header_names(&h)));
        }
        let (page_name, _) = unique();
        let pages =
            [register_page(sys, &page_name, &page_target).await, register_page(sys, &page_name, &unique().1).await];
        runs.push((username, answers, pages));
    }
    let [(created, free, free_pages), (held, taken_answers, taken_pages)] = &runs[..] else { unreachable!() };
    assert_eq!(free[0].0, 202, "{}", free[0].1);
    assert_eq!((free[1].0, free[1].1["error"].as_str()), (409, Some("username_taken")), "{}", free[1].1);
    assert_eq!(*free_pages, [303, 409], "the page");
    assert_eq!(
        (taken_answers, taken_pages),
        (free, free_pages),
        "the second registration (API, page) tells a taken target address from a free one"
    );

    // The hold is no account: its username signs in as an unknown one does,
    // and so does the account the free address gave (its right password,
    // but not verified), else signing in after registering would tell a
    // taken address from a free one.
    let mut logins = Vec::new();
    for name in [held, created] {
        let (st, b, h) = sys.post("/v1/login", json!({"identifier": name, "password": PASSWORD})).await;
        logins.push((st, b, header_names(&h)));
    }
    assert_eq!((logins[0].0, logins[0].1["error"].as_str()), (401, Some("invalid_credentials")), "{}", logins[0].1);
    assert_eq!(logins[1], logins[0], "signing in to the new account tells a free address from a taken one");
    // The target's owner was told of both tries, as before (the mails go
    // out after the answers: wait for its verification mail and the two).
    sys.wait_mail(&taken, 3).await;
    let kinds: Vec<String> = sys.mails_to(&taken).await.into_iter().map(|m| m.kind).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "signup_attempt").count(), 2, "{kinds:?}");
}

/// Resend verification and send_otp for unknown vs known addresses.
pub async fn enum_resend_and_send_otp(sys: &TestSystem) {
    // A registered-but-unverified address, a verified one, and unknown ones.
    let (_, pending) = unique();
    let (st, _, _) =
        sys.post("/v1/register", json!({"username": unique().0, "email": pending, "password": PASSWORD})).await;
    assert_eq!(st, 202);
    let (_, verified) = verified_user(sys).await;
    let mut answers = vec![];
    for email in [pending.clone(), verified.clone(), unique().1] {
        answers.push(sys.post("/v1/verify-email/resend", json!({ "email": email })).await);
    }
    let (st0, b0, h0) = &answers[0];
    assert_eq!(*st0, 202, "{b0}");
    for (st, b, h) in &answers[1..] {
        assert_eq!((st, b), (st0, b0));
        assert_eq!(header_names(h), header_names(h0));
    }

    let mut answers = vec![];
    for email in [verified, unique().1] {
        answers.push(sys.post("/otp", json!({"action": "send_otp", "email": email})).await);
    }
    let (st0, b0, h0) = &answers[0];
    assert_eq!(*st0, 200, "{b0}");
    let (st1, b1, h1) = &answers[1];
    assert_eq!((st1, b1), (st0, b0));
    assert_eq!(header_names(h1), header_names(h0));
}

/// The reset link request: the same status, body and header names for an
/// address with a verified account, one with an unverified account, and an
/// unknown one; only the verified one gets mail.
pub async fn enum_password_reset(sys: &TestSystem) {
    let (_, pending) = unique();
    let (st, _, _) =
        sys.post("/v1/register", json!({"username": unique().0, "email": pending, "password": PASSWORD})).await;
    assert_eq!(st, 202);
    let (_, verified) = verified_user(sys).await;
    let unknown = unique().1;
    let mut answers = vec![];
    // The verified address last: mail goes out in order, so once its link
    // is out, a mail to the others would be too.
    for email in [&pending, &unknown, &verified] {
        answers.push(sys.post("/v1/password/forgot", json!({ "email": email })).await);
    }
    let (st0, b0, h0) = &answers[0];
    assert_eq!(*st0, 202, "{b0}");
    for (st, b, h) in &answers[1..] {
        assert_eq!((st, b), (st0, b0));
        assert_eq!(header_names(h), header_names(h0));
    }
    assert_eq!(sys.wait_mail(&verified, 2).await.kind, "password_reset");
    assert_eq!(sys.mails_to(&pending).await.len(), 1, "only the verification mail");
    assert!(sys.mails_to(&unknown).await.is_empty());
}

/// Asking to move an account to an address with a verified account, to one
/// with an unverified account, and to a free one: the same answer; only
/// the free one is mailed a link, the others a notice that nothing changed.
pub async fn enum_email_change(sys: &TestSystem) {
    let (_, pending) = unique();
    let (st, _, _) =
        sys.post("/v1/register", json!({"username": unique().0, "email": pending, "password": PASSWORD})).await;
    assert_eq!(st, 202);
    let (_, verified) = verified_user(sys).await;
    let free = unique().1;
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let access = tokens["access_token"].as_str().expect("access");
    let mut answers = vec![];
    for to in [&pending, &verified, &free] {
        let ask = json!({ "current_password": PASSWORD, "new_email": to });
        let r = sys.http.post(sys.url("/v1/me/email")).bearer_auth(access).json(&ask).send().await.expect("request");
        let (st, h) = (r.status().as_u16(), r.headers().clone());
        answers.push((st, r.json::<Value>().await.expect("json"), h));
    }
    let (st0, b0, h0) = &answers[0];
    assert_eq!(*st0, 202, "{b0}");
    for (st, b, h) in &answers[1..] {
        assert_eq!((st, b), (st0, b0));
        assert_eq!(header_names(h), header_names(h0));
    }
    assert_eq!(sys.wait_mail(&free, 1).await.kind, "email_change_link");
    assert_eq!(sys.wait_mail(&pending, 2).await.kind, "email_in_use");
    assert_eq!(sys.wait_mail(&verified, 2).await.kind, "email_in_use");
}

/// 20 concurrent uses of one address change link, and two links of one
/// account (to two addresses) at once: exactly one move each time.
pub async fn email_change_link_20_times_at_once(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let access = tokens["access_token"].as_str().expect("access");
    let ask =
        |to: &str| sys.post_auth("/v1/me/email", access, json!({ "current_password": PASSWORD, "new_email": to }));
    let token_of = |mail: latchkey_tests::system::Mail| token_from_link(&mail.link().expect("link"));
    let (a, b, c) = (unique().1, unique().1, unique().1);
    for to in [&a, &b, &c] {
        assert_eq!(ask(to).await.0, 202);
    }
    let token = token_of(sys.wait_mail(&a, 1).await);
    let results = join_all((0..20).map(|_| sys.post("/v1/email/confirm", json!({ "token": token })))).await;
    let winners = results.iter().filter(|r| r.0 == 200).count();
    assert_eq!(winners, 1, "{:?}", results.iter().map(|r| (r.0, r.1.clone())).collect::<Vec<_>>());
    for (st, body, _) in results.iter().filter(|r| r.0 != 200) {
        assert_eq!((*st, body["error"].as_str()), (400, Some("email_change_link_invalid")), "{body}");
    }
    // The other two were made at the count the move used: both dead.
    for to in [&b, &c] {
        let (st, body, _) =
            sys.post("/v1/email/confirm", json!({ "token": token_of(sys.wait_mail(to, 1).await) })).await;
        assert_eq!((st, body["error"].as_str()), (400, Some("email_change_link_invalid")), "{body}");
    }
    // Two fresh links at once: one moves the account, the other is refused.
    let (d, e) = (unique().1, unique().1);
    for to in [&d, &e] {
        assert_eq!(ask(to).await.0, 202);
    }
    let (td, te) = (token_of(sys.wait_mail(&d, 1).await), token_of(sys.wait_mail(&e, 1).await));
    let both = join_all([&td, &te].map(|t| sys.post("/v1/email/confirm", json!({ "token": t })))).await;
    let moved: Vec<&str> = both.iter().filter(|r| r.0 == 200).filter_map(|r| r.1["email"].as_str()).collect();
    assert_eq!(moved.len(), 1, "{:?}", both.iter().map(|r| (r.0, r.1.clone())).collect::<Vec<_>>());
    let (_, me) = sys.get_auth("/v1/me", access).await;
    assert_eq!(me["email"].as_str(), Some(moved[0]), "{me}");
}

/// 20 concurrent resets with one link: exactly one succeeds, and only its
/// password signs in.
pub async fn reset_link_20_times_at_once(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let (st, _, _) = sys.post("/v1/password/forgot", json!({ "email": email })).await;
    assert_eq!(st, 202);
    let link = sys.wait_mail(&email, 2).await.link().expect("link");
    let token = link.split("token=").nth(1).expect("token").to_string();
    let passwords: Vec<String> = (0..20).map(|i| format!("velvet orbit harbor lantern {i}")).collect();
    let results = join_all(
        passwords.iter().map(|pw| sys.post("/v1/password/reset", json!({ "token": token, "new_password": pw }))),
    )
    .await;
    let winners: Vec<usize> = (0..20).filter(|i| results[*i].0 == 200).collect();
    assert_eq!(winners.len(), 1, "{:?}", results.iter().map(|r| (r.0, r.1.clone())).collect::<Vec<_>>());
    for (st, b, _) in results.iter().filter(|(st, _, _)| *st != 200) {
        assert_eq!((*st, b["error"].as_str()), (400, Some("reset_link_invalid")), "{b}");
    }
    // The winner's first, then losers (fewer than the 10 that would lock).
    let w = winners[0];
    for i in std::iter::once(w).chain((0..20).filter(|i| *i != w).take(5)) {
        let (st, _, _) = sys.post("/v1/login", json!({"identifier": username, "password": passwords[i]})).await;
        assert_eq!(st == 202, i == w, "password {i}: {st}");
    }
}

// ---------------------------------------------------------------- codes

/// 50 concurrent submissions of the right login code: exactly one success.
pub async fn right_code_50_times_at_once(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let (challenge, code) = start_login(sys, &username, &email).await;
    let body = json!({"challenge_id": challenge, "code": code});
    let results = join_all((0..50).map(|_| sys.post("/v1/login/otp", body.clone()))).await;
    let ok = results.iter().filter(|(st, _, _)| *st == 200).count();
    assert_eq!(ok, 1, "{:?}", results.iter().map(|r| (r.0, r.1.clone())).collect::<Vec<_>>());
    for (st, b, _) in results.iter().filter(|(st, _, _)| *st != 200) {
        assert_eq!(*st, 401, "{b}");
        assert!(b["access_token"].is_null(), "a loser got a token: {b}");
    }
}

/// 50 concurrent wrong guesses: at most 6 are counted, then even the right
/// code is refused.
pub async fn wrong_codes_50_at_once(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let (challenge, code) = start_login(sys, &username, &email).await;
    let body = json!({"challenge_id": challenge, "code": wrong_code(&code)});
    let results = join_all((0..50).map(|_| sys.post("/v1/login/otp", body.clone()))).await;
    let invalid = results.iter().filter(|(_, b, _)| b["error"] == "otp_invalid").count();
    assert!(invalid <= 6, "{invalid} guesses were counted as tries: the cap is 6");
    for (st, b, _) in &results {
        assert_eq!(*st, 401, "{b}");
        assert!(matches!(b["error"].as_str(), Some("otp_invalid" | "otp_exhausted")), "{b}");
    }
    let mut left: Vec<u64> = results.iter().filter_map(|(_, b, _)| b["attempts_left"].as_u64()).collect();
    left.sort_unstable();
    left.dedup();
    assert_eq!(left.len(), invalid, "two guesses saw the same attempts_left: {left:?}");
    let (st, b, _) = sys.post("/v1/login/otp", json!({"challenge_id": challenge, "code": code})).await;
    assert_eq!((st, b["error"].as_str()), (401, Some("otp_exhausted")), "{b}");
}

/// The right code among 50 concurrent guesses: each guess takes one of the
/// 6 attempts before its code is compared, so at most 6 are compared in all
/// (answered `otp_invalid`, or the one success), whatever the timing.
pub async fn right_code_among_50_guesses_at_once(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let (challenge, code) = start_login(sys, &username, &email).await;
    let guess = |i: usize| {
        let code = if i == 25 { code.as_str() } else { wrong_code(&code) };
        sys.post("/v1/login/otp", json!({"challenge_id": challenge, "code": code}))
    };
    let results = join_all((0..50).map(guess)).await;
    let compared = results.iter().filter(|(st, b, _)| *st == 200 || b["error"] == "otp_invalid").count();
    assert!(compared <= 6, "{compared} codes were compared: the cap is 6");
    assert!(results.iter().filter(|(st, _, _)| *st == 200).count() <= 1);
    for (st, b, _) in results.iter().filter(|(st, _, _)| *st != 200) {
        assert_eq!(*st, 401, "{b}");
        assert!(matches!(b["error"].as_str(), Some("otp_invalid" | "otp_exhausted" | "otp_used")), "{b}");
    }
}

/// The same for the standalone OTP API: at most 6 of 50 concurrent guesses
/// (the right one among them) are compared.
pub async fn right_otp_among_50_guesses_at_once(sys: &TestSystem) {
    let (_, email) = unique();
    let (st, _, _) = sys.post("/otp", json!({"action": "send_otp", "email": email})).await;
    assert_eq!(st, 200);
    let code = sys.wait_mail(&email, 1).await.code().expect("code");
    let guess = |i: usize| {
        let otp = if i == 25 { code.as_str() } else { wrong_code(&code) };
        sys.post("/otp", json!({"action": "verify_otp", "email": email, "otp": otp}))
    };
    let results = join_all((0..50).map(guess)).await;
    let compared = results.iter().filter(|(st, b, _)| *st == 200 || b["message"] == "Invalid OTP").count();
    assert!(compared <= 6, "{compared} codes were compared: the cap is 6");
    for (st, b, _) in results.iter().filter(|(st, _, _)| *st != 200) {
        assert!(matches!(*st, 401 | 403 | 404), "{st} {b}");
    }
}

/// Another site's page can post a form or text body without a CORS
/// preflight, so `/otp` refuses any body not declared as JSON, and sends
/// nothing for it.
pub async fn otp_refuses_bodies_not_declared_json(sys: &TestSystem) {
    let (_, email) = unique();
    let body = json!({"action": "send_otp", "email": email}).to_string();
    for ct in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let mut req = sys.http.post(sys.url("/otp")).body(body.clone());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.expect("send");
        assert_eq!(r.status(), 415, "{ct:?}");
        let b: Value = r.json().await.expect("json");
        assert_eq!(b["message"], "Content-Type must be application/json", "{ct:?}");
    }
    let (st, b, _) = sys.post("/otp", json!({"action": "send_otp", "email": email})).await;
    assert_eq!(st, 200, "{b}");
    let _ = sys.wait_mail(&email, 1).await;
    assert_eq!(sys.mails_to(&email).await.len(), 1, "a refused body sent a code");
}

/// Account A's code, submitted on account B's challenge, is refused and
/// costs B a try; both codes still work on their own challenges.
pub async fn code_bound_to_challenge(sys: &TestSystem) {
    let (user_a, email_a) = verified_user(sys).await;
    let (user_b, email_b) = verified_user(sys).await;
    let (ch_a, code_a) = start_login(sys, &user_a, &email_a).await;
    let (ch_b, code_b) = start_login(sys, &user_b, &email_b).await;
    if code_a != code_b {
        let (st, b, _) = sys.post("/v1/login/otp", json!({"challenge_id": ch_b, "code": code_a})).await;
        assert_eq!((st, b["error"].as_str(), b["attempts_left"].as_u64()), (401, Some("otp_invalid"), Some(5)), "{b}");
    }
    let (st, tokens_b, _) = sys.post("/v1/login/otp", json!({"challenge_id": ch_b, "code": code_b})).await;
    assert_eq!(st, 200, "{tokens_b}");
    let (st, tokens_a, _) = sys.post("/v1/login/otp", json!({"challenge_id": ch_a, "code": code_a})).await;
    assert_eq!(st, 200, "{tokens_a}");
    let (_, me) = sys.get_auth("/v1/me", tokens_a["access_token"].as_str().expect("access")).await;
    assert_eq!(me["username"], user_a.as_str());
}

// ---------------------------------------------------------------- step skipping

/// The password step alone yields no token, no session and no cookie, and
/// nothing it returned opens /v1/me or refreshes.
pub async fn password_step_alone_is_not_a_login(sys: &TestSystem) {
    let (username, _) = verified_user(sys).await;
    let (st, body, h) = sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{body}");
    let obj = body.as_object().expect("object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["challenge_id", "expires_at", "resend_after"], "{body}");
    assert!(!h.contains_key("set-cookie"), "the password step set a cookie");
    assert!(!h.contains_key("authorization"));
    for v in obj.values() {
        let s = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(sys.get_auth("/v1/me", &s).await.0, 401, "{s} opened /v1/me");
        let (st, _, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": s })).await;
        assert!(st == 401 || st == 400, "{s} refreshed: {st}");
    }
    // Without a code, the challenge id is no bearer either in any shape.
    let challenge = obj["challenge_id"].as_str().expect("id");
    let (st, _, _) = sys.post("/v1/login/otp", json!({"challenge_id": challenge, "code": ""})).await;
    assert_eq!(st, 400);
}

// ---------------------------------------------------------------- verification links

/// Verifying with user B's token verifies B only; A stays unverified.
pub async fn another_users_token_verifies_only_that_user(sys: &TestSystem) {
    let (user_a, email_a) = unique();
    let (user_b, email_b) = unique();
    for (u, e) in [(&user_a, &email_a), (&user_b, &email_b)] {
        let (st, _, _) = sys.post("/v1/register", json!({"username": u, "email": e, "password": PASSWORD})).await;
        assert_eq!(st, 202);
    }
    let token_b = token_from_link(&sys.wait_mail(&email_b, 1).await.link().expect("link"));
    let _ = sys.wait_mail(&email_a, 1).await;
    let (st, b, _) = sys.post("/v1/verify-email", json!({ "token": token_b })).await;
    assert_eq!(st, 200, "{b}");
    let (st, b, _) = sys.post("/v1/login", json!({"identifier": user_a, "password": PASSWORD})).await;
    assert_eq!((st, b["error"].as_str()), (401, Some("invalid_credentials")), "A was verified by B's token");
    let (st, b, _) = sys.post("/v1/login", json!({"identifier": user_b, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{b}");
}

/// A spoofed Host (and X-Forwarded-Host) header does not change the link.
/// (On the AWS backend the queued job carries only the token and the mail
/// worker renders the link from its configured base, so the check there is
/// that the job holds no attacker host at all.) The Host is a name the
/// local server's Host check lets through (`*.localhost`), as API Gateway
/// would let a custom domain's through.
pub async fn spoofed_host_does_not_change_the_link(sys: &TestSystem) {
    let (username, email) = unique();
    let r = sys
        .http
        .post(sys.url("/v1/register"))
        .header("host", "evil.localhost")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .json(&json!({"username": username, "email": email, "password": PASSWORD}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 202);
    let mail = sys.wait_mail(&email, 1).await;
    let link = mail.link().expect("link");
    assert!(link.starts_with("http://127.0.0.1:3000/verify-email?token="), "{link}");
    assert!(!mail.text.contains("evil.example"), "{}", mail.text);
    // Same for the resend path.
    let r = sys
        .http
        .post(sys.url("/v1/verify-email/resend"))
        .header("host", "evil.localhost")
        .json(&json!({ "email": email }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 202);
    for m in sys.mails_to(&email).await {
        assert!(!m.text.contains("evil."), "{}", m.text);
    }
}

/// DNS rebinding: a page on another site whose name now resolves to the
/// server's address sends its requests with that name as `Host`. Served
/// directly (the local runner), they are refused with 421 before any route
/// runs, the API's and the pages' alike, with the security headers, and
/// nothing is written; the same requests by address or localhost are served.
pub async fn rebound_host_names_are_refused(sys: &TestSystem) {
    let (username, email) = unique();
    let body = json!({"username": username, "email": email, "password": PASSWORD});
    for host in ["attacker.example", "attacker.example:3000", "127.0.0.1.nip.io", "localhost.attacker.example"] {
        let r = sys.http.post(sys.url("/v1/register")).header("host", host).json(&body).send().await.expect("send");
        assert_eq!(r.status(), 421, "{host}");
        for (name, value) in [
            ("x-content-type-options", "nosniff"),
            ("cache-control", "no-store"),
            ("strict-transport-security", "max-age=63072000; includeSubDomains"),
            ("x-frame-options", "DENY"),
        ] {
            assert_eq!(r.headers()[name], value, "{host}");
        }
        assert!(
            r.headers()["content-security-policy"].to_str().expect("ascii").contains("frame-ancestors 'none'"),
            "{host}"
        );
        let b: serde_json::Value = r.json().await.expect("json");
        assert_eq!(b["error"], "misdirected_request", "{host}: {b}");
        for path in ["/login", "/.well-known/jwks.json", "/healthz"] {
            let r = sys.http.get(sys.url(path)).header("host", host).send().await.expect("send");
            assert_eq!(r.status(), 421, "{host} {path}");
        }
    }
    for host in ["localhost:3000", "127.0.0.1:3000", "[::1]"] {
        let r = sys.http.get(sys.url("/healthz")).header("host", host).send().await.expect("send");
        assert_eq!(r.status(), 200, "{host}");
    }
    // Had a refused registration been made, this one would find the
    // address taken and mail its owner a notice, not a link.
    let (st, b, _) = sys.post("/v1/register", body).await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(sys.wait_mail(&email, 1).await.kind, "verify_email");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(sys.mails_to(&email).await.len(), 1, "a refused registration wrote nothing");
}

// ---------------------------------------------------------------- sessions

/// The access token is dead on /v1/me right after logout.
pub async fn jwt_after_logout(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let access = tokens["access_token"].as_str().expect("access");
    assert_eq!(sys.get_auth("/v1/me", access).await.0, 200);
    let (st, _, _) = sys.post("/v1/logout", json!({ "refresh_token": tokens["refresh_token"] })).await;
    assert_eq!(st, 204);
    let (st, b) = sys.get_auth("/v1/me", access).await;
    assert_eq!((st, b["error"].as_str()), (401, Some("unauthorized")));
}

/// Reusing a rotated refresh token revokes the whole session, including the
/// refresh token and access token it was rotated into (a token older than
/// the one the last rotation replaced: with a retry grace configured, that
/// one is a client's retry, `refresh_retry_within_the_grace`).
pub async fn refresh_reuse_revokes(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let refresh = |token: &Value| sys.post("/v1/token/refresh", json!({ "refresh_token": token }));
    // The owner refreshes twice; the thief's copy of the first token is
    // then neither current nor the one just replaced.
    let (st, rotated, _) = refresh(&tokens["refresh_token"]).await;
    assert_eq!(st, 200, "{rotated}");
    let (st, owner, _) = refresh(&rotated["refresh_token"]).await;
    assert_eq!(st, 200, "{owner}");
    let (st, _, _) = refresh(&tokens["refresh_token"]).await;
    assert_eq!(st, 401);
    let (st, _, _) = refresh(&owner["refresh_token"]).await;
    assert_eq!(st, 401, "the thief's (or owner's) rotated token still works");
    assert_eq!(sys.get_auth("/v1/me", owner["access_token"].as_str().expect("access")).await.0, 401);
}

/// Knowing a session id (it is the `sid` of every access token) is not
/// enough to end the session: a made-up secret is refused by refresh and by
/// logout, and the session and its real tokens still work.
pub async fn forged_refresh_secret_ends_nothing(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let real = tokens["refresh_token"].as_str().expect("refresh");
    let (sid, secret) = real.split_once('.').expect("<session id>.<secret>");
    let flipped: String = secret.chars().rev().collect();
    for forged in [format!("{sid}.{}", "A".repeat(secret.len())), format!("{sid}.{flipped}")] {
        for path in ["/v1/token/refresh", "/v1/logout"] {
            let (st, b, _) = sys.post(path, json!({ "refresh_token": forged })).await;
            assert_eq!((st, b["error"].as_str()), (401, Some("invalid_refresh_token")), "{path}: {b}");
        }
    }
    assert_eq!(sys.get_auth("/v1/me", tokens["access_token"].as_str().expect("access")).await.0, 200);
    let (st, b, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": real })).await;
    assert_eq!(st, 200, "the real refresh token stopped working: {b}");
}

/// A password change ends every other session of the user at once (their
/// refresh and access tokens), keeps the one that made it, and only the new
/// password logs in afterwards. A wrong current password or a weak new one
/// changes nothing.
pub async fn password_change_ends_other_sessions(sys: &TestSystem) {
    const NEW: &str = "quartz lantern orbit mosaic 47";
    let (username, email) = verified_user(sys).await;
    let mine = sign_in(sys, &username, &email).await;
    let other = sign_in(sys, &username, &email).await;
    let access = |t: &Value| t["access_token"].as_str().expect("access").to_string();
    let change = |token: Option<String>, body: Value| {
        let mut req = sys.http.post(sys.url("/v1/password")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req.send().await.expect("send");
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let refused = [
        (
            Some(access(&mine)),
            json!({"current_password": "not the password at all", "new_password": NEW}),
            "current_password",
        ),
        (Some(access(&mine)), json!({"current_password": PASSWORD, "new_password": "password1234"}), "new_password"),
        (
            Some(access(&mine)),
            json!({"current_password": PASSWORD, "new_password": format!("{username} {NEW}")}),
            "new_password",
        ),
    ];
    for (token, body, field) in refused {
        let (st, b) = change(token, body).await;
        assert_eq!((st, b["field"].as_str()), (400, Some(field)), "{b}");
    }
    let (st, _) = change(None, json!({"current_password": PASSWORD, "new_password": NEW})).await;
    assert_eq!(st, 401, "no access token");
    assert_eq!(sys.get_auth("/v1/me", &access(&other)).await.0, 200, "a refused change ended a session");

    let mails = sys.mails_to(&email).await.len();
    let (st, changed) = change(Some(access(&mine)), json!({"current_password": PASSWORD, "new_password": NEW})).await;
    assert_eq!((st, changed["status"].as_str()), (200, Some("password_changed")), "{changed}");
    assert_eq!(sys.wait_mail(&email, mails + 1).await.kind, "password_changed", "the owner is told");
    only_the_asking_session_lives(sys, &mine, &other).await;

    let (st, b, _) = sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD})).await;
    assert_eq!((st, b["error"].as_str()), (401, Some("invalid_credentials")), "the old password");
    let (st, b, _) = sys.post("/v1/login", json!({"identifier": username, "password": NEW})).await;
    assert_eq!(st, 202, "the new password: {b}");
    only_the_new_device_token_vouches(sys, &username, NEW, &changed, &mine).await;
}

/// After a password change or a sign-out elsewhere whose answer is
/// `answer`: someone locks the account with wrong passwords; then the
/// password alone is refused, and so is the device token of the login that
/// made `mine` (the change ended it), but the answer's token gets the
/// client that asked through the password step.
async fn only_the_new_device_token_vouches(
    sys: &TestSystem,
    username: &str,
    password: &str,
    answer: &Value,
    mine: &Value,
) {
    let fresh = answer["device_token"].as_str().expect("a device token in the answer");
    let stale = mine["device_token"].as_str().expect("the login's device token");
    assert_ne!(fresh, stale);
    for _ in 0..10 {
        let (st, b, _) = sys.post("/v1/login", json!({"identifier": username, "password": "wrong wrong wrong"})).await;
        assert_eq!(st, 401, "{b}");
    }
    let login = |device: Option<&str>| {
        sys.post("/v1/login", json!({"identifier": username, "password": password, "device_token": device}))
    };
    assert_eq!(login(None).await.0, 401, "the account is not locked");
    assert_eq!(login(Some(stale)).await.0, 401, "a device token from before the change vouches");
    let (st, b, _) = login(Some(fresh)).await;
    assert_eq!(st, 202, "the answer's device token: {b}");
}

/// After a password change or a sign-out elsewhere made through `mine`:
/// `other`'s access and refresh tokens are refused, `mine`'s still work.
async fn only_the_asking_session_lives(sys: &TestSystem, mine: &Value, other: &Value) {
    let access = |t: &Value| t["access_token"].as_str().expect("access").to_string();
    assert_eq!(sys.get_auth("/v1/me", &access(other)).await.0, 401, "the other session's access token");
    let (st, _, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": other["refresh_token"] })).await;
    assert_eq!(st, 401, "the other session's refresh token");
    assert_eq!(sys.get_auth("/v1/me", &access(mine)).await.0, 200, "the session that asked ended");
    let (st, b, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": mine["refresh_token"] })).await;
    assert_eq!(st, 200, "{b}");
}

/// "Sign out everywhere else" (`POST /v1/logout/others`): refused without
/// an access token or the current password, and then nothing ends; with
/// the password every other session ends, this one lives on, the password
/// still signs in, and nobody is mailed.
pub async fn signing_out_everywhere_else_ends_the_other_sessions(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let mine = sign_in(sys, &username, &email).await;
    let other = sign_in(sys, &username, &email).await;
    let access = |t: &Value| t["access_token"].as_str().expect("access").to_string();
    const PATH: &str = "/v1/logout/others";
    for body in [json!({"current_password": "not the password at all"}), json!({})] {
        let (st, b) = sys.post_auth(PATH, &access(&mine), body).await;
        assert_eq!((st, b["field"].as_str()), (400, Some("current_password")), "{b}");
    }
    let (st, _, _) = sys.post(PATH, json!({"current_password": PASSWORD})).await;
    assert_eq!(st, 401, "no access token");
    let (st, _) = sys.post_auth(PATH, "not-a-token", json!({"current_password": PASSWORD})).await;
    assert_eq!(st, 401, "a forged access token");
    assert_eq!(sys.get_auth("/v1/me", &access(&other)).await.0, 200, "a refused request ended a session");

    let mails = sys.mails_to(&email).await.len();
    let (st, ended) = sys.post_auth(PATH, &access(&mine), json!({"current_password": PASSWORD})).await;
    assert_eq!((st, ended["status"].as_str()), (200, Some("other_sessions_ended")), "{ended}");
    only_the_asking_session_lives(sys, &mine, &other).await;
    let again = sign_in(sys, &username, &email).await;
    assert_eq!(sys.get_auth("/v1/me", &access(&again)).await.0, 200, "the password still signs in");
    let kinds: Vec<String> = sys.mails_to(&email).await[mails..].iter().map(|m| m.kind.clone()).collect();
    assert_eq!(kinds, ["login_code"], "only the new login's code is mailed");
    only_the_new_device_token_vouches(sys, &username, PASSWORD, &ended, &mine).await;
}

/// The session list (`GET /v1/sessions`) shows a user their own live
/// sessions and nobody else's; ending one (`POST /v1/sessions/{id}/revoke`)
/// takes the owner's access token and password: another user, with their
/// own password, is answered 404 and ends nothing, as is a wrong password
/// (400); then only that session ends.
pub async fn sessions_are_listed_and_ended_by_their_owner_only(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let (mine, other) = (sign_in(sys, &username, &email).await, sign_in(sys, &username, &email).await);
    let (their_name, their_email) = verified_user(sys).await;
    let theirs = sign_in(sys, &their_name, &their_email).await;
    let access = |t: &Value| t["access_token"].as_str().expect("access").to_string();
    let sid =
        async |t: &Value| sys.get_auth("/v1/me", &access(t)).await.1["session_id"].as_str().expect("sid").to_owned();
    let (mine_id, other_id, their_id) = (sid(&mine).await, sid(&other).await, sid(&theirs).await);

    let listed = async |t: &Value| {
        let (st, b) = sys.get_auth("/v1/sessions", &access(t)).await;
        assert_eq!(st, 200, "{b}");
        let mut ids: Vec<(String, bool)> = b["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| (s["id"].as_str().expect("id").to_owned(), s["current"].as_bool().expect("current")))
            .collect();
        ids.sort();
        ids
    };
    let mut want = vec![(mine_id.clone(), true), (other_id.clone(), false)];
    want.sort();
    assert_eq!(listed(&mine).await, want, "the owner's two sessions, and only theirs");
    assert_eq!(listed(&theirs).await, [(their_id.clone(), true)]);
    let bare = sys.http.get(sys.url("/v1/sessions")).send().await.expect("request");
    assert_eq!(bare.status().as_u16(), 401, "no access token");

    let end = |id: &str| format!("/v1/sessions/{id}/revoke");
    let (st, b) = sys.post_auth(&end(&other_id), &access(&theirs), json!({"current_password": PASSWORD})).await;
    assert_eq!((st, b["error"].as_str()), (404, Some("session_not_found")), "another user's session: {b}");
    let (st, b) = sys.post_auth(&end(&other_id), &access(&mine), json!({"current_password": "not it at all"})).await;
    assert_eq!((st, b["field"].as_str()), (400, Some("current_password")), "{b}");
    let (st, _, _) = sys.post(&end(&other_id), json!({"current_password": PASSWORD})).await;
    assert_eq!(st, 401, "no access token");
    assert_eq!(sys.get_auth("/v1/me", &access(&other)).await.0, 200, "a refused request ended the session");

    let (st, b) = sys.post_auth(&end(&other_id), &access(&mine), json!({"current_password": PASSWORD})).await;
    assert_eq!(st, 204, "{b}");
    assert_eq!(sys.get_auth("/v1/me", &access(&other)).await.0, 401, "the ended session's access token");
    let (st, _, _) = sys.post("/v1/token/refresh", json!({"refresh_token": other["refresh_token"]})).await;
    assert_eq!(st, 401, "its refresh token");
    assert_eq!(sys.get_auth("/v1/me", &access(&mine)).await.0, 200, "the asking session");
    assert_eq!(sys.get_auth("/v1/me", &access(&theirs)).await.0, 200, "the other user's session");
    assert_eq!(listed(&mine).await, [(mine_id, true)]);
}

/// 20 concurrent refreshes of one refresh token rotate it once: every one
/// is answered with the same new refresh token, which works.
/// With a retry grace configured: 20 refreshes of one token at once make one
/// rotation, and every racer gets its token.
pub async fn concurrent_refreshes(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let body = json!({ "refresh_token": tokens["refresh_token"] });
    let results = join_all((0..20).map(|_| sys.post("/v1/token/refresh", body.clone()))).await;
    // One rotation: the racers that lost it are retries of the same token
    // within its grace, and get the winner's token.
    let mut issued = std::collections::BTreeSet::new();
    for (st, b, _) in &results {
        assert_eq!(*st, 200, "{b}");
        issued.insert(b["refresh_token"].as_str().expect("refresh").to_string());
    }
    assert_eq!(issued.len(), 1, "20 refreshes of one token rotated it more than once: {issued:?}");
    let (st, b, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": issued.first() })).await;
    assert_eq!(st, 200, "the racers' token: {b}");
}

/// With a retry grace configured, a retry of the token just replaced gets
/// the same token (`scenarios::a_refresh_retried_within_the_grace_gets_the_same_token`).
pub async fn refresh_retry_within_the_grace(sys: &TestSystem) {
    latchkey_tests::scenarios::a_refresh_retried_within_the_grace_gets_the_same_token(sys).await;
}

/// By default (no retry grace): 20 refreshes of one token at once make one
/// rotation; every other racer presents a replaced token, a reuse, and the
/// session is revoked, the winner's token with it.
pub async fn concurrent_refreshes_without_a_grace(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let body = json!({ "refresh_token": tokens["refresh_token"] });
    let results = join_all((0..20).map(|_| sys.post("/v1/token/refresh", body.clone()))).await;
    let won: Vec<&Value> = results.iter().filter(|(st, _, _)| *st == 200).map(|(_, b, _)| b).collect();
    assert_eq!(won.len(), 1, "{:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
    for (st, b, _) in results.iter().filter(|(st, _, _)| *st != 200) {
        assert_eq!((*st, b["error"].as_str()), (401, Some("invalid_refresh_token")), "{b}");
    }
    let (st, _, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": won[0]["refresh_token"] })).await;
    assert_eq!(st, 401, "the session outlived a reuse");
}

// ---------------------------------------------------------------- headers

/// 2xx (a 204 with no Content-Type), 4xx (400, 401, 404, 405, 413, 415,
/// 429) and HTML pages all carry the SECURITY.md header set.
pub async fn headers_on_every_status(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let (st, body, _) = sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD})).await;
    assert_eq!(st, 202);
    let challenge = body["challenge_id"].as_str().expect("challenge").to_string();
    // Its code mail is in before the `sign_in` below counts the mails (a
    // CI run under load had it land after the count, and the sign-in took
    // this login's code for its own).
    sys.wait_mail(&email, 2).await;
    let mut seen = vec![];
    let mut check = |what: &str, st: u16, h: &HeaderMap| {
        assert_security_headers(h, st, what);
        seen.push(st);
    };
    for (path, want) in [("/healthz", 200), ("/.well-known/jwks.json", 200), ("/nope", 404), ("/v1/login", 405)] {
        let r = sys.http.get(sys.url(path)).send().await.expect("get");
        assert_eq!(r.status().as_u16(), want, "{path}");
        check(path, want, r.headers());
    }
    for path in ["/", "/login", "/register", "/verify-email?token=x"] {
        let r = sys.http.get(sys.url(path)).send().await.expect("page");
        check(path, r.status().as_u16(), r.headers());
    }
    let (st, _, h) = raw_post(sys, "/v1/login", "application/json", b"{".to_vec()).await;
    assert_eq!(st, 400);
    check("400", st, &h);
    let r = sys.http.get(sys.url("/v1/me")).bearer_auth("x.y.z").send().await.expect("me");
    assert_eq!(r.status(), 401);
    check("401", 401, r.headers());
    let big = json!({"identifier": "abc", "password": "x".repeat(20_000)}).to_string().into_bytes();
    let (st, _, h) = raw_post(sys, "/v1/login", "application/json", big).await;
    assert_eq!(st, 413);
    check("413", st, &h);
    let (st, _, h) = raw_post(sys, "/v1/login", "text/plain", b"{}".to_vec()).await;
    assert_eq!(st, 415);
    check("415", st, &h);
    let (st, _, h) = sys.post("/v1/login/otp/resend", json!({ "challenge_id": challenge })).await;
    assert_eq!(st, 429, "resend inside the cooldown");
    assert!(h.contains_key("retry-after"));
    check("429", st, &h);
    let tokens = sign_in(sys, &username, &email).await;
    let (st, b, h) = sys.post("/v1/logout", json!({ "refresh_token": tokens["refresh_token"] })).await;
    assert_eq!(st, 204, "{b}");
    check("204", st, &h);
    assert!(seen.contains(&200) && seen.contains(&429));
}

// ---------------------------------------------------------------- rate limits (default limits)

/// With the default limits, the 21st login for one identifier within 15 min
/// gets 429 with Retry-After, whatever the password (and still does for the
/// right one); the limit also carries the security headers.
pub async fn login_burst_per_identifier(sys: &TestSystem) {
    let (username, _) = verified_user(sys).await;
    let mut statuses = vec![];
    for _ in 0..20 {
        let (st, _, _) = sys.post("/v1/login", json!({"identifier": username, "password": "wrong wrong wrong"})).await;
        statuses.push(st);
    }
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let (st, b, h) = sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD})).await;
    assert_eq!((st, b["error"].as_str()), (429, Some("rate_limited")), "{b}");
    let retry: u64 = h["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=900).contains(&retry), "{retry}");
    assert_security_headers(&h, st, "429 login");
    // The same identifier spelt differently is the same key.
    let (st, _, _) = sys.post("/v1/login", json!({"identifier": username.to_uppercase(), "password": PASSWORD})).await;
    assert_eq!(st, 429);
}

/// With the default limits: someone who knows only the username keeps the
/// account locked and its per-identifier limit spent (SECURITY.md: never a
/// lock an attacker can keep up). The owner's device token from an earlier
/// login still gets through the password step, and the code finishes it; a
/// forged or foreign token is no help.
pub async fn lockout_by_a_stranger_spares_the_owners_device(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    let (other_name, other_email) = verified_user(sys).await;
    let device = sign_in(sys, &username, &email).await["device_token"].as_str().expect("device_token").to_string();
    let foreign =
        sign_in(sys, &other_name, &other_email).await["device_token"].as_str().expect("device_token").to_string();
    // The sign-in took 1 of the identifier's 20 a quarter hour; 10 wrong
    // passwords lock the account.
    for _ in 0..19 {
        let (st, b, _) = sys.post("/v1/login", json!({"identifier": username, "password": "wrong wrong wrong"})).await;
        assert_eq!(st, 401, "{b}");
    }
    let mut forged = device.clone();
    let last = forged.pop().expect("non-empty");
    forged.push(if last == '0' { '1' } else { '0' });
    for token in [None, Some(forged.as_str()), Some(foreign.as_str())] {
        let (st, b, _) =
            sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD, "device_token": token})).await;
        assert_eq!(st, 429, "{token:?}: {b}");
    }
    let before = sys.mails_to(&email).await.len();
    let (st, b, _) =
        sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD, "device_token": device})).await;
    assert_eq!(st, 202, "{b}");
    let code = sys.wait_mail(&email, before + 1).await.code().expect("code in mail");
    let (st, tokens, _) = sys.post("/v1/login/otp", json!({"challenge_id": b["challenge_id"], "code": code})).await;
    assert_eq!(st, 200, "{tokens}");
    assert!(tokens["device_token"].as_str().is_some_and(|t| t != device), "{tokens}");
    // The password is still required.
    let (st, _, _) = sys
        .post("/v1/login", json!({"identifier": username, "password": "wrong wrong wrong", "device_token": device}))
        .await;
    assert_eq!(st, 401);
}

/// With the default limits, send_otp for one address: the cooldown answers
/// 429 with Retry-After, and no second mail goes out.
pub async fn send_otp_burst(sys: &TestSystem) {
    let (_, email) = unique();
    let results = join_all((0..5).map(|_| sys.post("/otp", json!({"action": "send_otp", "email": email})))).await;
    let sent = results.iter().filter(|(st, _, _)| *st == 200).count();
    assert_eq!(sent, 1, "{:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
    for (st, _, h) in results.iter().filter(|(st, _, _)| *st != 200) {
        assert_eq!(*st, 429);
        assert!(h.contains_key("retry-after"));
    }
    // A registration's link, mailed after the burst's: once it is out,
    // every code mail the burst queued is out too.
    let (st, b, _) =
        sys.post("/v1/register", json!({"username": unique().0, "email": email, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(
        latchkey_tests::scenarios::mail_kinds_through(sys, &email, "verify_email").await,
        ["standalone_code", "verify_email"],
        "mail bombing: more than one code mail"
    );
}

// ---------------------------------------------------------------- races

/// 20 concurrent registrations of one username: exactly one account, and
/// the 19 losers left no claim on their email addresses.
pub async fn register_same_username_20_at_once(sys: &TestSystem) {
    let (username, _) = unique();
    let emails: Vec<String> = (0..20).map(|_| unique().1).collect();
    let results = join_all(
        emails
            .iter()
            .map(|e| sys.post("/v1/register", json!({"username": username, "email": e, "password": PASSWORD}))),
    )
    .await;
    let won: Vec<usize> = (0..20).filter(|i| results[*i].0 == 202).collect();
    assert_eq!(won.len(), 1, "{:?}", results.iter().map(|r| (r.0, r.1.clone())).collect::<Vec<_>>());
    for (st, b, _) in results.iter().filter(|(st, _, _)| *st != 202) {
        assert_eq!((*st, b["error"].as_str()), (409, Some("username_taken")), "{b}");
    }
    // Only the winner got a verification mail, and it verifies.
    let winner_mail = sys.wait_mail(&emails[won[0]], 1).await;
    assert_eq!(winner_mail.kind, "verify_email");
    // No orphan email claims: every loser's address registers fresh (a left
    // claim would silently turn it into a "taken" address with no mail).
    for (i, e) in emails.iter().enumerate().filter(|(i, _)| *i != won[0]).take(5) {
        let (st, b, _) =
            sys.post("/v1/register", json!({"username": unique().0, "email": e, "password": PASSWORD})).await;
        assert_eq!(st, 202, "loser {i}: {b}");
        assert_eq!(sys.wait_mail(e, 1).await.kind, "verify_email", "loser {i}'s address was left claimed");
    }
}

/// 20 concurrent registrations of one email: all answer alike (202), exactly
/// one verification mail, and the 19 losing usernames are held as the
/// winner's is (a later registration of each answers 409, as it would had
/// its own registration made the account).
pub async fn register_same_email_20_at_once(sys: &TestSystem) {
    let (_, email) = unique();
    let names: Vec<String> = (0..20).map(|_| unique().0).collect();
    let results = join_all(
        names.iter().map(|u| sys.post("/v1/register", json!({"username": u, "email": email, "password": PASSWORD}))),
    )
    .await;
    for (st, b, _) in &results {
        assert_eq!(*st, 202, "{b}");
    }
    sys.wait_mail(&email, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let verify_mails: Vec<_> = sys.mails_to(&email).await.into_iter().filter(|m| m.kind == "verify_email").collect();
    assert_eq!(verify_mails.len(), 1, "one address, one account");
    for u in &names {
        let (st, b, _) =
            sys.post("/v1/register", json!({"username": u, "email": unique().1, "password": PASSWORD})).await;
        assert_eq!((st, b["error"].as_str()), (409, Some("username_taken")), "{u}: {b}");
    }
    // Held, no account: only the winner's name is an account, which its
    // link verifies (unverified, it signs in as a hold does).
    let token = token_from_link(&verify_mails[0].link().expect("link"));
    let (st, b, _) = sys.post("/v1/verify-email", json!({ "token": token })).await;
    assert_eq!(st, 200, "{b}");
    let mut statuses = Vec::new();
    for u in &names {
        statuses.push(sys.post("/v1/login", json!({"identifier": u, "password": PASSWORD})).await.0);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [vec![202], vec![401; 19]].concat(), "19 holds and one account");
}

// ---------------------------------------------------------------- bad input

/// Deep JSON, invalid UTF-8: 400, never 5xx.
pub async fn hostile_bodies(sys: &TestSystem) {
    for depth in [200, 5_000, 8_000] {
        let body = format!("{{\"username\":{}{}}}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
        let (st, b, h) = raw_post(sys, "/v1/register", "application/json", body).await;
        assert_eq!(st, 400, "depth {depth}: {b}");
        assert_security_headers(&h, st, "deep json");
    }
    let unclosed = "[".repeat(10_000).into_bytes();
    let (st, b, _) = raw_post(sys, "/v1/login", "application/json", unclosed).await;
    assert_eq!(st, 400, "{b}");
    let mut invalid = br#"{"identifier":"ab"#.to_vec();
    invalid.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    invalid.extend_from_slice(br#"c","password":"correct horse battery staple"}"#);
    let (st, b, _) = raw_post(sys, "/v1/login", "application/json", invalid).await;
    assert_eq!(st, 400, "{b}");
    let (st, b, _) = raw_post(sys, "/otp", "application/json", vec![0xff; 64]).await;
    assert_eq!(st, 400, "{b}");
    let (st, b, _) = raw_post(sys, "/v1/register", "application/json", b"\xef\xbb\xbf{}".to_vec()).await;
    assert_eq!(st, 400, "{b}");
}

/// Control characters and line breaks in usernames and identifiers are
/// refused (400 naming the field) and never echoed back, so they cannot
/// forge a log or audit line; nothing was written.
pub async fn control_characters_in_names(sys: &TestSystem) {
    let forged = "\r\n{\"level\":\"INFO\",\"msg\":\"login ok\",\"user\":\"admin\"}";
    let (_, email) = unique();
    for evil in [
        format!("eve{forged}"),
        "eve\nadmin".to_string(),
        "eve\u{0}x".to_string(),
        "eve\tx".to_string(),
        "eve\u{1b}[31mx".to_string(),
        "eve\u{2028}x".to_string(),
        "eve\u{85}x".to_string(),
        "eve\u{7f}x".to_string(),
    ] {
        let (st, b, _) =
            sys.post("/v1/register", json!({"username": evil, "email": email, "password": PASSWORD})).await;
        assert_eq!((st, b["field"].as_str()), (400, Some("username")), "{evil:?}: {b}");
        let text = b.to_string();
        assert!(!text.contains("login ok") && !text.contains("admin"), "input echoed: {text}");
        let (st, b, _) = sys.post("/v1/login", json!({"identifier": evil, "password": PASSWORD})).await;
        assert_eq!((st, b["field"].as_str()), (400, Some("identifier")), "{evil:?}: {b}");
        let (st, b, _) =
            sys.post("/v1/login", json!({"identifier": format!("{evil}@example.com"), "password": PASSWORD})).await;
        assert_eq!(st, 400, "{evil:?} as email: {b}");
    }
    // A CRLF in an email field, too.
    let (st, b, _) = sys
        .post(
            "/v1/register",
            json!({"username": unique().0, "email": "a@example.com\r\nBcc: x@evil.example", "password": PASSWORD}),
        )
        .await;
    assert_eq!((st, b["field"].as_str()), (400, Some("email")), "{b}");
    let (st, _, _) =
        sys.post("/otp", json!({"action": "send_otp", "email": "a@example.com\r\nBcc: x@evil.example"})).await;
    assert_eq!(st, 400);
    // Nothing was written: the address never got mail and is still free.
    assert!(sys.mails_to(&email).await.is_empty());
    let (st, _, _) =
        sys.post("/v1/register", json!({"username": unique().0, "email": email, "password": PASSWORD})).await;
    assert_eq!(st, 202);
    assert_eq!(sys.wait_mail(&email, 1).await.kind, "verify_email");
}

/// A 1 MB password is refused by size (413), before parsing or hashing;
/// a 2 KiB one (under the body limit) by the 1 KiB field cap (400).
pub async fn huge_passwords(sys: &TestSystem) {
    let (username, email) = verified_user(sys).await;
    for path in ["/v1/login", "/v1/register"] {
        let answer = declared_too_large(sys, path, 1024 * 1024).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(answer.contains("\"payload_too_large\""), "{path}: {answer}");
    }
    // Without a Content-Length (chunked), the limit still holds.
    assert_eq!(chunked_login(sys, &username, 1024 * 1024).await, 413);
    let two_k = "a".repeat(2048);
    let (st, b, _) = sys.post("/v1/login", json!({"identifier": username, "password": two_k})).await;
    assert_eq!((st, b["field"].as_str()), (400, Some("password")), "{b}");
    let (st, b, _) =
        sys.post("/v1/register", json!({"username": unique().0, "email": unique().1, "password": two_k})).await;
    assert_eq!((st, b["field"].as_str()), (400, Some("password")), "{b}");
    // The refused attempts did not count as failures: the account is fine.
    sign_in(sys, &username, &email).await;
}

/// Emails: trimmed, NFC, lower-cased as a whole, the domain in its ASCII
/// form; plus-addressing kept. Usernames: NFKC, lower-cased.
pub async fn address_normalisation(sys: &TestSystem) {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let plus = format!("bob{id}+news@example.com");
    let username = format!("bob{id}");
    // Registered as "  BOB…+News@Example.COM  ".
    let shouted = format!("  BOB{}+News@Example.COM  ", id.to_uppercase());
    let (st, b, _) =
        sys.post("/v1/register", json!({"username": username, "email": shouted, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{b}");
    let mail = sys.wait_mail(&plus, 1).await;
    assert_eq!(mail.to, plus, "mail goes to the normalised address");
    let (st, _, _) = sys.post("/v1/verify-email", json!({"token": token_from_link(&mail.link().expect("link"))})).await;
    assert_eq!(st, 200);
    let tokens = sign_in(sys, &plus.to_uppercase(), &plus).await;
    let (_, me) = sys.get_auth("/v1/me", tokens["access_token"].as_str().expect("access")).await;
    assert_eq!(me["email"], plus.as_str());
    // The address without the tag is another address: no account there.
    let (st, b, _) =
        sys.post("/v1/login", json!({"identifier": format!("bob{id}@example.com"), "password": PASSWORD})).await;
    assert_eq!((st, b["error"].as_str()), (401, Some("invalid_credentials")));

    // Unicode: a decomposed é (e + U+0301) and a composed É are one
    // address (in the domain: before the @ only ASCII is taken).
    let decomposed = format!("jose{id}@exe\u{301}mple.com");
    let composed_upper = format!("JOSE{}@EX\u{c9}MPLE.COM", id.to_uppercase());
    let (uname, _) = unique();
    let (st, b, _) =
        sys.post("/v1/register", json!({"username": uname, "email": decomposed, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{b}");
    // Registering the composed, upper-cased spelling with another username
    // hits the same address: it answers 202 (no enumeration) but creates no
    // second account: that username is only held.
    let (other, _) = unique();
    let (st, _, _) =
        sys.post("/v1/register", json!({"username": other, "email": composed_upper, "password": PASSWORD})).await;
    assert_eq!(st, 202);
    let (st, b, _) = sys.post("/v1/login", json!({"identifier": other, "password": PASSWORD})).await;
    assert_eq!((st, b["error"].as_str()), (401, Some("invalid_credentials")), "a second account: {b}");

    // Usernames are NFKC-folded: full-width letters are the ASCII name.
    let fullwidth: String = username
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap_or(c) } else { c })
        .collect();
    assert_ne!(fullwidth, username);
    let (st, b, _) =
        sys.post("/v1/register", json!({"username": fullwidth, "email": unique().1, "password": PASSWORD})).await;
    assert_eq!((st, b["error"].as_str()), (409, Some("username_taken")), "{b}");
}

macro_rules! attack_suite {
    ($make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let sys = $make.await;
                crate::$name(&sys).await;
            }
        )*
    };
}

/// Attacks on the test default (relaxed rate limits, so the limiter does not
/// mask what is being tested).
macro_rules! relaxed_attacks {
    ($make:expr) => {
        attack_suite!($make;
            enum_login,
            enum_register,
            enum_register_username_probe,
            enum_resend_and_send_otp,
            enum_password_reset,
            reset_link_20_times_at_once,
            enum_email_change,
            email_change_link_20_times_at_once,
            right_code_50_times_at_once,
            wrong_codes_50_at_once,
            right_code_among_50_guesses_at_once,
            right_otp_among_50_guesses_at_once,
            otp_refuses_bodies_not_declared_json,
            code_bound_to_challenge,
            password_step_alone_is_not_a_login,
            another_users_token_verifies_only_that_user,
            spoofed_host_does_not_change_the_link,
            rebound_host_names_are_refused,
            jwt_after_logout,
            refresh_reuse_revokes,
            forged_refresh_secret_ends_nothing,
            password_change_ends_other_sessions,
            signing_out_everywhere_else_ends_the_other_sessions,
            sessions_are_listed_and_ended_by_their_owner_only,
            concurrent_refreshes_without_a_grace,
            headers_on_every_status,
            register_same_username_20_at_once,
            register_same_email_20_at_once,
            hostile_bodies,
            control_characters_in_names,
            huge_passwords,
            address_normalisation,
        );
    };
}

/// Attacks on a system with a refresh retry grace (off by default).
macro_rules! grace_attacks {
    ($make:expr) => {
        attack_suite!($make; concurrent_refreshes, refresh_retry_within_the_grace);
    };
}

/// Attacks on the production default limits, on a clock that stands still
/// (`frozen_clock`): each fills a limit's window, and a wall clock could
/// cross the window's edge halfway through (a slow emulator, a busy
/// machine), counting the rest afresh.
macro_rules! default_limit_attacks {
    ($make:expr) => {
        attack_suite!($make; login_burst_per_identifier, send_otp_burst, lockout_by_a_stranger_spares_the_owners_device);
    };
}

mod embedded {
    use latchkey_tests::system::TestSystem;
    relaxed_attacks!(TestSystem::embedded());
    mod grace {
        use latchkey_tests::system::TestSystem;
        grace_attacks!(TestSystem::embedded_with(&[
            ("LATCHKEY_RATE_LIMITS", "relaxed"),
            ("LATCHKEY_REFRESH_RETRY_GRACE_SECS", "30")
        ]));
    }
    mod default_limits {
        use latchkey_tests::system::TestSystem;
        default_limit_attacks!(TestSystem::embedded_on_clock(&[], latchkey_tests::system::frozen_clock()));
    }
}

mod aws {
    use latchkey_tests::system::TestSystem;
    relaxed_attacks!(TestSystem::aws());
    mod grace {
        use latchkey_tests::system::TestSystem;
        grace_attacks!(TestSystem::aws_with(&[
            ("LATCHKEY_RATE_LIMITS", "relaxed"),
            ("LATCHKEY_REFRESH_RETRY_GRACE_SECS", "30")
        ]));
    }
    mod default_limits {
        use latchkey_tests::system::TestSystem;
        default_limit_attacks!(TestSystem::aws_with_clock(&[], latchkey_tests::system::frozen_clock()));
    }
}
