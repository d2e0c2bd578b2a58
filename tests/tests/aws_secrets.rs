//! On AWS the api reads its secrets from SSM SecureString parameters at
//! cold start; here against the emulator's SSM.

use latchkey_tests::system::TestSystem;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_ssm_parameters() {
    let endpoint = latchkey_tests::emulator_endpoint().await;
    let sdk = latchkey_tests::sdk_config(&endpoint).await;
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let prefix = latchkey_tests::random_prefix();
    let key = latchkey_core::keys::SigningKey::generate().unwrap();
    let (jwt_name, hmac_name) = (format!("/{prefix}/jwt"), format!("/{prefix}/hmac"));
    for (name, value) in
        [(&jwt_name, key.to_base64()), (&hmac_name, "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=".to_string())]
    {
        ssm.put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
            .await
            .unwrap();
    }
    let sys = TestSystem::aws_with(&[
        ("LATCHKEY_JWT_PRIVATE_KEY_PARAM", jwt_name.as_str()),
        ("LATCHKEY_CODE_HMAC_KEY_PARAM", hmac_name.as_str()),
    ])
    .await;
    let jwks: serde_json::Value =
        sys.http.get(sys.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0]["kid"], key.kid(), "the signing key is the one stored in SSM");

    let missing = latchkey_core::config::Config::from_lookup(|k| match k {
        "LATCHKEY_BACKEND" => Some("aws".into()),
        "LATCHKEY_MAIL_QUEUE_URL" => Some("http://unused".into()),
        "LATCHKEY_JWT_PRIVATE_KEY_PARAM" => Some(format!("/{prefix}/absent")),
        "LATCHKEY_CODE_HMAC_KEY_PARAM" => Some(hmac_name.clone()),
        _ => None,
    })
    .unwrap();
    let opts = latchkey_api::wiring::BuildOptions { sdk: Some(sdk), ..Default::default() };
    let err = latchkey_api::wiring::build_with(&missing, opts).await.err().expect("a missing parameter is an error");
    assert!(err.to_string().contains("absent"), "{err}");
}
