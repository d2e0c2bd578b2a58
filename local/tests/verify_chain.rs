//! `latchkey verify-chain` on the embedded store, through the binary as an
//! operator runs it: the runner logs each new head of a trail (`audit
//! head`); stopped, its trail verifies against the newest head it logged,
//! and the two edits a writer without the seal key can make are found: a
//! changed record, and the newest records cut off with the head moved back
//! (which only the logged head finds).

mod common;

use common::{Runner, latchkey, start};
use std::path::{Path, PathBuf};
use std::process::Output;

/// Every `audit head` line's subject and head, in the order logged.
fn heads(runner: &Runner) -> Vec<(String, String)> {
    let field =
        |l: &str, name: &str| l.split(' ').find_map(|w| w.strip_prefix(name)).map(str::to_string).expect("the field");
    let lines = runner.lines.lock().expect("lines");
    lines.iter().filter(|l| l.contains(" audit head ")).map(|l| (field(l, "subject="), field(l, "head="))).collect()
}

fn verify_chain(data: &Path, args: &[&str]) -> (i32, String, String) {
    let Output { status, stdout, stderr } =
        latchkey(data).arg("verify-chain").args(args).output().expect("verify-chain runs");
    (
        status.code().expect("an exit code"),
        String::from_utf8(stdout).expect("utf-8"),
        String::from_utf8(stderr).expect("utf-8"),
    )
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("latchkey-verify-chain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_stopped_runners_trail_verifies_against_its_logged_head_and_edits_are_found() {
    let data = scratch();
    let runner = start(&data);
    let email = "chain.owner@example.com";
    let body = format!(r#"{{"username":"chain_owner","email":"{email}","password":"a long and quiet harbour 42"}}"#);
    assert_eq!(runner.post("/v1/register", &body), 202);
    let mail = runner.wait_for("the verification mail", |l| l.starts_with(&format!("mail to {email}:")));
    let token = mail.split("token=").nth(1).expect("a link with its token");
    assert_eq!(runner.post("/v1/verify-email", &format!(r#"{{"token":"{token}"}}"#)), 200);
    // Two records at least are in the trail (the registration first).
    runner.wait_for("a second head", |l| l.contains(" audit head ") && l.contains(" seq=2 "));

    // The runner holds its database: verify-chain says so and checks nothing.
    let (code, out, err) = verify_chain(&data, &["anyone"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("in use by another process") && err.contains("stop the runner"), "{err}");

    let heads = heads(&runner);
    drop(runner); // killed: its database is free
    let (subject, head) = heads.last().cloned().expect("a logged head");
    assert!(heads.iter().all(|(s, _)| *s == subject), "one account, one trail: {heads:?}");
    let seq: u64 = head.split(':').next().and_then(|n| n.parse().ok()).expect("the head's number");

    // Intact, and it reaches the head the runner logged last.
    let (code, out, err) = verify_chain(&data, &[&subject, "--head", &head]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(", intact, all sealed; reaches 1 logged head(s)"), "{out}");

    // The database as whoever can write it but holds no key sees it. The
    // connection is closed again before each verify-chain, which, as the
    // runner, needs the database to itself.
    let db = || rusqlite::Connection::open(data.join("latchkey.sqlite3")).expect("the database");
    let record = |seq: u64| -> String {
        db().query_row("SELECT record FROM audit_records WHERE subject = ?1 AND seq = ?2", (&subject, seq), |r| {
            r.get(0)
        })
        .expect("the record")
    };

    // Cut back behind the logged head, the head moved back to the record
    // before it: the links and seals of what is left still hold, and only
    // the logged head finds the cut.
    let first = record(1);
    let before: serde_json::Value = serde_json::from_str(&record(seq - 1)).expect("a record");
    {
        let db = db();
        db.execute("DELETE FROM audit_records WHERE subject = ?1 AND seq >= ?2", (&subject, seq)).expect("cut");
        db.execute(
            "UPDATE audit_heads SET seq = ?2, hash = ?3 WHERE subject = ?1",
            (&subject, seq - 1, before["hash"].as_str().expect("its hash")),
        )
        .expect("head moved back");
    }
    let (code, out, err) = verify_chain(&data, &[&subject]);
    assert_eq!(code, 0, "without the head the cut chain verifies: {out}{err}");
    let (code, out, err) = verify_chain(&data, &[&subject, "--head", &head]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.starts_with(&format!("chain of {subject} broken at seq {seq}: ")), "{out}");
    assert!(out.contains("cut back"), "{out}");

    // A changed record (its client IP) breaks the chain there.
    let edited = first.replacen("\"ip\":\"127.0.0.1\"", "\"ip\":\"198.51.100.9\"", 1);
    assert_ne!(edited, first, "the first record names the client: {first}");
    db().execute("UPDATE audit_records SET record = ?2 WHERE subject = ?1 AND seq = 1", (&subject, &edited))
        .expect("edit");
    let (code, out, err) = verify_chain(&data, &[&subject]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.starts_with(&format!("chain of {subject} broken at seq 1: ")), "{out}");

    // Nothing to check where there is no database; a bad flag is named.
    let (code, _, err) = verify_chain(&data.join("elsewhere"), &[&subject]);
    assert_eq!(code, 1);
    assert!(err.contains("no database here"), "{err}");
    let (code, _, err) = verify_chain(&data, &[&subject, "--head", "7:zz:1"]);
    assert_eq!(code, 1);
    assert!(err.contains("--head: "), "{err}");
    std::fs::remove_dir_all(&data).expect("clean up");
}
