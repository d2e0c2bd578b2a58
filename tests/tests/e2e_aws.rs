//! Every end-to-end scenario on DynamoDB + SQS in the emulator.
latchkey_tests::e2e_suite!(latchkey_tests::system::TestSystem::aws());

use latchkey_core::tables::{MAIL_QUEUE, queue_name};
use latchkey_tests::scenarios::unique;
use latchkey_tests::system::TestSystem;
use serde_json::json;

/// A `send_otp` whose mail job SQS refuses (the queue deleted, standing in
/// for an outage) is answered as a failure, and gives back on DynamoDB the
/// cooldown it started: with the queue back, the address gets a code at
/// once, and that code verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_send_the_queue_refuses_can_be_made_again_at_once() {
    let prefix = latchkey_tests::random_prefix();
    let sys = TestSystem::aws_on(&prefix, &[("LATCHKEY_RATE_LIMITS", "relaxed")]).await;
    let sqs = aws_sdk_sqs::Client::new(&latchkey_tests::sdk_config(&latchkey_tests::emulator_endpoint().await).await);
    let name = queue_name(&prefix, MAIL_QUEUE);
    let url = sqs.get_queue_url().queue_name(&name).send().await.expect("queue url").queue_url.expect("queue url");
    sqs.delete_queue().queue_url(&url).send().await.expect("delete the mail queue");
    let (_, email) = unique();
    let send = json!({"action": "send_otp", "email": email});
    let (st, body, _) = sys.post("/otp", send.clone()).await;
    assert!(st >= 500, "a send with no queue: {st} {body}");

    let back = sqs.create_queue().queue_name(&name).send().await.expect("the mail queue again").queue_url;
    assert_eq!(back.as_deref(), Some(url.as_str()), "the queue came back at its address");
    let (st, body, _) = sys.post("/otp", send).await;
    assert_eq!((st, &body), (200, &json!({"message": "OTP sent successfully"})), "the send made again at once");
    let code = sys.wait_mail(&email, 1).await.code().expect("code");
    let (st, body, _) = sys.post("/otp", json!({"action": "verify_otp", "email": email, "otp": code})).await;
    assert_eq!((st, &body), (200, &json!({"message": "OTP verified successfully"})));
}
