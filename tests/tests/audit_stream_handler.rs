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
    latchkey_tests::fixture(name)
}

async fn processor() -> (Processor, SqliteAuditStore) {
    let store = EmbeddedStore::in_memory().expect("store");
    let audit = SqliteAuditStore::open(&store).await.expect("audit");
    (Processor::new(Arc::new(audit.clone()), latchkey_tests::audit_key(), AuditPolicy::default(), 400), audit)
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
    verify_chain(&latchkey_tests::audit_key(), USER, &once).expect("intact");
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
    verify_chain(&latchkey_tests::audit_key(), USER, &chain).expect("an intact chain");
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

/// `fixture` with its first record changed by `edit` (its JSON).
fn edited(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Event {
    let raw =
        std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture");
    let mut json: serde_json::Value = serde_json::from_str(&raw).expect("json");
    edit(&mut json["Records"][0]);
    serde_json::from_value(json).expect("a DynamoDB Streams event")
}

/// A record whose images do not fit its event name is refused like one
/// that does not decode (reported, never mapped): a MODIFY without its
/// OldImage is no registration, an INSERT without a NewImage and a REMOVE
/// without an OldImage are not silently dropped.
#[tokio::test]
async fn a_record_without_the_images_its_event_name_requires_is_refused() {
    use latchkey_stream_processor::RecordError;
    let cases = [
        edited("ddb_insert_user.json", |r| r["eventName"] = "MODIFY".into()),
        edited("ddb_insert_user.json", |r| {
            r["dynamodb"].as_object_mut().expect("change").remove("NewImage");
        }),
        edited("ddb_ttl_remove_challenge.json", |r| {
            r["dynamodb"].as_object_mut().expect("change").remove("OldImage");
        }),
        edited("ddb_modify_challenge.json", |r| {
            r["dynamodb"].as_object_mut().expect("change").remove("OldImage");
        }),
        edited("ddb_remove_challenge.json", |r| {
            let old = r["dynamodb"]["OldImage"].clone();
            r["dynamodb"]["NewImage"] = old;
        }),
    ];
    for event in cases {
        let (p, audit) = processor().await;
        let record = &event.records[0];
        let err = p.process(record).await.expect_err("refused");
        assert!(matches!(err, RecordError::Images { .. }), "{err}");
        let resp = p.handle(&event).await;
        let failed: Vec<_> = resp.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect();
        assert_eq!(failed, std::slice::from_ref(&record.change.sequence_number), "{err}");
        assert!(events(&audit).await.is_empty(), "{err}: mapped anyway");
    }
}

/// Such a record goes where every undecodable one goes: given up after its
/// tries (on AWS, the on-failure queue), and the records after it go on.
#[tokio::test]
async fn the_poller_gives_up_a_record_with_missing_images_and_goes_on() {
    use latchkey_stream_processor::poller::deliver;
    let mut batch = edited("ddb_insert_user.json", |r| r["eventName"] = "MODIFY".into());
    let bad = batch.records[0].change.sequence_number.clone().expect("sequence number");
    batch.records.extend(fixture("ddb_insert_user.json").records);
    batch.records[1].event_id = "insert-after-the-bad-one".into();
    batch.records[1].change.sequence_number = Some("999000000000000000000001".into());
    let (p, audit) = processor().await;
    assert_eq!(deliver(&p, batch, 3, std::time::Duration::ZERO).await, [bad]);
    let kinds: Vec<T> = events(&audit).await.iter().map(|r| r.event).collect();
    assert_eq!(kinds, [T::UserRegistered], "the bad MODIFY was no second registration");
}

/// What the function answers Lambda (`invoke`): a batch whose first record
/// fails is an error, so that the mapping bisects it until that record
/// stands alone (a partial response naming the first record would have it
/// retried with all the rest, and the rest, good records too, parked with it
/// after the retries). Alone, or after records that went through, the
/// failing record is named in a partial response.
#[tokio::test]
async fn a_batch_whose_first_record_fails_is_split_not_retried_whole() {
    let bad = edited("ddb_insert_user.json", |r| r["eventName"] = "MODIFY".into());
    let bad_id = bad.records[0].change.sequence_number.clone().expect("sequence number");
    let mut good = fixture("ddb_insert_user.json");
    good.records[0].event_id = "a-good-insert".into();
    good.records[0].change.sequence_number = Some("999000000000000000000001".into());
    let (p, audit) = processor().await;
    let named = |r: aws_lambda_events::streams::DynamoDbEventResponse| {
        r.batch_item_failures.into_iter().map(|f| f.item_identifier).collect::<Vec<_>>()
    };

    let mut first_fails = bad.clone();
    first_fails.records.extend(good.records.clone());
    let split = p.invoke(&first_fails).await.expect_err("an error, for Lambda to bisect");
    assert_eq!((split.records, split.first.as_str()), (2, bad_id.as_str()));
    assert!(events(&audit).await.is_empty(), "nothing appended");

    assert_eq!(named(p.invoke(&bad).await.expect("a partial response")), [Some(bad_id.clone())]);

    let mut after_good = good.clone();
    after_good.records.extend(bad.records.clone());
    assert_eq!(named(p.invoke(&after_good).await.expect("a partial response")), [Some(bad_id)]);
    let kinds: Vec<T> = events(&audit).await.iter().map(|r| r.event).collect();
    assert_eq!(kinds, [T::UserRegistered], "the good record before it went through");
}

/// Each stream numbers its own records, so records of two tables can share
/// a sequence number, the name a failed record is reported by. The poller
/// hands each stream's run over as its own event, as Lambda's mappings do:
/// a poison ledger record is given up once, and the user record with its
/// number is neither named with it nor handed over again.
#[tokio::test]
async fn the_poller_names_a_poison_record_only_within_its_own_stream() {
    use latchkey_stream_processor::poller::deliver;
    let mut batch = fixture("ddb_insert_user.json");
    let shared = batch.records[0].change.sequence_number.clone().expect("sequence number");
    let poison = edited("ddb_mail_sent.json", |r| {
        // What moto streams first for an UpdateItem that creates an item.
        r["eventName"] = "INSERT".into();
        r["dynamodb"]["NewImage"] = serde_json::json!({ "pk": { "S": "MAIL#x" } });
        r["dynamodb"].as_object_mut().expect("an object").remove("OldImage");
        r["dynamodb"]["SequenceNumber"] = shared.clone().into();
    });
    assert_ne!(poison.records[0].event_source_arn, batch.records[0].event_source_arn);
    batch.records.extend(poison.records);
    let (p, audit) = processor().await;
    assert_eq!(deliver(&p, batch, 3, std::time::Duration::ZERO).await, [shared]);
    let kinds: Vec<T> = events(&audit).await.iter().map(|r| r.event).collect();
    assert_eq!(kinds, [T::UserRegistered]);
}

/// A MODIFY of the user fixture from `old` to `new` (attributes set on a
/// copy of its image each), as stream event `id`.
fn user_modify(id: &str, old: &[(&str, serde_json::Value)], new: &[(&str, serde_json::Value)]) -> Event {
    edited("ddb_insert_user.json", |r| {
        r["eventName"] = "MODIFY".into();
        r["eventID"] = id.into();
        let image = r["dynamodb"]["NewImage"].clone();
        for (name, attrs) in [("OldImage", old), ("NewImage", new)] {
            let mut i = image.clone();
            for (k, v) in attrs {
                i[*k] = v.clone();
            }
            r["dynamodb"][name] = i;
        }
    })
}

fn num(n: i64) -> serde_json::Value {
    serde_json::json!({ "N": n.to_string() })
}

#[tokio::test]
async fn a_wrong_password_on_the_users_stream_is_a_failed_login() {
    let (p, audit) = processor().await;
    let event = user_modify("wrong-1", &[], &[("failed_logins", num(1))]);
    assert!(p.handle(&event).await.batch_item_failures.is_empty());
    let chain = events(&audit).await;
    assert_eq!(
        chain.iter().map(|r| (r.event, r.outcome, r.reason.as_deref(), r.attempts_left)).collect::<Vec<_>>(),
        [(T::LoginFailed, Outcome::Failure, Some("wrong_password"), Some(9))]
    );
    assert_eq!(chain[0].ip.as_deref(), Some("203.0.113.7"));
    let stored = serde_json::to_string(&chain).expect("json");
    assert!(!stored.contains("argon2") && !stored.contains("alice"), "{stored}");
    let day = latchkey_core::audit::day_of(chain[0].at);
    let stats = audit.stats(day, day, chain[0].at).await.expect("stats");
    assert_eq!(stats.iter().map(|c| (c.event, c.count)).collect::<Vec<_>>(), [(T::LoginFailed, 1)]);
}

/// Two changes in one second leave `sessions_valid_after` where the first
/// put it; the epoch tells the second. The first starts from an image
/// written before the epoch existed (no attribute).
#[tokio::test]
async fn two_password_changes_in_one_second_on_the_stream_are_two_events() {
    let (p, audit) = processor().await;
    let at = 1_700_000_500;
    let first = user_modify(
        "change-1",
        &[],
        &[
            ("sessions_valid_after", num(at)),
            ("password_epoch", num(1)),
            ("password_hash", serde_json::json!({"S": "$argon2id$p1"})),
        ],
    );
    let second = user_modify(
        "change-2",
        &[
            ("sessions_valid_after", num(at)),
            ("password_epoch", num(1)),
            ("password_hash", serde_json::json!({"S": "$argon2id$p1"})),
        ],
        &[
            ("sessions_valid_after", num(at)),
            ("password_epoch", num(2)),
            ("password_hash", serde_json::json!({"S": "$argon2id$p2"})),
        ],
    );
    for e in [first, second] {
        assert!(p.handle(&e).await.batch_item_failures.is_empty());
    }
    let kinds: Vec<T> = events(&audit).await.iter().map(|r| r.event).collect();
    assert_eq!(kinds, [T::PasswordChanged, T::PasswordChanged]);
}

/// A resend after the login code ran out unused: the stream's MODIFY is
/// that code's expiry (no request made it) and then the new code.
#[tokio::test]
async fn a_resend_after_the_code_expired_is_its_expiry_then_the_new_code() {
    let (p, audit) = processor().await;
    let event = edited("ddb_modify_challenge.json", |r| {
        let expired = r["dynamodb"]["OldImage"]["expires_at"].clone();
        let old = &mut r["dynamodb"]["OldImage"];
        old["failures"] = num(0);
        let mut new = old.clone();
        new["resends"] = num(1);
        new["last_sent_at"] = expired;
        new["expires_at"] = num(1_700_000_700);
        new["code_hash"] = serde_json::json!({ "S": "another code" });
        r["dynamodb"]["NewImage"] = new;
    });
    assert!(p.handle(&event).await.batch_item_failures.is_empty());
    let chain = events(&audit).await;
    assert_eq!(
        chain.iter().map(|r| (r.event, r.outcome, r.reason.as_deref(), r.ip.as_deref())).collect::<Vec<_>>(),
        [
            (T::CodeExpired, Outcome::Expired, Some("ttl"), None),
            (T::LoginCodeIssued, Outcome::Success, Some("resend"), Some("203.0.113.7"))
        ]
    );
}

/// The embedded audit store, whose first `fails` appends answer a store
/// error: `Unavailable` (as a throttled or contended DynamoDB table does),
/// or `Internal` (a bug or bad data) if `internal`.
struct Flaky {
    audit: SqliteAuditStore,
    fails: std::sync::atomic::AtomicU32,
    internal: bool,
}

#[async_trait::async_trait]
impl AuditStore for Flaky {
    async fn append(
        &self,
        key: &latchkey_core::keys::AuditKey,
        event: &latchkey_core::audit::AuditEvent,
        expires_at: i64,
    ) -> latchkey_core::ports::StoreResult<Option<latchkey_core::audit::AuditHead>> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.fails.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(match self.internal {
                true => latchkey_core::StoreError::internal("ValidationException: item too large"),
                false => latchkey_core::StoreError::unavailable("ProvisionedThroughputExceededException"),
            });
        }
        self.audit.append(key, event, expires_at).await
    }
    async fn list(
        &self,
        subject: &str,
        before: Option<u64>,
        limit: u32,
        now: i64,
    ) -> latchkey_core::ports::StoreResult<latchkey_core::audit::AuditPage> {
        self.audit.list(subject, before, limit, now).await
    }
    async fn chain(&self, subject: &str) -> latchkey_core::ports::StoreResult<Vec<latchkey_core::audit::AuditRecord>> {
        self.audit.chain(subject).await
    }
    async fn stats(
        &self,
        from_day: i64,
        to_day: i64,
        now: i64,
    ) -> latchkey_core::ports::StoreResult<Vec<latchkey_core::audit::DayCount>> {
        self.audit.stats(from_day, to_day, now).await
    }
}

