//! Turns a `Config` into running ports: the embedded SQLite store with its
//! outbox mail consumer, or DynamoDB + SQS built from one SdkConfig. Used by
//! the api binary and the local runner.

use crate::state::AppState;
use latchkey_core::audit::{AdminKeyHash, AuditStore};
use latchkey_core::config::{Backend, Config};
use latchkey_core::domain::Secret;
use latchkey_core::flows::{Auth, Ports, TokenIssuer};
use latchkey_core::keys::{CodeKey, SigningKey, VerifyingKey};
use latchkey_core::password_hasher::PasswordHasher;
use latchkey_core::ports::{Clock, SecureRng};
use latchkey_core::{clock::SystemClock, rng::OsSecureRng};
use std::collections::HashMap;
use std::sync::Arc;

/// A built system: the state for the Router, and what runs beside it.
pub struct Built {
    pub state: AppState,
    /// The embedded store, when that is the backend (the local runner's
    /// audit feed and tests read it).
    #[cfg(feature = "embedded")]
    pub embedded: Option<latchkey_core::adapters::embedded::EmbeddedStore>,
    /// Background tasks that may be cut off at any point (the embedded
    /// audit feed: each batch commits whole or not at all).
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The embedded mail consumer, stopped between jobs by [`Built::shutdown`].
    #[cfg(feature = "embedded")]
    pub mail_consumer: Option<latchkey_core::adapters::embedded::MailConsumer>,
}

impl Built {
    /// Stops what runs beside the server once it has stopped: the mail
    /// consumer finishes the job in hand (for at most its delivery
    /// deadline) and takes no other; then the rest is aborted.
    pub async fn shutdown(#[allow(unused_mut)] mut self) {
        #[cfg(feature = "embedded")]
        if let Some(consumer) = self.mail_consumer.take() {
            tracing::info!("stopping: the mail consumer finishes the job in hand");
            if !consumer.stop(latchkey_core::adapters::embedded::STOP_GRACE).await {
                tracing::warn!("the mail consumer did not stop in time: cut off");
            }
        }
        self.abort();
    }

    /// Cuts everything beside the server off at once (tests, before their
    /// data directory goes).
    pub fn abort(&self) {
        #[cfg(feature = "embedded")]
        if let Some(consumer) = &self.mail_consumer {
            consumer.task.abort();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        tracing_subscriber::fmt().json().with_env_filter(filter).with_current_span(false).without_time().init();
    } else {
        let colours = latchkey_core::config::console_colours_for(&std::io::stdout());
        tracing_subscriber::fmt().compact().with_ansi(colours).with_env_filter(filter).init();
    }
}

/// What tests (and benchmarks) may swap in.
pub struct BuildOptions {
    pub clock: Arc<dyn Clock>,
    /// The AWS configuration to use instead of the environment's.
    pub sdk: Option<aws_config::SdkConfig>,
    /// Counts every AWS call the ports make.
    pub calls: Option<latchkey_core::adapters::aws_calls::CallCounter>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions { clock: Arc::new(SystemClock), sdk: None, calls: None }
    }
}

/// Builds every port the configuration asks for.
pub async fn build(config: &Config) -> Result<Built, BoxError> {
    build_with(config, BuildOptions::default()).await
}

