//! `verify-chain <subject>`: checks one subject's audit hash chain and its
//! seals (with the current key and the keys rotation retired, oldest
//! first), and that it still reaches each head the trail's writer logged
//! for it. The stream processor's binary runs it on DynamoDB; the local
//! runner (`latchkey verify-chain`) on the store it is configured for.

use latchkey_core::StoreError;
use latchkey_core::audit::{AuditHead, AuditStore, ChainBreak, check_logged_head, verify_chain_at};
use latchkey_core::clock::Timestamp;
use latchkey_core::keys::{AuditKey, AuditKeyring};

/// The command and its flags, as a usage line shows them.
pub const COMMAND: &str = "verify-chain <subject> [--unsealed-before <unix seconds>] \
                           [--head <seq>:<hash>:<expires_at>]... [--retired-key <file>]...";

/// What `verify-chain` was asked to check.
#[derive(Debug)]
pub struct VerifyArgs {
    pub subject: String,
    /// `--unsealed-before <unix seconds>`, at most once: records made before
    /// it may be unsealed (ahead of the first sealed one). Default: none may.
    pub unsealed_before: Timestamp,
    /// `--head <seq>:<hash>:<expires_at>`, any number (the `audit head` log
    /// lines).
    pub heads: Vec<AuditHead>,
    /// `--retired-key <file>`, any number, oldest first: the keys rotation
    /// retired, one base64 key per file.
    pub retired: Vec<AuditKey>,
}

/// The words after `verify-chain`: the subject, then its flags. `usage` is
/// the program's usage line, quoted in the errors it applies to.
pub fn parse(words: &[String], usage: &str) -> Result<VerifyArgs, String> {
    let Some((subject, flags)) = words.split_first() else { return Err(usage.to_string()) };
    if subject.starts_with("--") {
        return Err(format!("{subject}: the subject comes first; {usage}"));
    }
    let (mut unsealed_before, mut heads, mut retired) = (None, Vec::new(), Vec::new());
    let mut it = flags.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag}: a value is missing; {usage}"))?;
        match flag.as_str() {
            "--unsealed-before" if unsealed_before.is_none() => {
                let t = value
                    .parse::<Timestamp>()
                    .map_err(|_| format!("--unsealed-before: unix seconds (got {value:?})"))?;
                unsealed_before = Some(t);
            }
            "--head" => heads.push(value.parse::<AuditHead>().map_err(|e| format!("--head: {e}"))?),
            "--retired-key" => {
                let text = std::fs::read_to_string(value).map_err(|e| format!("--retired-key {value}: {e}"))?;
                retired.push(AuditKey::from_base64(text.trim()).map_err(|e| format!("--retired-key {value}: {e}"))?);
            }
            _ => return Err(format!("{flag}: not a flag of verify-chain (or given twice); {usage}")),
        }
    }
    Ok(VerifyArgs {
        subject: subject.clone(),
        unsealed_before: unsealed_before.unwrap_or(Timestamp::MIN),
        heads,
        retired,
    })
}

/// Reads the subject's chain from `audit` and checks it at `now` with
/// `current` (and the retired keys) and against every head given. `Ok`
/// holds the line to print: the summary of an intact chain, or the first
/// broken link.
pub async fn verify(
    audit: &dyn AuditStore,
    current: AuditKey,
    args: VerifyArgs,
    now: Timestamp,
) -> Result<Result<String, ChainBreak>, StoreError> {
    let VerifyArgs { subject, unsealed_before, heads, retired } = args;
    let keys = AuditKeyring::new(retired, current);
    let records = audit.chain(&subject).await?;
    // Records past their expiry may still be there (a TTL is late and in
    // no order): a gap after one is retention, not a break.
    let checked = verify_chain_at(&keys, &subject, &records, now, unsealed_before).and_then(|report| {
        heads.iter().try_for_each(|h| check_logged_head(&subject, &records, h, now)).map(|()| report)
    });
    Ok(checked.map(|report| {
        let sealed = match report.unsealed {
            0 => "all sealed".to_string(),
            n => format!("the first {n} unsealed (made before {unsealed_before})"),
        };
        let retired = match report.by_retired_key {
            0 => String::new(),
            n => format!(", {n} of them with retired keys"),
        };
        format!(
            "chain of {subject}: {} records, intact, {sealed}{retired}; reaches {} logged head(s)",
            report.records,
            heads.len()
        )
    }))
}

/// Prints `verdict` and gives the process's exit code: 0 for an intact
/// chain, 2 for a broken one.
pub fn report(verdict: Result<String, ChainBreak>) -> i32 {
    match verdict {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(brk) => {
            println!("{brk}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: &str = "usage: prog [verify-chain …]";

    fn parsed(words: &[&str]) -> Result<VerifyArgs, String> {
        parse(&words.iter().map(|a| a.to_string()).collect::<Vec<_>>(), USAGE)
    }

    #[test]
    fn verify_chain_takes_its_flags_and_refuses_bad_ones_clearly() {
        let dir = std::env::temp_dir().join(format!("latchkey-verify-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (old, bad) = (dir.join("old.b64"), dir.join("bad.b64"));
        std::fs::write(&old, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").unwrap();
        std::fs::write(&bad, "c2hvcnQ=").unwrap();
        let (old, bad) = (old.to_str().unwrap(), bad.to_str().unwrap());
        let head = format!("3:{}:2000000000", "ab".repeat(32));

        let a = parsed(&[
            "u1",
            "--unsealed-before",
            "1700000000",
            "--head",
            &head,
            "--retired-key",
            old,
            "--retired-key",
            old,
        ])
        .unwrap();
        assert_eq!(
            (a.subject.as_str(), a.unsealed_before, a.heads.len(), a.retired.len()),
            ("u1", 1_700_000_000, 1, 2)
        );
        let a = parsed(&["u1"]).unwrap();
        assert_eq!((a.unsealed_before, a.heads.len(), a.retired.len()), (Timestamp::MIN, 0, 0));

        let missing = dir.join("none.b64");
        let refusals = [
            (vec![], USAGE.to_string()),
            (vec!["--head", &head], "--head: the subject comes first; usage: ".to_string()),
            (vec!["u1", "--retired-key", bad], format!("--retired-key {bad}: ")),
            (vec!["u1", "--retired-key", missing.to_str().unwrap()], format!("--retired-key {}: ", missing.display())),
            (vec!["u1", "--retired-key"], format!("--retired-key: a value is missing; {USAGE}")),
            (vec!["u1", "--unsealed-before", "soon"], "--unsealed-before: unix seconds (got \"soon\")".to_string()),
            (
                vec!["u1", "--unsealed-before", "1", "--unsealed-before", "2"],
                "--unsealed-before: not a flag".to_string(),
            ),
            (vec!["u1", "--head", "3:zz:1"], "--head: ".to_string()),
            (vec!["u1", "--key", "x"], "--key: not a flag of verify-chain".to_string()),
        ];
        for (words, start) in refusals {
            let e = parsed(&words).unwrap_err();
            assert!(e.starts_with(&start), "{words:?}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
