//! The per-subject hash chain: each record carries the hash of the record
//! before it, so editing, removing or reordering a stored record shows up
//! at that record, and a seal (an HMAC under the audit key) over its own
//! hash, so the chain cannot be recomputed by whoever can only write the
//! store.

use super::AuditRecord;
use crate::clock::Timestamp;
use crate::keys::{AuditKey, AuditKeyring};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

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

/// What a chain that holds is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainReport {
    pub records: usize,
    /// Records without a seal: written before the trail was sealed, and
    /// accepted only as [`verify_chain_at`] says.
    pub unsealed: usize,
    /// Records sealed with a retired key (before a rotation).
    pub by_retired_key: usize,
}

/// Checks a subject's records, oldest first, as if none had reached its
/// `expires_at`, every one sealed with `key` and none with a retired key
/// (see [`verify_chain_at`]).
/// Records removed by retention leave the oldest remaining record as the
/// anchor: its `prev_hash` cannot be checked, everything after it is.
pub fn verify_chain(key: &AuditKey, subject: &str, records: &[AuditRecord]) -> Result<ChainReport, ChainBreak> {
    verify_chain_at(&AuditKeyring::from(key.clone()), subject, records, Timestamp::MIN, Timestamp::MIN)
}

/// [`verify_chain`] at `now`. DynamoDB's TTL deletes expired records in no
/// order and up to days late, so a later expired record may be gone while
/// an earlier one is still there: a gap right after a record past its
/// `expires_at` is retention, and the record after the gap is a new
/// anchor. A record's `expires_at` is never earlier than its
/// predecessor's, so whatever is missing there expired no later than the
/// next record, and a gap after a record still live is a break. Every
/// record's own hash and seal are checked, expired or not.
///
/// A record without a seal passes only if it was made before
/// `unsealed_before` (when the trail began to be sealed: `Timestamp::MIN`
/// for a trail sealed from its start) and no sealed record comes before it
/// in the chain. A seal cannot be taken off the records after a sealed
/// one, and the hashes alone, which anyone who can write the store can
/// recompute, vouch only for records older than the seal.
///
/// Every seal must be one of `keys`', and along the chain a record's key
/// is never older than the key of a sealed record before it: once a newer
/// key sealed, a retired key (one that may have leaked, which is why it
/// was retired) cannot seal a record after it, nor re-seal one before it
/// without breaking the newer seal's link.
pub fn verify_chain_at(
    keys: &AuditKeyring,
    subject: &str,
    records: &[AuditRecord],
    now: Timestamp,
    unsealed_before: Timestamp,
) -> Result<ChainReport, ChainBreak> {
    let brk = |seq, reason| ChainBreak { subject: subject.to_string(), seq, reason };
    let mut prev: Option<&AuditRecord> = None;
    // The position in `keys` of the newest key that sealed so far.
    let mut newest: Option<usize> = None;
    let (mut unsealed, mut by_retired_key) = (0, 0);
    let current = keys.len().saturating_sub(1);
    for r in records {
        if r.subject != subject {
            return Err(brk(r.seq, "record belongs to another subject"));
        }
        if record_hash(r) != r.hash {
            return Err(brk(r.seq, "record content does not match its hash"));
        }
        match r.seal.as_deref().map(|seal| keys.sealed_by(&r.hash, seal)) {
            Some(None) => return Err(brk(r.seq, "seal does not match: changed, or sealed with another key")),
            Some(Some(k)) if newest.is_some_and(|n| k < n) => {
                return Err(brk(r.seq, "sealed with a retired key after a record sealed with a newer one"));
            }
            Some(Some(k)) => {
                newest = Some(k);
                by_retired_key += usize::from(k < current);
            }
            None if newest.is_some() => return Err(brk(r.seq, "record is not sealed, after a sealed one")),
            None if r.at >= unsealed_before => return Err(brk(r.seq, "record is not sealed")),
            None => unsealed += 1,
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
    Ok(ChainReport { records: records.len(), unsealed, by_retired_key })
}

/// A chain's head right after an append: the record's number, hash and
/// expiry. The stream processor logs one (`audit head`) for every record
/// it appends, so a witness of each chain's end is kept outside the audit
/// store, in a log that whoever can write the store cannot rewrite:
/// [`check_logged_head`] then finds a chain cut back behind it. Written
/// and read as `<seq>:<hash>:<expires_at>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
    pub expires_at: Timestamp,
}

impl AuditHead {
    pub fn of(r: &AuditRecord) -> Self {
        AuditHead { seq: r.seq, hash: r.hash.clone(), expires_at: r.expires_at }
    }
}

impl fmt::Display for AuditHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.seq, self.hash, self.expires_at)
    }
}