/// As `build`, with parts swapped in.
pub async fn build_with(config: &Config, opts: BuildOptions) -> Result<Built, BoxError> {
    let clock = opts.clock;
    let rng: Arc<dyn SecureRng> = Arc::new(OsSecureRng);
    match &config.backend {
        #[cfg(not(feature = "embedded"))]
        Backend::Embedded { .. } => {
            Err("LATCHKEY_BACKEND=embedded: this build has no embedded backend (use aws)".into())
        }
        #[cfg(feature = "embedded")]
        Backend::Embedded { data_dir } => {
            use latchkey_core::adapters::embedded::{
                EmbeddedStore, Outbox, SqliteMailQueue, audit, embedded_deliverer, spawn_mail_consumer,
            };
            // Keys, the database and the outbox hold secrets: the owner's only.
            latchkey_core::adapters::embedded::create_private_dir(data_dir)?;
            // The store first: it locks the data directory, so a second
            // process on it stops here, before it could write a key.
            // On the flows' clock, which the ledger's leases also read.
            let store = EmbeddedStore::open(data_dir.join("latchkey.sqlite3"))?.with_clock(clock.clone());
            let (signing, code_key, audit_key) = local_keys(config, data_dir)?;
            let standby = standby_key(config.jwt_standby_key.as_ref())?;
            let queue = SqliteMailQueue::new(&store);
            let renderer = latchkey_core::mail::Renderer::new(&config.public_base_url)?;
            let outbox =
                Outbox::new(data_dir.join("outbox"), renderer.clone(), "latchkey <noreply@latchkey.local>".into());
            let cut_short = outbox.clear_cut_short_writes()?;
            if cut_short > 0 {
                tracing::info!(files = cut_short, "outbox: removed the temp files of writes a crash cut short");
            }
            let pruner = spawn_outbox_pruner(outbox.dir().to_path_buf(), clock.clone());
            let deliverer = embedded_deliverer(&store, outbox, renderer, clock.clone()).await?;
            let consumer = spawn_mail_consumer(queue.clone(), Arc::new(deliverer));
            let audit = audit::SqliteAuditStore::open(&store).await?;
            let feed = audit::spawn_audit_feed(
                store.clone(),
                audit.clone(),
                audit_key,
                latchkey_core::audit::AuditPolicy::from(&config.policy),
                i64::from(config.audit_retention_days) * 86_400,
            );
            let s = Arc::new(store.clone());
            let ports = Ports {
                users: s.clone(),
                challenges: s.clone(),
                sessions: s.clone(),
                otps: s.clone(),
                limiter: s,
                mail: Arc::new(queue),
                clock,
                rng,
            };
            let keys = Keys { signing, standby, code_key, admin_key: config.admin_key_hash.clone() };
            let state = state(config, ports, keys, Arc::new(audit))?;
            Ok(Built { state, embedded: Some(store), tasks: vec![feed, pruner], mail_consumer: Some(consumer) })
        }
        Backend::Aws { table_prefix, mail_queue_url, bootstrap } => {
            use latchkey_core::adapters::{aws_calls, dynamo, sqs};
            let sdk = aws_calls::with_api_timeouts(&match opts.sdk {
                Some(s) => s,
                None => aws_calls::sdk_config().await,
            });
            // A cold start's one AWS call, begun first: the clients (and in
            // `main`, the routes) are built while SSM answers. (Spawning
            // wakes a worker thread: not done for nothing.)
            let params = secret_params(config);
            let secrets = (!params.is_empty()).then(|| tokio::spawn(fetch_secrets(params, sdk.clone())));
            let ddb = aws_calls::dynamo_client(&sdk, opts.calls.as_ref());
            let sqs_client = aws_calls::sqs_client(&sdk, opts.calls.as_ref());
            let queue_url = if *bootstrap {
                dynamo::ensure_tables(&ddb, table_prefix).await?;
                sqs::ensure_queues(&sqs_client, table_prefix).await?.0
            } else {
                mail_queue_url.clone().ok_or(
                    "LATCHKEY_MAIL_QUEUE_URL: required with LATCHKEY_BACKEND=aws unless LATCHKEY_BOOTSTRAP=true",
                )?
            };
            let from_ssm = match secrets {
                Some(reading) => reading.await.map_err(|e| format!("reading SSM parameters: {e}"))??,
                None => SsmSecrets::new(),
            };
            let keys = aws_keys(config, from_ssm)?;
            // Terraform's rotation numbers of what was just read (raising one
            // restarts every instance on the new values).
            tracing::info!(
                secrets_version = ?config.secrets_version,
                jwt_key_version = ?config.jwt_key_version,
                jwt_key_b_version = ?config.jwt_key_b_version,
                admin_key_hash_version = ?config.admin_key_hash_version,
                "secrets read"
            );
            let audit = Arc::new(dynamo::audit::DynamoAuditStore::new(ddb.clone(), table_prefix));
            let store = Arc::new(dynamo::DynamoStore::new(ddb, table_prefix));
            let ports = Ports {
                users: store.clone(),
                challenges: store.clone(),
                sessions: store.clone(),
                otps: store.clone(),
                limiter: store,
                mail: Arc::new(sqs::SqsMailQueue::new(sqs_client, queue_url)),
                clock,
                rng,
            };
            Ok(Built {
                state: state(config, ports, keys, audit)?,
                #[cfg(feature = "embedded")]
                embedded: None,
                tasks: vec![],
                #[cfg(feature = "embedded")]
                mail_consumer: None,
            })
        }
    }
}

/// What an SSM admin-key-hash parameter holds when the admin API is off
/// (SSM refuses empty values; Terraform writes this when no hash is given).
pub const ADMIN_KEY_HASH_OFF: &str = "off";

/// SSM parameter values by name.
type SsmSecrets = HashMap<String, Secret<String>>;

