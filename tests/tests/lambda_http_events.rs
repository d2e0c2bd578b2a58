//! API Gateway HTTP API (v2) events, as Lambda delivers them, go through
//! lambda_http into the real Router, and the answers come back out as the
//! JSON API Gateway reads: the path a request takes on AWS.
//!
//! `lambda_http::run(app)` (api/src/main.rs) hands the runtime
//! `lambda_http::Adapter::from(app)`. The runtime deserialises the
//! invocation into a `LambdaRequest`; the Adapter turns it into an
//! `http::Request` (cookies array -> `Cookie` header, base64 body decoded),
//! calls the Router, converts the response with lambda_http's
//! `IntoResponse` (text or base64 body by content type) and then
//! `LambdaResponse::from_response(&RequestOrigin::ApiGatewayV2, ..)`
//! (`Set-Cookie` -> `cookies`, one value per header); the runtime
//! serialises that with serde_json. [`Deployment::invoke`] does the same
//! with the same Adapter, and checks that no header the Router set is lost
//! on the way.
//!
//! The browser pages are driven as a browser on the execute-api hostname
//! drives them: cookies in the event's `cookies` array, forms base64
//! encoded, `Origin` and Fetch Metadata as Firefox sends them.

use base64::Engine as _;
use lambda_http::request::LambdaRequest;
use latchkey_core::ports::UserStore;
use latchkey_tests::scenarios::{PASSWORD, unique};
use latchkey_tests::system::{Mail, TempDir, outbox_mails_to};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tower::{Service as _, ServiceExt as _};

/// Terraform's default PUBLIC_BASE_URL: the API's execute-api endpoint
/// (terraform/main.tf), the `host` of the fixtures.
const BASE_URL: &str = "https://abc123.execute-api.eu-west-1.amazonaws.com";

const SESSION: &str = "__Host-latchkey_session";
const PRE: &str = "__Host-latchkey_pre";
const CSRF: &str = "__Host-latchkey_csrf";
const DEVICE: &str = "__Host-latchkey_device";

/// The Router on the embedded backend, configured as the Lambda function
/// is (terraform/lambda.tf), with mail landing in `<dir>/outbox`.
struct Deployment {
    app: axum::Router,
    built: latchkey_api::wiring::Built,
    dir: TempDir,
}

impl Drop for Deployment {
    /// Stops the mail consumer and the audit feed before the data
    /// directory goes.
    fn drop(&mut self) {
        self.built.abort();
    }
}

impl Deployment {
    async fn start() -> Self {
        let dir = TempDir::new();
        let env: HashMap<&str, String> = [
            ("LATCHKEY_DATA_DIR", dir.0.display().to_string()),
            ("LATCHKEY_RATE_LIMITS", "relaxed".into()),
            ("PUBLIC_BASE_URL", BASE_URL.into()),
            ("LATCHKEY_TRUST_FORWARDED_FOR", "false".into()),
        ]
        .into();
        let cfg = latchkey_core::config::Config::from_lookup(|k| env.get(k).cloned()).expect("config");
        let built = latchkey_api::wiring::build(&cfg).await.expect("build");
        Deployment { app: latchkey_api::app(built.state.clone()), built, dir }
    }

    /// One invocation, as `lambda_http::run` serves it: the event's JSON
    /// into `LambdaRequest`, through `lambda_http::Adapter` around the
    /// Router, the `LambdaResponse` out as JSON.
    async fn invoke(&self, event: &Value) -> Answer {
        let sent = Arc::new(Mutex::new(None));
        let seen = sent.clone();
        let router = tower::util::MapResponse::new(self.app.clone(), move |r: axum::response::Response| {
            *seen.lock().expect("lock") = Some(r.headers().clone());
            r
        });
        let mut adapter = lambda_http::Adapter::from(router);
        let bytes = serde_json::to_vec(event).expect("event bytes");
        let payload: LambdaRequest = serde_json::from_slice(&bytes).expect("a valid API Gateway event");
        assert!(matches!(payload, LambdaRequest::ApiGatewayV2(_)), "read as an HTTP API (v2) event");
        let mut context = lambda_http::Context::default();
        context.request_id = uuid::Uuid::new_v4().to_string();
        let response = adapter
            .ready()
            .await
            .expect("ready")
            .call(lambda_http::LambdaEvent::new(payload, context))
            .await
            .expect("the Router does not fail");
        let json = serde_json::to_value(&response).expect("the response serialises");
        let sent = sent.lock().expect("lock").take().expect("the Router answered");
        assert_nothing_lost(&sent, &json);
        Answer(json)
    }

