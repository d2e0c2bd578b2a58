//! The server-rendered pages over HTTP, as a browser without JavaScript
//! would use them: a cookie jar, form posts, redirects followed by hand.
//! Covers the whole journey, login by email, a wrong code then the right
//! one, CSRF and cross-site refusals (nothing changes), the cookie
//! attributes, `no-store`, the OTP page and the admin page.

use latchkey_tests::scenarios::{PASSWORD, unique};
use latchkey_tests::system::TestSystem;
use reqwest::header::{HeaderMap, SET_COOKIE};
use std::collections::BTreeMap;

const SESSION: &str = "__Host-latchkey_session";
const PRE: &str = "__Host-latchkey_pre";
const CSRF: &str = "__Host-latchkey_csrf";
const DEVICE: &str = "__Host-latchkey_device";

/// A minimal browser: a cookie jar over the test system's client.
struct Browser<'a> {
    sys: &'a TestSystem,
    jar: BTreeMap<String, String>,
    /// The cookies set `SameSite=Strict`: a request from another site goes
    /// without them.
    strict: std::collections::BTreeSet<String>,
    /// Every `Set-Cookie` seen, newest last.
    set_cookies: Vec<String>,
}

struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").expect("csrf field");
        let rest = &self.body[at + 19..];
        rest[..rest.find('"').expect("end")].to_string()
    }
}

impl<'a> Browser<'a> {
    fn new(sys: &'a TestSystem) -> Self {
        Browser { sys, jar: BTreeMap::new(), strict: Default::default(), set_cookies: Vec::new() }
    }