/// Reads the SSM SecureString parameters `params` names (as
/// `secret_params` gives them), all in one call.
async fn fetch_secrets(
    params: Vec<(&'static str, String)>,
    sdk: aws_config::SdkConfig,
) -> Result<SsmSecrets, BoxError> {
    let params: Vec<(&str, &str)> = params.iter().map(|(var, name)| (*var, name.as_str())).collect();
    Ok(latchkey_core::adapters::ssm::read_secrets(&aws_sdk_ssm::Client::new(&sdk), &params).await?)
}

/// The SSM parameters the `_PARAM` variables name, each with its variable.
fn secret_params(config: &Config) -> Vec<(&'static str, String)> {
    [
        ("LATCHKEY_JWT_PRIVATE_KEY_PARAM", &config.jwt_private_key_param),
        ("LATCHKEY_JWT_STANDBY_KEY_PARAM", &config.jwt_standby_key_param),
        ("LATCHKEY_CODE_HMAC_KEY_PARAM", &config.code_hmac_key_param),
        ("LATCHKEY_ADMIN_KEY_HASH_PARAM", &config.admin_key_hash_param),
    ]
    .into_iter()
    .filter_map(|(var, name)| Some((var, name.clone()?)))
    .collect()
}

/// The keys a built api holds.
struct Keys {
    signing: SigningKey,
    /// Published and accepted, never used to sign.
    standby: Option<VerifyingKey>,
    code_key: CodeKey,
    admin_key: Option<AdminKeyHash>,
}

/// The standby JWT key's public half, from its base64 PKCS#8 value. The
/// private half is not kept: this instance never signs with it.
fn standby_key(value: Option<&Secret<String>>) -> Result<Option<VerifyingKey>, BoxError> {
    value
        .map(|v| {
            SigningKey::from_base64(v.expose())
                .map(|k| k.verifying_key().clone())
                .map_err(|e| format!("LATCHKEY_JWT_STANDBY_KEY: {e}").into())
        })
        .transpose()
}

/// The AWS mode's secrets: from the SSM parameters `fetch_secrets` read
/// (the deployed way), else from the variables themselves (emulators and
/// tests).
fn aws_keys(config: &Config, from_ssm: SsmSecrets) -> Result<Keys, BoxError> {
    use latchkey_core::adapters::ssm::pick_secret;
    let jwt =
        pick_secret(&from_ssm, &config.jwt_private_key_param, &config.jwt_private_key, "LATCHKEY_JWT_PRIVATE_KEY")?;
    // Optional: without one no key is on standby.
    let standby = match (&config.jwt_standby_key_param, &config.jwt_standby_key) {
        (None, None) => None,
        _ => Some(pick_secret(
            &from_ssm,
            &config.jwt_standby_key_param,
            &config.jwt_standby_key,
            "LATCHKEY_JWT_STANDBY_KEY",
        )?),
    };
    let hmac = pick_secret(&from_ssm, &config.code_hmac_key_param, &config.code_hmac_key, "LATCHKEY_CODE_HMAC_KEY")?;
    let signing = SigningKey::from_base64(jwt.expose()).map_err(|e| format!("LATCHKEY_JWT_PRIVATE_KEY: {e}"))?;
    let code_key = CodeKey::from_base64(hmac.expose()).map_err(|e| format!("LATCHKEY_CODE_HMAC_KEY: {e}"))?;
    // Optional, unlike the two keys: without it the admin API is off.
    let admin_key = match &config.admin_key_hash_param {
        None => config.admin_key_hash.clone(),
        Some(name) => {
            let value = pick_secret(&from_ssm, &config.admin_key_hash_param, &None, "LATCHKEY_ADMIN_KEY_HASH")?;
            let value = value.expose().trim();
            if value == ADMIN_KEY_HASH_OFF {
                None
            } else {
                // The value is not echoed: a mistyped key in place of its hash
                // must not reach the logs.
                Some(AdminKeyHash::from_hex(value).ok_or_else(|| {
                    format!(
                        "LATCHKEY_ADMIN_KEY_HASH_PARAM: parameter {name} must hold the hex SHA-256 of the admin key \
                         (64 hex digits) or {ADMIN_KEY_HASH_OFF:?}"
                    )
                })?)
            }
        }
    };
    Ok(Keys { signing, standby: standby_key(standby.as_ref())?, code_key, admin_key })
}

fn state(config: &Config, ports: Ports, keys: Keys, audit: Arc<dyn AuditStore>) -> Result<AppState, BoxError> {
    let Keys { signing, standby, code_key, admin_key } = keys;
    let hasher = PasswordHasher::new(config.policy.argon2, config.hash_threads, ports.rng.as_ref())?;
    let standby_given = standby.is_some();
    let tokens = TokenIssuer::new(
        signing,
        config.jwt_issuer.clone(),
        config.jwt_audience.clone(),
        config.policy.access_ttl_secs,
    )?
    .with_standby(standby)
    .with_previous(config.jwt_previous_public_key.clone());
    let kids = tokens.kids();
    let kid = kids.signing;
    // Serving on is safer than stopping every instance for either.
    if standby_given && kids.standby.is_none() {
        tracing::warn!(
            kid,
            "LATCHKEY_JWT_STANDBY_KEY is the signing key: the two key slots hold one key (write a new key into the slot \
             that does not sign)"
        );
    }
    if config.jwt_previous_public_key.is_some() && kids.previous.is_none() {
        tracing::warn!(
            kid,
            "LATCHKEY_JWT_PREVIOUS_PUBLIC_KEY is the signing or the standby key's own, which it adds nothing to"
        );
    }
    tracing::info!(
        kid,
        standby_kid = kids.standby,
        previous_kid = kids.previous,
        "access token keys: kid signs; standby_kid (the next key, or the one the last switch replaced) and \
         previous_kid (a rotation's overlap) are accepted"
    );
    let auth = Auth::new(ports, config.policy.clone(), hasher, code_key, tokens);
    let scheme = latchkey_core::config::base_url_parts(&config.public_base_url).map_or("http", |(scheme, _)| scheme);
    Ok(AppState { auth, trust_forwarded_for: config.trust_forwarded_for, audit, admin_key, scheme, served_host: None })
}

#[cfg(feature = "embedded")]
/// The embedded mode's secrets: from the environment if set, else created
/// once under `<data_dir>/keys/` (mode 0600) and reused; an existing file
/// and the directory lose any group and other bits. The audit key is the
/// audit feed's, which runs in this process. Called with the store open
/// (its lock held), so no other process writes these files meanwhile.
fn local_keys(
    config: &Config,
    data_dir: &std::path::Path,
) -> Result<(SigningKey, CodeKey, latchkey_core::keys::AuditKey), BoxError> {
    let dir = data_dir.join("keys");
    latchkey_core::adapters::embedded::create_private_dir(&dir)?;
    let signing = match &config.jwt_private_key {
        Some(k) => SigningKey::from_base64(k.expose()).map_err(|e| format!("LATCHKEY_JWT_PRIVATE_KEY: {e}"))?,
        None => {
            let b64 =
                read_or_create(&dir.join("jwt-ed25519.pk8.b64"), || SigningKey::generate().map(|k| k.to_base64()))?;
            SigningKey::from_base64(b64.expose())
                .map_err(|e| format!("{}: {e}", dir.join("jwt-ed25519.pk8.b64").display()))?
        }
    };
    // The variable's value, else 256 random bits, base64, kept in `file`.
    let hmac_key = |value: &Option<Secret<String>>, file: &str| -> Result<Secret<String>, BoxError> {
        match value {
            Some(k) => Ok(k.clone()),
            None => read_or_create(&dir.join(file), || {
                use base64::Engine;
                Ok(base64::engine::general_purpose::STANDARD.encode(OsSecureRng.bytes32()))
            })
            .map_err(|e| format!("{}: {e}", dir.join(file).display()).into()),
        }
    };
    let code_key = CodeKey::from_base64(hmac_key(&config.code_hmac_key, "code-hmac.key.b64")?.expose())
        .map_err(|e| format!("LATCHKEY_CODE_HMAC_KEY (or keys/code-hmac.key.b64): {e}"))?;
    let audit_key = audit_key_from(&hmac_key(&config.audit_key, AUDIT_KEY_FILE)?)?;
    Ok((signing, code_key, audit_key))
}

#[cfg(feature = "embedded")]
/// The embedded audit feed's seal key, found as `build` finds it
/// (`LATCHKEY_AUDIT_KEY`, else `<data_dir>/keys/audit-seal.key.b64`) but
/// never created: `verify-chain` checks a trail with the key that sealed it.
pub fn embedded_audit_key(
    config: &Config,
    data_dir: &std::path::Path,
) -> Result<latchkey_core::keys::AuditKey, BoxError> {
    let b64 = match &config.audit_key {
        Some(k) => k.clone(),
        None => {
            let path = data_dir.join("keys").join(AUDIT_KEY_FILE);
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            Secret::new(text.trim().to_string())
        }
    };
    audit_key_from(&b64)
}

/// The embedded audit key's file under `<data_dir>/keys/`.
#[cfg(feature = "embedded")]
const AUDIT_KEY_FILE: &str = "audit-seal.key.b64";

#[cfg(feature = "embedded")]
fn audit_key_from(b64: &Secret<String>) -> Result<latchkey_core::keys::AuditKey, BoxError> {
    latchkey_core::keys::AuditKey::from_base64(b64.expose())
        .map_err(|e| format!("LATCHKEY_AUDIT_KEY (or keys/{AUDIT_KEY_FILE}): {e}").into())
}

#[cfg(feature = "embedded")]
/// The key in `path`, else (only if there is no such file) a new one from
/// `make`, written there. A file that is there but cannot be read stops the
/// start: a new key in its place would leave what the old one signed,
/// keyed or sealed (sessions, codes in flight, the audit trail) unreadable.
fn read_or_create(
    path: &std::path::Path,
    make: impl FnOnce() -> Result<String, String>,
) -> Result<Secret<String>, BoxError> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            latchkey_core::adapters::embedded::owner_only(path)?;
            return Ok(Secret::new(s.trim().to_string()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!("{}: {e} (left as it is; no new key is made in its place)", path.display()).into());
        }
    }
    let value = make()?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        // A temp file a cut-short start left is replaced, not reused: opened
        // anew, it is the owner's only (mode applies to new files only).
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(value.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename is durable only once the directory is: else a power cut
    // could lose the key after what it sealed was written, and the next
    // start would make another.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(Secret::new(value))
}

