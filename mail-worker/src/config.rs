//! The worker's configuration, parsed once at start-up. Terraform sets
//! exactly these variables on the Lambda; every missing or bad one is named
//! in one error.

/// Every variable the worker reads.
pub const CONFIG_KEYS: &[&str] = &[
    "LATCHKEY_TABLE_PREFIX",
    "LATCHKEY_MAIL_QUEUE_URL",
    "LATCHKEY_MAIL_DLQ_URL",
    "LATCHKEY_SES_FROM",
    "LATCHKEY_SES_CONFIGURATION_SET",
    "LATCHKEY_SES_MAX_SEND_RATE",
    "PUBLIC_BASE_URL",
];

/// SES's default production send rate; set the account's real one.
pub const DEFAULT_MAX_SEND_RATE: f64 = 14.0;

/// The slowest send rate the worker takes: one mail in about 17 minutes.
/// Below it the wait for a send slot is no longer a time a deadline can
/// be compared with.
pub const MIN_SEND_RATE: f64 = 0.001;

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// The ledger table is `{table_prefix}-mail-ledger`.
    pub table_prefix: String,
    /// The mail queue: needed by the poller and `dlq redrive`; the Lambda
    /// (whose event source mapping reads the queue) uses it to show a record
    /// left for redelivery again after a short backoff (without it, such a
    /// record waits the queue's visibility timeout).
    pub queue_url: Option<String>,
    pub dlq_url: String,
    /// A mailbox on an SES-verified identity, `Name <addr>` or `addr`.
    pub ses_from: String,
    pub ses_configuration_set: Option<String>,
    /// Sends per second, per instance (the SES account's maximum send rate
    /// divided by the SQS mapping's maximum concurrency,
    /// `worker_max_concurrency` in Terraform).
    pub max_send_rate: f64,
    /// Links in mail are built from this, never from a request.
    pub public_base_url: String,
}

/// Everything wrong with the environment, one line per variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid mail worker configuration:\n{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl WorkerConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let mut errs = Vec::new();
        let mut required = |k: &str| {
            get(k).unwrap_or_else(|| {
                errs.push(format!("{k}: required"));
                String::new()
            })
        };
        let table_prefix = required("LATCHKEY_TABLE_PREFIX");
        let dlq_url = required("LATCHKEY_MAIL_DLQ_URL");
        let ses_from = required("LATCHKEY_SES_FROM");
        let public_base_url = required("PUBLIC_BASE_URL");
        let max_send_rate = match get("LATCHKEY_SES_MAX_SEND_RATE") {
            None => DEFAULT_MAX_SEND_RATE,
            Some(v) => match v.parse::<f64>() {
                Ok(r) if r.is_finite() && r >= MIN_SEND_RATE => r,
                _ => {
                    errs.push(format!(
                        "LATCHKEY_SES_MAX_SEND_RATE: {v:?} is not a number of sends per second from {MIN_SEND_RATE}"
                    ));
                    DEFAULT_MAX_SEND_RATE
                }
            },
        };
        if let Some(problem) =
            latchkey_core::config::public_base_url_problem(&public_base_url).filter(|_| !public_base_url.is_empty())
        {
            errs.push(format!("PUBLIC_BASE_URL: {problem} (got {public_base_url:?})"));
        }
        if !ses_from.is_empty() && !ses_from.contains('@') {
            errs.push("LATCHKEY_SES_FROM: not a mailbox (expected `Name <addr>` or `addr`)".to_string());
        }
        if !errs.is_empty() {
            return Err(ConfigError(errs));
        }
        Ok(WorkerConfig {
            table_prefix,
            queue_url: get("LATCHKEY_MAIL_QUEUE_URL"),
            dlq_url,
            ses_from,
            ses_configuration_set: get("LATCHKEY_SES_CONFIGURATION_SET"),
            max_send_rate,
            public_base_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<WorkerConfig, ConfigError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        WorkerConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn names_every_problem_at_once() {
        let e = parse(&[("LATCHKEY_SES_MAX_SEND_RATE", "fast")]).unwrap_err();
        let text = e.to_string();
        for k in [
            "LATCHKEY_TABLE_PREFIX",
            "LATCHKEY_MAIL_DLQ_URL",
            "LATCHKEY_SES_FROM",
            "PUBLIC_BASE_URL",
            "LATCHKEY_SES_MAX_SEND_RATE",
        ] {
            assert!(text.contains(k), "{k} missing from {text}");
        }
    }

    #[test]
    fn the_send_rate_has_a_floor() {
        for bad in ["0", "-1", "0.0009", "1e-20", "NaN", "inf"] {
            let e = parse(&[("LATCHKEY_SES_MAX_SEND_RATE", bad)]).unwrap_err().to_string();
            assert!(e.contains("LATCHKEY_SES_MAX_SEND_RATE") && e.contains("from 0.001"), "{bad}: {e}");
        }
        let ok = |v: &str| {
            let e = parse(&[("LATCHKEY_SES_MAX_SEND_RATE", v)]).unwrap_err().to_string();
            !e.contains("LATCHKEY_SES_MAX_SEND_RATE")
        };
        assert!(ok("0.001") && ok("14"), "the floor itself and SES's default rate are taken");
    }

    #[test]
    fn parses_a_full_environment() {
        let c = parse(&[
            ("LATCHKEY_TABLE_PREFIX", "prod"),
            ("LATCHKEY_MAIL_DLQ_URL", "https://sqs/dlq"),
            ("LATCHKEY_SES_FROM", "latchkey <noreply@example.com>"),
            ("LATCHKEY_SES_CONFIGURATION_SET", ""),
            ("LATCHKEY_SES_MAX_SEND_RATE", "2.5"),
            ("PUBLIC_BASE_URL", "https://auth.example.com"),
        ])
        .unwrap();
        assert_eq!(c.max_send_rate, 2.5);
        assert_eq!(c.ses_configuration_set, None);
        assert_eq!(c.queue_url, None);
        for k in CONFIG_KEYS {
            assert!(k.starts_with("LATCHKEY_") || *k == "PUBLIC_BASE_URL");
        }
    }
}