/// A store error is tried again within the invocation, with a backoff,
/// while the next wait ends before the deadline: a short throttle or
/// outage does not spend Lambda's few retries of the batch (after which
/// the record and the rest of its batch go to the on-failure queue).
/// Without a deadline, or with too little left, it is reported at once;
/// so is an `Internal` error (a bug or bad data), which no retry gets past.
#[tokio::test]
async fn a_store_error_is_tried_again_until_the_deadline() {
    use tokio::time::{Duration, Instant};
    let with = async |fails: u32, internal: bool| {
        let store = EmbeddedStore::in_memory().expect("store");
        let audit = SqliteAuditStore::open(&store).await.expect("audit");
        let flaky = Arc::new(Flaky { audit: audit.clone(), fails: fails.into(), internal });
        (Processor::new(flaky, latchkey_tests::audit_key(), AuditPolicy::default(), 400), audit)
    };
    let flaky = async |fails: u32| with(fails, false).await;
    let batch = fixture("ddb_insert_user.json");

    // 100 + 200 + 400 ms of waits, well within 10 s.
    let (p, audit) = flaky(3).await;
    let started = Instant::now();
    let resp = p.invoke_by(&batch, Some(Instant::now() + Duration::from_secs(10))).await.expect("a response");
    assert!(resp.batch_item_failures.is_empty(), "{:?}", resp.batch_item_failures);
    assert_eq!(events(&audit).await.len(), 1);
    assert!(started.elapsed() >= Duration::from_millis(700), "{:?}", started.elapsed());

    // No deadline (the local poller, which retries itself): at once.
    let (p, audit) = flaky(1).await;
    assert_eq!(p.invoke(&batch).await.expect("a response").batch_item_failures.len(), 1);
    assert!(events(&audit).await.is_empty());

    // One wait of 100 ms fits before the deadline, the next of 200 not.
    let (p, audit) = flaky(2).await;
    let resp = p.invoke_by(&batch, Some(Instant::now() + Duration::from_millis(250))).await.expect("a response");
    assert_eq!(resp.batch_item_failures.len(), 1);
    assert!(events(&audit).await.is_empty());
    let resp = p.invoke_by(&batch, Some(Instant::now() + Duration::from_secs(10))).await.expect("a response");
    assert!(resp.batch_item_failures.is_empty(), "Lambda's retry");
    assert_eq!(events(&audit).await.len(), 1);

    // One failure only: a retry would have appended it.
    let (p, audit) = with(1, true).await;
    let resp = p.invoke_by(&batch, Some(Instant::now() + Duration::from_secs(10))).await.expect("a response");
    assert_eq!(resp.batch_item_failures.len(), 1, "an internal error retried");
    assert!(events(&audit).await.is_empty());
}