/// Serves the Router on `bind` until Ctrl-C (SIGINT) or SIGTERM: `threads`
/// threads (one per core by default, `LATCHKEY_HTTP_THREADS`), each running a
/// single-threaded runtime that accepts from the one listening socket and
/// keeps the connections it accepts. A request's wake-ups (its bytes
/// arriving, its password hash coming back from the pool) then go to the one
/// thread that owns it. On tokio's multi-threaded runtime each such wake-up
/// also woke the other worker to look for work, which found none: measured
/// under a login load on the 2-core bench machine, 5.6-6.2 voluntary thread
/// switches per login on the workers with it, 2.0-2.3 without (see
/// docs/operations.md).
///
/// The socket is bound by `listen` first, so that a caller can say it is
/// serving only once connections are taken.
pub async fn serve(app: axum::Router, listener: std::net::TcpListener, threads: usize) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, threads, "latchkey listening");
    serve_threads(listener, app, threads, stop_signal()).await
}

/// The listening socket `serve` takes, bound to `bind`; its error names the
/// address.
pub fn listen(bind: &str) -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(bind)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {bind}: {e}")))
}

/// Ctrl-C, or SIGTERM (what a service manager or `kill` sends), logged.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "stopping"),
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "SIGTERM cannot be caught: only Ctrl-C stops the server gracefully");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("stopping");
    }
}

/// How often the embedded runner prunes its outbox.
#[cfg(feature = "embedded")]
const OUTBOX_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes, at start and then hourly, the outbox's mails older than the
/// mail ledger remembers their jobs (`prune_outbox`).
#[cfg(feature = "embedded")]
fn spawn_outbox_pruner(dir: std::path::PathBuf, clock: Arc<dyn Clock>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(OUTBOX_PRUNE_EVERY);
        loop {
            every.tick().await;
            let cutoff = clock.now() - latchkey_core::mail::delivery::LEDGER_TTL_SECS;
            let d = dir.clone();
            match tokio::task::spawn_blocking(move || latchkey_core::adapters::embedded::prune_outbox(&d, cutoff)).await
            {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(files = n, "outbox: removed mails older than the mail ledger keeps"),
                Ok(Err(e)) => tracing::warn!(error = %e, "outbox: pruning old mails failed"),
                Err(e) => tracing::warn!(error = %e, "outbox: the pruning task failed"),
            }
        }
    })
}

/// As `serve`, on a bound listener, until `shutdown` resolves or this
/// future is dropped; then each thread finishes the requests it has in
/// flight. Returns the first error a thread ended with. (The in-process
/// system tests serve through this too.)
pub async fn serve_threads(
    listener: std::net::TcpListener,
    app: axum::Router,
    threads: usize,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    // One count of connections for every serving thread.
    let caps = Arc::new(ConnectionCaps::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (ended, mut ends) = tokio::sync::mpsc::unbounded_channel::<std::io::Result<()>>();
    let mut spawned = 0;
    let mut result = Ok(());
    for i in 0..threads.max(1) {
        let (listener, app, mut stopped, ended, caps) = match listener.try_clone() {
            Ok(l) => (l, app.clone(), stopped.clone(), ended.clone(), caps.clone()),
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let thread = std::thread::Builder::new().name(format!("http-{i}")).spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|rt| {
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let timeouts = (HEADER_READ_TIMEOUT, WRITE_STALL_TIMEOUT);
                    serve_connections(listener, app, timeouts, caps, async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    })
                    .await;
                    Ok(())
                })
            });
            let _ = ended.send(served);
        });
        match thread {
            Ok(_) => spawned += 1,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    drop(ended);
    if result.is_ok() {
        // Until the shutdown, or until a thread stops by itself (an error).
        tokio::select! {
            () = shutdown => {}
            first = ends.recv() => {
                spawned -= 1;
                result = first.unwrap_or(Ok(()));
            }
        }
    }
    let _ = stop.send(true);
    for _ in 0..spawned {
        match ends.recv().await {
            Some(Err(e)) if result.is_ok() => result = Err(e),
            Some(_) => {}
            None => break,
        }
    }
    result
}