    fn cookie_header(&self) -> String {
        self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    /// What a top-level navigation from another site carries: no Strict cookie.
    fn cross_site_cookie_header(&self) -> String {
        let lax = self.jar.iter().filter(|(k, _)| !self.strict.contains(*k));
        lax.map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    async fn take(&mut self, r: reqwest::Response) -> Page {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        for c in headers.get_all(SET_COOKIE) {
            let c = c.to_str().expect("ascii cookie").to_string();
            let (nv, attrs) = c.split_once(';').unwrap_or((&c, ""));
            let (n, v) = nv.split_once('=').expect("name=value");
            if attrs.contains("Max-Age=0") {
                self.jar.remove(n);
            } else {
                self.jar.insert(n.to_string(), v.to_string());
            }
            if attrs.contains("SameSite=Strict") {
                self.strict.insert(n.to_string());
            } else {
                self.strict.remove(n);
            }
            self.set_cookies.push(c);
        }
        Page { status, headers, body: r.text().await.expect("body") }
    }

    async fn get(&mut self, path: &str) -> Page {
        let url = if path.starts_with("http") { path.to_string() } else { self.sys.url(path) };
        let r = self.sys.http.get(url).header("cookie", self.cookie_header()).send().await.expect("GET");
        self.take(r).await
    }

    /// `path` opened from a link on another site (a mail, another tab).
    async fn arrive_from_another_site(&mut self, path: &str) -> Page {
        let req = self.sys.http.get(self.sys.url(path)).header("cookie", self.cross_site_cookie_header());
        let r = req.header("sec-fetch-site", "cross-site").send().await.expect("GET");
        self.take(r).await
    }

    async fn post_with(&mut self, path: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> Page {
        let mut req = self.sys.http.post(self.sys.url(path)).header("cookie", self.cookie_header()).form(form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("POST");
        self.take(r).await
    }

    /// A same-origin form post, as a browser sends it.
    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        self.post_with(path, form, &[("sec-fetch-site", "same-origin"), ("origin", &self.sys.base.clone())]).await
    }

    fn last_set(&self, name: &str) -> &str {
        self.set_cookies.iter().rev().find(|c| c.starts_with(&format!("{name}="))).expect("cookie was set")
    }
}

async fn register_and_verify(b: &mut Browser<'_>, username: &str, email: &str) {
    let p = b.get("/register").await;
    assert_eq!(p.status, 200);
    assert_eq!(p.headers["cache-control"], "no-store");
    for label in ["for=\"username\"", "for=\"email\"", "for=\"password\""] {
        assert!(p.body.contains(label), "label {label}");
    }
    let csrf = p.csrf();
    // A weak password is refused next to the field; nothing is sent.
    let p =
        b.post("/register", &[("csrf", &csrf), ("username", username), ("email", email), ("password", "short")]).await;
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(p.body.contains("id=\"password-error\""), "{}", p.body);
    let csrf = p.csrf();
    let p =
        b.post("/register", &[("csrf", &csrf), ("username", username), ("email", email), ("password", PASSWORD)]).await;
    assert_eq!((p.status, p.location()), (303, "/register/sent"), "{}", p.body);
    assert!(b.get("/register/sent").await.body.contains("Check your mail"));

    let link = b.sys.wait_mail(email, 1).await.link().expect("link");
    let path = &link[link.find("/verify-email").expect("path")..];
    let p = b.get(path).await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("Confirm my email address"));
    // The GET changed nothing: the password step still says "not verified".
    let csrf = p.csrf();
    let token = link.split("token=").nth(1).expect("token");
    let v = b.post("/verify-email", &[("csrf", &csrf), ("token", token)]).await;
    assert_eq!(v.status, 200, "{}", v.body);
    assert!(v.body.contains("Email confirmed"));
}

/// Password then code; returns the code page's first response.
async fn password_step(b: &mut Browser<'_>, identifier: &str) -> Page {
    let p = b.get("/login").await;
    assert_eq!(p.status, 200);
    let pre_before = b.jar.get(PRE).cloned().expect("pre-session cookie on the login form");
    let csrf = p.csrf();
    let p = b.post("/login", &[("csrf", &csrf), ("identifier", identifier), ("password", PASSWORD)]).await;
    assert_eq!((p.status, p.location()), (303, "/login/code"), "{}", p.body);
    assert_ne!(b.jar.get(PRE), Some(&pre_before), "pre-session rotated at the password step");
    let p = b.get("/login/code").await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("You can ask for a new code in"), "cooldown shown");
    p
}

async fn code_step(b: &mut Browser<'_>, page: &Page, email: &str, n: usize) -> Page {
    let code = b.sys.wait_mail(email, n).await.code().expect("code");
    let p = b.post("/login/code", &[("csrf", &page.csrf()), ("code", &code)]).await;
    assert_eq!((p.status, p.location()), (303, "/dashboard"), "{}", p.body);
    p
}

/// A new account, registered and verified through the pages, then signed
/// in (password and code) by `identifier`; its first login, so the code is
/// its second mail.
async fn sign_up_and_in(b: &mut Browser<'_>, username: &str, email: &str, identifier: &str) {
    register_and_verify(b, username, email).await;
    let p = password_step(b, identifier).await;
    code_step(b, &p, email, 2).await;
}

fn assert_cookie_attributes(c: &str) {
    for a in ["Secure", "HttpOnly", "Path=/", "SameSite="] {
        assert!(c.contains(a), "{a} missing in {c}");
    }
    assert!(!c.to_ascii_lowercase().contains("domain="), "{c}");
}

#[tokio::test]
async fn full_journey_by_username_then_logout() {
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    let (username, email) = unique();
    sign_up_and_in(&mut b, &username, &email, &username).await;
    let session = b.jar.get(SESSION).cloned().expect("session cookie");
    assert!(!b.jar.contains_key(PRE), "pre-session dropped at the code step");
    let (sid, secret) = session.split_once('.').expect("<session id>.<secret>");
    assert_eq!((sid.len(), secret.len()), (36, 54));
    let set = b.last_set(SESSION).to_string();
    assert_cookie_attributes(&set);
    assert!(set.contains("SameSite=Lax"), "{set}");
    assert_cookie_attributes(b.last_set(PRE));
    assert_cookie_attributes(b.last_set(CSRF));

    let d = b.get("/dashboard").await;
    assert_eq!(d.status, 200);
    assert_eq!(d.headers["cache-control"], "no-store");
    assert!(d.body.contains(&username) && d.body.contains(&email));
    assert!(d.body.contains("Recent security activity"));
    let csp = d.headers["content-security-policy"].to_str().expect("csp");
    assert!(!csp.contains("unsafe-inline"));
    assert!(!d.body.contains("style=\"") && !d.body.contains("<script"), "no inline style or script");

    // Logout with a wrong token: 403, still signed in.
    let bad = b.post("/logout", &[("csrf", "x.y")]).await;
    assert_eq!(bad.status, 403);
    assert_eq!(b.get("/dashboard").await.status, 200);

    let out = b.post("/logout", &[("csrf", &d.csrf())]).await;
    assert_eq!((out.status, out.location()), (303, "/login?bye=1"));
    assert!(!b.jar.contains_key(SESSION), "session cookie cleared");
    let after = b.get("/dashboard").await;
    assert_eq!((after.status, after.location()), (303, "/login"));
    assert!(!after.body.contains(&email));
    // The old cookie replayed: revoked server-side.
    b.jar.insert(SESSION.into(), session);
    let replay = b.get("/dashboard").await;
    assert_eq!((replay.status, replay.location()), (303, "/login"));
    assert!(!replay.body.contains(&email) && !replay.body.contains(&username));
}

/// A stolen session cookie presented as a refresh token: the thief gets a
/// rotated pair, but the owner's next page sees a secret this service
/// issued for the session that is no longer its current one, and revokes
/// the whole session, as a reused refresh token does; the thief's tokens
/// die with it.
/// A pre-session lives an hour (as long as a login's code can be re-sent)
/// past the last form page shown with it: each such page sends it again,
/// unchanged, so a visitor who takes their time is not refused for a page
/// "too old" counted from their first.
#[tokio::test]
async fn a_pre_session_is_renewed_by_each_form_it_is_shown_with() {
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    b.get("/register").await;
    let first = b.last_set(PRE).to_string();
    assert!(first.contains("Max-Age=3600"), "{first}");
    let seen = b.set_cookies.len();
    let again = b.get("/register/sent").await;
    assert_eq!(again.status, 200);
    let renewed: Vec<&String> = b.set_cookies[seen..].iter().filter(|c| c.starts_with(&format!("{PRE}="))).collect();
    assert_eq!(renewed, [&first], "the same pre-session, its Max-Age counted again");
}

/// A page opened from another site (a link in a mail, in a second tab)
/// arrives with the Lax cookies only; it must not replace the CSRF token
/// that the forms already open in other tabs carry.
#[tokio::test]
async fn a_page_opened_from_another_site_leaves_open_forms_working() {
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    let (username, email) = unique();
    sign_up_and_in(&mut b, &username, &email, &username).await;
    let open = b.get("/dashboard").await;
    let elsewhere = b.arrive_from_another_site("/dashboard").await;
    assert!(elsewhere.status == 200 && elsewhere.body.contains(&email), "still signed in: {}", elsewhere.status);
    let out = b.post("/logout", &[("csrf", &open.csrf())]).await;
    assert_eq!((out.status, out.location()), (303, "/login?bye=1"), "the first tab's form still works");
}

/// A browser without `Sec-Fetch-Site` posts our forms with `Origin: null`
/// (the pages' `Referrer-Policy: no-referrer` asks for that): the token
/// decides, as for a client that sends no `Origin`.
#[tokio::test]
async fn a_post_with_a_null_origin_is_decided_by_its_token() {
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    let (username, email) = unique();
    sign_up_and_in(&mut b, &username, &email, &username).await;
    let d = b.get("/dashboard").await;
    let forged = b.post_with("/logout", &[("csrf", "x.y")], &[("origin", "null")]).await;
    assert_eq!(forged.status, 403);
    assert_eq!(b.get("/dashboard").await.status, 200, "still signed in");
    let token = d.csrf();
    let cross =
        b.post_with("/logout", &[("csrf", &token)], &[("origin", "null"), ("sec-fetch-site", "cross-site")]).await;
    assert_eq!(cross.status, 403, "a browser that says cross-site is refused whatever the Origin");
    let out = b.post_with("/logout", &[("csrf", &token)], &[("origin", "null")]).await;
    assert_eq!((out.status, out.location()), (303, "/login?bye=1"));
    assert!(!b.jar.contains_key(SESSION));
}

#[tokio::test]
async fn a_session_cookie_rotated_elsewhere_ends_the_session() {
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    let (username, email) = unique();
    sign_up_and_in(&mut b, &username, &email, &username).await;
    let stolen = b.jar.get(SESSION).cloned().expect("session cookie");
    let (st, pair, _) = sys.post("/v1/token/refresh", serde_json::json!({"refresh_token": stolen})).await;
    assert_eq!(st, 200, "{pair}");
    let access = pair["access_token"].as_str().expect("access token").to_string();
    assert_eq!(sys.get_auth("/v1/me", &access).await.0, 200);

    let d = b.get("/dashboard").await;
    assert_eq!((d.status, d.location()), (303, "/login"));
    assert!(!b.jar.contains_key(SESSION), "the dead cookie is cleared");
    assert_eq!(sys.get_auth("/v1/me", &access).await.0, 401, "the thief's access token outlived the reuse");
    let (st, _, _) = sys.post("/v1/token/refresh", serde_json::json!({"refresh_token": pair["refresh_token"]})).await;
    assert_eq!(st, 401, "the thief's refresh token outlived the reuse");

    // A forged secret for the session changes nothing (and proves nothing).
    let mut other = Browser::new(&sys);
    let p = password_step(&mut other, &username).await;
    code_step(&mut other, &p, &email, 3).await;
    let good = other.jar.get(SESSION).cloned().expect("session cookie");
    let (sid, secret) = good.split_once('.').expect("<session id>.<secret>");
    let forged = format!("{sid}.{}{}", &secret[..secret.len() - 1], if secret.ends_with('0') { '1' } else { '0' });
    let mut forger = Browser::new(&sys);
    forger.jar.insert(SESSION.into(), forged);
    assert_eq!(forger.get("/dashboard").await.location(), "/login");
    assert_eq!(other.get("/dashboard").await.status, 200, "a forged cookie ended the session");
}

/// A browser keeps one session: the password step is not taken while
/// signed in, and a code step finished while another session's cookie is
/// in the jar ends that session rather than leaving it alive unseen.
#[tokio::test]
async fn signing_in_again_ends_the_session_it_replaces() {
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    let (username, email) = unique();
    sign_up_and_in(&mut b, &username, &email, &username).await;
    let first = b.jar.get(SESSION).cloned().expect("session cookie");

    // Signed in: the password step is refused like its form, and no code goes out.
    let csrf = b.get("/register").await.csrf();
    let p = b.post("/login", &[("csrf", &csrf), ("identifier", &username), ("password", PASSWORD)]).await;
    assert_eq!((p.status, p.location()), (303, "/dashboard"), "{}", p.body);
    assert_eq!(b.jar.get(SESSION), Some(&first));
    assert_eq!(b.get("/dashboard").await.status, 200);

    // A sign-in started signed out, finished after a session cookie arrived.
    let mut c = Browser::new(&sys);
    password_step(&mut c, &username).await;
    c.jar.insert(SESSION.into(), first.clone());
    let csrf = c.get("/register").await.csrf();
    let code = sys.wait_mail(&email, 3).await.code().expect("code");
    let p = c.post("/login/code", &[("csrf", &csrf), ("code", &code)]).await;
    assert_eq!((p.status, p.location()), (303, "/dashboard"), "{}", p.body);
    let second = c.jar.get(SESSION).cloned().expect("new session cookie");
    assert_ne!(second, first);
    assert_eq!(c.get("/dashboard").await.status, 200);
    let d = b.get("/dashboard").await;
    assert_eq!((d.status, d.location()), (303, "/login"), "the replaced session still works");
    let (st, _, _) = sys.post("/v1/token/refresh", serde_json::json!({"refresh_token": first})).await;
    assert_eq!(st, 401, "the replaced session still refreshes");
}

/// The dashboard lists where the account is signed in (this browser
/// marked) and ends one of the other sessions, or every other one, once
/// the current password is typed: a wrong password, a missing field or a
/// bad token ends nothing; another browser's session then ends, this one
/// stays.
#[tokio::test]
async fn the_dashboard_lists_the_sessions_and_ends_one_or_every_other_with_the_password() {
    let sys = TestSystem::embedded().await;
    let (mut b, mut other, username, email) = signed_in_twice(&sys).await;
    let other_id = other.jar.get(SESSION).and_then(|c| c.split_once('.')).expect("cookie").0.to_string();

    let d = b.get("/dashboard").await;
    assert_eq!(d.status, 200);
    assert!(d.body.contains("Where you are signed in"), "{}", d.body);
    assert_eq!(session_rows(&d), 2, "{}", d.body);
    assert_eq!(d.body.matches("this browser").count(), 1);
    assert!(d.body.contains(&format!("<option value=\"{other_id}\">")), "{}", d.body);

    let p = end_session(&mut b, &d.csrf(), &other_id, "not my password at all").await;
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(p.body.contains("That is not your current password."), "{}", p.body);
    let p = end_session(&mut b, &p.csrf(), "", PASSWORD).await;
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(p.body.contains("Choose a session to sign out."), "{}", p.body);
    let p = end_session(&mut b, "x.y", &other_id, PASSWORD).await;
    assert_eq!(p.status, 403, "a bad token");
    assert_eq!(other.get("/dashboard").await.status, 200, "a refused form ended the other session");

    let csrf = b.get("/dashboard").await.csrf();
    let p = end_session(&mut b, &csrf, &other_id, PASSWORD).await;
    assert_eq!((p.status, p.location()), (303, "/dashboard?ended=one"), "{}", p.body);
    assert_eq!(other.get("/dashboard").await.location(), "/login", "the other session still works");
    let d = b.get("/dashboard?ended=one").await;
    assert_eq!(d.status, 200);
    assert!(d.body.contains("That session is signed out."));
    assert!(!d.body.contains(&other_id), "an ended session listed");
    let p = end_session(&mut b, &d.csrf(), &other_id, PASSWORD).await;
    assert_eq!(p.status, 404, "ended twice");
    assert!(p.body.contains("That session had already ended."), "{}", p.body);

    // Every other one: a third browser's session ends, this one stays.
    let mut third = Browser::new(&sys);
    let p = password_step(&mut third, &username).await;
    code_step(&mut third, &p, &email, 4).await;
    let csrf = b.get("/dashboard").await.csrf();
    let device = b.jar[DEVICE].clone();
    let p = end_session(&mut b, &csrf, "others", PASSWORD).await;
    assert_eq!((p.status, p.location()), (303, "/dashboard?ended=others"), "{}", p.body);
    let set = b.last_set(DEVICE).to_string();
    assert_cookie_attributes(&set);
    assert!(set.contains("SameSite=Strict") && b.jar[DEVICE] != device, "no new device cookie: {set}");
    assert_eq!(third.get("/dashboard").await.location(), "/login", "the third session still works");
    let d = b.get("/dashboard?ended=others").await;
    assert_eq!(d.status, 200);
    assert!(d.body.contains("Every other session is signed out."));
    assert_eq!((session_rows(&d), d.body.matches("this browser").count()), (1, 1), "{}", d.body);
}

/// The dashboard deletes the account once the current password is typed:
/// a wrong or missing one is named and deletes nothing, a form without
/// the CSRF token is refused; then this browser is signed out (its
/// cookies cleared), the other browser's session ends, the owner is
/// mailed, and the address registers again at once.
#[tokio::test]
async fn the_dashboard_deletes_the_account_with_the_password() {
    let sys = TestSystem::embedded().await;
    let (mut b, mut other, username, email) = signed_in_twice(&sys).await;

    let d = b.get("/dashboard").await;
    assert!(d.body.contains("Delete this account"), "{}", d.body);
    let p = b.post("/account/delete", &[("csrf", &d.csrf()), ("delete_password", "not my password at all")]).await;
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(p.body.contains("That is not your current password."), "{}", p.body);
    let p = b.post("/account/delete", &[("csrf", &p.csrf()), ("delete_password", "")]).await;
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(p.body.contains("Type your current password."), "{}", p.body);
    let p = b.post("/account/delete", &[("csrf", "x.y"), ("delete_password", PASSWORD)]).await;
    assert_eq!(p.status, 403, "a bad token");
    assert_eq!(other.get("/dashboard").await.status, 200, "a refused form deleted the account");

    let before = sys.mails_to(&email).await.len();
    let csrf = b.get("/dashboard").await.csrf();
    let p = b.post("/account/delete", &[("csrf", &csrf), ("delete_password", PASSWORD)]).await;
    assert_eq!((p.status, p.location()), (303, "/login?deleted=1"), "{}", p.body);
    assert!(!b.jar.contains_key(SESSION) && !b.jar.contains_key(DEVICE), "a cookie of the account was kept");
    assert!(b.get("/login?deleted=1").await.body.contains("Your account is deleted."));
    assert_eq!(b.get("/dashboard").await.location(), "/login");
    assert_eq!(other.get("/dashboard").await.location(), "/login", "the other browser is still signed in");
    assert_eq!(sys.wait_mail(&email, before + 1).await.kind, "account_deleted");
    let (st, body, _) = sys.post("/v1/login", serde_json::json!({"identifier": username, "password": PASSWORD})).await;
    assert_eq!(st, 401, "the deleted account's password: {body}");
    let (st, body, _) =
        sys.post("/v1/register", serde_json::json!({"username": username, "email": email, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{body}");
    assert_eq!(sys.wait_mail(&email, before + 2).await.kind, "verify_email", "the address is not free");
}

/// The dashboard changes the password once the current one is typed: a
/// wrong or missing current password, a missing or weak new one are named
/// and change nothing, a form without the CSRF token is refused; then the
/// other browser's session ends, this one stays, the owner is mailed, and
/// only the new password signs in.
#[tokio::test]
async fn the_dashboard_changes_the_password_and_signs_out_every_other_session() {
    let sys = TestSystem::embedded().await;
    let (mut b, mut other, username, email) = signed_in_twice(&sys).await;
    let new = "thunder kettle meadow lantern";

    let d = b.get("/dashboard").await;
    assert!(d.body.contains("Change your password"), "{}", d.body);
    for (current, to, field, error) in [
        ("not my password at all", new, "password_current", "That is not your current password."),
        ("", new, "password_current", "Type your current password."),
        (PASSWORD, "", "new_password", "Type the new password."),
        (PASSWORD, "short", "new_password", "at least 12"),
        (PASSWORD, &username, "new_password", "id=\"new_password-error\""),
    ] {
        let csrf = b.get("/dashboard").await.csrf();
        let p =
            b.post("/account/password", &[("csrf", &csrf), ("password_current", current), ("new_password", to)]).await;
        assert_eq!(p.status, 400, "{current:?} -> {to:?}: {}", p.body);
        assert!(p.body.contains(error), "{current:?} -> {to:?}: {error:?} in {}", p.body);
        assert!(p.body.contains(&format!("id=\"{field}-error\"")), "{field} not named: {}", p.body);
        if field == "new_password" {
            // The error and the rules it breaks are both read out.
            let both = "aria-describedby=\"new_password-error new_password-hint\"";
            assert!(p.body.contains(both), "{}", p.body);
        }
    }
    // A password manager learns whose password it is (a field not sent).
    let username_field = format!("value=\"{username}\" autocomplete=\"username\" hidden readonly");
    assert!(d.body.contains(&username_field), "{}", d.body);
    let p =
        b.post("/account/password", &[("csrf", "x.y"), ("password_current", PASSWORD), ("new_password", new)]).await;
    assert_eq!(p.status, 403, "a bad token");
    assert_eq!(other.get("/dashboard").await.status, 200, "a refused form ended the other session");

    let before = sys.mails_to(&email).await.len();
    let csrf = b.get("/dashboard").await.csrf();
    let (device, other_device) = (b.jar[DEVICE].clone(), other.jar[DEVICE].clone());
    let p =
        b.post("/account/password", &[("csrf", &csrf), ("password_current", PASSWORD), ("new_password", new)]).await;
    assert_eq!((p.status, p.location()), (303, "/dashboard?password=changed"), "{}", p.body);
    let set = b.last_set(DEVICE).to_string();
    assert_cookie_attributes(&set);
    assert!(set.contains("SameSite=Strict") && b.jar[DEVICE] != device, "no new device cookie: {set}");
    let d = b.get("/dashboard?password=changed").await;
    assert_eq!(d.status, 200, "this browser was signed out");
    assert!(d.body.contains("Your password is changed."), "{}", d.body);
    assert_eq!(other.get("/dashboard").await.location(), "/login", "the other browser is still signed in");
    assert_eq!(sys.wait_mail(&email, before + 1).await.kind, "password_changed");
    let (st, body, _) = sys.post("/v1/login", serde_json::json!({"identifier": username, "password": PASSWORD})).await;
    assert_eq!(st, 401, "the old password: {body}");
    let (st, body, _) = sys.post("/v1/login", serde_json::json!({"identifier": username, "password": new})).await;
    assert_eq!(st, 202, "the new password: {body}");

    // Someone locks the account: the new device cookie gets this browser
    // through the password step; the other browser's, from before, not.
    for _ in 0..10 {
        let (st, _, _) =
            sys.post("/v1/login", serde_json::json!({"identifier": username, "password": "wrong wrong wrong"})).await;
        assert_eq!(st, 401);
    }
    assert!(other.jar[DEVICE] == other_device, "the other browser lost its device cookie");
    let f = other.get("/login").await;
    let p = other.post("/login", &[("csrf", &f.csrf()), ("identifier", &username), ("password", new)]).await;
    assert_eq!(p.status, 401, "a device cookie from before the change: {}", p.body);
    let d = b.get("/dashboard").await;
    assert_eq!(b.post("/logout", &[("csrf", &d.csrf())]).await.status, 303);
    let f = b.get("/login").await;
    let p = b.post("/login", &[("csrf", &f.csrf()), ("identifier", &username), ("password", new)]).await;
    assert_eq!((p.status, p.location()), (303, "/login/code"), "the change's device cookie: {}", p.body);
}

/// The dashboard asks to move the account to another address with the
/// password and the CSRF token; the link mailed there shows a button (its
/// GET changes nothing) that moves the account, once, from any browser.
#[tokio::test]
async fn the_dashboard_moves_the_account_to_an_address_its_link_confirms() {
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    let (username, email) = unique();
    sign_up_and_in(&mut b, &username, &email, &username).await;
    let new = format!("moved-{email}");

    let d = b.get("/dashboard").await;
    assert!(d.body.contains("Change your address"), "{}", d.body);
    for (to, pw, error) in [
        (new.as_str(), "not my password at all", "That is not your current password."),
        ("", PASSWORD, "Type the new address."),
        (new.as_str(), "", "Type your current password."),
        ("not an address", PASSWORD, "id=\"new_email-error\""),
        (email.as_str(), PASSWORD, "Is already your address."),
    ] {
        let csrf = b.get("/dashboard").await.csrf();
        let p = b.post("/account/email", &[("csrf", &csrf), ("new_email", to), ("email_password", pw)]).await;
        assert_eq!(p.status, 400, "{to:?}: {}", p.body);
        assert!(p.body.contains(error), "{to:?}: {error:?} in {}", p.body);
    }
    let p = b.post("/account/email", &[("csrf", "x.y"), ("new_email", &new), ("email_password", PASSWORD)]).await;
    assert_eq!(p.status, 403, "a bad token");
    assert!(sys.mails_to(&new).await.is_empty(), "a refused form mailed the new address");

    let before = sys.mails_to(&email).await.len();
    let csrf = b.get("/dashboard").await.csrf();
    let p = b.post("/account/email", &[("csrf", &csrf), ("new_email", &new), ("email_password", PASSWORD)]).await;
    assert_eq!((p.status, p.location()), (303, "/dashboard?email=asked"), "{}", p.body);
    assert!(b.get("/dashboard?email=asked").await.body.contains("A link is on its way to the new address"));
    assert_eq!(sys.wait_mail(&email, before + 1).await.kind, "email_change_notice");
    let link = sys.wait_mail(&new, 1).await.link().expect("link");
    let path = link.split_once("/email/confirm").map(|(_, rest)| format!("/email/confirm{rest}")).expect("path");

    // Opened in another browser, signed in nowhere (a phone's mail app).
    let mut phone = Browser::new(&sys);
    let landing = phone.get(&path).await;
    assert_eq!(landing.status, 200, "{}", landing.body);
    assert!(landing.body.contains("Confirm the new address"), "{}", landing.body);
    assert!(b.get("/dashboard").await.body.contains(&email), "the link's GET moved the account");
    let token = latchkey_tests::scenarios::token_from_link(&link);
    let p = phone.post("/email/confirm", &[("csrf", "x.y"), ("token", &token)]).await;
    assert_eq!(p.status, 403, "a bad token");
    let p = phone.post("/email/confirm", &[("csrf", &landing.csrf()), ("token", &token)]).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.body.contains(&format!("Your account&#x27;s address is now {new}")), "{}", p.body);
    let again = phone.get(&path).await;
    let p = phone.post("/email/confirm", &[("csrf", &again.csrf()), ("token", &token)]).await;
    assert_eq!(p.status, 400, "used twice: {}", p.body);
    assert!(p.body.contains("This link is not valid"), "{}", p.body);
    let d = b.get("/dashboard").await;
    assert!(d.body.contains(&format!("id=\"profile-email\">{new}")), "{}", d.body);
    assert_eq!(sys.wait_mail(&email, before + 2).await.kind, "email_change_notice");
    assert_eq!(phone.get("/email/confirm").await.status, 400, "no token");
}

/// A new account signed in from two browsers (by username, then by
/// email): the browsers, the username and the address.
async fn signed_in_twice(sys: &TestSystem) -> (Browser<'_>, Browser<'_>, String, String) {
    let mut b = Browser::new(sys);
    let (username, email) = unique();
    sign_up_and_in(&mut b, &username, &email, &username).await;
    let mut other = Browser::new(sys);
    let p = password_step(&mut other, &email).await;
    code_step(&mut other, &p, &email, 3).await;
    (b, other, username, email)
}

/// The dashboard form that ends session `id` (or `others`) with password `pw`.
async fn end_session(b: &mut Browser<'_>, csrf: &str, id: &str, pw: &str) -> Page {
    b.post("/sessions/end", &[("csrf", csrf), ("session_id", id), ("current_password", pw)]).await
}

/// The rows of the dashboard's session table.
fn session_rows(p: &Page) -> usize {
    let from = p.body.find("id=\"sessions\"").expect("the sessions section");
    let section = &p.body[from..from + p.body[from..].find("</section>").expect("its end")];
    section.matches("<tr><td>").count()
}

/// A link or form the pages cannot read (a parameter twice, a field
/// twice, a body of another type or too large) is answered with a page
/// carrying the usual headers, not with axum's plain text.
#[tokio::test]
async fn unreadable_links_and_forms_get_a_page() {
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    for path in ["/verify-email?token=a&token=b", "/login?bye=1&bye=2", "/password/reset?token=a&token=b"] {
        let p = b.get(path).await;
        assert_eq!(p.status, 400, "{path}: {}", p.body);
        assert!(p.headers["content-type"].to_str().unwrap().starts_with("text/html"), "{path}");
        assert!(p.body.contains("could not be read"), "{path}: {}", p.body);
        assert_eq!(p.headers["cache-control"], "no-store");
        assert!(p.headers.contains_key("content-security-policy"));
    }
    let form = b.get("/login").await;
    let csrf = form.csrf();
    let twice = b.post("/login", &[("csrf", &csrf), ("csrf", &csrf), ("identifier", "a"), ("password", "b")]).await;
    assert!(twice.status >= 400 && twice.status < 500, "{}", twice.status);
    assert!(twice.body.contains("could not be read"), "{}", twice.body);
    let r = sys
        .http
        .post(sys.url("/login"))
        .header("content-type", "application/json")
        .header("cookie", b.cookie_header())
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 415);
    assert!(r.text().await.expect("body").contains("could not be read"));
}

/// A page path with no page, or a method it does not take, is answered
/// with a page (and `Allow` on a 405); the JSON API keeps its JSON errors.
#[tokio::test]
async fn missing_pages_and_wrong_methods_get_a_page_and_the_api_json() {
    let sys = TestSystem::embedded().await;
    let html = |r: &reqwest::Response| {
        r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").starts_with("text/html")
    };
    for (method, path, status) in [
        (reqwest::Method::GET, "/no-such-page", 404),
        (reqwest::Method::PUT, "/login", 405),
        (reqwest::Method::GET, "/logout", 405),
        (reqwest::Method::DELETE, "/dashboard", 405),
    ] {
        let r = sys.http.request(method.clone(), sys.url(path)).send().await.expect("request");
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        assert!(html(&r), "{method} {path}: {:?}", r.headers().get("content-type"));
        assert_eq!(r.headers()["cache-control"], "no-store", "{method} {path}");
        assert!(r.headers().contains_key("content-security-policy"), "{method} {path}");
        if status == 405 {
            assert!(r.headers().contains_key("allow"), "{method} {path}");
        }
    }
    for (method, path, status, error) in [
        (reqwest::Method::GET, "/v1/no-such-thing", 404, "not_found"),
        (reqwest::Method::GET, "/v1/login", 405, "method_not_allowed"),
        (reqwest::Method::GET, "/otp", 405, "method_not_allowed"),
    ] {
        let r = sys.http.request(method.clone(), sys.url(path)).send().await.expect("request");
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        assert!(!html(&r), "{method} {path}");
        let body: serde_json::Value = r.json().await.expect("a JSON error");
        assert_eq!(body["error"], error, "{method} {path}");
    }
}

/// Once a sign-in's three new codes are spent, asking for another keeps
/// the code page, says so, and the last code still signs in (it used to
/// send the browser back to the password form, the working code with it).
#[tokio::test]
async fn after_the_last_new_code_the_last_code_still_signs_in() {
    let clock = latchkey_tests::system::frozen_clock();
    let sys = TestSystem::embedded_on_clock(&[("LATCHKEY_RATE_LIMITS", "relaxed")], clock.clone()).await;
    let mut b = Browser::new(&sys);
    let (username, email) = unique();
    register_and_verify(&mut b, &username, &email).await;
    password_step(&mut b, &username).await;
    for _ in 0..3 {
        clock.advance(61);
        let p = b.get("/login/code").await;
        let r = b.post("/login/code/resend", &[("csrf", &p.csrf())]).await;
        assert_eq!((r.status, r.location()), (303, "/login/code?resent=1"), "{}", r.body);
    }
    clock.advance(61);
    let p = b.get("/login/code").await;
    let r = b.post("/login/code/resend", &[("csrf", &p.csrf())]).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("No more new codes can be sent"), "{}", r.body);
    let code = sys.wait_mail(&email, 5).await.code().expect("the last code");
    let done = b.post("/login/code", &[("csrf", &r.csrf()), ("code", &code)]).await;
    assert_eq!((done.status, done.location()), (303, "/dashboard"), "{}", done.body);
}

/// The forms' password hints say the configured minimum, not a fixed 12.
#[tokio::test]
async fn password_hints_say_the_configured_minimum() {
    let sys =
        TestSystem::embedded_with(&[("LATCHKEY_RATE_LIMITS", "relaxed"), ("LATCHKEY_PASSWORD_MIN_CHARS", "16")]).await;
    let mut b = Browser::new(&sys);
    let p = b.get("/register").await;
    assert!(p.body.contains("At least 16 characters."), "{}", p.body);
    assert!(!p.body.contains("At least 12"), "{}", p.body);
    let (username, email) = unique();
    sign_up_and_in(&mut b, &username, &email, &username).await;
    let d = b.get("/dashboard").await;
    assert!(d.body.contains("At least 16 characters."), "{}", d.body);
}

/// With the default limits: someone who knows the username keeps the
/// account locked and its per-identifier limit spent; a browser without
/// the device cookie is refused, the owner's browser (the cookie of its
/// last finished login) still signs in, with the password and the code.
#[tokio::test]
async fn the_device_cookie_lets_the_owner_in_while_a_stranger_keeps_the_account_locked() {
    // A clock that stands still: the identifier's logins fall in one
    // 15-minute window of its limit.
    let sys = TestSystem::embedded_on_clock(&[], latchkey_tests::system::frozen_clock()).await;
    let mut b = Browser::new(&sys);
    let (username, email) = unique();
    sign_up_and_in(&mut b, &username, &email, &username).await;
    let set = b.last_set(DEVICE).to_string();
    assert_cookie_attributes(&set);
    assert!(set.contains("SameSite=Strict") && set.contains("Max-Age=7776000"), "{set}");
    let d = b.get("/dashboard").await;
    let out = b.post("/logout", &[("csrf", &d.csrf())]).await;
    assert_eq!(out.status, 303);
    assert!(b.jar.contains_key(DEVICE) && !b.jar.contains_key(SESSION), "logout keeps the device cookie");

    for _ in 0..20 {
        let (st, _, _) =
            sys.post("/v1/login", serde_json::json!({"identifier": username, "password": "wrong wrong wrong"})).await;
        assert!(st == 401 || st == 429, "{st}");
    }
    let mut stranger = Browser::new(&sys);
    let f = stranger.get("/login").await;
    let p = stranger.post("/login", &[("csrf", &f.csrf()), ("identifier", &username), ("password", PASSWORD)]).await;
    assert_eq!(p.status, 429, "without the device cookie: {}", p.body);

    let p = password_step(&mut b, &username).await;
    code_step(&mut b, &p, &email, 4).await;
    assert!(b.get("/dashboard").await.body.contains(&username));
}

/// A forgotten password, from the sign-in page's link: the form asks for
/// the address (CSRF-checked), the mailed link's GET shows a form and
/// changes nothing, a weak password is refused next to its field with the
/// link still usable, the new password ends the signed-in session, and the
/// link works once.
#[tokio::test]
async fn a_forgotten_password_is_replaced_through_the_mailed_link() {
    const NEW: &str = "velvet orbit harbor lantern";
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    let (username, email) = unique();
    sign_up_and_in(&mut b, &username, &email, &username).await;
    assert_eq!(b.get("/dashboard").await.status, 200);

    let login = Browser::new(&sys).get("/login").await;
    assert!(login.body.contains("href=\"/password/forgot\""), "no link on the sign-in page");
    let f = b.get("/password/forgot").await;
    assert_eq!((f.status, f.headers["cache-control"].to_str().ok()), (200, Some("no-store")));
    let refused = b.post("/password/forgot", &[("csrf", "x.y"), ("email", &email)]).await;
    assert_eq!(refused.status, 403, "a post without a good token");
    let cross = b
        .post_with("/password/forgot", &[("csrf", &f.csrf()), ("email", &email)], &[("sec-fetch-site", "cross-site")])
        .await;
    assert_eq!(cross.status, 403, "a cross-site post");
    let sent = b.post("/password/forgot", &[("csrf", &f.csrf()), ("email", &email)]).await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert!(sent.body.contains("is on its way"), "{}", sent.body);

    // Mail goes out in order: once this link is out, a refused post's
    // would be too.
    let mail = sys.wait_mail(&email, 3).await;
    assert_eq!(mail.kind, "password_reset");
    assert_eq!(sys.mails_to(&email).await.len(), 3, "a refused post mailed a link");
    let link = mail.link().expect("link");
    let path = &link[link.find("/password/reset").expect("path")..];
    let token = link.split("token=").nth(1).expect("token");
    let form = b.get(path).await;
    assert_eq!((form.status, form.headers["referrer-policy"].to_str().ok()), (200, Some("no-referrer")));
    assert!(form.body.contains("name=\"new_password\""), "{}", form.body);
    assert_eq!(b.get("/dashboard").await.status, 200, "the link's GET ended the session");

    let weak = b.post("/password/reset", &[("csrf", &form.csrf()), ("token", token), ("new_password", "short")]).await;
    assert_eq!(weak.status, 400, "{}", weak.body);
    assert!(weak.body.contains("id=\"new_password-error\"") && weak.body.contains(token), "{}", weak.body);
    let done = b.post("/password/reset", &[("csrf", &weak.csrf()), ("token", token), ("new_password", NEW)]).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Password changed"), "{}", done.body);
    let set = b.last_set(DEVICE).to_string();
    assert_cookie_attributes(&set);
    assert!(set.contains("SameSite=Strict"), "the browser that reset gets a device cookie: {set}");
    let after = b.get("/dashboard").await;
    assert_eq!((after.status, after.location()), (303, "/login"), "the session outlived the reset");
    let form = b.get(path).await;
    let again = b.post("/password/reset", &[("csrf", &form.csrf()), ("token", token), ("new_password", NEW)]).await;
    assert_eq!(again.status, 400);
    assert!(again.body.contains("Ask for a new link"), "{}", again.body);

    let f = b.get("/login").await;
    let old = b.post("/login", &[("csrf", &f.csrf()), ("identifier", &username), ("password", PASSWORD)]).await;
    assert_eq!(old.status, 401, "the old password works");
    let f = b.get("/login").await;
    let new = b.post("/login", &[("csrf", &f.csrf()), ("identifier", &username), ("password", NEW)]).await;
    assert_eq!((new.status, new.location()), (303, "/login/code"), "{}", new.body);
}

#[tokio::test]
async fn login_by_email_and_a_wrong_code_then_the_right_one() {
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    let (username, email) = unique();
    register_and_verify(&mut b, &username, &email).await;
    let page = password_step(&mut b, &email.to_uppercase()).await;
    let code = sys.wait_mail(&email, 2).await.code().expect("code");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let p = b.post("/login/code", &[("csrf", &page.csrf()), ("code", wrong)]).await;
    assert_eq!(p.status, 401);
    assert!(p.body.contains("id=\"code-error\"") && p.body.contains("attempts left"), "{}", p.body);
    assert!(!b.jar.contains_key(SESSION));
    code_step(&mut b, &p, &email, 2).await;
    assert!(b.get("/dashboard").await.body.contains(&username));
}

#[tokio::test]
async fn a_code_form_sent_twice_says_the_first_one_signed_in() {
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    let (_, email) = unique();
    register_and_verify(&mut b, &unique().0, &email).await;
    let page = password_step(&mut b, &email).await;
    // The same form sent again (a double click, a reload) goes with the
    // cookies the first one went with.
    let mut again = Browser { sys: &sys, jar: b.jar.clone(), strict: b.strict.clone(), set_cookies: Vec::new() };
    code_step(&mut b, &page, &email, 2).await;
    let code = sys.wait_mail(&email, 2).await.code().expect("code");
    let p = again.post("/login/code", &[("csrf", &page.csrf()), ("code", &code)]).await;
    assert_eq!(p.status, 401, "{}", p.body);
    assert!(p.body.contains("used already") && p.body.contains("you are signed in"), "{}", p.body);
    assert!(p.body.contains("href=\"/login\""), "{}", p.body);
    assert!(!again.jar.contains_key(SESSION) && !again.jar.contains_key(PRE));
    // Its link takes the browser the first answer signed in to its dashboard.
    let p = b.get("/login").await;
    assert_eq!((p.status, p.location()), (303, "/dashboard"));
}

#[tokio::test]
async fn posts_without_a_good_token_or_from_another_site_change_nothing() {
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    let (username, email) = unique();
    let p = b.get("/register").await;
    let csrf = p.csrf();
    // This host over HTTPS: the service is served over plain HTTP here
    // (its PUBLIC_BASE_URL is local), so that is another origin.
    let other_scheme = sys.base.replacen("http://", "https://", 1);
    let form = |c: &str| {
        vec![
            ("csrf".to_string(), c.to_string()),
            ("username".to_string(), username.clone()),
            ("email".to_string(), email.clone()),
            ("password".to_string(), PASSWORD.to_string()),
        ]
    };
    let as_ref = |f: &Vec<(String, String)>| f.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>();
    for (name, form, headers) in [
        ("no token", as_ref(&form(""))[1..].to_vec(), vec![]),
        ("wrong token", as_ref(&form("abc.def")), vec![]),
        ("cross-site", as_ref(&form(&csrf)), vec![("sec-fetch-site", "cross-site")]),
        ("foreign origin", as_ref(&form(&csrf)), vec![("origin", "https://evil.example")]),
        ("this host, another scheme", as_ref(&form(&csrf)), vec![("origin", other_scheme.as_str())]),
    ] {
        let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let p = b.post_with("/register", &f, &headers).await;
        assert_eq!(p.status, 403, "{name}");
        assert!(p.body.contains("Nothing was changed"), "{name}");
    }
    // A token without its cookie fails too.
    let mut stranger = Browser::new(&sys);
    let f: Vec<(&str, &str)> =
        vec![("csrf", &csrf), ("username", &username), ("email", &email), ("password", PASSWORD)];
    assert_eq!(stranger.post("/register", &f).await.status, 403, "token from another visitor");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(sys.mails_to(&email).await.is_empty(), "nothing was registered");
    // The same form, properly sent, works: nothing above used the name up.
    // (Sent as a browser without `Sec-Fetch-Site` sends it: the Origin, of
    // this scheme and host, is what is checked.)
    let base = sys.base.clone();
    let p = b.post_with("/register", &f, &[("origin", base.as_str())]).await;
    assert_eq!(p.status, 303, "{}", p.body);
    sys.wait_mail(&email, 1).await;
}

#[tokio::test]
async fn the_code_step_refuses_cross_site_posts_and_the_code_still_works() {
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    let (username, email) = unique();
    register_and_verify(&mut b, &username, &email).await;
    let page = password_step(&mut b, &username).await;
    let code = sys.wait_mail(&email, 2).await.code().expect("code");
    let p = b
        .post_with("/login/code", &[("csrf", &page.csrf()), ("code", &code)], &[("sec-fetch-site", "cross-site")])
        .await;
    assert_eq!(p.status, 403);
    assert!(!b.jar.contains_key(SESSION));
    code_step(&mut b, &page, &email, 2).await;
}

#[tokio::test]
async fn static_css_and_pages_carry_the_security_headers() {
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    let css = b.get("/static/style.css").await;
    assert_eq!(css.status, 200);
    assert_eq!(css.headers["content-type"], "text/css; charset=utf-8");
    for path in ["/login", "/register", "/one-time-code", "/admin", "/verify-email?token=abc"] {
        let p = b.get(path).await;
        assert_eq!(p.headers["content-type"], "text/html; charset=utf-8", "{path}");
        assert_eq!(p.headers["cache-control"], "no-store", "{path}");
        assert_eq!(p.headers["x-content-type-options"], "nosniff", "{path}");
        assert!(p.body.contains("<link rel=\"stylesheet\" href=\"/static/style.css\">"), "{path}");
        assert!(!p.body.contains("style=\"") && !p.body.contains("<script"), "{path}");
    }
    let d = b.get("/dashboard").await;
    assert_eq!((d.status, d.location()), (303, "/login"));
}

#[tokio::test]
async fn standalone_otp_page_sends_and_verifies() {
    let sys = TestSystem::embedded().await;
    let mut b = Browser::new(&sys);
    let (_, email) = unique();
    let p = b.get("/one-time-code").await;
    let p = b.post("/one-time-code/send", &[("csrf", &p.csrf()), ("email", &email)]).await;
    assert_eq!(p.status, 200, "{}", p.body);
    let code = sys.wait_mail(&email, 1).await.code().expect("code");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let p = b.post("/one-time-code/verify", &[("csrf", &p.csrf()), ("email", &email), ("otp", wrong)]).await;
    assert_eq!(p.status, 401);
    assert!(p.body.contains("id=\"otp-error\""));
    let p = b.post("/one-time-code/verify", &[("csrf", &p.csrf()), ("email", &email), ("otp", &code)]).await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("Code verified."));
}

