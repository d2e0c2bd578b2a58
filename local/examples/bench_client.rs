//! The HTTP side of `bench/run`: a small blocking HTTP/1.1 client (std only,
//! keep-alive, one OS thread per connection) that sets up users through the
//! real API and the embedded outbox, then measures. It prints `key=value`
//! lines and asserts nothing (a benchmark does not pass or fail on time).
//!
//!   bench_client user      --base URL --outbox DIR --username U
//!   bench_client nonhash   --base URL --outbox DIR [--conc 32 --secs 3 --repeat 3 --challenges 100]
//!   bench_client isolation --base URL --outbox DIR [--secs 3 --wrk-conc 32 --lua bench/login.lua]
//!   bench_client enum      --base URL --outbox DIR [--tries 200]
//!   bench_client startup   --bin target/release/latchkey [--runs 10]
//!   bench_client lambda-init --bin PATH --event-file FILE --name NAME [--runs 5] [--runner "CMD ARGS"]
//!   bench_client first-random [--runs 5]   aws-lc's first randomness in a new process
//!     (--runner prefixes the binary, e.g. "qemu-aarch64-static -L /usr/aarch64-linux-gnu"
//!     to start an arm64 bootstrap under user-mode emulation; the clock starts at the spawn)
//!
//! Every load is bounded in time and goes to loopback only.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const PASSWORD: &str = "correct horse battery staple";

// ---------------------------------------------------------------- arguments

struct Args(Vec<String>);

impl Args {
    fn get(&self, name: &str) -> Option<String> {
        self.0.iter().position(|a| a == name).and_then(|i| self.0.get(i + 1)).cloned()
    }
    fn req(&self, name: &str) -> Res<String> {
        self.get(name).ok_or_else(|| format!("{name} is required").into())
    }
    fn num(&self, name: &str, default: u64) -> u64 {
        self.get(name).and_then(|v| v.parse().ok()).unwrap_or(default)
    }
}

// ---------------------------------------------------------------- statistics

/// Milliseconds, sorted on demand.
#[derive(Default, Clone)]
struct Samples(Vec<f64>);

impl Samples {
    fn pct(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
    fn median(&self) -> f64 {
        self.pct(0.5)
    }
    fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------- HTTP client

struct Conn {
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(base: &str) -> Self {
        let addr = base.trim_start_matches("http://").trim_end_matches('/').to_string();
        Conn { addr, stream: None, buf: Vec::new() }
    }

    fn send(&mut self, method: &str, path: &str, auth: Option<&str>, body: Option<&str>) -> Res<(u16, String)> {
        // One retry: the server may have closed an idle keep-alive connection.
        match self.try_send(method, path, auth, body) {
            Ok(r) => Ok(r),
            Err(_) => {
                self.stream = None;
                self.try_send(method, path, auth, body)
            }
        }
    }

    fn get(&mut self, path: &str, auth: Option<&str>) -> Res<(u16, String)> {
        self.send("GET", path, auth, None)
    }

    fn post(&mut self, path: &str, body: &serde_json::Value) -> Res<(u16, String)> {
        self.send("POST", path, None, Some(&body.to_string()))
    }

    fn try_send(&mut self, method: &str, path: &str, auth: Option<&str>, body: Option<&str>) -> Res<(u16, String)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.stream = Some(s);
            self.buf.clear();
        }
        let stream = self.stream.as_mut().ok_or("no connection")?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(token) = auth {
            req.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()));
        } else {
            req.push_str("\r\n");
        }
        stream.write_all(req.as_bytes())?;
        let (status, body, close) = read_response(stream, &mut self.buf)?;
        if close {
            self.stream = None;
        }
        Ok((status, body))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Res<()> {
    let mut chunk = [0u8; 16384];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Err("connection closed".into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Reads one response (content-length or chunked) and leaves the rest in `buf`.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Res<(u16, String, bool)> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        fill(stream, buf)?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("bad status line")?;
    let mut len = None;
    let mut chunked = false;
    let mut close = false;
    for line in head.lines().skip(1) {
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => len = v.parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.contains("chunked"),
            "connection" => close = v == "close",
            _ => {}
        }
    }
    buf.drain(..head_end + 4);
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                fill(stream, buf)?;
            };
            let size_str = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("0").trim(), 16)?;
            while buf.len() < line_end + 2 + size + 2 {
                fill(stream, buf)?;
            }
            out.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break out;
            }
        }
    } else {
        let len = len.unwrap_or(0);
        while buf.len() < len {
            fill(stream, buf)?;
        }
        buf.drain(..len).collect()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned(), close))
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