    /// The newest mail to `to` once there are at least `n` (polling the
    /// outbox, bounded).
    async fn wait_mail(&self, to: &str, n: usize) -> Mail {
        for _ in 0..800 {
            let mut all = outbox_mails_to(&self.dir.0.join("outbox"), to);
            if all.len() >= n {
                return all.pop().expect("a mail");
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("no mail #{n} to {to} within 20 s");
    }
}

/// Every header the Router set reaches API Gateway: each `Set-Cookie` in
/// `cookies` (in order), every other header in `headers` with its whole
/// value (the v2 response has one value per name, so a repeated header
/// would lose all but its first).
fn assert_nothing_lost(sent: &http::HeaderMap, json: &Value) {
    let set_cookies: Vec<&str> =
        sent.get_all(http::header::SET_COOKIE).iter().map(|v| v.to_str().expect("ascii cookie")).collect();
    let cookies: Vec<&str> =
        json["cookies"].as_array().expect("cookies array").iter().map(|c| c.as_str().expect("string")).collect();
    assert_eq!(cookies, set_cookies, "every Set-Cookie in the v2 cookies array");
    let headers = json["headers"].as_object().expect("headers object");
    assert!(!headers.contains_key("set-cookie"), "no Set-Cookie left among the headers");
    for name in sent.keys().filter(|n| *n != http::header::SET_COOKIE) {
        let values: Vec<&str> = sent.get_all(name).iter().map(|v| v.to_str().expect("ascii header")).collect();
        assert_eq!(headers.get(name.as_str()).and_then(Value::as_str), Some(values.join(", ").as_str()), "{name}");
    }
    assert_eq!(headers.len(), sent.keys().filter(|n| *n != http::header::SET_COOKIE).count());
    assert_eq!(json["multiValueHeaders"], json!({}), "HTTP APIs read no multiValueHeaders");
}

/// What API Gateway reads back from the function.
struct Answer(Value);

impl Answer {
    fn status(&self) -> u64 {
        self.0["statusCode"].as_u64().expect("statusCode")
    }

    fn header(&self, name: &str) -> &str {
        self.0["headers"][name].as_str().unwrap_or("")
    }

    fn location(&self) -> &str {
        self.header("location")
    }

    fn cookies(&self) -> Vec<&str> {
        self.0["cookies"].as_array().expect("cookies").iter().map(|c| c.as_str().expect("string")).collect()
    }

    /// The names of the cookies set, in order.
    fn cookie_names(&self) -> Vec<&str> {
        self.cookies().iter().map(|c| c.split_once('=').expect("name=value").0).collect()
    }

    /// The body as the browser gets it (API Gateway decodes a base64 one).
    fn body(&self) -> String {
        let raw = self.0["body"].as_str().unwrap_or("");
        if self.0["isBase64Encoded"].as_bool().expect("isBase64Encoded") {
            let bytes = base64::engine::general_purpose::STANDARD.decode(raw).expect("base64 body");
            String::from_utf8(bytes).expect("utf-8 body")
        } else {
            raw.to_string()
        }
    }

    /// The hidden CSRF field of the (first) form on the page.
    fn csrf(&self) -> String {
        let body = self.body();
        let at = body.find("name=\"csrf\" value=\"").expect("csrf field");
        let rest = &body[at + 19..];
        rest[..rest.find('"').expect("end of the csrf value")].to_string()
    }

    /// An HTML page, sent as text (API Gateway passes it on as is), with
    /// the security headers.
    fn assert_page(&self) {
        assert!(self.header("content-type").starts_with("text/html"), "{}", self.header("content-type"));
        assert_eq!(self.0["isBase64Encoded"], false, "an HTML page is not base64-encoded");
        let body = self.0["body"].as_str().expect("a text body");
        assert!(body.to_ascii_lowercase().starts_with("<!doctype html>"), "{body}");
        self.assert_security_headers();
    }

    fn assert_security_headers(&self) {
        for (name, want) in [
            ("strict-transport-security", "max-age=63072000; includeSubDomains"),
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
            ("content-security-policy", latchkey_api::headers::CSP),
            ("cross-origin-opener-policy", "same-origin"),
        ] {
            assert_eq!(self.header(name), want, "{name}");
        }
        assert!(!self.header("x-request-id").is_empty(), "x-request-id");
    }

    /// A redirect a browser follows: 303, a same-site `location`, no body
    /// to mangle.
    fn assert_redirect(&self, to: &str) {
        assert_eq!((self.status(), self.location()), (303, to), "{}", self.body());
        assert_eq!(self.0["body"], "", "a redirect has an empty body");
        self.assert_security_headers();
    }

    /// The "Request refused" page, nothing set.
    fn assert_refused(&self) {
        assert_eq!(self.status(), 403, "{}", self.body());
        self.assert_page();
        assert!(self.body().contains("Nothing was changed"), "{}", self.body());
        assert!(self.cookies().is_empty(), "a refusal sets no cookie: {:?}", self.cookies());
    }
}

/// Where a browser says a POST comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Site {
    /// A form on the page itself (Fetch Metadata and `Origin`, as Firefox,
    /// Chrome and Safari 16.4+ send them).
    Same,
    /// The same from a browser without Fetch Metadata: `Origin` only.
    SameOriginHeaderOnly,
    /// A form on another site.
    Cross,
    /// The same from a browser without Fetch Metadata.
    CrossOriginHeaderOnly,
}

/// The page routes terraform/apigw.tf declares; every other path reaches
/// the function by the `$default` route.
const DECLARED_PAGE_ROUTES: &[&str] = &["GET /verify-email", "POST /verify-email"];

fn fixture(name: &str) -> Value {
    let raw =
        std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture");
    serde_json::from_str(&raw).expect("fixture JSON")
}

/// A browser request as API Gateway delivers it: the GET or the form POST
/// fixture with this request's path, query, cookies and body.
fn browser_event(path_and_query: &str, cookies: &[String], form: Option<&str>, site: Site) -> Value {
    let mut e = fixture(if form.is_some() { "apigw_v2_form_post.json" } else { "apigw_v2_page_get.json" });
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let method = e["requestContext"]["http"]["method"].as_str().expect("method").to_string();
    let route = format!("{method} {path}");
    let route = if DECLARED_PAGE_ROUTES.contains(&route.as_str()) { route } else { "$default".to_string() };
    e["rawPath"] = path.into();
    e["rawQueryString"] = query.into();
    e["routeKey"] = route.clone().into();
    e["requestContext"]["routeKey"] = route.into();
    e["requestContext"]["http"]["path"] = path.into();
    e["requestContext"]["requestId"] = uuid::Uuid::new_v4().simple().to_string().into();
    let object = e.as_object_mut().expect("event object");
    if !query.is_empty() {
        let params: serde_json::Map<String, Value> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect();
        object.insert("queryStringParameters".into(), params.into());
    }
    // API Gateway leaves `cookies` out when the browser sends none.
    if cookies.is_empty() {
        object.remove("cookies");
    } else {
        object.insert("cookies".into(), cookies.into());
    }
    if let Some(form) = form {
        object.insert("body".into(), base64::engine::general_purpose::STANDARD.encode(form).into());
        let headers = object["headers"].as_object_mut().expect("headers");
        headers.insert("content-length".into(), form.len().to_string().into());
        let fetch_metadata = ["sec-fetch-dest", "sec-fetch-mode", "sec-fetch-site", "sec-fetch-user"];
        match site {
            Site::Same => {}
            Site::SameOriginHeaderOnly => fetch_metadata.iter().for_each(|h| drop(headers.remove(*h))),
            Site::Cross => {
                headers.insert("origin".into(), "https://evil.example".into());
                headers.insert("sec-fetch-site".into(), "cross-site".into());
            }
            Site::CrossOriginHeaderOnly => {
                headers.insert("origin".into(), "https://evil.example".into());
                fetch_metadata.iter().for_each(|h| drop(headers.remove(*h)));
            }
        }
    }
    e
}

/// `application/x-www-form-urlencoded`, as a browser encodes a form.
fn form_body(fields: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => (b as char).to_string(),
                b' ' => "+".to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// A browser behind API Gateway: a cookie jar fed from the answers'
/// `cookies` arrays and sent back in the events' `cookies` arrays.
struct Browser<'a> {
    lambda: &'a Deployment,
    jar: BTreeMap<String, String>,
}

impl<'a> Browser<'a> {
    fn new(lambda: &'a Deployment) -> Self {
        Browser { lambda, jar: BTreeMap::new() }
    }