#[tokio::test]
async fn admin_page_needs_the_key_in_the_form_and_never_stores_it() {
    let key = "an-admin-key-for-the-page-test-0123456789";
    let hash = latchkey_core::keys::token_hash(key);
    let sys =
        TestSystem::embedded_with(&[("LATCHKEY_RATE_LIMITS", "relaxed"), ("LATCHKEY_ADMIN_KEY_HASH", &hash)]).await;
    let mut b = Browser::new(&sys);
    let p = b.get("/admin").await;
    assert_eq!(p.status, 200);
    let from = "2020-01-01";
    let to = "2020-12-31";
    let bad = b.post("/admin", &[("csrf", &p.csrf()), ("admin_key", "nope"), ("from", from), ("to", to)]).await;
    assert_eq!(bad.status, 401);
    assert!(bad.body.contains("id=\"admin_key-error\""));
    let ok = b.post("/admin", &[("csrf", &bad.csrf()), ("admin_key", key), ("from", from), ("to", to)]).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("Events per day"));
    assert!(!ok.body.contains(key), "key not echoed");
    assert!(b.set_cookies.iter().all(|c| !c.contains(key)), "key never in a cookie");
    let no_token = b.post("/admin", &[("admin_key", key), ("from", from), ("to", to)]).await;
    assert_eq!(no_token.status, 403);
}