impl FromStr for AuditHead {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("a logged head is <seq>:<hash>:<expires_at> (got {s:?})");
        let mut parts = s.split(':');
        let (Some(seq), Some(hash), Some(expires_at), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let seq = seq.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(bad)?;
        let expires_at = expires_at.parse::<Timestamp>().map_err(|_| bad())?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("a logged head's hash is 64 lowercase hex digits (got {hash:?})"));
        }
        Ok(AuditHead { seq, hash: hash.to_string(), expires_at })
    }
}

/// Logs `head`, the new end of `subject`'s chain, as the line `audit head`
/// (fields `subject`, `seq`, `hash`, `expires_at`, and `head`: the three as
/// `verify-chain --head` takes them). Both trail writers call it once per
/// record they append, after the append is stored: the DynamoDB stream
/// processor (its log group is the witness) and the embedded audit feed.
pub fn log_head(subject: &str, head: &AuditHead) {
    tracing::info!(subject = %subject, seq = head.seq, hash = %head.hash, expires_at = head.expires_at, head = %head, "audit head");
}

/// Checks a subject's stored records, oldest first, against a head the
/// logs recorded for it: the record of that number must still be there
/// with that hash, unless its own expiry has passed by `now` (retention).
/// With [`verify_chain_at`] holding as well, the chain then still reaches
/// that head, so its newest records cannot be removed (and the head moved
/// back) without the key either: a record removed while live breaks here,
/// and so does one written again in its place.
pub fn check_logged_head(
    subject: &str,
    records: &[AuditRecord],
    head: &AuditHead,
    now: Timestamp,
) -> Result<(), ChainBreak> {
    let brk = |reason| Err(ChainBreak { subject: subject.to_string(), seq: head.seq, reason });
    if head.expires_at <= now {
        // Its record may be gone by retention, and on DynamoDB a chain the
        // TTL took whole starts again at 1: its number may be another's.
        return Ok(());
    }
    match records.iter().find(|r| r.seq == head.seq) {
        Some(r) if r.hash == head.hash => Ok(()),
        Some(_) => brk("the record differs from the head the logs recorded: the chain was cut back and written again"),
        None => brk("a head the logs recorded is missing before its expiry: the chain was cut back"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, AuditEventType, Outcome};

    fn key() -> AuditKey {
        AuditKey::new(vec![9; 32]).unwrap()
    }

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
            out.push(AuditRecord::chained(&ev(i), u64::from(i) + 1, &prev, 2_000_000_000 + i64::from(i), &key()));
        }
        out
    }

    /// What someone who can write the store but has no key can do: put a
    /// chain's hashes right after changing it, with or without seals.
    fn rehash(records: &mut [AuditRecord], seal: impl Fn(&str) -> Option<String>) {
        let mut prev = records.first().map(|r| r.prev_hash.clone()).unwrap_or_default();
        for r in records.iter_mut() {
            r.prev_hash = prev;
            r.hash = record_hash(r);
            r.seal = seal(&r.hash);
            prev = r.hash.clone();
        }
    }

    fn unsealed(records: &mut [AuditRecord]) {
        rehash(records, |_| None);
    }

    /// The newest records cut off (the head moved back) still verify on
    /// their own; a head logged before the cut does not let them.
    #[test]
    fn a_chain_cut_back_behind_a_logged_head_is_refused() {
        let full = chain(5);
        let logged = AuditHead::of(&full[4]);
        assert_eq!(check_logged_head("u1", &full, &logged, 0), Ok(()));
        assert_eq!(check_logged_head("u1", &full, &AuditHead::of(&full[1]), 0), Ok(()), "an older head");

        let cut = &full[..3];
        assert!(verify_chain(&key(), "u1", cut).is_ok(), "the cut chain holds by itself");
        let e = check_logged_head("u1", cut, &logged, logged.expires_at - 1).unwrap_err();
        assert_eq!(
            (e.seq, e.reason),
            (5, "a head the logs recorded is missing before its expiry: the chain was cut back")
        );
        // Past its own expiry the head may be gone by retention.
        assert_eq!(check_logged_head("u1", cut, &logged, logged.expires_at), Ok(()));
        assert_eq!(check_logged_head("u1", &[], &logged, logged.expires_at), Ok(()));

        // Cut back, then appended to with the key (by the processor itself,
        // as new events come): the number is there, the record is not the one logged.
        let mut rewritten = chain(3);
        let prev = rewritten[2].hash.clone();
        let mut other = ev(3);
        (other.event_id, other.ip) = ("e-other".into(), Some("198.51.100.2".into()));
        rewritten.push(AuditRecord::chained(&other, 4, &prev, 2_000_000_003, &key()));
        rewritten.push(AuditRecord::chained(&ev(4), 5, &rewritten[3].hash.clone(), 2_000_000_004, &key()));
        assert!(verify_chain(&key(), "u1", &rewritten).is_ok());
        let e = check_logged_head("u1", &rewritten, &logged, 0).unwrap_err();
        assert_eq!(e.seq, 5);
        assert!(e.reason.starts_with("the record differs from the head the logs recorded"), "{e}");
        let e = check_logged_head("u1", &rewritten, &logged, logged.expires_at - 1).unwrap_err();
        assert!(e.reason.starts_with("the record differs"), "until its expiry: {e}");
        // Past its expiry a head says nothing, whatever holds its number
        // now: on DynamoDB a chain whose records (and head item) the TTL
        // all took starts again at 1, and reaches the old numbers again.
        assert_eq!(check_logged_head("u1", &rewritten, &logged, logged.expires_at), Ok(()));
    }

    #[test]
    fn a_logged_head_reads_back_as_written_and_nothing_else_parses() {
        let head = AuditHead::of(&chain(2)[1]);
        let text = head.to_string();
        assert_eq!(text, format!("2:{}:2000000001", head.hash));
        assert_eq!(text.parse::<AuditHead>(), Ok(head.clone()));
        let hash = &head.hash;
        for bad in [
            String::new(),
            format!("2:{hash}"),
            format!("2:{hash}:2000000001:9"),
            format!("0:{hash}:2000000001"),
            format!("-1:{hash}:2000000001"),
            format!("x:{hash}:2000000001"),
            format!("2:{}:2000000001", &hash[..63]),
            format!("2:{}:2000000001", hash.to_uppercase()),
            format!("2:{}g:2000000001", &hash[..63]),
            format!("2:{hash}:soon"),
        ] {
            assert!(bad.parse::<AuditHead>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn an_intact_chain_verifies_and_an_edit_breaks_it_there() {
        let mut c = chain(4);
        assert_eq!(verify_chain(&key(), "u1", &c), Ok(ChainReport { records: 4, unsealed: 0, by_retired_key: 0 }));
        c[2].ip = Some("198.51.100.1".into());
        let e = verify_chain(&key(), "u1", &c).unwrap_err();
        assert_eq!((e.seq, e.reason), (3, "record content does not match its hash"));
    }

    #[test]
    fn a_removed_or_rehashed_record_breaks_the_next_link() {
        let mut c = chain(4);
        c.remove(1);
        assert_eq!(verify_chain(&key(), "u1", &c).unwrap_err().seq, 3);
        let mut c = chain(4);
        // An attacker who recomputes the edited record's own hash still
        // breaks the link after it.
        c[1].reason = None;
        c[1].hash = record_hash(&c[1]);
        c[1].seal = Some(key().seal(&c[1].hash));
        let e = verify_chain(&key(), "u1", &c).unwrap_err();
        assert_eq!((e.seq, e.reason), (3, "prev_hash does not match the previous record"));
    }

    /// The attack a live probe made on the unsealed chain: records removed
    /// from the middle and every hash after them recomputed. The hashes
    /// hold again; the seals, which need the key, do not.
    #[test]
    fn a_chain_rehashed_without_the_key_is_refused_at_the_first_change() {
        let mut c = chain(6);
        c.drain(1..4);
        for r in &mut c[1..] {
            r.seq -= 3;
        }
        let mut forged = c.clone();
        rehash(&mut forged[1..], |h| Some(AuditKey::new(vec![1; 32]).unwrap().seal(h)));
        let e = verify_chain(&key(), "u1", &forged).unwrap_err();
        assert_eq!((e.seq, e.reason), (2, "seal does not match: changed, or sealed with another key"));
        // The seals left as they were match the old hashes only.
        let mut kept = c.clone();
        let seals: Vec<_> = kept.iter().map(|r| r.seal.clone()).collect();
        rehash(&mut kept[1..], |_| None);
        for (r, s) in kept.iter_mut().zip(seals) {
            r.seal = s;
        }
        assert_eq!(verify_chain(&key(), "u1", &kept).unwrap_err().seq, 2);
        // Without seals, after a sealed record: refused too.
        unsealed(&mut c[1..]);
        let e = verify_chain(&key(), "u1", &c).unwrap_err();
        assert_eq!((e.seq, e.reason), (2, "record is not sealed, after a sealed one"));
    }

    /// A trail from before the seal: its records pass without one only if
    /// made before the cut-over the verifier is given, and only ahead of
    /// the chain's first sealed record.
    #[test]
    fn unsealed_records_pass_only_before_the_cut_over() {
        let mut c = chain(4);
        unsealed(&mut c[..2]);
        // Record 3's link to the rehashed record 2 is what it was: chain()
        // and rehash hash the same fields.
        let cut = c[2].at;
        assert_eq!(
            verify_chain_at(&key().into(), "u1", &c, Timestamp::MIN, cut),
            Ok(ChainReport { records: 4, unsealed: 2, by_retired_key: 0 })
        );
        let e = verify_chain_at(&key().into(), "u1", &c, Timestamp::MIN, c[1].at).unwrap_err();
        assert_eq!((e.seq, e.reason), (2, "record is not sealed"));
        assert_eq!(verify_chain(&key(), "u1", &c).unwrap_err().seq, 1);
        // Stripping the seals off a whole chain needs every record dated
        // before the cut-over: the same check.
        let mut all = chain(3);
        unsealed(&mut all);
        assert_eq!(verify_chain_at(&key().into(), "u1", &all, Timestamp::MIN, all[1].at).unwrap_err().seq, 2);
    }

    #[test]
    fn another_key_verifies_nothing() {
        let e = verify_chain(&AuditKey::new(vec![8; 32]).unwrap(), "u1", &chain(2)).unwrap_err();
        assert_eq!((e.seq, e.reason), (1, "seal does not match: changed, or sealed with another key"));
    }

    /// A rotation: the first records sealed with the key it retired, the
    /// rest with the current one.
    #[test]
    fn a_chain_across_a_rotation_verifies_with_its_retired_key_in_order() {
        let old = AuditKey::new(vec![7; 32]).unwrap();
        let mut c = chain(4);
        for r in &mut c[..2] {
            r.seal = Some(old.seal(&r.hash));
        }
        let ring = AuditKeyring::new(vec![old.clone()], key());
        let at =
            |ring: &AuditKeyring, c: &[AuditRecord]| verify_chain_at(ring, "u1", c, Timestamp::MIN, Timestamp::MIN);
        assert_eq!(at(&ring, &c), Ok(ChainReport { records: 4, unsealed: 0, by_retired_key: 2 }));
        // Without the retired key, its seals are another key's.
        let e = at(&key().into(), &c).unwrap_err();
        assert_eq!((e.seq, e.reason), (1, "seal does not match: changed, or sealed with another key"));
        // The keys out of order: the current key sealed before the retired one.
        let e = at(&AuditKeyring::new(vec![key()], old.clone()), &c).unwrap_err();
        assert_eq!((e.seq, e.reason), (3, "sealed with a retired key after a record sealed with a newer one"));

        // Whoever holds the retired key (leaked: why it was retired) and
        // can write the store cannot seal after the rotation: not a record
        // appended to the chain,
        let mut appended = c.clone();
        let fifth = AuditRecord::chained(&ev(4), 5, &c[3].hash, 2_000_000_004, &old);
        appended.push(fifth);
        let e = at(&ring, &appended).unwrap_err();
        assert_eq!((e.seq, e.reason), (5, "sealed with a retired key after a record sealed with a newer one"));
        // nor a record changed after it,
        let mut changed = c.clone();
        changed[3].ip = Some("198.51.100.9".into());
        rehash(&mut changed[3..], |h| Some(old.seal(h)));
        assert_eq!(at(&ring, &changed).unwrap_err().seq, 4);
        // nor one before it: the current key's seal covers its link.
        let mut before = c.clone();
        before[1].ip = Some("198.51.100.9".into());
        rehash(&mut before[1..2], |h| Some(old.seal(h)));
        let e = at(&ring, &before).unwrap_err();
        assert_eq!((e.seq, e.reason), (3, "prev_hash does not match the previous record"));
    }

    #[test]
    fn a_keyring_hides_its_keys() {
        let ring = AuditKeyring::new(vec![AuditKey::new(vec![7; 32]).unwrap()], key());
        assert_eq!((format!("{ring:?}"), ring.len()), ("AuditKeyring([2 redacted])".to_string(), 2));
    }

    #[test]
    fn retention_leaves_a_valid_anchor() {
        let c = chain(5);
        assert!(verify_chain(&key(), "u1", &c[2..]).is_ok());
    }

    /// The TTL took record 3 before record 2, both past their expiry: no
    /// break at 4, unless record 2 is still live (then 3 went early).
    #[test]
    fn a_gap_after_an_expired_record_is_retention() {
        let mut c = chain(5);
        c.remove(2);
        let exp2 = c[1].expires_at;
        let at = |now| verify_chain_at(&key().into(), "u1", &c, now, Timestamp::MIN);
        assert!(at(exp2).is_ok());
        assert_eq!(at(exp2 - 1).unwrap_err().seq, 4);
        assert_eq!(verify_chain(&key(), "u1", &c).unwrap_err().seq, 4);
        // An expired record's own content is still checked.
        c[1].ip = None;
        let e = verify_chain_at(&key().into(), "u1", &c, exp2, Timestamp::MIN).unwrap_err();
        assert_eq!((e.seq, e.reason), (2, "record content does not match its hash"));
    }
}