// ---------------------------------------------------------------- outbox

/// Reads new `.eml` files in the embedded outbox; never re-reads a file.
struct Outbox {
    dir: PathBuf,
    seen: HashSet<OsString>,
}

impl Outbox {
    fn new(dir: &str) -> Self {
        Outbox { dir: PathBuf::from(dir), seen: HashSet::new() }
    }

    /// Waits (up to 15 s) for a new mail to `to` containing `needle`; returns
    /// its text with quoted-printable soft breaks and `=3D` undone.
    fn wait(&mut self, to: &str, needle: &str) -> Res<String> {
        let until = Instant::now() + Duration::from_secs(15);
        let to = to.to_ascii_lowercase();
        while Instant::now() < until {
            for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                let name = entry.file_name();
                if self.seen.contains(&name) || !name.to_string_lossy().ends_with(".eml") {
                    continue;
                }
                let Ok(raw) = std::fs::read_to_string(entry.path()) else { continue };
                if !raw.contains("\r\n\r\n") && !raw.contains("\n\n") {
                    continue; // still being written
                }
                self.seen.insert(name);
                let text = raw.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
                if text.to_ascii_lowercase().contains(&to) && text.contains(needle) {
                    return Ok(text);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(format!("no mail to {to} with {needle:?} within 15 s").into())
    }
}

fn token_from(text: &str) -> Option<String> {
    let at = text.find("token=")? + "token=".len();
    let t: String = text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    (!t.is_empty()).then_some(t)
}

fn code_from(text: &str) -> Option<String> {
    let at = text.find("code is:")?;
    let b = &text.as_bytes()[at..];
    (0..b.len().saturating_sub(5)).find_map(|i| {
        let run = &b[i..i + 6];
        let before = i == 0 || !b[i - 1].is_ascii_digit();
        let after = i + 6 == b.len() || !b[i + 6].is_ascii_digit();
        (before && after && run.iter().all(u8::is_ascii_digit)).then(|| String::from_utf8_lossy(run).into_owned())
    })
}

// ---------------------------------------------------------------- setup through the API

struct Api {
    base: String,
    outbox: Outbox,
    conn: Conn,
}

impl Api {
    fn new(args: &Args) -> Res<Self> {
        let base = args.req("--base")?;
        Ok(Api { conn: Conn::new(&base), outbox: Outbox::new(&args.req("--outbox")?), base })
    }

    /// Registers and verifies `username` (email `<username>@example.com`).
    fn user(&mut self, username: &str) -> Res<String> {
        let email = format!("{username}@example.com");
        let body = serde_json::json!({"username": username, "email": email, "password": PASSWORD});
        let (st, b) = self.conn.post("/v1/register", &body)?;
        if st != 202 {
            return Err(format!("register {username}: {st} {b}").into());
        }
        let mail = self.outbox.wait(&email, "token=")?;
        let token = token_from(&mail).ok_or("no token in the verification mail")?;
        let (st, b) = self.conn.post("/v1/verify-email", &serde_json::json!({ "token": token }))?;
        if st != 200 {
            return Err(format!("verify {username}: {st} {b}").into());
        }
        Ok(email)
    }

    /// The password step; returns the challenge id.
    fn challenge(conn: &mut Conn, username: &str) -> Res<String> {
        let (st, b) = conn.post("/v1/login", &serde_json::json!({"identifier": username, "password": PASSWORD}))?;
        let id = json(&b)["challenge_id"].as_str().map(str::to_string);
        id.filter(|_| st == 202).ok_or_else(|| format!("login {username}: {st} {b}").into())
    }

    /// `n` fresh challenges for `username`, made on two connections.
    fn challenges(&self, username: &str, n: usize) -> Res<Vec<String>> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let left = Arc::new(AtomicUsize::new(n));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (out, left, base, user) = (out.clone(), left.clone(), self.base.clone(), username.to_string());
                std::thread::spawn(move || -> Res<()> {
                    let mut conn = Conn::new(&base);
                    while left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1)).is_ok() {
                        let id = Api::challenge(&mut conn, &user)?;
                        out.lock().map_err(|_| "poisoned")?.push(id);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "challenge thread panicked")??;
        }
        let v = out.lock().map_err(|_| "poisoned")?.clone();
        Ok(v)
    }

