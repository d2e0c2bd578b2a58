//! On AWS the api reads its secrets from SSM SecureString parameters at
//! cold start; here against the emulator's SSM.

use latchkey_tests::system::TestSystem;

const ADMIN_KEY: &str = "admin-key-for-the-ssm-test-0123456789abcdef";
/// `printf %s "$ADMIN_KEY" | sha256sum`, as an operator computes it.
const ADMIN_KEY_HASH: &str = "fc1c25c81ebc808456088a6af8931379c94e9da92222268741fd10461df12ccd";

/// A code HMAC key (base64 of 32 bytes) for the parameters these tests put.
const HMAC_KEY: &str = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=";

/// The key ids `sys` publishes in its JWKS, in order.
async fn published_kids(sys: &TestSystem) -> Vec<String> {
    let jwks: serde_json::Value =
        sys.http.get(sys.url("/.well-known/jwks.json")).send().await.expect("jwks").json().await.expect("json");
    jwks["keys"].as_array().expect("keys").iter().map(|k| k["kid"].as_str().expect("kid").to_string()).collect()
}

/// Puts a SecureString parameter, as Terraform's `value_wo` writes it (over
/// the value before).
async fn put(ssm: &aws_sdk_ssm::Client, name: &str, value: &str) {
    ssm.put_parameter()
        .name(name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .expect("put parameter");
}

/// The status of an admin request with `key` as bearer.
async fn admin_status(sys: &TestSystem, key: &str) -> u16 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let today = latchkey_core::audit::day_string((now / 86_400) as i64);
    let url = sys.url(&format!("/v1/admin/stats?from={today}&to={today}"));
    sys.http.get(url).bearer_auth(key).send().await.expect("admin request").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_ssm_parameters() {
    let endpoint = latchkey_tests::emulator_endpoint().await;
    let sdk = latchkey_tests::sdk_config(&endpoint).await;
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let prefix = latchkey_tests::random_prefix();
    let key = latchkey_core::keys::SigningKey::generate().unwrap();
    let (jwt_name, hmac_name, admin_name) =
        (format!("/{prefix}/jwt"), format!("/{prefix}/hmac"), format!("/{prefix}/admin-key-hash"));
    put(&ssm, &jwt_name, &key.to_base64()).await;
    put(&ssm, &hmac_name, HMAC_KEY).await;
    put(&ssm, &admin_name, ADMIN_KEY_HASH).await;
    let sys = TestSystem::aws_with(&[
        ("LATCHKEY_JWT_PRIVATE_KEY_PARAM", jwt_name.as_str()),
        ("LATCHKEY_CODE_HMAC_KEY_PARAM", hmac_name.as_str()),
        ("LATCHKEY_ADMIN_KEY_HASH_PARAM", admin_name.as_str()),
        // The parameter wins over a plain variable.
        ("LATCHKEY_ADMIN_KEY_HASH", &"0".repeat(64)),
    ])
    .await;
    let jwks: serde_json::Value =
        sys.http.get(sys.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0]["kid"], key.kid(), "the signing key is the one stored in SSM");
    assert_eq!(admin_status(&sys, ADMIN_KEY).await, 200, "the admin key hash is the one stored in SSM");
    assert_eq!(admin_status(&sys, "another-key").await, 401);

    // The parameter Terraform writes when no hash is given: admin API off.
    let off_name = format!("/{prefix}/admin-off");
    put(&ssm, &off_name, latchkey_api::wiring::ADMIN_KEY_HASH_OFF).await;
    let off = TestSystem::aws_with(&[
        ("LATCHKEY_ADMIN_KEY_HASH_PARAM", off_name.as_str()),
        ("LATCHKEY_ADMIN_KEY_HASH", ADMIN_KEY_HASH),
    ])
    .await;
    assert_eq!(admin_status(&off, ADMIN_KEY).await, 401, "an `off` parameter turns the admin API off");

    let build = |pairs: Vec<(&'static str, String)>| {
        let sdk = sdk.clone();
        async move {
            let config = latchkey_core::config::Config::from_lookup(|k| {
                [("LATCHKEY_BACKEND", "aws".to_string()), ("LATCHKEY_MAIL_QUEUE_URL", "http://unused".to_string())]
                    .into_iter()
                    .chain(pairs.iter().cloned())
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v)
            })
            .unwrap();
            let opts = latchkey_api::wiring::BuildOptions { sdk: Some(sdk), ..Default::default() };
            latchkey_api::wiring::build_with(&config, opts).await.err().map(|e| e.to_string())
        }
    };
    let err = build(vec![
        ("LATCHKEY_JWT_PRIVATE_KEY_PARAM", format!("/{prefix}/absent")),
        ("LATCHKEY_CODE_HMAC_KEY_PARAM", hmac_name.clone()),
    ])
    .await
    .expect("a missing parameter is an error");
    assert!(err.contains(&format!("/{prefix}/absent (LATCHKEY_JWT_PRIVATE_KEY_PARAM)")), "{err}");

    // So is a missing standby key parameter, and a standby key that is not
    // a key (its value not echoed).
    let err = build(vec![
        ("LATCHKEY_JWT_PRIVATE_KEY_PARAM", jwt_name.clone()),
        ("LATCHKEY_JWT_STANDBY_KEY_PARAM", format!("/{prefix}/standby-absent")),
        ("LATCHKEY_CODE_HMAC_KEY_PARAM", hmac_name.clone()),
    ])
    .await
    .expect("a missing standby parameter is an error");
    assert!(
        err.contains("not found")
            && err.contains(&format!("/{prefix}/standby-absent (LATCHKEY_JWT_STANDBY_KEY_PARAM)")),
        "{err}"
    );
    let not_a_key = format!("/{prefix}/standby-not-a-key");
    put(&ssm, &not_a_key, "bm90IGEga2V5").await;
    let err = build(vec![
        ("LATCHKEY_JWT_PRIVATE_KEY_PARAM", jwt_name.clone()),
        ("LATCHKEY_JWT_STANDBY_KEY_PARAM", not_a_key),
        ("LATCHKEY_CODE_HMAC_KEY_PARAM", hmac_name.clone()),
    ])
    .await
    .expect("a standby value that is not a key is an error");
    assert!(err.contains("LATCHKEY_JWT_STANDBY_KEY: ") && !err.contains("bm90IGEga2V5"), "{err}");

    let err = build(vec![
        ("LATCHKEY_JWT_PRIVATE_KEY_PARAM", jwt_name.clone()),
        ("LATCHKEY_CODE_HMAC_KEY_PARAM", hmac_name.clone()),
        ("LATCHKEY_ADMIN_KEY_HASH_PARAM", format!("/{prefix}/admin-absent")),
    ])
    .await
    .expect("a missing admin parameter is an error");
    assert!(err.contains(&format!("/{prefix}/admin-absent (LATCHKEY_ADMIN_KEY_HASH_PARAM)")), "{err}");

    // The admin key itself stored instead of its hash: refused, not echoed.
    let wrong_name = format!("/{prefix}/admin-not-a-hash");
    put(&ssm, &wrong_name, ADMIN_KEY).await;
    let err = build(vec![
        ("LATCHKEY_JWT_PRIVATE_KEY_PARAM", jwt_name.clone()),
        ("LATCHKEY_CODE_HMAC_KEY_PARAM", hmac_name.clone()),
        ("LATCHKEY_ADMIN_KEY_HASH_PARAM", wrong_name.clone()),
    ])
    .await
    .expect("a parameter that is not a hash is an error");
    assert!(err.contains("LATCHKEY_ADMIN_KEY_HASH_PARAM") && err.contains(&wrong_name), "{err}");
    assert!(!err.contains(ADMIN_KEY), "the value is not echoed: {err}");
}