/// How long a client may take to send a request's head (the request line
/// and headers), and to start the next one on a kept-alive connection: past
/// it hyper closes the connection. Without it, a client that opens
/// connections and sends nothing (or a byte now and then) holds them for
/// ever, and a few thousand of them use up the process's descriptors (a
/// live probe held 1,100 against a limit of 1,024 and /healthz stopped
/// answering).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a response may wait for the client to take its bytes: a client
/// that stops reading fills its receive window, and hyper's writes then
/// wait for ever (hyper has no write timeout; a live probe kept such
/// connections for minutes). Past this without progress the connection is
/// closed.
pub const WRITE_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How many connections the server holds at once, in all and per client
/// (an IPv4 address, or an IPv6 /64 as the rate limits group them). The
/// header timeout bounds how long an idle connection lives, not how many
/// there are: a client that opened ~110 a second, or kept its own alive
/// with a request every few seconds, held as many as it liked, until the
/// process ran out of descriptors (1,024 by default) and nobody else got
/// in. A connection past a cap is closed as soon as it is accepted.
pub struct ConnectionCaps {
    /// Below the usual limit of 1,024 open descriptors, which the store's
    /// files, the outbox and the AWS clients' connections share.
    pub total: usize,
    /// Room for a reverse proxy's pool of connections, which all come from
    /// its one address.
    pub per_client: usize,
    open: std::sync::Mutex<(usize, std::collections::HashMap<String, usize>)>,
    /// When a refusal was last logged (seconds since the epoch), so an
    /// attack does not flood the log.
    logged: std::sync::atomic::AtomicU64,
}

impl Default for ConnectionCaps {
    fn default() -> Self {
        ConnectionCaps::new(768, 128)
    }
}

impl ConnectionCaps {
    pub fn new(total: usize, per_client: usize) -> Self {
        ConnectionCaps { total, per_client, open: Default::default(), logged: Default::default() }
    }

    /// A slot for a connection from `peer`, held until dropped; `None` past
    /// a cap.
    fn admit(self: &Arc<Self>, peer: std::net::IpAddr) -> Option<ConnectionSlot> {
        let meta = latchkey_core::domain::RequestMeta { ip: Some(peer.to_string()), ..Default::default() };
        let client = latchkey_core::flows::client_key(&meta);
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, per_client) = &mut *open;
        let mine = per_client.get(&client).copied().unwrap_or(0);
        if *total >= self.total || mine >= self.per_client {
            drop(open);
            self.refused(&client);
            return None;
        }
        *total += 1;
        per_client.insert(client.clone(), mine + 1);
        Some(ConnectionSlot { caps: self.clone(), client })
    }

    fn refused(&self, client: &str) {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last = self.logged.load(Ordering::Relaxed);
        if now >= last + 10 && self.logged.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::warn!(
                client,
                total = self.total,
                per_client = self.per_client,
                "connection refused: too many open (logged at most every 10 s)"
            );
        }
    }
}

/// The requests one server has running, some perhaps for clients that
/// hung up: waited for at shutdown.
#[derive(Default)]
struct InFlight {
    running: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

impl InFlight {
    fn start(self: &Arc<Self>, slot: &Arc<ConnectionSlot>) -> Running {
        self.running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Running { in_flight: self.clone(), _slot: slot.clone() }
    }

    /// Resolves once no request is running.
    async fn drained(&self) {
        loop {
            let done = self.done.notified();
            if self.running.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    }
}

/// A running request: counted in its server's [`InFlight`] and holding its
/// connection's slot (so a client that sends a request and hangs up, again
/// and again, has no more requests running than its connection cap) until
/// it ends.
struct Running {
    in_flight: Arc<InFlight>,
    _slot: Arc<ConnectionSlot>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.in_flight.running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.in_flight.done.notify_waiters();
        }
    }
}

/// How long a server that stops waits for requests still running after
/// their connections closed (clients that hung up) before its runtime ends
/// them.
const REQUEST_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// One admitted connection, counted until dropped.
struct ConnectionSlot {
    caps: Arc<ConnectionCaps>,
    client: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, per_client) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