    /// A full login (password, code from the outbox); returns (access, refresh).
    fn session(&mut self, username: &str, email: &str) -> Res<(String, String)> {
        let challenge = Api::challenge(&mut self.conn, username)?;
        let mail = self.outbox.wait(email, "code is:")?;
        let code = code_from(&mail).ok_or("no code in the login mail")?;
        let (st, b) = self.conn.post("/v1/login/otp", &serde_json::json!({"challenge_id": challenge, "code": code}))?;
        let v = json(&b);
        match (st, v["access_token"].as_str(), v["refresh_token"].as_str()) {
            (200, Some(a), Some(r)) => Ok((a.to_string(), r.to_string())),
            _ => Err(format!("code step: {st} {b}").into()),
        }
    }
}

// ---------------------------------------------------------------- the probed endpoints

/// What a probe sends; each worker keeps its own state (a refresh chain).
#[derive(Clone)]
enum Probe {
    Healthz,
    Me {
        access: String,
    },
    /// A wrong code on challenge `i / 5` (5 tries each, under the 6 allowed).
    Otp {
        challenges: Arc<Vec<String>>,
        next: Arc<AtomicUsize>,
    },
    Refresh {
        chains: Arc<Vec<Mutex<String>>>,
    },
}

const TRIES_PER_CHALLENGE: usize = 5;

impl Probe {
    fn name(&self) -> &'static str {
        match self {
            Probe::Healthz => "healthz",
            Probe::Me { .. } => "me",
            Probe::Otp { .. } => "code_verify",
            Probe::Refresh { .. } => "refresh",
        }
    }

    /// One request; `None` when the probe has nothing left to send.
    fn once(&self, conn: &mut Conn, worker: usize) -> Option<Res<bool>> {
        match self {
            Probe::Healthz => Some(conn.get("/healthz", None).map(|(st, _)| st == 200)),
            Probe::Me { access } => Some(conn.get("/v1/me", Some(access)).map(|(st, _)| st == 200)),
            Probe::Otp { challenges, next } => {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= challenges.len() * TRIES_PER_CHALLENGE {
                    return None;
                }
                let id = &challenges[i % challenges.len()];
                let body = serde_json::json!({"challenge_id": id, "code": "000000"});
                // 401 otp_invalid is the expected answer (200 if "000000" happened to be the code).
                Some(conn.post("/v1/login/otp", &body).map(|(st, _)| st == 401 || st == 200))
            }
            Probe::Refresh { chains } => {
                let slot = chains.get(worker)?;
                let Ok(mut token) = slot.lock() else { return Some(Err("poisoned".into())) };
                Some(conn.post("/v1/token/refresh", &serde_json::json!({"refresh_token": *token})).map(|(st, b)| {
                    match json(&b)["refresh_token"].as_str() {
                        Some(next) if st == 200 => {
                            *token = next.to_string();
                            true
                        }
                        _ => false,
                    }
                }))
            }
        }
    }
}

