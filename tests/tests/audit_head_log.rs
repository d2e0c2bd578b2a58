//! The stream processor's `audit head` log lines: the witness of each
//! chain's end that `verify-chain --head` checks a chain against. Its own
//! test binary: the lines are read from the process's global subscriber,
//! which no other test here writes to.

use aws_lambda_events::dynamodb::Event;
use latchkey_core::adapters::embedded::EmbeddedStore;
use latchkey_core::adapters::embedded::audit::SqliteAuditStore;
use latchkey_core::audit::{AuditHead, AuditPolicy, AuditStore, check_logged_head};
use latchkey_stream_processor::Processor;
use std::sync::Arc;

/// The user the fixtures' records are about.
const USER: &str = "6f1c2a9e-3b7d-4c55-9a0e-1d2f3a4b5c6d";

/// Each record appended leaves one `audit head` line with the chain's new
/// head, which `verify-chain --head` takes as it is; a replay appends
/// nothing and logs no head.
#[tokio::test]
async fn each_append_logs_the_new_head_and_a_replay_logs_none() {
    let captured = latchkey_tests::logs::Captured::global();
    let store = EmbeddedStore::in_memory().expect("store");
    let audit = SqliteAuditStore::open(&store).await.expect("audit");
    let p = Processor::new(Arc::new(audit.clone()), latchkey_tests::audit_key(), AuditPolicy::default(), 400);
    let batch = |name| latchkey_tests::fixture::<Event>(name);
    p.handle(&batch("ddb_insert_user.json")).await;
    p.handle(&batch("ddb_modify_challenge.json")).await;
    let chain = audit.chain(USER).await.expect("chain");
    assert_eq!(chain.len(), 2);
    let heads: Vec<_> = captured.take().into_iter().filter(|l| l["message"] == "audit head").collect();
    assert_eq!(heads.len(), chain.len(), "{heads:?}");
    for (line, record) in heads.iter().zip(&chain) {
        let want = AuditHead::of(record);
        assert_eq!(line["subject"], USER);
        assert_eq!(line["seq"].as_u64(), Some(want.seq), "{line}");
        assert_eq!(line["hash"].as_str(), Some(want.hash.as_str()), "{line}");
        assert_eq!(line["expires_at"].as_i64(), Some(want.expires_at), "{line}");
        let head: AuditHead = line["head"].as_str().expect("head").parse().expect("verify-chain --head takes it");
        assert_eq!(head, want);
        assert_eq!(check_logged_head(USER, &chain, &head, 0), Ok(()));
    }
    p.handle(&batch("ddb_modify_challenge.json")).await;
    assert!(!captured.take().iter().any(|l| l["message"] == "audit head"), "a replay logged a head");
}