/// Posts the admin page's audit-trail form.
async fn trail_form(b: &mut Browser<'_>, csrf: &str, key: &str, user: &str, otp_email: &str) -> Page {
    b.post("/admin/audit", &[("csrf", csrf), ("audit_key", key), ("user", user), ("otp_email", otp_email)]).await
}

/// The admin page's audit-trail form: an account's trail by its username
/// (newest first, the key checked first and never echoed), a name without
/// an account and a form with both names or none refused with the field
/// named, and the standalone codes of an address.
#[tokio::test]
async fn admin_page_shows_a_trail_by_name() {
    let key = "an-admin-key-for-the-page-test-0123456789";
    let hash = latchkey_core::keys::token_hash(key);
    let sys =
        TestSystem::embedded_with(&[("LATCHKEY_RATE_LIMITS", "relaxed"), ("LATCHKEY_ADMIN_KEY_HASH", &hash)]).await;
    let (username, email) = latchkey_tests::scenarios::verified_user(&sys).await;
    latchkey_tests::scenarios::sign_in(&sys, &username, &email).await;
    let mut b = Browser::new(&sys);
    let p = b.get("/admin").await;
    assert!(p.body.contains("action=\"/admin/audit#trail\""), "{}", p.body);
    let bad = trail_form(&mut b, &p.csrf(), "nope", &username, "").await;
    assert_eq!(bad.status, 401);
    assert!(bad.body.contains("id=\"audit_key-error\"") && !bad.body.contains("session_created"), "{}", bad.body);
    // The embedded audit feed writes the trail a moment after the requests.
    let mut shown = bad;
    for _ in 0..100 {
        shown = trail_form(&mut b, &shown.csrf(), key, &username.to_uppercase(), "").await;
        assert_eq!(shown.status, 200, "{}", shown.body);
        if shown.body.contains("session_created") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (newest, oldest) = (shown.body.find("session_created"), shown.body.find("user_registered"));
    assert!(newest.is_some() && oldest.is_some() && newest < oldest, "newest first: {}", shown.body);
    assert!(!shown.body.contains(key), "key not echoed");
    assert!(b.set_cookies.iter().all(|c| !c.contains(key)), "key never in a cookie");
    let none = trail_form(&mut b, &shown.csrf(), key, "nobody-by-this-name", "").await;
    assert_eq!(none.status, 404);
    assert!(none.body.contains("id=\"user-error\"") && none.body.contains("No account has"), "{}", none.body);
    for (user, otp_email) in [("", ""), (username.as_str(), email.as_str())] {
        let r = trail_form(&mut b, &none.csrf(), key, user, otp_email).await;
        assert_eq!(r.status, 400, "{user:?} {otp_email:?}");
        assert!(r.body.contains("id=\"user-error\"") && r.body.contains("Fill in one of the two"), "{}", r.body);
    }
    let r = trail_form(&mut b, &none.csrf(), key, "", "not-an-address").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("id=\"otp_email-error\""), "{}", r.body);
    // The standalone codes sent to an address.
    let (_, address) = unique();
    let (st, _, _) = sys.post("/otp", serde_json::json!({"action": "send_otp", "email": address})).await;
    assert_eq!(st, 200);
    let mut codes = r;
    for _ in 0..100 {
        codes = trail_form(&mut b, &codes.csrf(), key, "", &address).await;
        assert_eq!(codes.status, 200, "{}", codes.body);
        if codes.body.contains("otp_sent") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(codes.body.contains("otp_sent") && !codes.body.contains("session_created"), "{}", codes.body);
    let no_token = b.post("/admin/audit", &[("audit_key", key), ("user", username.as_str())]).await;
    assert_eq!(no_token.status, 403);
}

/// The page and the API count against one admin limit per client (60 a
/// minute by default): once the API's requests spent it, the page refuses
/// the right key with the wait, before checking it.
#[tokio::test]
async fn admin_page_shares_the_api_limit() {
    let key = "an-admin-key-for-the-page-test-0123456789";
    let hash = latchkey_core::keys::token_hash(key);
    // A clock that stands still: the 61 counted requests fall in one
    // window of the limit.
    let frozen = latchkey_tests::system::frozen_clock();
    let sys = TestSystem::embedded_on_clock(&[("LATCHKEY_ADMIN_KEY_HASH", &hash)], frozen).await;
    let mut b = Browser::new(&sys);
    let p = b.get("/admin").await;
    let (from, to) = ("2020-01-01", "2020-12-31");
    let ok = b.post("/admin", &[("csrf", &p.csrf()), ("admin_key", key), ("from", from), ("to", to)]).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    for i in 0..59 {
        let r = sys.http.get(sys.url("/v1/admin/stats")).bearer_auth("nope-nope-nope-nope-nope").send().await;
        assert_eq!(r.expect("send").status().as_u16(), 401, "{i}");
    }
    let refused = b.post("/admin", &[("csrf", &ok.csrf()), ("admin_key", key), ("from", from), ("to", to)]).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("Too many attempts"), "{}", refused.body);
    assert!(!refused.body.contains("Events per day"));
}

