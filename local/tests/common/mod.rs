//! The runner's binary as an operator runs it, for the tests beside this
//! module: started on a free port with the embedded store in a given
//! directory, its stdout collected line by line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_latchkey");

/// The runner's process; killed when dropped, so a failed test leaves none.
pub struct Runner {
    pub child: Child,
    pub port: u16,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn latchkey(data: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    // The embedded store in `data`, whatever the environment says.
    for var in ["LATCHKEY_BACKEND", "LATCHKEY_AUDIT_KEY", "LATCHKEY_JWT_PRIVATE_KEY", "LATCHKEY_CODE_HMAC_KEY"] {
        cmd.env_remove(var);
    }
    cmd.env("LATCHKEY_DATA_DIR", data).env("RUST_LOG", "info").env("NO_COLOR", "1");
    cmd
}

pub fn start(data: &Path) -> Runner {
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
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
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
    pub fn post(&self, path: &str, json: &str) -> u16 {
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
}