    fn cookies(&self) -> Vec<String> {
        self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    async fn send(&mut self, event: Value) -> Answer {
        let answer = self.lambda.invoke(&event).await;
        for c in answer.cookies() {
            assert_cookie_attributes(c);
            let (nv, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (name, value) = nv.split_once('=').expect("name=value");
            if attrs.contains("Max-Age=0") {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_string(), value.to_string());
            }
        }
        answer
    }

    async fn get(&mut self, path_and_query: &str) -> Answer {
        self.send(browser_event(path_and_query, &self.cookies(), None, Site::Same)).await
    }

    async fn post_from(&mut self, site: Site, path: &str, fields: &[(&str, &str)]) -> Answer {
        self.send(browser_event(path, &self.cookies(), Some(&form_body(fields)), site)).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        self.post_from(Site::Same, path, fields).await
    }
}

fn assert_cookie_attributes(c: &str) {
    assert!(c.starts_with("__Host-"), "{c}");
    for a in ["; Secure", "; HttpOnly", "; Path=/", "; SameSite="] {
        assert!(c.contains(a), "{a} missing in {c}");
    }
    assert!(!c.to_ascii_lowercase().contains("domain="), "{c}");
}

/// Registers through the pages and confirms the address with the mailed
/// link, in a browser of its own.
async fn sign_up(lambda: &Deployment, username: &str, email: &str) {
    let mut b = Browser::new(lambda);
    let p = b.get("/register").await;
    assert_eq!(p.status(), 200);
    p.assert_page();
    let p = b
        .post("/register", &[("csrf", &p.csrf()), ("username", username), ("email", email), ("password", PASSWORD)])
        .await;
    p.assert_redirect("/register/sent");

    let link = lambda.wait_mail(email, 1).await.link().expect("a link in the mail");
    assert!(link.starts_with(&format!("{BASE_URL}/verify-email?token=")), "a link on PUBLIC_BASE_URL: {link}");
    let path_and_query = &link[BASE_URL.len()..];
    let token = link.split("token=").nth(1).expect("token");
    let p = b.get(path_and_query).await;
    assert_eq!(p.status(), 200, "{}", p.body());
    p.assert_page();
    assert!(p.body().contains(&format!("name=\"token\" value=\"{token}\"")), "the query reached the page");
    let p = b.post("/verify-email", &[("csrf", &p.csrf()), ("token", token)]).await;
    assert_eq!(p.status(), 200, "{}", p.body());
    assert!(p.body().contains("Email confirmed"), "{}", p.body());
}

/// Password, then the code from mail `n` to `email`, every POST sent from
/// `site`; ends on the dashboard. Checks each step's cookies as API
/// Gateway hands them to the browser.
async fn sign_in(b: &mut Browser<'_>, site: Site, identifier: &str, email: &str, n: usize) {
    let p = b.get("/login").await;
    assert_eq!(p.status(), 200);
    p.assert_page();
    assert_eq!(p.header("cache-control"), "no-store");
    let csrf = p.csrf();
    assert_eq!(b.jar.get(CSRF), Some(&csrf), "the form's token is the CSRF cookie's");
    let pre_before = b.jar.get(PRE).cloned().expect("a pre-session");

    let p = b.post_from(site, "/login", &[("csrf", &csrf), ("identifier", identifier), ("password", PASSWORD)]).await;
    p.assert_redirect("/login/code");
    assert_eq!(p.cookie_names(), [PRE, CSRF], "a new pre-session; the old token cleared");
    assert_ne!(b.jar.get(PRE), Some(&pre_before), "the pre-session rotated");
    assert!(!b.jar.contains_key(CSRF));

    let rotated = b.jar.get(PRE).cloned();
    let p = b.get("/login/code").await;
    assert_eq!(p.status(), 200, "{}", p.body());
    p.assert_page();
    assert_eq!(p.cookie_names(), [PRE, CSRF], "the pre-session renewed; a token for it");
    assert_eq!(b.jar.get(PRE), rotated.as_ref(), "renewed as it is");

    let code = b.lambda.wait_mail(email, n).await.code().expect("a code in the mail");
    let p = b.post_from(site, "/login/code", &[("csrf", &p.csrf()), ("code", &code)]).await;
    p.assert_redirect("/dashboard");
    assert_eq!(p.cookie_names(), [SESSION, PRE, CSRF, DEVICE], "all four cookies reach the browser");
    assert!(b.jar.contains_key(SESSION) && b.jar.contains_key(DEVICE));
    assert!(!b.jar.contains_key(PRE) && !b.jar.contains_key(CSRF), "pre-session and old token cleared");
}

/// The dashboard of a signed-in browser, with `username` on it.
async fn dashboard(b: &mut Browser<'_>, username: &str, email: &str) -> Answer {
    let d = b.get("/dashboard").await;
    assert_eq!(d.status(), 200, "{}", d.body());
    d.assert_page();
    assert_eq!(d.header("cache-control"), "no-store");
    assert!(d.body().contains(&format!("id=\"profile-username\">{username}<")), "{}", d.body());
    assert!(d.body().contains(email));
    d
}

#[tokio::test]
async fn healthz_through_lambda_http() {
    let lambda = Deployment::start().await;
    let resp = lambda.invoke(&fixture("apigw_v2_healthz.json")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.header("x-content-type-options"), "nosniff");
    assert_eq!(resp.header("content-type"), "application/json; charset=utf-8");
    assert_eq!(resp.0["isBase64Encoded"], false, "JSON goes out as text");
    assert_eq!(serde_json::from_str::<Value>(&resp.body()).expect("json")["status"], "ok");
}

#[tokio::test]
async fn register_through_lambda_http_records_the_source_ip() {
    let lambda = Deployment::start().await;
    let name = format!("lambda{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let body = json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD});
    let mut event = fixture("apigw_v2_register.json");
    event["body"] = body.to_string().into();
    let resp = lambda.invoke(&event).await;
    assert_eq!(resp.status(), 202, "{}", resp.body());
    assert_eq!(resp.header("cache-control"), "no-store");
    let store = lambda.built.embedded.as_ref().expect("embedded store");
    let user = store
        .user_by_username(&latchkey_core::domain::Username::parse(&name).expect("name"))
        .await
        .expect("read")
        .expect("user stored");
    assert_eq!(user.meta.ip.as_deref(), Some("198.51.100.23"), "client IP from the request context");
    assert_eq!(user.meta.request_id.as_deref(), Some("NWkN2jB7DoEEJxw="));
    assert_eq!(user.meta.user_agent.as_deref(), Some("curl/8.5.0"));
}

/// Sign up, sign in (password, mailed code), the dashboard, sign out: every
/// request an API Gateway v2 event, every answer the JSON it reads.
#[tokio::test]
async fn a_browser_signs_up_in_and_out_through_api_gateway() {
    let lambda = Deployment::start().await;
    let (username, email) = unique();
    sign_up(&lambda, &username, &email).await;

    let mut b = Browser::new(&lambda);
    let first = b.get("/").await;
    first.assert_redirect("/login");
    assert!(first.cookies().is_empty());
    let login = b.get("/login").await;
    assert_eq!(login.cookie_names(), [PRE, CSRF], "a new visitor gets both cookies");
    let css = b.get("/static/style.css").await;
    assert_eq!((css.status(), css.header("content-type")), (200, "text/css; charset=utf-8"));
    assert_eq!(css.0["isBase64Encoded"], false, "the stylesheet goes out as text");
    assert_eq!(css.header("cache-control"), "public, max-age=3600");

    sign_in(&mut b, Site::Same, &username, &email, 2).await;
    let session = b.jar.get(SESSION).cloned().expect("session cookie");
    b.get("/").await.assert_redirect("/dashboard");
    let d = dashboard(&mut b, &username, &email).await;
    assert_eq!(d.cookie_names(), [CSRF], "a token bound to the session");

    let out = b.post("/logout", &[("csrf", &d.csrf())]).await;
    out.assert_redirect("/login?bye=1");
    assert_eq!(out.cookie_names(), [SESSION, PRE, CSRF], "every cookie cleared");
    assert!(out.cookies().iter().all(|c| c.contains("Max-Age=0")), "{:?}", out.cookies());
    assert_eq!(out.header("clear-site-data"), "\"cache\"");
    assert!(!b.jar.contains_key(SESSION));
    let bye = b.get("/login?bye=1").await;
    assert!(bye.body().contains("You are signed out."), "the query reached the page");

    let after = b.get("/dashboard").await;
    after.assert_redirect("/login");
    // The old session cookie replayed: revoked in the store.
    b.jar.insert(SESSION.into(), session);
    let replay = b.get("/dashboard").await;
    replay.assert_redirect("/login");
    assert_eq!(replay.cookie_names(), [SESSION], "the dead session cookie is cleared");
}

/// A browser that sends `Origin` but no Fetch Metadata: the origin check
/// compares it with the `Host` API Gateway passes on.
#[tokio::test]
async fn a_browser_without_fetch_metadata_signs_in_through_api_gateway() {
    let lambda = Deployment::start().await;
    let (username, email) = unique();
    sign_up(&lambda, &username, &email).await;
    let mut b = Browser::new(&lambda);
    sign_in(&mut b, Site::SameOriginHeaderOnly, &email, &email, 2).await;
    dashboard(&mut b, &username, &email).await;
}

/// A form posted from another site is refused before any flow runs, even
/// with the victim's cookies and a valid token (a browser that ignored
/// SameSite), with or without Fetch Metadata.
#[tokio::test]
async fn a_cross_site_post_is_refused_through_api_gateway() {
    let lambda = Deployment::start().await;
    let (username, email) = unique();
    sign_up(&lambda, &username, &email).await;

    // Signing in: a fresh browser's login form, posted from elsewhere.
    let mut b = Browser::new(&lambda);
    let csrf = b.get("/login").await.csrf();
    let fields = [("csrf", csrf.as_str()), ("identifier", username.as_str()), ("password", PASSWORD)];
    for site in [Site::Cross, Site::CrossOriginHeaderOnly] {
        b.post_from(site, "/login", &fields).await.assert_refused();
        // No sign-in started for this browser.
        b.get("/login/code").await.assert_redirect("/login");
    }

    // Signing out a signed-in browser.
    sign_in(&mut b, Site::Same, &username, &email, 2).await;
    let csrf = dashboard(&mut b, &username, &email).await.csrf();
    for site in [Site::Cross, Site::CrossOriginHeaderOnly] {
        b.post_from(site, "/logout", &[("csrf", &csrf)]).await.assert_refused();
        dashboard(&mut b, &username, &email).await;
    }
    // The same form from the page itself works.
    b.post("/logout", &[("csrf", &csrf)]).await.assert_redirect("/login?bye=1");
}

/// A same-origin form with a wrong, missing or someone else's token is
/// refused before any flow runs.
#[tokio::test]
async fn a_form_with_a_wrong_token_is_refused_through_api_gateway() {
    let lambda = Deployment::start().await;
    let (username, email) = unique();
    sign_up(&lambda, &username, &email).await;

    let mut other = Browser::new(&lambda);
    let others_token = other.get("/login").await.csrf();
    let mut b = Browser::new(&lambda);
    let csrf = b.get("/login").await.csrf();
    assert_ne!(csrf, others_token);
    for token in ["x.y", "", others_token.as_str()] {
        let p = b.post("/login", &[("csrf", token), ("identifier", &username), ("password", PASSWORD)]).await;
        p.assert_refused();
        b.get("/login/code").await.assert_redirect("/login");
    }
    let p = b.post("/login", &[("identifier", &username), ("password", PASSWORD)]).await;
    p.assert_refused();

    // The right token from this browser passes: the refusals were the token's.
    sign_in(&mut b, Site::Same, &username, &email, 2).await;
    let d = dashboard(&mut b, &username, &email).await;
    b.post("/logout", &[("csrf", "x.y")]).await.assert_refused();
    b.post("/logout", &[("csrf", &others_token)]).await.assert_refused();
    dashboard(&mut b, &username, &email).await;
    b.post("/logout", &[("csrf", &d.csrf())]).await.assert_redirect("/login?bye=1");
}
