//! The runner stops cleanly on SIGINT (Ctrl-C) and on SIGTERM (what a
//! service manager or `kill` sends): the server stops, the embedded mail
//! consumer is asked to finish the job in hand and stops, and the process
//! exits 0. And a start on an address already taken stops at once, naming
//! it.

mod common;

use common::start;
use std::time::{Duration, Instant};

fn stops_on(signal: &str) {
    let data = std::env::temp_dir().join(format!("latchkey-shutdown-{signal}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let mut runner = start(&data);
    let email = format!("stop.{}@example.com", signal.to_lowercase());
    let body = format!(r#"{{"username":"stop_{signal}","email":"{email}","password":"a long and quiet harbour 42"}}"#);
    assert_eq!(runner.post("/v1/register", &body), 202);
    runner.wait_for("the verification mail", |l| l.starts_with(&format!("mail to {email}:")));

    let pid = runner.child.id().to_string();
    let sent = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill runs");
    assert!(sent.success(), "kill -{signal} {pid}");
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = runner.child.try_wait().expect("its status") {
            break status;
        }
        assert!(Instant::now() < until, "still running 20 s after {signal}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{signal}: {status:?}");
    for line in [format!("signal=\"SIG{signal}\""), "stopping: the mail consumer finishes the job in hand".into()] {
        runner.wait_for(&line, |l| l.contains(&line));
    }
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn the_runner_stops_cleanly_on_sigint() {
    stops_on("INT");
}

#[test]
fn the_runner_stops_cleanly_on_sigterm() {
    stops_on("TERM");
}

/// An address already taken stops the start with the address named, and
/// the runner never says it is serving (it says so only once bound).
#[test]
fn a_taken_address_stops_the_start_with_its_name() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let addr = taken.local_addr().expect("its address");
    let data = std::env::temp_dir().join(format!("latchkey-taken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let out = common::latchkey(&data)
        .env("LATCHKEY_BIND", addr.to_string())
        .env_remove("PUBLIC_BASE_URL")
        .output()
        .expect("the runner runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {addr}: ")), "{stderr}");
    assert!(!stdout.contains("latchkey serving"), "{stdout}");
    drop(taken);
    let _ = std::fs::remove_dir_all(&data);
}