/// A rotation of the JWT signing key alone, as Terraform makes it
/// (`jwt_key_version` raised with `jwt_previous_public_key` set to the `x` of
/// the old key's JWK): the parameter gets the new key and new instances start
/// on it beside the old ones, on the same tables. Sessions live on (the code
/// HMAC key is unchanged), the old key's access tokens are accepted and its
/// key published until the overlap is taken out, and the old instances,
/// until they are gone, refuse the new key's tokens (their clients refresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_key_rotation_keeps_sessions_and_the_old_tokens_through_its_overlap() {
    use latchkey_tests::scenarios::{sign_in, verified_user};
    let endpoint = latchkey_tests::emulator_endpoint().await;
    let sdk = latchkey_tests::sdk_config(&endpoint).await;
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let prefix = latchkey_tests::random_prefix();
    let (old_key, new_key) =
        (latchkey_core::keys::SigningKey::generate().unwrap(), latchkey_core::keys::SigningKey::generate().unwrap());
    let (jwt_name, hmac_name) = (format!("/{prefix}/jwt-private-key"), format!("/{prefix}/code-hmac-key"));
    put(&ssm, &jwt_name, &old_key.to_base64()).await;
    put(&ssm, &hmac_name, HMAC_KEY).await;
    let params = [("LATCHKEY_JWT_PRIVATE_KEY_PARAM", jwt_name.as_str()), ("LATCHKEY_CODE_HMAC_KEY_PARAM", &hmac_name)];

    let old = TestSystem::aws_on(&prefix, &[params[0], params[1], ("LATCHKEY_JWT_KEY_VERSION", "1")]).await;
    let (username, email) = verified_user(&old).await;
    let tokens = sign_in(&old, &username, &email).await;
    let old_access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(old.get_auth("/v1/me", &old_access).await.0, 200);

    put(&ssm, &jwt_name, &new_key.to_base64()).await;
    let x = old_key.jwk()["x"].as_str().unwrap().to_string();
    let new = TestSystem::aws_on(
        &prefix,
        &[params[0], params[1], ("LATCHKEY_JWT_KEY_VERSION", "2"), ("LATCHKEY_JWT_PREVIOUS_PUBLIC_KEY", &x)],
    )
    .await;
    assert_eq!(published_kids(&new).await, [new_key.kid(), old_key.kid()], "the new key first, the old one beside it");
    let (st, me) = new.get_auth("/v1/me", &old_access).await;
    assert_eq!((st, me["username"].as_str()), (200, Some(username.as_str())), "{me}");

    // The session goes on: a refresh on a new instance gives a token of
    // the new key, which the old instances do not know.
    let (st, rotated, _) = new.post("/v1/token/refresh", serde_json::json!({ "refresh_token": refresh })).await;
    assert_eq!(st, 200, "{rotated}");
    let new_access = rotated["access_token"].as_str().unwrap().to_string();
    assert_eq!(new.get_auth("/v1/me", &new_access).await.0, 200);
    assert_eq!(old.get_auth("/v1/me", &new_access).await.0, 401);
    // ... nor does an instance started with neither key.
    let stranger = TestSystem::aws_on(&prefix, &[]).await;
    assert_eq!(stranger.get_auth("/v1/me", &old_access).await.0, 401);

    // The overlap taken out: the old key's tokens end, its key is no longer
    // published, and the session still refreshes.
    let after = TestSystem::aws_on(&prefix, &[params[0], params[1], ("LATCHKEY_JWT_KEY_VERSION", "2")]).await;
    assert_eq!(published_kids(&after).await, [new_key.kid()]);
    assert_eq!(after.get_auth("/v1/me", &old_access).await.0, 401);
    assert_eq!(after.get_auth("/v1/me", &new_access).await.0, 200);
    let next = rotated["refresh_token"].as_str().unwrap();
    let (st, body, _) = after.post("/v1/token/refresh", serde_json::json!({ "refresh_token": next })).await;
    assert_eq!(st, 200, "{body}");
}

