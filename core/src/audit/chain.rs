//! The per-subject hash chain: each record carries the hash of the record
//! before it, so editing, removing or reordering a stored record shows up
//! at that record.

use super::AuditRecord;
use crate::clock::Timestamp;
use sha2::{Digest, Sha256};

/// The `prev_hash` of a subject's first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 (hex) over every field of the record except `hash`, in a fixed
/// order, each length-prefixed so no two records share an encoding.
pub fn record_hash(r: &AuditRecord) -> String {
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &str| {
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_be_bytes());
        h.update(value.as_bytes());
    };
    let opt = |v: &Option<String>| v.as_deref().map_or_else(|| "\u{0}none".to_string(), |s| format!("\u{1}{s}"));
    field("v", "latchkey/audit/v1");
    field("subject", &r.subject);
    field("seq", &r.seq.to_string());
    field("event_id", &r.event_id);
    field("event", r.event.as_str());
    field("at", &r.at.to_string());
    field("outcome", &format!("{:?}", r.outcome));
    field("reason", &opt(&r.reason));
    field("attempts_left", &opt(&r.attempts_left.map(|n| n.to_string())));
    field("request_id", &opt(&r.request_id));
    field("ip", &opt(&r.ip));
    field("user_agent", &opt(&r.user_agent));
    field("expires_at", &r.expires_at.to_string());
    field("prev_hash", &r.prev_hash);
    hex::encode(h.finalize())
}

/// The first link of a chain that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chain of {subject} broken at seq {seq}: {reason}")]
pub struct ChainBreak {
    pub subject: String,
    pub seq: u64,
    pub reason: &'static str,
}

/// Checks a subject's records, oldest first, as if none had reached its
/// `expires_at` (see [`verify_chain_at`]). Records removed by retention
/// leave the oldest remaining record as the anchor: its `prev_hash` cannot
/// be checked, everything after it is.
pub fn verify_chain(subject: &str, records: &[AuditRecord]) -> Result<(), ChainBreak> {
    verify_chain_at(subject, records, Timestamp::MIN)
}

/// [`verify_chain`] at `now`. DynamoDB's TTL deletes expired records in no
/// order and up to days late, so a later expired record may be gone while
/// an earlier one is still there: a gap right after a record past its
/// `expires_at` is retention, and the record after the gap is a new
/// anchor. A record's `expires_at` is never earlier than its
/// predecessor's, so whatever is missing there expired no later than the
/// next record, and a gap after a record still live is a break. Every
/// record's own hash is checked, expired or not.
pub fn verify_chain_at(subject: &str, records: &[AuditRecord], now: Timestamp) -> Result<(), ChainBreak> {
    let brk = |seq, reason| ChainBreak { subject: subject.to_string(), seq, reason };
    let mut prev: Option<&AuditRecord> = None;
    for r in records {
        if r.subject != subject {
            return Err(brk(r.seq, "record belongs to another subject"));
        }
        if record_hash(r) != r.hash {
            return Err(brk(r.seq, "record content does not match its hash"));
        }
        match prev {
            None if r.seq == 1 && r.prev_hash != GENESIS_HASH => {
                return Err(brk(r.seq, "first record does not start the chain"));
            }
            None => {}
            Some(p) if r.seq > p.seq + 1 && p.expires_at <= now => {}
            Some(p) if r.seq != p.seq + 1 => return Err(brk(r.seq, "a record before this one is missing")),
            Some(p) if r.prev_hash != p.hash => {
                return Err(brk(r.seq, "prev_hash does not match the previous record"));
            }
            Some(_) => {}
        }
        prev = Some(r);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, AuditEventType, Outcome};

    fn ev(i: u32) -> AuditEvent {
        AuditEvent {
            event_id: format!("e{i}"),
            subject: "u1".into(),
            event: AuditEventType::CodeFailed,
            at: 1_700_000_000 + i64::from(i),
            outcome: Outcome::Failure,
            reason: Some("wrong_code".into()),
            attempts_left: Some(5 - i),
            request_id: None,
            ip: Some("203.0.113.7".into()),
            user_agent: None,
        }
    }

    fn chain(n: u32) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let prev = out.last().map_or(GENESIS_HASH.to_string(), |r| r.hash.clone());
            out.push(AuditRecord::chained(&ev(i), u64::from(i) + 1, &prev, 2_000_000_000 + i64::from(i)));
        }
        out
    }

    #[test]
    fn an_intact_chain_verifies_and_an_edit_breaks_it_there() {
        let mut c = chain(4);
        assert_eq!(verify_chain("u1", &c), Ok(()));
        c[2].ip = Some("198.51.100.1".into());
        let e = verify_chain("u1", &c).unwrap_err();
        assert_eq!((e.seq, e.reason), (3, "record content does not match its hash"));
    }

    #[test]
    fn a_removed_or_rehashed_record_breaks_the_next_link() {
        let mut c = chain(4);
        c.remove(1);
        assert_eq!(verify_chain("u1", &c).unwrap_err().seq, 3);
        let mut c = chain(4);
        // An attacker who recomputes the edited record's own hash still
        // breaks the link after it.
        c[1].reason = None;
        c[1].hash = record_hash(&c[1]);
        let e = verify_chain("u1", &c).unwrap_err();
        assert_eq!((e.seq, e.reason), (3, "prev_hash does not match the previous record"));
    }

    #[test]
    fn retention_leaves_a_valid_anchor() {
        let c = chain(5);
        assert_eq!(verify_chain("u1", &c[2..]), Ok(()));
    }

    /// The TTL took record 3 before record 2, both past their expiry: no
    /// break at 4, unless record 2 is still live (then 3 went early).
    #[test]
    fn a_gap_after_an_expired_record_is_retention() {
        let mut c = chain(5);
        c.remove(2);
        let exp2 = c[1].expires_at;
        assert_eq!(verify_chain_at("u1", &c, exp2), Ok(()));
        assert_eq!(verify_chain_at("u1", &c, exp2 - 1).unwrap_err().seq, 4);
        assert_eq!(verify_chain("u1", &c).unwrap_err().seq, 4);
        // An expired record's own content is still checked.
        c[1].ip = None;
        let e = verify_chain_at("u1", &c, exp2).unwrap_err();
        assert_eq!((e.seq, e.reason), (2, "record content does not match its hash"));
    }
}