/// The dashboard's list of recent events and `GET /v1/me/activity` count
/// against one activity limit (60 a minute of an account by default): once
/// the account's API reads spent it, the dashboard lists no events and
/// says when it can, and still shows the profile and the sign-out form.
#[tokio::test]
async fn dashboard_shares_the_activity_limit() {
    // A clock that stands still: the 61 counted reads fall in one window of
    // the limit.
    let sys = TestSystem::embedded_on_clock(&[], latchkey_tests::system::frozen_clock()).await;
    let mut b = Browser::new(&sys);
    let (username, email) = unique();
    sign_up_and_in(&mut b, &username, &email, &username).await;
    // An access token for the same account, from a login through the API.
    let api = latchkey_tests::scenarios::sign_in(&sys, &username, &email).await;
    let access = api["access_token"].as_str().expect("access token").to_string();
    let d = b.get("/dashboard").await;
    assert_eq!(d.status, 200);
    assert!(d.body.contains("Recent security activity"));
    for i in 0..59 {
        assert_eq!(sys.get_auth("/v1/me/activity?limit=1", &access).await.0, 200, "{i}");
    }
    let listed = |body: &str| body.contains("scope=\"col\">Event</th>") || body.contains("No events recorded yet");
    assert!(listed(&d.body) && !d.body.contains("id=\"activity-wait\""), "{}", d.body);
    let limited = b.get("/dashboard").await;
    assert_eq!(limited.status, 200, "{}", limited.body);
    assert!(limited.body.contains("id=\"activity-wait\""), "{}", limited.body);
    assert!(!listed(&limited.body), "no events listed: {}", limited.body);
    assert!(limited.body.contains("id=\"sessions-wait\"") && session_rows(&limited) == 0, "{}", limited.body);
    assert_eq!(sys.get_auth("/v1/sessions", &access).await.0, 429, "the API's list shares the limit");
    assert!(limited.body.contains(&email) && limited.body.contains("action=\"/logout\""), "{}", limited.body);
    let out = b.post("/logout", &[("csrf", &limited.csrf())]).await;
    assert_eq!((out.status, out.location()), (303, "/login?bye=1"), "signing out still works");
}