/// A rotation through Terraform's two JWT key slots, as its applies make
/// it, with instances of each configuration side by side on one stack's
/// tables and the keys read from SSM:
/// 1. both slots written: the api signs with slot a and publishes slot b,
///    the next key, before anything signs with it;
/// 2. `jwt_signing_slot = "b"`: no parameter is written; new instances sign
///    with b and accept a's tokens, and the instances still on the old
///    configuration accept b's (so no client is refused during the apply);
/// 3. `jwt_key_version` raised: a new key in slot a, the next one; a's old
///    tokens are refused, b's and the session live on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_rotation_through_the_key_slots_refuses_no_token_during_the_switch() {
    use latchkey_core::keys::SigningKey;
    use latchkey_tests::scenarios::{sign_in, verified_user};
    let endpoint = latchkey_tests::emulator_endpoint().await;
    let sdk = latchkey_tests::sdk_config(&endpoint).await;
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let prefix = latchkey_tests::random_prefix();
    let (key_a, key_b) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
    let (slot_a, slot_b, hmac_name) = (
        format!("/{prefix}/jwt-private-key"),
        format!("/{prefix}/jwt-private-key-b"),
        format!("/{prefix}/code-hmac-key"),
    );
    put(&ssm, &slot_a, &key_a.to_base64()).await;
    put(&ssm, &slot_b, &key_b.to_base64()).await;
    put(&ssm, &hmac_name, HMAC_KEY).await;
    // The api's environment with `jwt_signing_slot` = `signing`.
    let on = |signing: &str, a_version: &str| {
        let (signs, stands_by) = if signing == "a" { (&slot_a, &slot_b) } else { (&slot_b, &slot_a) };
        [
            ("LATCHKEY_JWT_PRIVATE_KEY_PARAM", signs.clone()),
            ("LATCHKEY_JWT_STANDBY_KEY_PARAM", stands_by.clone()),
            ("LATCHKEY_CODE_HMAC_KEY_PARAM", hmac_name.clone()),
            ("LATCHKEY_JWT_KEY_VERSION", a_version.to_string()),
            ("LATCHKEY_JWT_KEY_B_VERSION", "1".to_string()),
        ]
    };
    let start = |env: [(&'static str, String); 5]| {
        let prefix = prefix.clone();
        async move {
            let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            TestSystem::aws_on(&prefix, &pairs).await
        }
    };
    let kid_of = |jwt: &str| -> String {
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwt.split('.').next().unwrap()).unwrap();
        serde_json::from_slice::<serde_json::Value>(&header).unwrap()["kid"].as_str().unwrap().to_string()
    };

    // 1. Slot a signs; b is published ahead.
    let old = start(on("a", "1")).await;
    assert_eq!(published_kids(&old).await, [key_a.kid(), key_b.kid()], "the signing key first, the next one after it");
    let (username, email) = verified_user(&old).await;
    let tokens = sign_in(&old, &username, &email).await;
    let of_a = tokens["access_token"].as_str().unwrap().to_string();
    assert_eq!(kid_of(&of_a), key_a.kid());

    // 2. The switch: the same parameters, the other slot signs.
    let switched = start(on("b", "1")).await;
    assert_eq!(published_kids(&switched).await, [key_b.kid(), key_a.kid()]);
    let (st, me) = switched.get_auth("/v1/me", &of_a).await;
    assert_eq!((st, me["username"].as_str()), (200, Some(username.as_str())), "a's token on a new instance: {me}");
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (st, rotated, _) = switched.post("/v1/token/refresh", serde_json::json!({ "refresh_token": refresh })).await;
    assert_eq!(st, 200, "{rotated}");
    let of_b = rotated["access_token"].as_str().unwrap().to_string();
    assert_eq!(kid_of(&of_b), key_b.kid(), "new instances sign with slot b");
    let (st, me) = old.get_auth("/v1/me", &of_b).await;
    assert_eq!((st, me["username"].as_str()), (200, Some(username.as_str())), "b's token on an old instance: {me}");

    // 3. A new key in slot a: the key that signed before is refused, the
    // new one published as the next, and the session goes on.
    let key_a2 = SigningKey::generate().unwrap();
    put(&ssm, &slot_a, &key_a2.to_base64()).await;
    let after = start(on("b", "2")).await;
    assert_eq!(published_kids(&after).await, [key_b.kid(), key_a2.kid()]);
    assert_eq!(after.get_auth("/v1/me", &of_a).await.0, 401, "the retired key's token");
    assert_eq!(after.get_auth("/v1/me", &of_b).await.0, 200);
    let next = rotated["refresh_token"].as_str().unwrap();
    let (st, body, _) = after.post("/v1/token/refresh", serde_json::json!({ "refresh_token": next })).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(kid_of(body["access_token"].as_str().unwrap()), key_b.kid());
}

