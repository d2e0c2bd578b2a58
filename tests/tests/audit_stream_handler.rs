//! The stream processor's handler on JSON fixtures of real DynamoDB Streams
//! events (INSERT, MODIFY, REMOVE, TTL REMOVE), deserialized into the
//! `aws_lambda_events` types Lambda hands over, with the audit trail kept
//! in an in-memory embedded store.

use aws_lambda_events::dynamodb::Event;
use latchkey_core::adapters::embedded::EmbeddedStore;
use latchkey_core::adapters::embedded::audit::SqliteAuditStore;
use latchkey_core::audit::{AuditEventType as T, AuditPolicy, AuditStore, Outcome, verify_chain};
use latchkey_stream_processor::{Processor, is_ttl_removal};
use std::sync::Arc;

const USER: &str = "6f1c2a9e-3b7d-4c55-9a0e-1d2f3a4b5c6d";

fn fixture(name: &str) -> Event {
    let raw =
        std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture");
    serde_json::from_str(&raw).expect("a DynamoDB Streams event")
}

async fn processor() -> (Processor, SqliteAuditStore) {
    let store = EmbeddedStore::in_memory().expect("store");
    let audit = SqliteAuditStore::open(&store).await.expect("audit");
    (Processor::new(Arc::new(audit.clone()), AuditPolicy::default(), 400), audit)
}

async fn events(audit: &SqliteAuditStore) -> Vec<latchkey_core::audit::AuditRecord> {
    audit.chain(USER).await.expect("chain")
}

#[tokio::test]
async fn insert_of_a_user_is_a_registration_with_the_request_that_made_it() {
    let (p, audit) = processor().await;
    let resp = p.handle(&fixture("ddb_insert_user.json")).await;
    assert!(resp.batch_item_failures.is_empty());
    let chain = events(&audit).await;
    assert_eq!(chain.len(), 1);
    let r = &chain[0];
    assert_eq!((r.event, r.outcome, r.at), (T::UserRegistered, Outcome::Success, 1_700_000_000));
    assert_eq!(
        (r.request_id.as_deref(), r.ip.as_deref(), r.user_agent.as_deref()),
        (Some("req-42"), Some("203.0.113.7"), Some("curl/8"))
    );
    let stored = serde_json::to_string(&chain).expect("json");
    assert!(!stored.contains("argon2") && !stored.contains("alice@example.com"), "{stored}");
}

#[tokio::test]
async fn a_replayed_batch_adds_nothing() {
    let (p, audit) = processor().await;
    p.handle(&fixture("ddb_insert_user.json")).await;
    p.handle(&fixture("ddb_modify_challenge.json")).await;
    let once = events(&audit).await;
    assert_eq!(once.len(), 2);
    for name in ["ddb_insert_user.json", "ddb_modify_challenge.json"] {
        assert!(p.handle(&fixture(name)).await.batch_item_failures.is_empty());
    }
    assert_eq!(events(&audit).await, once);
    verify_chain(USER, &once).expect("intact");
}

#[tokio::test]
async fn modify_of_a_challenge_is_a_failed_code_with_attempts_left() {
    let (p, audit) = processor().await;
    p.handle(&fixture("ddb_modify_challenge.json")).await;
    let chain = events(&audit).await;
    assert_eq!(chain.len(), 1);
    assert_eq!(
        (chain[0].event, chain[0].attempts_left, chain[0].reason.as_deref()),
        (T::CodeFailed, Some(5), Some("wrong_code"))
    );
}

#[tokio::test]
async fn a_remove_by_ttl_is_an_expiry_and_a_plain_remove_is_not() {
    let ttl = fixture("ddb_ttl_remove_challenge.json");
    let plain = fixture("ddb_remove_challenge.json");
    assert!(is_ttl_removal(&ttl.records[0]));
    assert!(!is_ttl_removal(&plain.records[0]));

    let (p, audit) = processor().await;
    assert!(p.handle(&plain).await.batch_item_failures.is_empty());
    assert!(events(&audit).await.is_empty(), "a delete by a request is no expiry");
    assert!(p.handle(&ttl).await.batch_item_failures.is_empty());
    let chain = events(&audit).await;
    assert_eq!(chain.len(), 1);
    let r = &chain[0];
    assert_eq!((r.event, r.outcome, r.reason.as_deref()), (T::CodeExpired, Outcome::Expired, Some("ttl")));
    assert_eq!((r.ip.as_deref(), r.request_id.as_deref()), (None, None), "the TTL service made no request");
}

/// The batch stops at a poison record and reports it alone: Lambda resumes
/// from it, so the record after it is not appended before it.
#[tokio::test]
async fn a_failed_record_stops_the_batch_and_is_reported_alone() {
    let (p, audit) = processor().await;
    let resp = p.handle(&fixture("ddb_poison_batch.json")).await;
    let failed: Vec<_> = resp.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect();
    assert_eq!(failed, [Some("555000000000000000000006".to_string())]);
    let kinds: Vec<T> = events(&audit).await.iter().map(|r| r.event).collect();
    assert_eq!(kinds, [T::UserRegistered], "a record after the failed one was appended before it");
    // The response is what Lambda expects on the wire.
    let wire = serde_json::to_value(&resp).expect("json");
    assert_eq!(wire["batchItemFailures"][0]["itemIdentifier"], "555000000000000000000006");
}

/// The local poller does what the mapping does with that response: it hands
/// the batch over again from the failed record, gives a record that keeps
/// failing up after its tries, and then processes the rest, once each.
#[tokio::test]
async fn the_poller_resumes_from_a_failed_record_and_gives_up_a_poison_one() {
    use latchkey_stream_processor::poller::deliver;
    let (p, audit) = processor().await;
    let given_up = deliver(&p, fixture("ddb_poison_batch.json"), 3, std::time::Duration::ZERO).await;
    assert_eq!(given_up, ["555000000000000000000006"]);
    let chain = events(&audit).await;
    let kinds: Vec<T> = chain.iter().map(|r| r.event).collect();
    assert_eq!(kinds, [T::UserRegistered, T::EmailVerified]);
    verify_chain(USER, &chain).expect("an intact chain");
}

#[tokio::test]
async fn modify_of_a_mail_ledger_item_into_sent_is_a_delivery_for_its_subject() {
    let (p, audit) = processor().await;
    let resp = p.handle(&fixture("ddb_mail_sent.json")).await;
    assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    let chain = events(&audit).await;
    assert_eq!(chain.len(), 1);
    let r = &chain[0];
    assert_eq!(
        (r.event, r.outcome, r.reason.as_deref(), r.at),
        (T::MailDelivered, Outcome::Success, Some("login_code"), 1_700_000_300)
    );
    assert_eq!((r.ip.as_deref(), r.request_id.as_deref()), (None, None), "a delivery is no request");
    let stored = serde_json::to_string(&chain).expect("json");
    assert!(!stored.contains("alice@example.com"), "{stored}");
    // A redelivered record adds nothing.
    assert!(p.handle(&fixture("ddb_mail_sent.json")).await.batch_item_failures.is_empty());
    assert_eq!(events(&audit).await.len(), 1);
}
