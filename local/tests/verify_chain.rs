//! `latchkey verify-chain` on the embedded store, through the binary as an
//! operator runs it: the runner logs each new head of a trail (`audit
//! head`); stopped, its trail verifies against the newest head it logged,
//! and the two edits a writer without the seal key can make are found: a
//! changed record, and the newest records cut off with the head moved back
//! (which only the logged head finds).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_latchkey");

/// The runner's process; killed when dropped, so a failed test leaves none.
struct Runner {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn latchkey(data: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    // The embedded store in `data`, whatever the environment says.
    for var in ["LATCHKEY_BACKEND", "LATCHKEY_AUDIT_KEY", "LATCHKEY_JWT_PRIVATE_KEY", "LATCHKEY_CODE_HMAC_KEY"] {
        cmd.env_remove(var);
    }
    cmd.env("LATCHKEY_DATA_DIR", data).env("RUST_LOG", "info").env("NO_COLOR", "1");
    cmd
}

fn start(data: &Path) -> Runner {
    let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port();
    let mut child = latchkey(data)
        .env("LATCHKEY_BIND", format!("127.0.0.1:{port}"))
        .env_remove("PUBLIC_BASE_URL")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the runner starts");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().expect("its stdout");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    let runner = Runner { child, port, lines };
    runner.wait_for("the runner serving", |l| l.starts_with("latchkey serving"));
    runner
}

impl Runner {
    /// The first line of the runner's stdout that `pred` accepts, waiting
    /// up to 20 s for it.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) = self.lines.lock().expect("lines").iter().find(|l| pred(l)) {
                return l.clone();
            }
            assert!(Instant::now() < until, "no line for {what} in 20 s: {:#?}", self.lines.lock().expect("lines"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// POSTs `json` to `path`; the answer's status.
    fn post(&self, path: &str, json: &str) -> u16 {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        )
        .expect("send");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("the answer");
        answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {answer:?}"))
    }

    /// Every `audit head` line's subject and head, in the order logged.
    fn heads(&self) -> Vec<(String, String)> {
        let field = |l: &str, name: &str| {
            l.split(' ').find_map(|w| w.strip_prefix(name)).map(str::to_string).expect("the field")
        };
        let lines = self.lines.lock().expect("lines");
        lines.iter().filter(|l| l.contains(" audit head ")).map(|l| (field(l, "subject="), field(l, "head="))).collect()
    }
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

    let heads = runner.heads();
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