/// The stream processor's audit seal key, read as its `main` reads it: from
/// the SSM parameter when one is named (it wins over the variable), else
/// from the variable; a missing parameter, a missing key or a value that is
/// not a key of 32 bytes or more stop the start with a message naming the
/// variable and never the value.
#[tokio::test]
async fn the_audit_seal_key_comes_from_its_ssm_parameter() {
    use base64::Engine;
    let endpoint = latchkey_tests::emulator_endpoint().await;
    let sdk = latchkey_tests::sdk_config(&endpoint).await;
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let prefix = latchkey_tests::random_prefix();
    let b64 = |k: [u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
    let (stored, plain) = (b64([1; 32]), b64([2; 32]));
    let name = format!("/{prefix}/audit-seal-key");
    put(&ssm, &name, &stored).await;
    let short_name = format!("/{prefix}/audit-short");
    put(&ssm, &short_name, "c2hvcnQ=").await;
    let key = |pairs: Vec<(&'static str, String)>| {
        let sdk = sdk.clone();
        async move {
            let config = latchkey_core::config::Config::from_lookup(|k| {
                pairs.iter().find(|(name, _)| *name == k).map(|(_, v)| v.clone())
            })
            .expect("config");
            latchkey_core::adapters::ssm::audit_key(&config, &sdk).await
        }
    };
    // Which key was read shows in the seal it makes.
    let seal_of = |k: [u8; 32]| latchkey_core::keys::AuditKey::new(k.to_vec()).expect("key").seal("h");
    let from_ssm = key(vec![("LATCHKEY_AUDIT_KEY_PARAM", name.clone()), ("LATCHKEY_AUDIT_KEY", plain.clone())])
        .await
        .expect("key");
    assert_eq!(from_ssm.seal("h"), seal_of([1; 32]), "the parameter wins");
    let from_var = key(vec![("LATCHKEY_AUDIT_KEY", plain.clone())]).await.expect("key");
    assert_eq!(from_var.seal("h"), seal_of([2; 32]));

    let missing = key(vec![("LATCHKEY_AUDIT_KEY_PARAM", format!("/{prefix}/nope"))]).await.expect_err("missing");
    assert!(missing.contains(&format!("/{prefix}/nope (LATCHKEY_AUDIT_KEY_PARAM)")), "{missing}");
    let none = key(vec![]).await.expect_err("no key");
    assert!(none.contains("LATCHKEY_AUDIT_KEY_PARAM"), "{none}");
    let short = key(vec![("LATCHKEY_AUDIT_KEY_PARAM", short_name)]).await.expect_err("short");
    assert!(
        short.contains("LATCHKEY_AUDIT_KEY") && short.contains("32 bytes") && !short.contains("c2hvcnQ"),
        "{short}"
    );
}
