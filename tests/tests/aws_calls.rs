//! AWS calls per request on the emulator, counted by an SDK interceptor on
//! the very clients the api uses. Targets: register <= 3 (a taken email
//! <= 5, a taken username <= 4, the same whether an account or a hold takes
//! it), login <= 4, code verify <= 3, and no Scan anywhere; the other
//! requests are held to the counts docs/data-model.md gives. The counts are
//! printed for the notes. The same interceptor records the IAM permission
//! each call needs (a transaction's, one per item), and the api role's
//! policy in terraform/iam.tf must grant every one: the emulator enforces
//! no IAM, so a missing action would only show on AWS, as a 500.

use hcl::Expression;
use latchkey_core::adapters::aws_calls::Permission;
use latchkey_core::tables;
use latchkey_tests::scenarios::{PASSWORD, reset_with_link, sign_in, token_from_link, unique, verified_user};
use latchkey_tests::system::TestSystem;
use latchkey_tests::terraform::{Terraform, attr, blocks, eval_str, literal_strings};
use serde_json::json;
use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_per_request_stay_within_budget() {
    let sys = TestSystem::aws().await;
    let calls = sys.calls.clone().expect("aws system counts calls");
    // The tables' creation at start (LATCHKEY_BOOTSTRAP) is the emulator's
    // set-up, not the api's: Terraform makes them on AWS.
    calls.take_permissions();
    let mut report = Vec::new();
    let mut measure = |name: &'static str, took: Vec<String>, max: Option<usize>| {
        assert!(!took.iter().any(|c| c.ends_with(":Scan")), "{name} scanned: {took:?}");
        if let Some(max) = max {
            assert!(took.len() <= max, "{name}: {} calls > {max}: {took:?}", took.len());
        }
        report.push(format!("{name}: {} {took:?}", took.len()));
    };
    let (username, email) = unique();

    calls.take();
    let (st, _, _) =
        sys.post("/v1/register", json!({"username": username, "email": email, "password": PASSWORD})).await;
    assert_eq!(st, 202);
    measure("register", calls.take(), Some(3));

    let token = token_from_link(&sys.wait_mail(&email, 1).await.link().expect("link"));
    calls.take();
    assert_eq!(sys.post("/v1/verify-email", json!({ "token": token })).await.0, 200);
    measure("verify-email", calls.take(), Some(3));

    let (st, body, _) = sys.post("/v1/login", json!({"identifier": email, "password": PASSWORD})).await;
    assert_eq!(st, 202);
    measure("login", calls.take(), Some(4));

    let code = sys.wait_mail(&email, 2).await.code().expect("code");
    calls.take();
    let (st, tokens, _) = sys.post("/v1/login/otp", json!({"challenge_id": body["challenge_id"], "code": code})).await;
    assert_eq!(st, 200);
    measure("code verify", calls.take(), Some(3));

    let (st, refreshed, _) = sys.post("/v1/token/refresh", json!({"refresh_token": tokens["refresh_token"]})).await;
    assert_eq!(st, 200);
    // Rate limit, the session, its user (a password change ends the
    // sessions from before it), the conditional rotation.
    measure("refresh", calls.take(), Some(4));

    let (st, _, _) = sys.post("/otp", json!({"action": "send_otp", "email": email})).await;
    assert_eq!(st, 200);
    measure("send_otp", calls.take(), Some(4));
    let otp = sys.wait_mail(&email, 3).await.code().expect("otp");
    calls.take();
    let (st, _, _) = sys.post("/otp", json!({"action": "verify_otp", "email": email, "otp": otp})).await;
    assert_eq!(st, 200);
    measure("verify_otp", calls.take(), Some(3));

    // Rate limit, the session, its user, the one transaction (the user's
    // new hash and epoch, the changing session's epoch), the owner's notice.
    let access = refreshed["access_token"].as_str().expect("access token");
    calls.take();
    let change = json!({"current_password": PASSWORD, "new_password": "quartz lantern orbit mosaic 47"});
    assert_eq!(sys.post_auth("/v1/password", access, change).await.0, 200);
    measure("password change", calls.take(), Some(5));

    // Sign out everywhere else: the same, without a notice.
    calls.take();
    let end = json!({ "current_password": "quartz lantern orbit mosaic 47" });
    assert_eq!(sys.post_auth("/v1/logout/others", access, end).await.0, 200);
    measure("sign out everywhere else", calls.take(), Some(4));

    // The list: the session, its user, the activity limit, one Query of
    // the sessions index (no Scan).
    calls.take();
    let (st, list) = sys.get_auth("/v1/sessions", access).await;
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(1), "{list}");
    let took = calls.take();
    assert!(took.iter().any(|c| c == "dynamodb:Query"), "{took:?}");
    measure("list sessions", took, Some(4));

    // The dashboard, through the same session's browser cookie (it holds
    // what a refresh token holds): the session and its user, read once for
    // the cookie's check and taken as read by the list, the activity
    // limit, one Query of the trail, one of the sessions index.
    let cookie = format!("__Host-latchkey_session={}", refreshed["refresh_token"].as_str().expect("refresh token"));
    calls.take();
    let page = sys.http.get(sys.url("/dashboard")).header("cookie", cookie).send().await.expect("dashboard");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("page");
    assert_eq!(
        html.matches("<span class=\"badge\">this browser</span>").count(),
        1,
        "the asking session listed: {html}"
    );
    let took = calls.take();
    assert_eq!(took.iter().filter(|c| *c == "dynamodb:Query").count(), 2, "{took:?}");
    measure("dashboard view", took, Some(5));

    // Ending one (here the asking one): the checked password's calls, the
    // session to end, its revocation.
    let sid = list["sessions"][0]["id"].as_str().expect("id").to_string();
    let end = json!({ "current_password": "quartz lantern orbit mosaic 47" });
    assert_eq!(sys.post_auth(&format!("/v1/sessions/{sid}/revoke"), access, end).await.0, 204);
    measure("end a session", calls.take(), Some(5));

    // A wrong password costs no more than a right one.
    let (st, _, _) =
        sys.post("/v1/login", json!({"identifier": username, "password": "not the password at all"})).await;
    assert_eq!(st, 401);
    measure("login (wrong password)", calls.take(), Some(4));

    let before = sys.mails_to(&email).await.len();
    calls.take();
    assert_eq!(sys.post("/v1/password/forgot", json!({ "email": email })).await.0, 202);
    // The limit, the email index, the account by its id (the index may
    // lag a reset), the mail job.
    measure("password forgot", calls.take(), Some(4));
    let link = sys.wait_mail(&email, before + 1).await.link().expect("reset link");
    calls.take();
    let (st, body) = reset_with_link(&sys, &link, "velvet orbit harbor lantern").await;
    assert_eq!(st, 200, "{body}");
    // Rate limit, the user, the conditional update, the owner's notice.
    measure("password reset", calls.take(), Some(4));

    // A taken email answers as a free one does (202), after two calls more
    // than a free one (as before holds: then two reads, the email's claim
    // and its account; now the claim, and the hold's transaction, which
    // checks the account): the rate limit, the refused registration, the
    // email's claim, the username's hold, the owner's notice.
    let (held, _) = unique();
    calls.take();
    let (st, body, _) = sys.post("/v1/register", json!({"username": held, "email": email, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{body}");
    measure("register (email taken)", calls.take(), Some(5));

    // A username held by an account and one held by a hold are refused
    // after the same calls (a hold reads the holder it stands for too).
    let mut refused = Vec::new();
    for name in [&username, &held] {
        calls.take();
        let (st, body, _) =
            sys.post("/v1/register", json!({"username": name, "email": unique().1, "password": PASSWORD})).await;
        assert_eq!((st, body["error"].as_str()), (409, Some("username_taken")), "{body}");
        refused.push(calls.take());
    }
    assert_eq!(refused[0], refused[1], "a hold answers after other calls than an account");
    let [by_account, by_hold] = <[Vec<String>; 2]>::try_from(refused).expect("two");
    measure("register (username taken by an account)", by_account, Some(4));
    measure("register (username held)", by_hold, Some(4));

    // Ending one through the dashboard's form: the cookie's check (the
    // session, its user, which the password is then checked against), the
    // limit of the checked password, the session to end, its revocation.
    let (name, address) = verified_user(&sys).await;
    let [here, there] = [sign_in(&sys, &name, &address).await, sign_in(&sys, &name, &address).await]
        .map(|t| t["refresh_token"].as_str().expect("refresh token").to_string());
    let session = format!("__Host-latchkey_session={here}");
    let page = sys.http.get(sys.url("/dashboard")).header("cookie", &session).send().await.expect("dashboard");
    assert_eq!(page.status(), 200);
    let csrf_cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|c| c.to_str().ok()?.split(';').next().filter(|c| c.starts_with("__Host-latchkey_csrf=")))
        .map(str::to_string)
        .next()
        .expect("the CSRF cookie");
    let html = page.text().await.expect("page");
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).and_then(|v| v.split('"').next()).expect("csrf field");
    let target = there.split('.').next().expect("session id");
    calls.take();
    let ended = sys
        .http
        .post(sys.url("/sessions/end"))
        .header("cookie", format!("{session}; {csrf_cookie}"))
        .form(&[("csrf", csrf), ("session_id", target), ("current_password", PASSWORD)])
        .send()
        .await
        .expect("end a session");
    assert_eq!(ended.status(), 303);
    assert_eq!(ended.headers()["location"], "/dashboard?ended=one");
    measure("end a session (dashboard form)", calls.take(), Some(5));
    let (st, _, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": there })).await;
    assert_eq!(st, 401, "the session the form ended");

    // Deleting an account: the checked password's calls (the limit, the
    // session, its user), the user's meta, the transaction deleting the
    // user and its two claims, the query of its items in the tokens table
    // and their deletion (its one session here), the owner's notice.
    let (name, address) = verified_user(&sys).await;
    let tokens = sign_in(&sys, &name, &address).await;
    calls.take();
    let gone = json!({ "current_password": PASSWORD });
    let (st, body) = sys.post_auth("/v1/me/delete", tokens["access_token"].as_str().expect("access"), gone).await;
    assert_eq!(st, 204, "{body}");
    measure("delete the account", calls.take(), Some(8));

    // Moving an account to another address. The ask: the checked
    // password's calls, the limit of the mails, the new address's lookup,
    // the link and the notice. The link: its limit, the user, the
    // transaction moving the user and its claim, the old address's notice.
    let (name, address) = verified_user(&sys).await;
    let tokens = sign_in(&sys, &name, &address).await;
    let new = unique().1;
    calls.take();
    let ask = json!({ "current_password": PASSWORD, "new_email": new });
    let (st, body) = sys.post_auth("/v1/me/email", tokens["access_token"].as_str().expect("access"), ask).await;
    assert_eq!(st, 202, "{body}");
    measure("ask to change the address", calls.take(), Some(7));
    let token = token_from_link(&sys.wait_mail(&new, 1).await.link().expect("link"));
    calls.take();
    let (st, body, _) = sys.post("/v1/email/confirm", json!({ "token": token })).await;
    assert_eq!(st, 200, "{body}");
    measure("change the address by its link", calls.take(), Some(4));

    println!("AWS calls per request:\n  {}", report.join("\n  "));

    let needed = calls.take_permissions();
    assert!(
        needed.iter().any(|p| p.action == "dynamodb:ConditionCheckItem"),
        "the email-taken registration's hold checks its holder in its transaction: {needed:?}"
    );
    let granted = policy_statements("api");
    let missing: Vec<&Permission> = needed.iter().filter(|p| !granted.iter().any(|g| g.grants(p))).collect();
    assert!(missing.is_empty(), "terraform/iam.tf's api policy does not grant {missing:?} (it grants {granted:?})");

    // Nor more: every DynamoDB action the policy grants on a table is one
    // the requests above used there, or one of these, which they do not
    // reach: the admin endpoints' read of one audit record.
    let not_reached_here = [("dynamodb:GetItem", "audit")];
    let used: BTreeSet<(String, String)> =
        needed.iter().filter_map(|p| Some((p.action.clone(), table_suffix(p.table.as_deref()?)))).collect();
    let unused: Vec<(&String, &String)> = granted
        .iter()
        .flat_map(|g| {
            g.actions.iter().filter(|a| a.starts_with("dynamodb:")).flat_map(|a| g.tables.iter().map(move |t| (a, t)))
        })
        .filter(|(a, t)| !used.contains(&((*a).clone(), (*t).clone())))
        .filter(|(a, t)| !not_reached_here.contains(&(a.as_str(), t.as_str())))
        .collect();
    assert!(
        unused.is_empty(),
        "terraform/iam.tf's api policy grants {unused:?}, which no request uses (used: {used:?})"
    );
}

/// A table name of the calls (`t-1-users`, `t-1-users/index/by_email`) as
/// a policy's resources name it: `users`, `users/index/*`.
fn table_suffix(table: &str) -> String {
    let (name, index) = match table.split_once("/index/") {
        Some((name, _)) => (name, true),
        None => (table, false),
    };
    let spec = tables::ALL
        .iter()
        .find(|t| name.ends_with(&format!("-{}", t.suffix)))
        .unwrap_or_else(|| panic!("{table}: no table of core's tables::ALL"));
    if index { format!("{}/index/*", spec.suffix) } else { spec.suffix.to_string() }
}

/// One statement of a policy document: its actions, and the DynamoDB table
/// suffixes (`users`, `users/index/*`) its resources name.
#[derive(Debug)]
struct Statement {
    actions: BTreeSet<String>,
    tables: BTreeSet<String>,
    other_resources: bool,
}

impl Statement {
    fn grants(&self, p: &Permission) -> bool {
        if !self.actions.contains(&p.action) {
            return false;
        }
        let Some(table) = &p.table else { return self.other_resources };
        self.tables.contains(&table_suffix(table))
    }
}

/// The statements of `data "aws_iam_policy_document" "<doc>"` in
/// terraform/, with `aws_dynamodb_table.<label>.arn` read as that table's
/// name suffix (`users` of `"${var.name_prefix}-users"`).
fn policy_statements(doc: &str) -> Vec<Statement> {
    let tf = Terraform::load();
    let ctx = tf.context(&[]);
    let prefix =
        format!("{}-", eval_str(&ctx, &hcl::from_str("v = var.name_prefix").expect("probe"), "v", "name_prefix"));
    let suffixes: Vec<(String, String)> = tf
        .resources("aws_dynamodb_table")
        .map(|(label, t)| {
            let name = eval_str(&ctx, t, "name", label);
            let suffix = name.strip_prefix(&prefix).unwrap_or_else(|| panic!("{name}: not {prefix}<suffix>"));
            (format!("aws_dynamodb_table.{label}.arn"), suffix.to_string())
        })
        .collect();
    let policy = tf.policy_document(doc);
    blocks(policy, "statement")
        .map(|st| {
            let st = st.body();
            let actions = literal_strings(attr(st, "actions").expect("actions"), doc).into_iter().collect();
            let Some(Expression::Array(resources)) = attr(st, "resources") else { panic!("{doc}: resources") };
            let (mut tables, mut other_resources) = (BTreeSet::new(), false);
            for r in resources.iter().map(ToString::to_string) {
                match suffixes.iter().find(|(arn, _)| r.contains(arn.as_str())) {
                    Some((_, suffix)) if r.ends_with("/index/*\"") => tables.insert(format!("{suffix}/index/*")),
                    Some((_, suffix)) => tables.insert(suffix.clone()),
                    None => {
                        other_resources = true;
                        false
                    }
                };
            }
            Statement { actions, tables, other_resources }
        })
        .collect()
}