/// A connection whose writes must make progress within `limit`; reads pass
/// through.
struct StallGuard<IO> {
    io: IO,
    limit: std::time::Duration,
    /// Running while a write waits.
    stall: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> StallGuard<IO> {
    /// A write is waiting: fails once it has waited `limit`.
    fn waiting<T>(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future as _;
        let limit = self.limit;
        let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stall.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading the response",
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    /// The outcome of a write: progress ends the wait.
    fn progress<T>(
        &mut self,
        polled: std::task::Poll<std::io::Result<T>>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<T>> {
        match polled {
            std::task::Poll::Pending => self.waiting(cx),
            ready => {
                self.stall = None;
                ready
            }
        }
    }
}

impl<IO: hyper::rt::Read + Unpin> hyper::rt::Read for StallGuard<IO> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: hyper::rt::Write + Unpin> hyper::rt::Write for StallGuard<IO> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        this.progress(polled, cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progress(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_flush(cx);
        this.progress(polled, cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_shutdown(cx);
        this.progress(polled, cx)
    }
}

/// Serves `req` in a task of its own, so its flow runs to the end whether or
/// not the client stays for the answer. hyper drops the future of a request
/// whose client hung up; run in it, a flow would stop wherever it was, after
/// one write and before the next (a wrong password counted, and the session
/// it locked never ended; an address changed, and the owner never told).
/// Dropped, this future tells the request's [`Caller`] instead, so work not
/// begun for nobody (a queued password hash) is skipped.
async fn run_to_the_end(
    app: axum::Router,
    req: axum::http::Request<axum::body::Body>,
    running: Running,
) -> Result<axum::response::Response, std::convert::Infallible> {
    use latchkey_core::password_hasher::Caller;
    use tower::ServiceExt as _;

    /// Tells the caller its client is gone unless defused by the answer.
    struct HangUp(Option<Caller>);
    impl Drop for HangUp {
        fn drop(&mut self) {
            if let Some(caller) = self.0.take() {
                caller.hung_up();
            }
        }
    }

    let caller = Caller::default();
    let mut hang_up = HangUp(Some(caller.clone()));
    let answer = tokio::spawn(async move {
        let _running = running;
        caller.serve(app.oneshot(req)).await
    })
    .await;
    hang_up.0 = None;
    match answer {
        Ok(response) => response,
        // The app catches its handlers' panics; one that escaped it goes on
        // up, as it would have without the task.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down.
        Err(_) => Ok(axum::response::IntoResponse::into_response(axum::http::StatusCode::SERVICE_UNAVAILABLE)),
    }
}

/// Accepts connections from `listener` and serves `app` on them (HTTP/1.1,
/// with `header_timeout` and `write_stall`, where `axum::serve` sets none; each request carries the peer's address as
/// `ConnectInfo`) until `shutdown` resolves; then stops accepting, lets the
/// requests in flight finish and returns when every connection has closed.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    (header_timeout, write_stall): (std::time::Duration, std::time::Duration),
    caps: Arc<ConnectionCaps>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use axum::extract::connect_info::ConnectInfo;
    use hyper_util::rt::{TokioIo, TokioTimer};

    let mut builder = hyper::server::conn::http1::Builder::new();
    // A request head larger than 64 KiB is refused (431) rather than
    // buffered (hyper's default allows ~400 KB per connection).
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(64 * 1024);
    // Dropped at shutdown: each connection then shuts down gracefully; each
    // holds a receiver of `closed` until it has.
    let (shut, _) = tokio::sync::watch::channel(());
    let (closed_tx, closed_rx) = tokio::sync::watch::channel(());
    let in_flight = Arc::new(InFlight::default());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // A connection that went away before it was accepted
                    // is nobody's problem; anything else (no descriptors
                    // left) is waited out rather than spun on.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                    ) {
                        tracing::warn!(error = %e, "accepting a connection failed; retrying in 1 s");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
        };
        let Some(slot) = caps.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        let slot = Arc::new(slot);
        let (app, in_flight, request_slot) = (app.clone(), in_flight.clone(), slot.clone());
        let service = hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            run_to_the_end(app.clone(), req, in_flight.start(&request_slot))
        });
        let io = StallGuard { io: TokioIo::new(stream), limit: write_stall, stall: None };
        let conn = builder.serve_connection(io, service);
        let (mut shut, closed) = (shut.subscribe(), closed_rx.clone());
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            let mut shutting = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = shut.changed(), if !shutting => {
                        shutting = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(closed);
        });
    }
    drop(listener);
    drop(shut);
    drop(closed_rx);
    closed_tx.closed().await;
    // Requests whose clients hung up may still be running: the runtime's end
    // would cut them off between two writes.
    if tokio::time::timeout(REQUEST_DRAIN, in_flight.drained()).await.is_err() {
        tracing::warn!("stopping with requests still running after {} s", REQUEST_DRAIN.as_secs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A fresh directory under the system temp dir, removed on drop.
    #[cfg(all(feature = "embedded", unix))]
    struct Scratch(std::path::PathBuf);

    #[cfg(all(feature = "embedded", unix))]
    impl Scratch {
        fn new() -> Self {
            let p = std::env::temp_dir().join(format!("latchkey-wiring-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    #[cfg(all(feature = "embedded", unix))]
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[cfg(all(feature = "embedded", unix))]
    fn embedded_config(data_dir: &std::path::Path) -> Config {
        let dir = data_dir.to_string_lossy().into_owned();
        Config::from_lookup(|k| (k == "LATCHKEY_DATA_DIR").then(|| dir.clone())).unwrap()
    }

    #[cfg(all(feature = "embedded", unix))]
    #[test]
    fn a_key_file_that_cannot_be_read_stops_the_start_and_is_left_as_it_is() {
        let tmp = Scratch::new();
        let keys = tmp.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        // Not UTF-8: unreadable as a key file, as one the process may not
        // open would be (tests may run as root, which opens anything).
        let garbled = [0xff, 0xfe, 0x00, 0x80];
        std::fs::write(keys.join(AUDIT_KEY_FILE), garbled).unwrap();
        let Err(e) = local_keys(&embedded_config(tmp.path()), tmp.path()) else { panic!("started") };
        assert!(e.to_string().contains(AUDIT_KEY_FILE), "{e}");
        assert_eq!(std::fs::read(keys.join(AUDIT_KEY_FILE)).unwrap(), garbled, "the file was replaced");
    }

    /// A temp file a start cut short left (readable by others, as a
    /// `umask` 022 makes it) is not written into: the new key file is the
    /// owner's only, and holds the new key.
    #[cfg(all(feature = "embedded", unix))]
    #[test]
    fn a_key_is_never_written_into_a_leftover_temp_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = Scratch::new();
        let path = tmp.path().join("a.key.b64");
        let left = path.with_extension("tmp");
        std::fs::write(&left, "half a key from before").unwrap();
        std::fs::set_permissions(&left, std::fs::Permissions::from_mode(0o644)).unwrap();
        let key = read_or_create(&path, || Ok("the new key".into())).unwrap();
        assert_eq!(key.expose(), "the new key");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "the new key");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!left.exists());
    }

    #[cfg(all(feature = "embedded", unix))]
    #[test]
    fn existing_key_files_and_their_directory_become_the_owners_only_and_keep_their_keys() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = Scratch::new();
        let config = embedded_config(tmp.path());
        let (signing, _, _) = local_keys(&config, tmp.path()).unwrap();
        let keys = tmp.path().join("keys");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let files: Vec<_> = std::fs::read_dir(&keys).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 3, "{files:?}");
        // As a restore with `cp` under a umask of 022 leaves them.
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
        for f in &files {
            assert_eq!(mode(f), 0o600, "{f:?} made");
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let (again, _, _) = local_keys(&config, tmp.path()).unwrap();
        assert_eq!(again.to_base64(), signing.to_base64(), "the key changed");
        assert_eq!(mode(&keys), 0o700);
        for f in &files {
            assert_eq!(mode(f), 0o600, "{f:?}");
        }
    }

    /// The embedded runner takes a standby key from its environment: its
    /// public key is published after the signing key and its tokens are
    /// accepted; a value that is not a key stops the start by name, not
    /// echoed.
    #[cfg(all(feature = "embedded", unix))]
    #[tokio::test]
    async fn the_embedded_runner_publishes_and_accepts_its_standby_key() {
        let (tmp, other) = (Scratch::new(), Scratch::new());
        let standby = SigningKey::generate().unwrap();
        let with = |dir: &std::path::Path, value: String| {
            let dir = dir.to_string_lossy().into_owned();
            Config::from_lookup(move |k| match k {
                "LATCHKEY_DATA_DIR" => Some(dir.clone()),
                "LATCHKEY_JWT_STANDBY_KEY" => Some(value.clone()),
                _ => None,
            })
            .unwrap()
        };
        let config = with(tmp.path(), standby.to_base64());
        let built = build(&config).await.unwrap();
        let tokens = built.state.auth.tokens();
        assert_eq!(tokens.kids().standby, Some(standby.kid()));
        assert_eq!(tokens.jwks()["keys"][1], standby.jwk());
        let signer =
            TokenIssuer::new(standby.clone(), config.jwt_issuer.clone(), config.jwt_audience.clone(), 600).unwrap();
        use latchkey_core::domain::{SessionId, UserId};
        let (user, session) = (UserId::random(&OsSecureRng), SessionId::random(&OsSecureRng));
        let token = signer.issue(&user, &session, 1000, i64::MAX, "j".into()).unwrap();
        assert_eq!(tokens.verify(&token, 1000).unwrap().sub, user.to_string(), "a token the standby key signed");
        built.abort();

        let Err(e) = build(&with(other.path(), "bm90IGEga2V5".into())).await else { panic!("started") };
        assert!(e.to_string().starts_with("LATCHKEY_JWT_STANDBY_KEY: ") && !e.to_string().contains("bm90"), "{e}");
    }

    async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").as_bytes()).await?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply).await?;
        Ok(reply)
    }

    #[tokio::test]
    async fn each_serving_thread_runs_requests_on_its_own_runtime_until_shutdown() {
        let app = axum::Router::new().route(
            "/where",
            axum::routing::get(|| async {
                let flavor = tokio::runtime::Handle::current().runtime_flavor();
                format!("{} {flavor:?}", std::thread::current().name().unwrap_or("?"))
            }),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (shut, shutdown) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_threads(listener, app, 2, async {
            let _ = shutdown.await;
        }));
        for _ in 0..8 {
            let reply = get(addr, "/where").await.unwrap();
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
            let body = reply.rsplit("\r\n\r\n").next().unwrap();
            let (thread, flavor) = body.split_once(' ').unwrap();
            assert!(thread == "http-0" || thread == "http-1", "served on {thread}");
            assert_eq!(flavor, "CurrentThread");
        }
        shut.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
        // Every thread let go of the socket: nothing listens any more.
        assert!(get(addr, "/where").await.is_err());
    }

    /// A connection that never finishes a request's head, or that sits
    /// idle after a response, is closed once the header timeout has run,
    /// while a request in flight at shutdown still gets its answer.
    #[tokio::test]
    async fn connections_that_send_no_whole_head_in_time_are_closed() {
        use std::time::{Duration, Instant};
        let started = Arc::new(tokio::sync::Notify::new());
        let begun = started.clone();
        let app = axum::Router::new().route(
            "/slow",
            axum::routing::get(move || async move {
                begun.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shut, shutdown) = tokio::sync::oneshot::channel::<()>();
        let timeout = Duration::from_millis(400);
        let caps = Arc::new(ConnectionCaps::default());
        let server = tokio::spawn(serve_connections(listener, app, (timeout, Duration::from_secs(10)), caps, async {
            let _ = shutdown.await;
        }));
        let closed_after = |mut conn: tokio::net::TcpStream| async move {
            let start = Instant::now();
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest))
                .await
                .expect("the server kept the connection open")
                .ok();
            (start.elapsed(), String::from_utf8_lossy(&rest).into_owned())
        };
        let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"POST /slow HTTP/1.1\r\nhost: t\r\n").await.unwrap();
        let (took, _) = closed_after(partial).await;
        assert!(took >= timeout / 2, "closed before the timeout: {took:?}");

        let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
        let (_, reply) = closed_after(kept).await;
        assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("done"), "{reply}");
        // The `kept` request's start was noted (`notify_one` keeps one).
        started.notified().await;

        let mut in_flight = tokio::net::TcpStream::connect(addr).await.unwrap();
        in_flight.write_all(b"GET /slow HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").await.unwrap();
        // Shut down once its handler runs (a fixed pause could come before
        // its head was read, and the idle connection would just be closed).
        started.notified().await;
        shut.send(()).unwrap();
        let (_, reply) = closed_after(in_flight).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "a request in flight at shutdown: {reply}");
        tokio::time::timeout(Duration::from_secs(10), server).await.expect("shutdown").unwrap();
    }

    /// `app` served on a loopback port with `timeouts` and the default caps
    /// until told to stop: its address, the stop, and the server.
    async fn serve_until_told(
        app: axum::Router,
        timeouts: (std::time::Duration, std::time::Duration),
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shut, shutdown) = tokio::sync::oneshot::channel::<()>();
        let caps = Arc::new(ConnectionCaps::default());
        let server = tokio::spawn(serve_connections(listener, app, timeouts, caps, async {
            let _ = shutdown.await;
        }));
        (addr, shut, server)
    }

    /// A client holds at most `per_client` connections and the server at
    /// most `total`: one past a cap is closed at once, the ones held still
    /// answer, and a slot comes back when its connection closes.
    #[tokio::test]
    async fn connections_past_a_cap_are_closed_at_once() {
        use std::time::Duration;
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let caps = Arc::new(ConnectionCaps::new(1000, 3));
        let timeouts = (Duration::from_secs(10), Duration::from_secs(10));
        let server = tokio::spawn(serve_connections(listener, app, timeouts, caps.clone(), std::future::pending()));
        let ask = |mut conn: tokio::net::TcpStream| async move {
            conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n").await.ok();
            let mut buf = [0u8; 256];
            let n =
                tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await.expect("an answer or a close");
            (conn, String::from_utf8_lossy(&buf[..n.unwrap_or(0)]).into_owned())
        };
        let mut held = vec![];
        for i in 0..3 {
            let (conn, reply) = ask(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
            assert!(reply.starts_with("HTTP/1.1 200"), "connection {i}: {reply}");
            held.push(conn);
        }
        let (_, reply) = ask(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
        assert_eq!(reply, "", "a fourth connection from one client");
        // The held ones still answer (kept alive).
        let (conn, reply) = ask(held.pop().unwrap()).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        drop(conn);
        // Its slot comes back once the server has seen it close.
        let mut again = String::new();
        for _ in 0..100 {
            again = ask(tokio::net::TcpStream::connect(addr).await.unwrap()).await.1;
            if !again.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(again.starts_with("HTTP/1.1 200"), "{again}");
        server.abort();

        // The total, across clients.
        let caps = ConnectionCaps::new(2, 2);
        let caps = Arc::new(caps);
        let a = caps.admit("192.0.2.1".parse().unwrap()).expect("one");
        let _b = caps.admit("2001:db8::1".parse().unwrap()).expect("two");
        assert!(caps.admit("198.51.100.1".parse().unwrap()).is_none(), "a third, from a third client");
        drop(a);
        assert!(caps.admit("198.51.100.1".parse().unwrap()).is_some());
        // An IPv6 /64 is one client.
        let caps = Arc::new(ConnectionCaps::new(10, 1));
        let _c = caps.admit("2001:db8:1:2::1".parse().unwrap()).expect("one");
        assert!(caps.admit("2001:db8:1:2::99".parse().unwrap()).is_none());
        assert!(caps.admit("2001:db8:1:3::1".parse().unwrap()).is_some());
    }

    /// A request whose client hangs up before the answer runs to its end (a
    /// flow is never cut off between two writes), also when the server is
    /// told to stop meanwhile, and a password hash it had queued is
    /// skipped: nobody would read its answer.
    #[tokio::test]
    async fn a_request_whose_client_hangs_up_runs_to_its_end() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::Duration;
        let finished = Arc::new(AtomicBool::new(false));
        let (started_tx, started) =
            tokio::sync::mpsc::unbounded_channel::<Option<latchkey_core::password_hasher::Caller>>();
        let done = finished.clone();
        let app = axum::Router::new().route(
            "/write-twice",
            axum::routing::post(move || async move {
                // The first write; then the client goes; then the second.
                let _ = started_tx.send(latchkey_core::password_hasher::Caller::current());
                tokio::time::sleep(Duration::from_millis(300)).await;
                done.store(true, Ordering::SeqCst);
                "both written"
            }),
        );
        let (addr, shut, server) = serve_until_told(app, (Duration::from_secs(10), Duration::from_secs(10))).await;
        let mut started = started;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"POST /write-twice HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        let caller = tokio::time::timeout(Duration::from_secs(10), started.recv()).await.expect("the handler ran");
        let caller = caller.expect("sent").expect("the request runs as a caller");
        drop(conn);
        // Told to stop while the request runs on for nobody: the server
        // returns (and its runtime may end) only once the request has ended.
        let _ = shut.send(());
        tokio::time::timeout(Duration::from_secs(10), server).await.expect("the server stopped").unwrap();
        assert!(
            finished.load(Ordering::SeqCst),
            "the request was cut off: its client hung up, then the server stopped"
        );
        assert!(caller.is_gone(), "the request's hashes would still run for nobody");
    }

    /// A client that asks for a large response and stops reading it: once
    /// the server's writes have waited the stall limit, the connection is
    /// closed, so the client never gets the rest; one that reads gets it.
    #[tokio::test]
    async fn a_client_that_stops_reading_is_let_go() {
        use std::time::Duration;
        const BIG: usize = 16 << 20;
        let app = axum::Router::new().route("/big", axum::routing::get(|| async { vec![b'x'; BIG] }));
        let (addr, shut, server) = serve_until_told(app, (Duration::from_secs(10), Duration::from_millis(300))).await;
        let fetch = |pause: Duration| async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let mut conn = socket.connect(addr).await.unwrap();
            conn.write_all(b"GET /big HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").await.unwrap();
            tokio::time::sleep(pause).await;
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut got)).await.expect("closed");
            got.len()
        };
        assert!(fetch(Duration::ZERO).await > BIG, "a client that reads gets it all");
        assert!(fetch(Duration::from_secs(2)).await < BIG, "a client that stopped reading got it all");
        shut.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server).await.expect("shutdown").unwrap();
    }
}