struct LoadResult {
    lat: Samples,
    errors: usize,
    secs: f64,
}

/// `conc` closed-loop workers for at most `secs` (or until the probe runs
/// dry), each pausing `pause` between requests.
fn load(base: &str, probe: &Probe, conc: usize, secs: f64, pause: Duration) -> Res<LoadResult> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let handles: Vec<_> = (0..conc)
        .map(|w| {
            let (probe, base) = (probe.clone(), base.to_string());
            std::thread::spawn(move || {
                let mut conn = Conn::new(&base);
                let (mut lat, mut errors) = (Vec::new(), 0usize);
                while Instant::now() < until {
                    let t0 = Instant::now();
                    match probe.once(&mut conn, w) {
                        None => break,
                        Some(Ok(true)) => lat.push(ms(t0.elapsed())),
                        Some(_) => errors += 1,
                    }
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for h in handles {
        let (l, e) = h.join().map_err(|_| "load thread panicked")?;
        lat.extend(l);
        errors += e;
    }
    Ok(LoadResult { lat: Samples(lat), errors, secs: started.elapsed().as_secs_f64() })
}

// ---------------------------------------------------------------- modes

fn nonhash(args: &Args) -> Res<()> {
    let conc = args.num("--conc", 32) as usize;
    let secs = args.num("--secs", 3) as f64;
    let repeat = args.num("--repeat", 3) as usize;
    let per_run = args.num("--challenges", 100) as usize;
    let mut api = Api::new(args)?;
    let tag = std::process::id();
    let (sess_user, otp_user) = (format!("nh-sess-{tag}"), format!("nh-otp-{tag}"));
    let email = api.user(&sess_user)?;
    api.user(&otp_user)?;
    let mut chains = Vec::new();
    for _ in 0..conc {
        chains.push(api.session(&sess_user, &email)?);
    }
    let access = chains[0].0.clone();
    let chains: Arc<Vec<Mutex<String>>> = Arc::new(chains.into_iter().map(|(_, r)| Mutex::new(r)).collect());
    let challenge_sets: Vec<Vec<String>> =
        (0..repeat).map(|_| api.challenges(&otp_user, per_run)).collect::<Res<_>>()?;
    println!("# setup: {conc} sessions, {repeat}x{per_run} challenges");
    for probe_kind in ["healthz", "me", "code_verify", "refresh"] {
        let mut rates = Vec::new();
        let mut all = Samples::default();
        let mut errors = 0;
        for (run, set) in challenge_sets.iter().enumerate() {
            let probe = match probe_kind {
                "healthz" => Probe::Healthz,
                "me" => Probe::Me { access: access.clone() },
                "code_verify" => Probe::Otp { challenges: Arc::new(set.clone()), next: Arc::new(AtomicUsize::new(0)) },
                _ => Probe::Refresh { chains: chains.clone() },
            };
            let r = load(&api.base, &probe, conc, secs, Duration::ZERO)?;
            let rate = r.lat.0.len() as f64 / r.secs;
            println!(
                "nonhash endpoint={probe_kind} run={run} conc={conc} requests={} secs={:.2} rps={rate:.1} p50_ms={:.2} p99_ms={:.2} errors={}",
                r.lat.0.len(),
                r.secs,
                r.lat.median(),
                r.lat.pct(0.99),
                r.errors
            );
            rates.push(rate);
            all.0.extend(r.lat.0);
            errors += r.errors;
        }
        let rates = Samples(rates);
        println!(
            "nonhash_summary endpoint={probe_kind} conc={conc} runs={repeat} rps_median={:.1} rps_min={:.1} rps_max={:.1} p50_ms={:.2} p99_ms={:.2} errors={errors}",
            rates.median(),
            rates.min(),
            rates.max(),
            all.median(),
            all.pct(0.99)
        );
    }
    Ok(())
}

fn isolation(args: &Args) -> Res<()> {
    let secs = args.num("--secs", 3) as f64;
    let wrk_conc = args.num("--wrk-conc", 32);
    let lua = args.get("--lua").unwrap_or_else(|| "bench/login.lua".into());
    let pause = Duration::from_millis(10);
    let mut api = Api::new(args)?;
    let tag = std::process::id();
    let (sess_user, otp_user) = (format!("iso-sess-{tag}"), format!("iso-otp-{tag}"));
    let email = api.user(&sess_user)?;
    api.user(&otp_user)?;
    let (access, refresh) = api.session(&sess_user, &email)?;
    // Enough challenges for `secs` of one request per ~11 ms, in each phase.
    let per_phase = ((secs * 1000.0 / 11.0) as usize).div_ceil(TRIES_PER_CHALLENGE) + 1;
    let sets = [api.challenges(&otp_user, per_phase)?, api.challenges(&otp_user, per_phase)?];
    let chains = Arc::new(vec![Mutex::new(refresh)]);
    let probes = |set: &Vec<String>| {
        vec![
            Probe::Me { access: access.clone() },
            Probe::Otp { challenges: Arc::new(set.clone()), next: Arc::new(AtomicUsize::new(0)) },
            Probe::Refresh { chains: chains.clone() },
        ]
    };
    let mut idle = Vec::new();
    for p in probes(&sets[0]) {
        idle.push(load(&api.base, &p, 1, secs, pause)?);
    }
    let wrk_secs = (3.0 * secs + 4.0).ceil() as u64;
    let wrk = Command::new("wrk")
        .args(["-t2", &format!("-c{wrk_conc}"), &format!("-d{wrk_secs}s"), "--latency", "-s", &lua])
        .arg(format!("{}/v1/login", api.base))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2)); // let the login load saturate the hash pool
    let mut loaded = Vec::new();
    for p in probes(&sets[1]) {
        loaded.push((p.name(), load(&api.base, &p, 1, secs, pause)?));
    }
    let out = wrk.wait_with_output()?;
    let wrk_text = String::from_utf8_lossy(&out.stdout);
    let login_rps = wrk_text
        .lines()
        .find(|l| l.starts_with("Requests/sec"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    let non2xx = wrk_text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "0".into());
    for ((name, l), i) in loaded.iter().zip(idle.iter()) {
        println!(
            "isolation endpoint={name} idle_n={} idle_p50_ms={:.2} idle_p99_ms={:.2} loaded_n={} loaded_p50_ms={:.2} loaded_p99_ms={:.2} loaded_max_ms={:.2} p99_ratio={:.2} errors={}",
            i.lat.0.len(),
            i.lat.median(),
            i.lat.pct(0.99),
            l.lat.0.len(),
            l.lat.median(),
            l.lat.pct(0.99),
            l.lat.max(),
            l.lat.pct(0.99) / i.lat.pct(0.99),
            l.errors + i.errors
        );
    }
    println!("isolation_load wrk_conc={wrk_conc} wrk_secs={wrk_secs} login_rps={login_rps} non2xx={non2xx}");
    Ok(())
}

fn enumeration(args: &Args) -> Res<()> {
    let tries = args.num("--tries", 200) as usize;
    let mut api = Api::new(args)?;
    let user = format!("enum-{}", std::process::id());
    let email = api.user(&user)?;
    let wrong = serde_json::json!({"identifier": user, "password": "not the right password at all"});
    let (mut unknown, mut bad) = (Samples::default(), Samples::default());
    let mut odd = 0;
    for i in 0..tries {
        let unknown_body = serde_json::json!({"identifier": format!("nobody-{i}-{user}"), "password": PASSWORD});
        // Alternate the order so drift hits both sides alike.
        let order = if i % 2 == 0 { [&unknown_body, &wrong] } else { [&wrong, &unknown_body] };
        for body in order {
            let t0 = Instant::now();
            let (st, _) = api.conn.post("/v1/login", body)?;
            let took = ms(t0.elapsed());
            if st != 401 {
                odd += 1;
            }
            if std::ptr::eq(body, &unknown_body) { unknown.0.push(took) } else { bad.0.push(took) }
        }
    }
    println!(
        "enum tries={tries} unknown_median_ms={:.2} unknown_p10_ms={:.2} unknown_p90_ms={:.2} wrong_median_ms={:.2} wrong_p10_ms={:.2} wrong_p90_ms={:.2} ratio={:.3} non401={odd}",
        unknown.median(),
        unknown.pct(0.1),
        unknown.pct(0.9),
        bad.median(),
        bad.pct(0.1),
        bad.pct(0.9),
        unknown.median() / bad.median()
    );
    // The same for the reset link request: an address with a verified
    // account (a mail job is queued) against unknown ones (nothing is).
    let (mut unknown, mut known) = (Samples::default(), Samples::default());
    let mut odd = 0;
    let known_body = serde_json::json!({ "email": email });
    for i in 0..tries {
        let unknown_body = serde_json::json!({ "email": format!("nobody-{i}-{email}") });
        let order = if i % 2 == 0 { [&unknown_body, &known_body] } else { [&known_body, &unknown_body] };
        for body in order {
            let t0 = Instant::now();
            let (st, _) = api.conn.post("/v1/password/forgot", body)?;
            let took = ms(t0.elapsed());
            if st != 202 {
                odd += 1;
            }
            if std::ptr::eq(body, &unknown_body) { unknown.0.push(took) } else { known.0.push(took) }
        }
    }
    println!(
        "enum_forgot tries={tries} unknown_median_ms={:.2} unknown_p10_ms={:.2} unknown_p90_ms={:.2} known_median_ms={:.2} known_p10_ms={:.2} known_p90_ms={:.2} ratio={:.3} non202={odd}",
        unknown.median(),
        unknown.pct(0.1),
        unknown.pct(0.9),
        known.median(),
        known.pct(0.1),
        known.pct(0.9),
        unknown.median() / known.median()
    );
    Ok(())
}

fn free_port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn proc_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn startup(args: &Args) -> Res<()> {
    let bin = args.req("--bin")?;
    let runs = args.num("--runs", 10) as usize;
    let mut times = Samples::default();
    let mut idle_rss = Samples::default();
    for run in 0..runs {
        let dir = std::env::temp_dir().join(format!("latchkey-bench-start-{}-{run}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let port = free_port()?;
        let t0 = Instant::now();
        let mut child = Command::new(&bin)
            .env("LATCHKEY_DATA_DIR", &dir)
            .env("LATCHKEY_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = t0 + Duration::from_secs(10);
        let mut ok = false;
        while Instant::now() < deadline {
            if let Ok((200, _)) = Conn::new(&format!("127.0.0.1:{port}")).try_send("GET", "/healthz", None, None) {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let took = ms(t0.elapsed());
        if ok {
            times.0.push(took);
        }
        if run < 3 {
            // Idle RSS: a second after the first 200, nothing asked of it.
            std::thread::sleep(Duration::from_secs(1));
            idle_rss.0.push(proc_kib(child.id(), "VmRSS:") as f64);
        }
        child.kill()?;
        child.wait()?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    // Baseline: spawning a process that does nothing, to its exit.
    let mut spawn = Samples::default();
    for _ in 0..runs {
        let t0 = Instant::now();
        Command::new("true").status()?;
        spawn.0.push(ms(t0.elapsed()));
    }
    println!(
        "startup runs={runs} ok={} median_ms={:.1} min_ms={:.1} max_ms={:.1} idle_rss_kib={:.0} spawn_true_median_ms={:.2}",
        times.0.len(),
        times.median(),
        times.min(),
        times.max(),
        idle_rss.median(),
        spawn.median()
    );
    Ok(())
}

// ---------------------------------------------------------------- Lambda Runtime API stand-in

enum RtEvent {
    /// A `next` request, with the CPU the function had used by then (ns, all
    /// its threads; `None` if it could not be read).
    Next(Instant, Option<u64>),
    Response(Instant),
    Error(Instant, String),
}

fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Res<(String, String, String)> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        fill(stream, buf)?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    buf.drain(..head_end + 4);
    while buf.len() < len {
        fill(stream, buf)?;
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    Ok((method, path, String::from_utf8_lossy(&body).into_owned()))
}

/// The CPU time process `pid` has used, in ns: the sum of its live
/// threads' `schedstat` run times (a thread that already ended is not
/// counted).
fn process_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Serves one connection of the runtime client: the first `next` gets the
/// event, later ones are left hanging (the process is killed after the answer).
fn runtime_conn(
    mut stream: TcpStream,
    event: Arc<String>,
    name: Arc<String>,
    served: Arc<AtomicUsize>,
    child: Arc<AtomicU32>,
    tx: mpsc::Sender<RtEvent>,
) {
    let mut buf = Vec::new();
    while let Ok((method, path, body)) = read_request(&mut stream, &mut buf) {
        let now = Instant::now();
        let reply = if method == "GET" && path.ends_with("/runtime/invocation/next") {
            // Read before the event is given: the function waits for it.
            let pid = child.load(Ordering::SeqCst);
            let cpu = if pid == 0 { None } else { process_cpu_ns(pid) };
            let _ = tx.send(RtEvent::Next(now, cpu));
            if served.fetch_add(1, Ordering::SeqCst) > 0 {
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
            let deadline = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0) + 30_000;
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: bench-1\r\n\
                 Lambda-Runtime-Deadline-Ms: {deadline}\r\n\
                 Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:000000000000:function:{name}\r\n\
                 Lambda-Runtime-Trace-Id: Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0\r\n\
                 Content-Length: {}\r\n\r\n{event}",
                event.len()
            )
        } else if method == "POST" && path.ends_with("/response") {
            let _ = tx.send(RtEvent::Response(now));
            "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"status\":\"OK\"}\n"
                .into()
        } else {
            let _ = tx.send(RtEvent::Error(now, format!("{method} {path} {body}")));
            "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"status\":\"OK\"}\n"
                .into()
        };
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn lambda_init(args: &Args) -> Res<()> {
    let bin = args.req("--bin")?;
    let name = Arc::new(args.req("--name")?);
    let event = Arc::new(std::fs::read_to_string(args.req("--event-file")?)?);
    let runs = args.num("--runs", 5) as usize;
    // The program to spawn and its leading arguments: the binary itself, or
    // an emulator followed by its options and the binary.
    let mut argv: Vec<String> =
        args.get("--runner").map(|r| r.split_whitespace().map(String::from).collect()).unwrap_or_default();
    argv.push(bin);
    let (mut next_t, mut resp_t, mut hwm) = (Samples::default(), Samples::default(), Samples::default());
    let mut next_cpu = Samples::default();
    let mut outcome = String::from("response");
    for run in 0..runs {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (tx, rx) = mpsc::channel();
        let served = Arc::new(AtomicUsize::new(0));
        // The function's pid, once spawned (0 before).
        let child_pid = Arc::new(AtomicU32::new(0));
        {
            let (event, name, served, pid, tx) =
                (event.clone(), name.clone(), served.clone(), child_pid.clone(), tx.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (event, name, served, pid, tx) =
                        (event.clone(), name.clone(), served.clone(), pid.clone(), tx.clone());
                    std::thread::spawn(move || runtime_conn(stream, event, name, served, pid, tx));
                }
            });
        }
        drop(tx);
        let log = std::env::temp_dir().join(format!("latchkey-bench-lambda-{}-{}.log", name, std::process::id()));
        let t0 = Instant::now();
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
            .env("AWS_LAMBDA_FUNCTION_NAME", name.as_str())
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        child_pid.store(child.id(), Ordering::SeqCst);
        let mut first_next = None;
        let deadline = t0 + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(RtEvent::Next(t, cpu)) => {
                    if first_next.is_none() {
                        first_next = Some(t);
                        if let Some(ns) = cpu {
                            next_cpu.0.push(ns as f64 / 1e6);
                        }
                    }
                }
                Ok(RtEvent::Response(t)) => {
                    resp_t.0.push(ms(t - t0));
                    break;
                }
                Ok(RtEvent::Error(t, what)) => {
                    resp_t.0.push(ms(t - t0));
                    outcome = format!("error: {}", what.chars().take(200).collect::<String>());
                    break;
                }
                Err(_) if Instant::now() >= deadline || child.try_wait()?.is_some() => {
                    let tail = std::fs::read_to_string(&log).unwrap_or_default();
                    let tail: String = tail.chars().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect();
                    outcome = format!("no answer: {}", tail.replace('\n', " "));
                    break;
                }
                Err(_) => {}
            }
        }
        if let Some(t) = first_next {
            next_t.0.push(ms(t - t0));
        }
        hwm.0.push(proc_kib(child.id(), "VmHWM:") as f64);
        let _ = child.kill();
        child.wait()?;
        let _ = std::fs::remove_file(&log);
        if outcome != "response" {
            eprintln!("lambda {name} run {run}: {outcome}");
        }
    }
    println!(
        "lambda name={name} runs={runs} next_median_ms={:.1} next_min_ms={:.1} next_max_ms={:.1} next_cpu_median_ms={} response_median_ms={:.1} response_min_ms={:.1} response_max_ms={:.1} hwm_kib={:.0} outcome={}",
        next_t.median(),
        next_t.min(),
        next_t.max(),
        if next_cpu.0.len() == runs { format!("{:.2}", next_cpu.median()) } else { "n/a".into() },
        resp_t.median(),
        resp_t.min(),
        resp_t.max(),
        hwm.median(),
        outcome.split(':').next().unwrap_or("")
    );
    Ok(())
}

/// aws-lc's first randomness in a new process, which a Lambda cold start's
/// first TLS handshake (rustls on aws-lc-rs) pays once: each run is a new
/// process (this binary's `first-random-once`), timing one
/// `aws_lc_rs::rand::fill` of 32 bytes.
fn first_random(args: &Args) -> Res<()> {
    let runs = args.num("--runs", 5) as usize;
    let exe = std::env::current_exe()?;
    let mut t = Samples::default();
    for _ in 0..runs {
        let out = Command::new(&exe).arg("first-random-once").output()?;
        let said = String::from_utf8_lossy(&out.stdout);
        t.0.push(said.trim().parse::<f64>().map_err(|e| format!("first-random-once printed {said:?}: {e}"))?);
    }
    println!("first_random runs={runs} median_ms={:.2} min_ms={:.2} max_ms={:.2}", t.median(), t.min(), t.max());
    Ok(())
}

fn first_random_once() -> Res<()> {
    let mut bytes = [0u8; 32];
    let t0 = Instant::now();
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "aws-lc gave no randomness")?;
    println!("{:.3}", ms(t0.elapsed()));
    Ok(())
}

fn main() -> Res<()> {
    let args = Args(std::env::args().collect());
    match args.0.get(1).map(String::as_str) {
        Some("user") => {
            let mut api = Api::new(&args)?;
            let email = api.user(&args.req("--username")?)?;
            println!("user email={email}");
            Ok(())
        }
        Some("nonhash") => nonhash(&args),
        Some("isolation") => isolation(&args),
        Some("enum") => enumeration(&args),
        Some("startup") => startup(&args),
        Some("lambda-init") => lambda_init(&args),
        Some("first-random") => first_random(&args),
        Some("first-random-once") => first_random_once(),
        _ => Err(
            "usage: bench_client user|nonhash|isolation|enum|startup|lambda-init|first-random ... (see the file's header)"
                .into(),
        ),
    }
}
