//! Checks terraform/*.tf against the code, without Terraform or an AWS
//! account: the HCL is parsed with hcl-rs, and expressions that only use
//! variable defaults and locals are evaluated with hcl-rs's evaluator.
//!
//! What is compared: the tables against `latchkey_core::tables::ALL`, the
//! queues and redrive against core's names and `MAIL_MAX_RECEIVE_COUNT`, each
//! function's environment against the config keys its code reads, the SQS
//! visibility against the worker's timeout, the event source mappings'
//! failure handling and the mail ledger stream's filter (core's audited
//! states), the worker's batch size against its send rate and timeout, the
//! api's memory against its hashing threads' argon2 memory, the stream
//! processor's log retention against the audit retention, and IAM
//! statements for `*`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use hcl::eval::{Context, Evaluate};
use hcl::expr::TraversalOperator;
use hcl::{Block, Body, Expression, ObjectKey, Value};
use latchkey_core::config::CONFIG_KEYS;
use latchkey_core::mail::delivery::ledger_state;
use latchkey_core::tables::{self, TableSpec};
use latchkey_tests::terraform::{
    Terraform, attr, blocks, eval, eval_bool_or_false, eval_i64, eval_str, literal_strings, one_block, reference,
};

/// Keys of `CONFIG_KEYS` the api does not get on Lambda, and why.
const API_KEYS_NOT_ON_LAMBDA: &[&str] = &[
    // Embedded (SQLite) backend only; Lambda runs LATCHKEY_BACKEND=aws.
    "LATCHKEY_DATA_DIR",
    // lambda_http receives events from the Runtime API; no socket is bound
    // and no threads serve HTTP.
    "LATCHKEY_BIND",
    "LATCHKEY_HTTP_THREADS",
    // The audit seal key is the stream processor's alone: the api reads the
    // trail and must not be able to re-seal it.
    AUDIT_KEY.0,
    AUDIT_KEY.1,
];

/// The stream processor's secret, read like the api's (`<KEY>_PARAM`).
const AUDIT_KEY: (&str, &str) = ("LATCHKEY_AUDIT_KEY", "LATCHKEY_AUDIT_KEY_PARAM");

/// Secrets never go into Lambda's environment: the api gets the name of an
/// SSM SecureString parameter instead (`<KEY>_PARAM`) and reads it at cold
/// start.
const SECRET_KEYS: &[(&str, &str)] = &[
    ("LATCHKEY_JWT_PRIVATE_KEY", "LATCHKEY_JWT_PRIVATE_KEY_PARAM"),
    ("LATCHKEY_JWT_STANDBY_KEY", "LATCHKEY_JWT_STANDBY_KEY_PARAM"),
    ("LATCHKEY_CODE_HMAC_KEY", "LATCHKEY_CODE_HMAC_KEY_PARAM"),
    ("LATCHKEY_ADMIN_KEY_HASH", "LATCHKEY_ADMIN_KEY_HASH_PARAM"),
];

/// The variables the mail-worker reads: its own list, the one its config
/// parser walks.
const WORKER_CONFIG_KEYS: &[&str] = latchkey_mail_worker::config::CONFIG_KEYS;

/// The variables the stream-processor reads.
const PROCESSOR_CONFIG_KEYS: &[&str] =
    &["LATCHKEY_TABLE_PREFIX", "LATCHKEY_AUDIT_RETENTION_DAYS", AUDIT_KEY.1, "LATCHKEY_AUDIT_KEY_VERSION"];

/// Read by all three functions where they load their AWS configuration
/// (core's `aws_calls::lambda_sdk_config`), outside their config parsers.
const LAMBDA_AWS_KEYS: &[&str] = &[latchkey_core::adapters::aws_calls::TLS_ROOTS_VAR];

/// IAM statements that may name Resource "*", because the action has no
/// resource-level permissions: (sid, exact set of actions).
const WILDCARD_RESOURCE_ALLOWED: &[(&str, &[&str])] = &[
    ("XRayTraces", &["xray:PutTelemetryRecords", "xray:PutTraceSegments"]),
    ("ListStreams", &["dynamodb:ListStreams"]),
];

/// Function name suffixes (after `{prefix}-`) and the zip directory
/// (cargo-lambda names it after the binary).
const API_FN: (&str, &str) = ("api", "latchkey-api");
const WORKER_FN: (&str, &str) = ("mail-worker", "latchkey-mail-worker");
const PROCESSOR_FN: (&str, &str) = ("stream-processor", "latchkey-stream-processor");

/// `<name>` of `data.aws_iam_policy_document.<name>.json`.
fn policy_document_name(e: &Expression) -> Option<String> {
    let Expression::Traversal(t) = e else { return None };
    let Expression::Variable(root) = &t.expr else { return None };
    match t.operators.as_slice() {
        [TraversalOperator::GetAttr(ty), TraversalOperator::GetAttr(name), TraversalOperator::GetAttr(json)]
            if root.as_str() == "data" && ty.as_str() == "aws_iam_policy_document" && json.as_str() == "json" =>
        {
            Some(name.as_str().to_string())
        }
        _ => None,
    }
}

fn object_keys(e: &Expression, what: &str) -> BTreeMap<String, Expression> {
    let Expression::Object(o) = e else { panic!("{what}: expected an object literal") };
    o.iter()
        .map(|(k, v)| {
            let k = match k {
                ObjectKey::Identifier(id) => id.as_str().to_string(),
                ObjectKey::Expression(Expression::String(s)) => s.clone(),
                other => panic!("{what}: unexpected key {other:?}"),
            };
            (k, v.clone())
        })
        .collect()
}

// ------------------------------------------------------------------ lookups

fn prefix(ctx: &Context) -> String {
    "var.name_prefix"
        .parse::<Expression>()
        .expect("parse")
        .evaluate(ctx)
        .expect("var.name_prefix has a default")
        .as_str()
        .expect("var.name_prefix is a string")
        .to_string()
}

/// The `aws_lambda_function` whose name is `{prefix}-{suffix}`: (label, body).
fn function<'a>(tf: &'a Terraform, ctx: &Context, suffix: &str) -> (&'a str, &'a Body) {
    let want = format!("{}-{suffix}", prefix(ctx));
    let found: Vec<_> = tf
        .resources("aws_lambda_function")
        .filter(|(n, b)| eval_str(ctx, b, "function_name", &format!("aws_lambda_function.{n}")) == want)
        .collect();
    assert_eq!(found.len(), 1, "expected one aws_lambda_function named {want}");
    found[0]
}

fn function_env(body: &Body, what: &str) -> BTreeMap<String, Expression> {
    let env = one_block(body, "environment", what);
    object_keys(attr(env, "variables").unwrap_or_else(|| panic!("{what}: environment.variables unset")), what)
}

/// The `aws_sqs_queue` whose name is `{prefix}-{suffix}`: (label, body).
fn queue<'a>(tf: &'a Terraform, ctx: &Context, suffix: &str) -> (&'a str, &'a Body) {
    let want = tables::queue_name(&prefix(ctx), suffix);
    let found: Vec<_> = tf
        .resources("aws_sqs_queue")
        .filter(|(n, b)| eval_str(ctx, b, "name", &format!("aws_sqs_queue.{n}")) == want)
        .collect();
    assert_eq!(found.len(), 1, "expected one aws_sqs_queue named {want}");
    found[0]
}

fn tables_by_name<'a>(tf: &'a Terraform, ctx: &Context) -> BTreeMap<String, (&'a str, &'a Body)> {
    tf.resources("aws_dynamodb_table")
        .map(|(n, b)| (eval_str(ctx, b, "name", &format!("aws_dynamodb_table.{n}")), (n, b)))
        .collect()
}

/// The value of key `key` in the object passed to `jsonencode(...)`.
fn jsonencoded_field<'a>(e: &'a Expression, key: &str, what: &str) -> &'a Expression {
    let Expression::FuncCall(f) = e else { panic!("{what}: expected jsonencode({{...}})") };
    assert_eq!(f.name.name.as_str(), "jsonencode", "{what}");
    let Some(Expression::Object(o)) = f.args.first() else { panic!("{what}: jsonencode of a non-object") };
    o.iter()
        .find(|(k, _)| matches!(k, ObjectKey::Identifier(id) if id.as_str() == key))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{what}: no `{key}`"))
}

// ------------------------------------------------------------------ tests

#[test]
fn tables_are_exactly_cores_specs() {
    let tf = Terraform::load();
    let ctx = tf.context(&[]);
    let prefix = prefix(&ctx);
    let by_name = tables_by_name(&tf, &ctx);

    let expected: BTreeSet<String> = tables::ALL.iter().map(|s| tables::table_name(&prefix, s)).collect();
    let actual: BTreeSet<String> = by_name.keys().cloned().collect();
    assert_eq!(actual, expected, "terraform's tables differ from latchkey_core::tables::ALL");

    for spec in tables::ALL {
        let name = tables::table_name(&prefix, spec);
        let (label, t) = by_name[&name];
        let what = format!("aws_dynamodb_table.{label} ({name})");
        check_table(&ctx, t, spec, &what);
    }
}

fn check_table(ctx: &Context, t: &Body, spec: &TableSpec, what: &str) {
    assert_eq!(eval_str(ctx, t, "billing_mode", what), "PAY_PER_REQUEST", "{what}: on-demand billing");
    assert_eq!(eval_str(ctx, t, "hash_key", what), spec.hash_key, "{what}: hash key");
    let range_key = attr(t, "range_key").map(|_| eval_str(ctx, t, "range_key", what));
    assert_eq!(range_key.as_deref(), spec.range_key, "{what}: sort key");

    // Attribute definitions: exactly the key attributes, all strings.
    let mut want_attrs: BTreeSet<String> = [spec.hash_key.to_string()].into();
    want_attrs.extend(spec.range_key.map(str::to_string));
    want_attrs.extend(spec.gsis.iter().map(|g| g.hash_key.to_string()));
    let mut got_attrs = BTreeSet::new();
    for a in blocks(t, "attribute") {
        got_attrs.insert(eval_str(ctx, a.body(), "name", what));
        assert_eq!(eval_str(ctx, a.body(), "type", what), "S", "{what}: key attributes are strings");
    }
    assert_eq!(got_attrs, want_attrs, "{what}: attribute definitions");

    // GSIs: name, hash key, projection ALL.
    let want_gsis: BTreeSet<(String, String)> =
        spec.gsis.iter().map(|g| (g.name.to_string(), g.hash_key.to_string())).collect();
    let mut got_gsis = BTreeSet::new();
    for g in blocks(t, "global_secondary_index") {
        let gw = format!("{what} GSI");
        assert_eq!(eval_str(ctx, g.body(), "projection_type", &gw), "ALL", "{gw}: projection");
        assert!(attr(g.body(), "range_key").is_none(), "{gw}: core's GSIs have no sort key");
        got_gsis.insert((eval_str(ctx, g.body(), "name", &gw), eval_str(ctx, g.body(), "hash_key", &gw)));
    }
    assert_eq!(got_gsis, want_gsis, "{what}: GSIs (name, hash key)");

    // TTL.
    let ttls: Vec<&Block> = blocks(t, "ttl").collect();
    match spec.ttl_attribute {
        Some(want) => {
            assert_eq!(ttls.len(), 1, "{what}: expected a ttl block on `{want}`");
            assert_eq!(eval_str(ctx, ttls[0].body(), "attribute_name", what), want, "{what}: TTL attribute");
            assert!(eval_bool_or_false(ctx, ttls[0].body(), "enabled", what), "{what}: TTL must be enabled");
        }
        None => assert!(
            ttls.iter().all(|b| !eval_bool_or_false(ctx, b.body(), "enabled", what)),
            "{what}: core defines no TTL for this table"
        ),
    }

    // Streams.
    assert_eq!(eval_bool_or_false(ctx, t, "stream_enabled", what), spec.stream, "{what}: stream_enabled");
    if spec.stream {
        assert_eq!(eval_str(ctx, t, "stream_view_type", what), "NEW_AND_OLD_IMAGES", "{what}: stream view");
    }

    // Durability and encryption.
    assert!(eval_bool_or_false(ctx, one_block(t, "point_in_time_recovery", what), "enabled", what), "{what}: PITR");
    assert!(eval_bool_or_false(ctx, one_block(t, "server_side_encryption", what), "enabled", what), "{what}: SSE");
    assert!(
        attr(t, "deletion_protection_enabled").is_some(),
        "{what}: deletion protection must be set (from a variable)"
    );
}

#[test]
fn mail_queues_match_core_and_redrive_after_max_receive_count() {
    let tf = Terraform::load();
    let ctx = tf.context(&[]);
    let (_, mail) = queue(&tf, &ctx, tables::MAIL_QUEUE);
    let (dlq_label, dlq) = queue(&tf, &ctx, tables::MAIL_DLQ);

    let redrive = attr(mail, "redrive_policy").expect("mail queue: redrive_policy");
    let count_expr = jsonencoded_field(redrive, "maxReceiveCount", "mail queue redrive_policy");
    let count =
        count_expr.evaluate(&ctx).expect("maxReceiveCount evaluates").as_u64().expect("maxReceiveCount is a number");
    assert_eq!(
        count,
        u64::from(tables::MAIL_MAX_RECEIVE_COUNT),
        "maxReceiveCount must equal core's MAIL_MAX_RECEIVE_COUNT"
    );
    assert!(count >= 5, "maxReceiveCount must be at least 5 (got {count})");
    let target = jsonencoded_field(redrive, "deadLetterTargetArn", "mail queue redrive_policy");
    assert_eq!(
        reference(target),
        Some(("aws_sqs_queue".into(), dlq_label.into(), "arn".into())),
        "the mail queue must redrive into the mail DLQ"
    );

    assert_eq!(
        eval_i64(&ctx, dlq, "message_retention_seconds", "mail DLQ"),
        14 * 24 * 3600,
        "DLQ keeps messages 14 days"
    );

    for (n, q) in tf.resources("aws_sqs_queue") {
        assert!(
            attr(q, "kms_master_key_id").is_some() || attr(q, "sqs_managed_sse_enabled").is_some(),
            "aws_sqs_queue.{n}: must be encrypted"
        );
    }
}

#[test]
fn mail_visibility_timeout_is_at_least_six_worker_timeouts() {
    let tf = Terraform::load();
    // With the defaults, and with the largest and smallest worker timeouts
    // the variable allows: the relation must hold by construction, not by a
    // lucky pair of numbers.
    for timeout in [None, Some(280), Some(14)] {
        let overrides: Vec<(&str, Value)> =
            timeout.map(|t| ("worker_timeout_seconds", Value::from(t))).into_iter().collect();
        let ctx = tf.context(&overrides);
        let (_, worker) = function(&tf, &ctx, WORKER_FN.0);
        let (_, mail) = queue(&tf, &ctx, tables::MAIL_QUEUE);
        let worker_timeout = eval_i64(&ctx, worker, "timeout", "mail-worker");
        let visibility = eval_i64(&ctx, mail, "visibility_timeout_seconds", "mail queue");
        assert!(
            visibility >= 6 * worker_timeout,
            "mail queue visibility {visibility}s < 6 x worker timeout {worker_timeout}s (worker_timeout_seconds = {timeout:?})"
        );
    }
}

#[test]
fn functions_get_the_config_keys_their_code_reads() {
    let tf = Terraform::load();
    let ctx = tf.context(&[]);

    // The lists above must stay in step with core.
    let secrets: BTreeSet<&str> = SECRET_KEYS.iter().map(|(k, _)| *k).chain([AUDIT_KEY.0]).collect();
    for k in API_KEYS_NOT_ON_LAMBDA.iter().chain(&secrets) {
        assert!(CONFIG_KEYS.contains(k), "{k} is no longer in latchkey_core::config::CONFIG_KEYS: update this test");
    }

    let (_, api) = function(&tf, &ctx, API_FN.0);
    let api_env = function_env(api, "api");
    for key in CONFIG_KEYS.iter().filter(|k| !API_KEYS_NOT_ON_LAMBDA.contains(k)) {
        let key = SECRET_KEYS.iter().find(|(k, _)| k == key).map_or(*key, |(_, param)| *param);
        assert!(api_env.contains_key(key), "api: environment lacks {key}");
    }
    let backend = api_env["LATCHKEY_BACKEND"].evaluate(&ctx).expect("LATCHKEY_BACKEND evaluates");
    assert_eq!(backend.as_str(), Some("aws"), "api: LATCHKEY_BACKEND must be aws on Lambda");
    // The parameter names come from the SSM parameters themselves (the two
    // JWT key slots' by `jwt_signing_slot`: see the rotation test).
    for (_, param) in SECRET_KEYS.iter().filter(|(k, _)| !k.starts_with("LATCHKEY_JWT_")) {
        let r = reference(&api_env[*param]);
        assert!(
            matches!(&r, Some((ty, _, field)) if ty == "aws_ssm_parameter" && field == "name"),
            "api: {param} must be an aws_ssm_parameter's name, got {r:?}"
        );
    }

    for ((suffix, _), keys) in [(WORKER_FN, WORKER_CONFIG_KEYS), (PROCESSOR_FN, PROCESSOR_CONFIG_KEYS)] {
        let (_, f) = function(&tf, &ctx, suffix);
        let env = function_env(f, suffix);
        for key in keys {
            assert!(env.contains_key(*key), "{suffix}: environment lacks {key}");
        }
    }
    let (_, processor) = function(&tf, &ctx, PROCESSOR_FN.0);
    // Raising a rotation number changes the configuration of the function
    // that reads those secrets at cold start, so no warm instance keeps the
    // old ones.
    for (env, key, version) in [
        (&api_env, "LATCHKEY_SECRETS_VERSION", "secrets_version"),
        (&api_env, "LATCHKEY_JWT_KEY_VERSION", "jwt_key_version"),
        (&api_env, "LATCHKEY_JWT_KEY_B_VERSION", "jwt_key_b_version"),
        (&api_env, "LATCHKEY_ADMIN_KEY_HASH_VERSION", "admin_key_hash_version"),
        (&function_env(processor, PROCESSOR_FN.0), "LATCHKEY_AUDIT_KEY_VERSION", "audit_seal_key_version"),
    ] {
        assert_eq!(env[key].to_string(), format!("tostring(var.{version})"), "{key}");
    }
    let r = reference(&function_env(processor, PROCESSOR_FN.0)[AUDIT_KEY.1]);
    assert!(
        matches!(&r, Some((ty, _, field)) if ty == "aws_ssm_parameter" && field == "name"),
        "stream-processor: {} must be an aws_ssm_parameter's name, got {r:?}",
        AUDIT_KEY.1
    );
    for (suffix, _) in [API_FN, WORKER_FN, PROCESSOR_FN] {
        let (_, f) = function(&tf, &ctx, suffix);
        let env = function_env(f, suffix);
        for key in LAMBDA_AWS_KEYS {
            assert!(env.contains_key(*key), "{suffix}: environment lacks {key}");
        }
    }

    // No function carries a secret in plain environment.
    for (n, f) in tf.resources("aws_lambda_function") {
        for block in blocks(f, "environment") {
            if let Some(vars) = attr(block.body(), "variables") {
                for key in object_keys(vars, n).keys() {
                    assert!(
                        !secrets.contains(key.as_str()),
                        "aws_lambda_function.{n}: secret {key} in plain environment"
                    );
                }
            }
        }
    }
}

#[test]
fn functions_are_arm64_al2023_from_the_packaged_zips() {
    let tf = Terraform::load();
    let ctx = tf.context(&[]);
    for (suffix, bin) in [API_FN, WORKER_FN, PROCESSOR_FN] {
        let (n, f) = function(&tf, &ctx, suffix);
        let what = format!("aws_lambda_function.{n}");
        assert_eq!(eval_str(&ctx, f, "runtime", &what), "provided.al2023", "{what}: runtime");
        let arch = eval(&ctx, f, "architectures", &what);
        assert_eq!(arch, Value::Array(vec![Value::from("arm64")]), "{what}: architectures");
        let filename = attr(f, "filename").unwrap_or_else(|| panic!("{what}: filename"));
        let text = hcl::format::to_string(filename).expect("format filename");
        assert!(
            text.ends_with(&format!("/{bin}/bootstrap.zip\"")),
            "{what}: filename must be <zip dir>/{bin}/bootstrap.zip, got {text}"
        );
        // A new zip must redeploy: the hash is of that same file.
        let hash = attr(f, "source_code_hash").unwrap_or_else(|| panic!("{what}: source_code_hash"));
        let hash = hcl::format::to_string(hash).expect("format source_code_hash");
        assert_eq!(hash, format!("filebase64sha256({text})"), "{what}: source_code_hash must hash the deployed zip");
        assert_eq!(
            one_block(f, "tracing_config", &what).attributes().find(|a| a.key() == "mode").map(|a| a.expr().clone()),
            Some(Expression::String("Active".into())),
            "{what}: X-Ray tracing"
        );
    }
    let (_, api) = function(&tf, &ctx, API_FN.0);
    let memory = eval_i64(&ctx, api, "memory_size", "api");
    assert!(memory >= 1024, "api: memory_size {memory} < 1024 MB (argon2id is CPU-bound; CPU scales with memory)");
}

#[test]
fn event_source_mappings_report_failures_and_streams_give_up_finitely() {
    let tf = Terraform::load();
    let ctx = tf.context(&[]);
    let (worker_label, _) = function(&tf, &ctx, WORKER_FN.0);
    let (processor_label, _) = function(&tf, &ctx, PROCESSOR_FN.0);
    let (mail_label, _) = queue(&tf, &ctx, tables::MAIL_QUEUE);
    let by_name = tables_by_name(&tf, &ctx);

    let mappings: Vec<(&str, &Body)> = tf.resources("aws_lambda_event_source_mapping").collect();
    let mut streamed_tables = BTreeSet::new();
    let mut sqs_mappings = 0;
    for (n, m) in &mappings {
        let what = format!("aws_lambda_event_source_mapping.{n}");
        let types = literal_strings(
            attr(m, "function_response_types").unwrap_or_else(|| panic!("{what}: function_response_types")),
            &what,
        );
        assert!(types.iter().any(|t| t == "ReportBatchItemFailures"), "{what}: must report batch item failures");

        let source = reference(attr(m, "event_source_arn").unwrap_or_else(|| panic!("{what}: event_source_arn")))
            .unwrap_or_else(|| panic!("{what}: event_source_arn must reference a resource"));
        let target = reference(attr(m, "function_name").unwrap_or_else(|| panic!("{what}: function_name")));
        match (source.0.as_str(), source.2.as_str()) {
            ("aws_sqs_queue", _) => {
                assert_eq!(source.1, mail_label, "{what}: the SQS mapping reads the mail queue");
                assert_eq!(target.map(|t| t.1), Some(worker_label.to_string()), "{what}: feeds the mail-worker");
                let window = eval_i64(&ctx, m, "maximum_batching_window_in_seconds", &what);
                assert!(window > 0, "{what}: needs a batching window (got {window})");
                sqs_mappings += 1;
            }
            ("aws_dynamodb_table", "stream_arn") => {
                assert_eq!(
                    target.map(|t| t.1),
                    Some(processor_label.to_string()),
                    "{what}: feeds the stream-processor"
                );
                assert!(
                    eval_bool_or_false(&ctx, m, "bisect_batch_on_function_error", &what),
                    "{what}: must bisect on error"
                );
                let retries = eval_i64(&ctx, m, "maximum_retry_attempts", &what);
                assert!(
                    (0..=10_000).contains(&retries),
                    "{what}: maximum_retry_attempts must be finite (got {retries})"
                );
                let age = eval_i64(&ctx, m, "maximum_record_age_in_seconds", &what);
                assert!(
                    (60..=604_800).contains(&age),
                    "{what}: maximum_record_age_in_seconds must be finite (got {age})"
                );
                let dest = one_block(one_block(m, "destination_config", &what), "on_failure", &what);
                let d = reference(
                    attr(dest, "destination_arn").unwrap_or_else(|| panic!("{what}: on_failure.destination_arn")),
                );
                assert!(
                    matches!(&d, Some((ty, _, f)) if ty == "aws_sqs_queue" && f == "arn"),
                    "{what}: on-failure destination must be an SQS queue, got {d:?}"
                );
                streamed_tables.insert(source.1.clone());
            }
            other => panic!("{what}: unexpected event source {other:?}"),
        }
    }
    assert_eq!(sqs_mappings, 1, "expected exactly one SQS mapping (mail queue -> mail-worker)");

    let want: BTreeSet<String> = tables::ALL
        .iter()
        .filter(|s| s.stream)
        .map(|s| {
            let name = tables::table_name(&prefix(&ctx), s);
            by_name.get(&name).unwrap_or_else(|| panic!("no table {name}")).0.to_string()
        })
        .collect();
    assert_eq!(
        streamed_tables, want,
        "each table core streams (and only those) needs a mapping to the stream-processor"
    );
}

/// The mail ledger's stream mapping filters in exactly the states the audit
/// trail has an event for (`ledger_state::AUDITED`, as the embedded change
/// feed does); no other mapping filters anything.
#[test]
fn only_audited_mail_outcomes_reach_the_stream_processor() {
    let tf = Terraform::load();
    let ctx = tf.context(&[]);
    let ledger_name = tables::table_name(&prefix(&ctx), &tables::MAIL_LEDGER);
    let ledger = tables_by_name(&tf, &ctx).get(&ledger_name).unwrap_or_else(|| panic!("no table {ledger_name}")).0;
    let mut seen = 0;
    for (n, m) in tf.resources("aws_lambda_event_source_mapping") {
        let what = format!("aws_lambda_event_source_mapping.{n}");
        let filters: Vec<&Body> =
            blocks(m, "filter_criteria").flat_map(|c| blocks(c.body(), "filter")).map(Block::body).collect();
        let source = attr(m, "event_source_arn").and_then(reference);
        if !matches!(&source, Some((ty, label, _)) if ty == "aws_dynamodb_table" && label == ledger) {
            assert!(filters.is_empty(), "{what}: filters out records its function needs");
            continue;
        }
        seen += 1;
        let [filter] = filters.as_slice() else { panic!("{what}: expected one filter, got {}", filters.len()) };
        let pattern = attr(filter, "pattern").unwrap_or_else(|| panic!("{what}: filter without a pattern"));
        let Expression::FuncCall(f) = pattern else { panic!("{what}: pattern must be jsonencode({{...}})") };
        assert_eq!((f.name.name.as_str(), f.args.len()), ("jsonencode", 1), "{what}");
        let value = f.args[0].evaluate(&ctx).unwrap_or_else(|e| panic!("{what}: pattern does not evaluate: {e}"));
        assert_eq!(
            serde_json::to_value(&value).unwrap(),
            serde_json::json!({ "dynamodb": { "NewImage": { "state": { "S": ledger_state::AUDITED } } } }),
            "{what}: the filter must pass the audited ledger states and only those"
        );
    }
    assert_eq!(seen, 1, "expected one mapping of the mail ledger's stream");
}

#[test]
fn iam_statements_name_actions_and_resources() {
    let tf = Terraform::load();

    // Every policy on a role or key comes from an aws_iam_policy_document, so
    // the scan below sees all of them; remember which documents are key
    // policies (where Resource "*" means "this key").
    let mut key_policies = BTreeSet::new();
    for (ty, key) in [
        ("aws_iam_role", "assume_role_policy"),
        ("aws_iam_role_policy", "policy"),
        ("aws_iam_policy", "policy"),
        ("aws_kms_key", "policy"),
        ("aws_sqs_queue_policy", "policy"),
        ("aws_sns_topic_policy", "policy"),
    ] {
        for (n, b) in tf.resources(ty) {
            let Some(e) = attr(b, key) else { continue };
            let doc = policy_document_name(e).unwrap_or_else(|| {
                panic!("{ty}.{n}.{key} must be data.aws_iam_policy_document.<name>.json, got {e:?}")
            });
            if ty == "aws_kms_key" {
                key_policies.insert(doc);
            }
        }
    }
    let attachments: Vec<&str> = tf.resources("aws_iam_role_policy_attachment").map(|(n, _)| n).collect();
    assert!(
        attachments.is_empty(),
        "managed policy attachments are not checked here; use inline policy documents: {attachments:?}"
    );

    let docs: Vec<(&str, &Body)> = tf.of_kind("data", "aws_iam_policy_document").collect();
    assert!(!docs.is_empty(), "no aws_iam_policy_document found");
    let mut wildcard_sids_seen = BTreeSet::new();
    for (doc, body) in docs {
        for s in blocks(body, "statement") {
            let s = s.body();
            let sid = attr(s, "sid").map(|e| match e {
                Expression::String(x) => x.clone(),
                other => panic!("data.aws_iam_policy_document.{doc}: sid must be a literal, got {other:?}"),
            });
            let what = format!("data.aws_iam_policy_document.{doc} statement {}", sid.as_deref().unwrap_or("(no sid)"));
            for forbidden in ["not_actions", "not_resources"] {
                assert!(attr(s, forbidden).is_none(), "{what}: {forbidden} is too broad to review");
            }
            let actions = literal_strings(attr(s, "actions").unwrap_or_else(|| panic!("{what}: actions")), &what);
            for a in &actions {
                assert!(a != "*" && !a.starts_with("*:"), "{what}: action {a:?}");
                if !key_policies.contains(doc) {
                    assert!(!a.ends_with(":*"), "{what}: action {a:?} grants a whole service");
                }
            }
            let Some(resources) = attr(s, "resources") else {
                // Trust policies have principals, no resources.
                assert!(blocks(s, "principals").next().is_some(), "{what}: no resources and no principals");
                continue;
            };
            let Expression::Array(items) = resources else { panic!("{what}: resources must be a literal list") };
            let wildcard = items.iter().any(|r| matches!(r, Expression::String(x) if x == "*"));
            if !wildcard || key_policies.contains(doc) {
                continue;
            }
            let sid =
                sid.unwrap_or_else(|| panic!("{what}: Resource \"*\" needs a sid listed in WILDCARD_RESOURCE_ALLOWED"));
            let allowed = WILDCARD_RESOURCE_ALLOWED
                .iter()
                .find(|(s, _)| *s == sid)
                .unwrap_or_else(|| panic!("{what}: Resource \"*\" is not whitelisted"));
            let got: BTreeSet<&str> = actions.iter().map(String::as_str).collect();
            let want: BTreeSet<&str> = allowed.1.iter().copied().collect();
            assert_eq!(got, want, "{what}: Resource \"*\" is whitelisted only for exactly these actions");
            wildcard_sids_seen.insert(sid);
        }
    }
    // The whitelist has no stale entries.
    for (sid, _) in WILDCARD_RESOURCE_ALLOWED {
        assert!(wildcard_sids_seen.contains(*sid), "WILDCARD_RESOURCE_ALLOWED lists {sid}, which no statement uses");
    }
}

/// The audit seal key's parameter is readable by the stream processor's
/// role and no other: the api reads the trail and must not be able to
/// re-seal it.
#[test]
fn only_the_stream_processor_may_read_the_audit_seal_key() {
    let tf = Terraform::load();
    let ctx = tf.context(&[]);
    let (_, processor) = function(&tf, &ctx, PROCESSOR_FN.0);
    let Some((_, label, _)) = reference(&function_env(processor, PROCESSOR_FN.0)[AUDIT_KEY.1]) else {
        panic!("stream-processor: {} must reference an SSM parameter", AUDIT_KEY.1)
    };
    let arn = format!("aws_ssm_parameter.{label}.arn");
    let readers: Vec<&str> = tf
        .of_kind("data", "aws_iam_policy_document")
        .filter(|(_, body)| hcl::format::to_string(*body).expect("format policy").contains(&arn))
        .map(|(doc, _)| doc)
        .collect();
    let role_policy = tf
        .resources("aws_iam_role_policy")
        .find(|(_, b)| {
            let role = attr(b, "role").and_then(reference);
            let (_, role_of_fn, _) =
                reference(attr(processor, "role").expect("stream-processor: role")).expect("a role");
            role.is_some_and(|(_, l, _)| l == role_of_fn)
        })
        .map(|(_, b)| policy_document_name(attr(b, "policy").expect("policy")).expect("a policy document"))
        .expect("the stream processor's role policy");
    assert_eq!(readers, [role_policy.as_str()], "policy documents granting {arn}");
}

/// The stream processor writes to the users table only to release the
/// claims of an account the TTL deleted as unverified: DeleteItem, on
/// partition keys with the claims' prefixes (core's), and nothing else.
#[test]
fn the_stream_processor_may_delete_only_claims_from_the_users_table() {
    use latchkey_core::adapters::dynamo::items::{email_claim_pk, username_claim_pk};
    let tf = Terraform::load();
    let doc = tf.policy_document("stream_processor");
    let on_users = |s: &Body| {
        let Some(Expression::Array(items)) = attr(s, "resources") else { return false };
        items
            .iter()
            .filter_map(reference)
            .any(|(kind, name, field)| kind == "aws_dynamodb_table" && name == "users" && field != "stream_arn")
    };
    let statements: Vec<&Body> = blocks(doc, "statement").map(Block::body).filter(|s| on_users(s)).collect();
    assert_eq!(statements.len(), 1, "statements on the users table (its stream aside)");
    let s = statements[0];
    let what = "stream_processor's statement on the users table";
    assert_eq!(literal_strings(attr(s, "actions").expect("actions"), what), ["dynamodb:DeleteItem"]);
    let Some(Expression::Array(resources)) = attr(s, "resources") else { panic!("{what}: resources") };
    assert_eq!(resources.len(), 1, "{what}: the table itself, no index");
    let conditions: Vec<&Body> = blocks(s, "condition").map(Block::body).collect();
    assert_eq!(conditions.len(), 1, "{what}: one condition");
    let c = conditions[0];
    let text = |key: &str| match attr(c, key) {
        Some(Expression::String(x)) => x.clone(),
        other => panic!("{what}: condition {key} must be a literal, got {other:?}"),
    };
    assert_eq!((text("test").as_str(), text("variable").as_str()), ("ForAllValues:StringLike", "dynamodb:LeadingKeys"));
    let values: BTreeSet<String> = literal_strings(attr(c, "values").expect("values"), what).into_iter().collect();
    let claims: BTreeSet<String> = [username_claim_pk("*"), email_claim_pk("*")].into_iter().collect();
    assert_eq!(values, claims, "{what}: the claims' key prefixes");
}

/// A role that calls a table encrypted with a customer managed key needs
/// `kms:Decrypt` and `kms:GenerateDataKey` on that key through DynamoDB (the
/// key policy delegates to IAM); without them every call on the table is
/// refused with "KMS key access denied". The emulators do not enforce KMS,
/// so this is checked here: every policy document that grants DynamoDB
/// actions grants the key through `dynamodb.<region>` too.
#[test]
fn roles_that_use_tables_may_use_the_table_key_through_dynamodb() {
    let tf = Terraform::load();
    let keys: BTreeSet<String> = tf
        .resources("aws_dynamodb_table")
        .map(|(n, t)| {
            let sse = one_block(t, "server_side_encryption", n);
            attr(sse, "kms_key_arn").map(|e| e.to_string()).unwrap_or_else(|| panic!("table {n}: no kms_key_arn"))
        })
        .collect();
    assert_eq!(keys.len(), 1, "the tables use one key: {keys:?}");
    let key = keys.into_iter().next().expect("one key");
    let mut checked = 0;
    for (doc, body) in tf.of_kind("data", "aws_iam_policy_document") {
        let statements: Vec<String> =
            blocks(body, "statement").map(|s| hcl::to_string(s.body()).expect("statement as HCL")).collect();
        if !statements.iter().any(|s| s.contains("\"dynamodb:")) {
            continue;
        }
        let via_dynamodb = statements.iter().any(|s| {
            s.contains("\"kms:Decrypt\"")
                && s.contains("\"kms:GenerateDataKey\"")
                && s.contains(&key)
                && s.contains("kms:ViaService")
                && s.contains("dynamodb.${var.region}.amazonaws.com")
        });
        assert!(via_dynamodb, "data.aws_iam_policy_document.{doc} uses tables but not their key {key} via DynamoDB");
        checked += 1;
    }
    assert!(checked >= 3, "api, mail worker and stream processor all use tables; {checked} documents checked");
}

/// The JWT key is written again when either `secrets_version` (with the
/// code HMAC key) or `jwt_key_version` (alone) is raised, and at the
/// version it had before `jwt_key_version` existed while that is 1; the
/// replaced key's `x` reaches the api as given, empty by default.
#[test]
fn the_jwt_key_rotates_alone_with_its_own_version_and_overlap() {
    let tf = Terraform::load();
    let param =
        |name: &str| tf.resources("aws_ssm_parameter").find(|(n, _)| *n == name).unwrap_or_else(|| panic!("{name}")).1;
    let versions = |secrets: i64, jwt: i64| {
        let ctx = tf.context(&[("secrets_version", Value::from(secrets)), ("jwt_key_version", Value::from(jwt))]);
        let of = |name: &str| eval_i64(&ctx, param(name), "value_wo_version", name);
        (of("jwt_private_key"), of("code_hmac_key"))
    };
    assert_eq!(versions(1, 1), (1, 1));
    assert_eq!(versions(3, 1), (3, 3), "unchanged for a stack made before jwt_key_version");
    let (jwt, hmac) = versions(3, 2);
    assert!(jwt > versions(3, 1).0 && hmac == 3, "jwt_key_version rotates the JWT key alone");
    let (jwt, hmac) = versions(4, 2);
    assert!(jwt > versions(3, 2).0 && hmac == 4, "secrets_version rotates both");

    let key = latchkey_core::keys::SigningKey::generate().expect("key");
    let x = key.jwk()["x"].as_str().expect("x").to_string();
    for (given, expected) in [(None, ""), (Some(x.as_str()), x.as_str())] {
        let overrides: Vec<(&str, Value)> =
            given.map(|x| ("jwt_previous_public_key", Value::from(x))).into_iter().collect();
        let ctx = tf.context(&overrides);
        let (_, api) = function(&tf, &ctx, API_FN.0);
        let v = function_env(api, "api")["LATCHKEY_JWT_PREVIOUS_PUBLIC_KEY"].evaluate(&ctx).expect("evaluates");
        assert_eq!(v.as_str(), Some(expected));
    }
    assert!(variable_accepts(&tf, "jwt_previous_public_key", Value::from(x.as_str())));
    assert!(variable_accepts(&tf, "jwt_previous_public_key", Value::from("")));
    // The whole JWK, the private key, a padded key, a last character
    // with bits past the key's 256 (which the api's decoding refuses):
    // refused.
    let last = x.as_bytes()[42];
    let stray_bits = format!("{}{}", &x[..42], if last == b'8' { '9' } else { (last + 1) as char });
    assert!(latchkey_core::keys::VerifyingKey::from_jwk_x(&stray_bits).is_err(), "{stray_bits}");
    for bad in [key.jwk().to_string(), key.to_base64(), format!("{x}="), stray_bits] {
        assert!(!variable_accepts(&tf, "jwt_previous_public_key", Value::from(bad.as_str())), "{bad}");
    }
    // Terraform's list of small-order keys is the api's: 7 points, each
    // with either sign, all refused by the api as such, and by Terraform.
    let probe: Body = hcl::from_str("v = local.jwt_small_order_keys").expect("probe");
    let small: Vec<String> = match eval(&tf.context(&[]), &probe, "v", "local.jwt_small_order_keys") {
        Value::Array(keys) => keys.iter().map(|k| k.as_str().expect("a string").to_string()).collect(),
        other => panic!("local.jwt_small_order_keys: {other:?}"),
    };
    assert_eq!(small.iter().collect::<BTreeSet<_>>().len(), 14, "{small:?}");
    for k in &small {
        let e = latchkey_core::keys::VerifyingKey::from_jwk_x(k).expect_err(k);
        assert!(e.contains("small order"), "{k}: {e}");
        assert!(!variable_accepts(&tf, "jwt_previous_public_key", Value::from(k.as_str())), "{k}");
    }
    for (v, ok) in [(1, true), (7, true), (0, false)] {
        assert_eq!(variable_accepts(&tf, "jwt_key_version", Value::from(v)), ok, "jwt_key_version = {v}");
    }
    assert!(!variable_accepts(&tf, "jwt_key_version", Value::from(1.5)));
}

/// The two JWT key slots: each slot's parameter is written when its own
/// number (or `secrets_version`) changes; `jwt_signing_slot` gives the api
/// one slot to sign with and the other as its standby, never the same one,
/// and the api's role may read both.
#[test]
fn the_jwt_key_slots_sign_and_stand_by_by_jwt_signing_slot() {
    let tf = Terraform::load();
    let param =
        |name: &str| tf.resources("aws_ssm_parameter").find(|(n, _)| *n == name).unwrap_or_else(|| panic!("{name}")).1;
    let versions = |secrets: i64, a: i64, b: i64| {
        let ctx = tf.context(&[
            ("secrets_version", Value::from(secrets)),
            ("jwt_key_version", Value::from(a)),
            ("jwt_key_b_version", Value::from(b)),
        ]);
        let of = |name: &str| eval_i64(&ctx, param(name), "value_wo_version", name);
        (of("jwt_private_key"), of("jwt_private_key_b"))
    };
    let first = versions(1, 1, 1);
    let (a, b) = versions(1, 2, 1);
    assert!(a > first.0 && b == first.1, "jwt_key_version writes slot a alone");
    let (a, b) = versions(1, 1, 2);
    assert!(a == first.0 && b > first.1, "jwt_key_b_version writes slot b alone");
    let (a, b) = versions(2, 1, 1);
    assert!(a > first.0 && b > first.1, "secrets_version writes both");
    // A key of one's own per slot, and one generator each: an apply that
    // writes both never gives them one key.
    let given = tf.context(&[("jwt_private_key", Value::from("key-a")), ("jwt_private_key_b", Value::from("key-b"))]);
    let value = |label: &str| eval_str(&given, param(label), "value_wo", label);
    assert_eq!((value("jwt_private_key"), value("jwt_private_key_b")), ("key-a".into(), "key-b".into()));
    let generated = |label: &str| {
        let e = attr(param(label), "value_wo").expect("value_wo").to_string();
        e.rsplit("local.").next().expect("a local").to_string()
    };
    assert_ne!(generated("jwt_private_key"), generated("jwt_private_key_b"));

    for (slot, signing, standby) in
        [("a", "jwt_private_key", "jwt_private_key_b"), ("b", "jwt_private_key_b", "jwt_private_key")]
    {
        let mut ctx = tf.context(&[("jwt_signing_slot", Value::from(slot))]);
        let names: hcl::Map<String, Value> = tf
            .resources("aws_ssm_parameter")
            .map(|(label, body)| {
                let name = eval_str(&ctx, body, "name", label);
                (label.to_string(), Value::Object(hcl::Map::from_iter([("name".to_string(), Value::from(name))])))
            })
            .collect();
        let name_of = |label: &str| match &names[label] {
            Value::Object(o) => o["name"].as_str().expect("a name").to_string(),
            other => panic!("{other:?}"),
        };
        ctx.declare_var("aws_ssm_parameter", Value::Object(names.clone()));
        let (_, api) = function(&tf, &ctx, API_FN.0);
        let env = function_env(api, "api");
        let got = |key: &str| {
            let v = env[key].evaluate(&ctx).unwrap_or_else(|e| panic!("{key}: {e}"));
            v.as_str().unwrap_or_else(|| panic!("{key}: {v:?}")).to_string()
        };
        assert_eq!(got("LATCHKEY_JWT_PRIVATE_KEY_PARAM"), name_of(signing), "slot {slot} signs");
        assert_eq!(got("LATCHKEY_JWT_STANDBY_KEY_PARAM"), name_of(standby), "the other stands by");
        assert_ne!(name_of(signing), name_of(standby));
    }
    for (v, ok) in [("a", true), ("b", true), ("c", false), ("A", false), ("", false)] {
        assert_eq!(variable_accepts(&tf, "jwt_signing_slot", Value::from(v)), ok, "jwt_signing_slot = {v:?}");
    }
    for (v, ok) in [(Value::from(1), true), (Value::from(7), true), (Value::from(0), false), (Value::from(1.5), false)]
    {
        assert_eq!(variable_accepts(&tf, "jwt_key_b_version", v.clone()), ok, "jwt_key_b_version = {v:?}");
    }

    let read_secrets = blocks(tf.policy_document("api"), "statement")
        .find(|st| attr(st.body(), "sid").map(|e| e.to_string()) == Some("\"ReadSecretsAtColdStart\"".into()))
        .expect("the api's ReadSecretsAtColdStart statement");
    let Some(Expression::Array(resources)) = attr(read_secrets.body(), "resources") else {
        panic!("ReadSecretsAtColdStart: resources is not a list")
    };
    let readable: BTreeSet<String> = resources.iter().filter_map(reference).map(|(_, label, _)| label).collect();
    for slot in ["jwt_private_key", "jwt_private_key_b"] {
        assert!(readable.contains(slot), "the api may not read aws_ssm_parameter.{slot}: {readable:?}");
    }
}

/// The refresh retry grace reaches the api as the code reads it, off by
/// default as in the code, and its variable refuses what the api's
/// configuration refuses (0..=60, whole).
#[test]
fn the_refresh_retry_grace_is_the_apis_and_in_its_range() {
    let tf = Terraform::load();
    let code_default = latchkey_core::config::Config::from_lookup(|_| None).expect("defaults").policy;
    assert_eq!(code_default.refresh_retry_grace_secs, 0);
    for (given, expected) in [(None, "0"), (Some(30), "30"), (Some(60), "60")] {
        let overrides: Vec<(&str, Value)> =
            given.map(|v| ("refresh_retry_grace_secs", Value::from(v))).into_iter().collect();
        let mut ctx = tf.context(&overrides);
        declare_functions(&mut ctx);
        let (_, api) = function(&tf, &ctx, API_FN.0);
        let v = function_env(api, "api")["LATCHKEY_REFRESH_RETRY_GRACE_SECS"].evaluate(&ctx).expect("evaluates");
        assert_eq!(v.as_str(), Some(expected));
        let lookup = |k: &str| (k == "LATCHKEY_REFRESH_RETRY_GRACE_SECS").then(|| expected.to_string());
        let policy = latchkey_core::config::Config::from_lookup(lookup).expect("the api takes it").policy;
        assert_eq!(policy.refresh_retry_grace_secs.to_string(), expected);
    }
    for (v, ok) in [(Value::from(0), true), (Value::from(60), true), (Value::from(-1), false), (Value::from(61), false)]
    {
        assert_eq!(variable_accepts(&tf, "refresh_retry_grace_secs", v.clone()), ok, "{v:?}");
    }
    assert!(!variable_accepts(&tf, "refresh_retry_grace_secs", Value::from(1.5)));
}

/// The public base URL is a host at the site's root, as the api's own
/// check wants it (the pages' forms and cookies are at `/`): a path is
/// refused at plan, not at every start.
#[test]
fn the_public_base_url_is_a_host_at_the_root() {
    let tf = Terraform::load();
    for (url, ok) in [
        ("https://auth.example.com", true),
        ("https://auth.example.com:8443", true),
        ("https://auth.example.com/", false),
        ("https://auth.example.com/base", false),
        ("https://auth.example.com?x=1", false),
        ("http://auth.example.com", false),
    ] {
        assert_eq!(variable_accepts(&tf, "public_base_url", Value::from(url)), ok, "{url}");
        if ok {
            assert_eq!(latchkey_core::config::public_base_url_problem(url), None, "{url}");
        }
    }
}

/// Every number variable that reaches a binary or AWS as a whole number
/// (a count, a size, a time, argon2's parameters) refuses a fraction at
/// plan: deployed as "2.5", the binaries' parse of it fails at every start.
/// The rates and alarm thresholds, fractions where they go, are the only
/// exceptions; each whole one accepts its default and refuses it plus 0.5.
#[test]
fn whole_number_variables_refuse_fractions() {
    const FRACTIONS: &[&str] = &[
        "ses_max_send_rate",
        "api_throttle_rate_limit",
        "api_auth_throttle_rate_limit",
        "iterator_age_alarm_ms",
        "api_5xx_alarm_threshold",
    ];
    let tf = Terraform::load();
    let numbers: Vec<(String, f64)> = tf
        .blocks
        .iter()
        .map(|(_, b)| b)
        .filter(|b| b.identifier() == "variable")
        .filter(|b| attr(b.body(), "type").map(ToString::to_string).as_deref() == Some("number"))
        .map(|b| {
            let name = b.labels()[0].as_str().to_string();
            let default = attr(b.body(), "default").and_then(|d| d.to_string().parse::<f64>().ok());
            (name.clone(), default.unwrap_or_else(|| panic!("{name}: a number default")))
        })
        .collect();
    assert!(numbers.len() >= 30, "{numbers:?}");
    assert!(
        FRACTIONS.iter().all(|f| numbers.iter().any(|(n, _)| n == f)),
        "{FRACTIONS:?} are not all number variables"
    );
    for (name, default) in numbers.iter().filter(|(n, _)| !FRACTIONS.contains(&n.as_str())) {
        assert!(variable_accepts(&tf, name, Value::from(*default)), "{name} refuses its default {default}");
        assert!(!variable_accepts(&tf, name, Value::from(default + 0.5)), "{name} accepts {}", default + 0.5);
    }
}

/// The body of `variable "<name>"`.
fn variable<'a>(tf: &'a Terraform, name: &str) -> &'a Body {
    tf.blocks
        .iter()
        .map(|(_, b)| b)
        .find(|b| b.identifier() == "variable" && b.labels()[0].as_str() == name)
        .unwrap_or_else(|| panic!("variable {name}"))
        .body()
}

/// The validation condition of `variable "<name>"`, evaluated with `value`.
fn variable_accepts(tf: &Terraform, name: &str, value: Value) -> bool {
    variable_accepts_with(tf, name, &[(name, value)])
}

/// The validation conditions of `variable "<name>"`, evaluated with the
/// variables in `overrides` (which may include others: a condition may
/// reference other variables and locals since Terraform 1.9).
fn variable_accepts_with(tf: &Terraform, name: &str, overrides: &[(&str, Value)]) -> bool {
    let mut ctx = tf.context(overrides);
    declare_functions(&mut ctx);
    blocks(variable(tf, name), "validation").all(|v| eval(&ctx, v.body(), "condition", name) == Value::Bool(true))
}

/// The Terraform functions our validations and settings call: `floor`,
/// `ceil`, `tostring` (of a number, a string or a bool), `contains`, and
/// `regex(pattern, string)` under `can(...)`, the form they use it in: `regex` fails where nothing matches and `can` turns a
/// failure into false. hcl-rs evaluates a function's arguments before the
/// function, so here `regex` gives null for no match and `can` is whether
/// its argument is not null. The pattern runs on the `regex` crate, whose
/// syntax is RE2's, as Go's `regexp` under Terraform is.
fn declare_functions(ctx: &mut hcl::eval::Context) {
    use hcl::eval::{FuncArgs, FuncDef, ParamType};
    ctx.declare_func("floor", FuncDef::builder().param(ParamType::Number).build(floor));
    let ceil = |args: FuncArgs| -> Result<Value, String> {
        let n = args[0].as_f64().ok_or("ceil of a non-number")?;
        Ok(Value::from(n.ceil() as i64))
    };
    ctx.declare_func("ceil", FuncDef::builder().param(ParamType::Number).build(ceil));
    let tostring = |args: FuncArgs| -> Result<Value, String> {
        match &args[0] {
            Value::String(s) => Ok(Value::from(s.as_str())),
            Value::Number(n) => Ok(Value::from(n.to_string())),
            Value::Bool(b) => Ok(Value::from(b.to_string())),
            other => Err(format!("tostring: not a primitive: {other:?}")),
        }
    };
    ctx.declare_func("tostring", FuncDef::builder().param(ParamType::Any).build(tostring));
    let matched = |args: FuncArgs| -> Result<Value, String> {
        let (pattern, text) = (args[0].as_str().unwrap_or_default(), args[1].as_str().unwrap_or_default());
        let re = regex::Regex::new(pattern).map_err(|e| format!("regex: {e}"))?;
        Ok(re.find(text).map_or(Value::Null, |m| Value::from(m.as_str())))
    };
    ctx.declare_func("regex", FuncDef::builder().params([ParamType::String, ParamType::String]).build(matched));
    let can = |args: FuncArgs| -> Result<Value, String> { Ok(Value::Bool(!args[0].is_null())) };
    ctx.declare_func("can", FuncDef::builder().param(ParamType::Any).build(can));
    let contains = |args: FuncArgs| -> Result<Value, String> {
        let list = args[0].as_array().ok_or("contains: not a list")?;
        Ok(Value::Bool(list.contains(&args[1])))
    };
    ctx.declare_func("contains", FuncDef::builder().params([ParamType::Any, ParamType::Any]).build(contains));
}

/// In the SES sandbox (every new account) SES authorises a send on each
/// recipient's identity as well as the sender's: the worker's SendEmail
/// statement names every identity of the account, and its From condition
/// keeps the one sender.
#[test]
fn the_worker_may_send_to_sandbox_recipients_as_the_configured_sender_only() {
    let tf = Terraform::load();
    let doc = tf.policy_document("mail_worker");
    let sends: Vec<&Body> = blocks(doc, "statement")
        .map(Block::body)
        .filter(|s| attr(s, "actions").is_some_and(|a| literal_strings(a, "actions").contains(&"ses:SendEmail".into())))
        .collect();
    assert_eq!(sends.len(), 1, "mail_worker statements granting ses:SendEmail");
    let Some(Expression::Array(resources)) = attr(sends[0], "resources") else { panic!("resources") };
    let resources: Vec<String> = resources.iter().map(ToString::to_string).collect();
    let every_identity = "\"arn:${local.partition}:ses:${var.region}:${local.account_id}:identity/*\"";
    assert!(resources.iter().any(|r| r == every_identity), "{resources:?}");
    let conditions: Vec<&Body> = blocks(sends[0], "condition").map(Block::body).collect();
    assert_eq!(conditions.len(), 1, "one condition");
    let text = |key: &str| {
        attr(conditions[0], key).map(ToString::to_string).unwrap_or_default().split_whitespace().collect::<String>()
    };
    assert_eq!(
        (text("test").as_str(), text("variable").as_str(), text("values").as_str()),
        ("\"StringEquals\"", "\"ses:FromAddress\"", "[var.ses_from_address]")
    );
}

/// AWS refuses an SQS mapping of more than 10 records a batch without a
/// batching window of at least a second, so the variables do too.
#[test]
fn a_batch_over_ten_needs_a_batching_window() {
    let tf = Terraform::load();
    let with = |batch: i64, window: i64| {
        [("worker_batch_size", Value::from(batch)), ("worker_batch_window_seconds", Value::from(window))]
    };
    for (batch, window, accepted) in [(10, 0, true), (11, 0, false), (20, 0, false), (11, 1, true), (20, 20, true)] {
        assert_eq!(
            variable_accepts_with(&tf, "worker_batch_window_seconds", &with(batch, window)),
            accepted,
            "batch {batch}, window {window} s"
        );
    }
}

/// The routes under the stage's tighter auth limits are the router's
/// (api/src/lib.rs): every POST route but those that check only a 256-bit
/// link or token or end a session, and the admin API's routes (they check
/// the admin key), with their HEAD (which axum answers with the GET
/// handler: its status alone tells a right key from a wrong one). A route
/// the router does not have, or a credential or mail-sending route left to
/// the stage's default limits, fails.
#[test]
fn the_auth_throttle_covers_every_credential_and_mail_route_of_the_router() {
    const DEFAULT_LIMITS: &[&str] =
        &["POST /v1/verify-email", "POST /verify-email", "POST /v1/token/refresh", "POST /v1/logout", "POST /logout"];
    let router = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../api/src/lib.rs"))
        .expect("read api/src/lib.rs");
    let mut routes = BTreeSet::new();
    for line in router.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
        let path = line[".route(\"".len()..].split('"').next().expect("a quoted path");
        for (method, call) in [("GET", "get("), ("HEAD", "get("), ("POST", "post(")] {
            if line.contains(call) {
                routes.insert(format!("{method} {path}"));
            }
        }
    }
    assert!(routes.len() >= 40 && routes.contains("POST /v1/login"), "router routes read: {routes:?}");
    let tf = Terraform::load();
    let locals = tf.blocks.iter().filter(|(_, b)| b.identifier() == "locals").map(|(_, b)| b.body());
    let expr = locals.filter_map(|b| attr(b, "api_auth_routes")).next().expect("local.api_auth_routes");
    let Expression::FuncCall(f) = expr else { panic!("local.api_auth_routes: expected toset([...])") };
    assert_eq!((f.name.to_string().as_str(), f.args.len()), ("toset", 1), "local.api_auth_routes");
    let throttled: BTreeSet<String> = literal_strings(&f.args[0], "local.api_auth_routes").into_iter().collect();
    let expected: BTreeSet<String> = routes
        .iter()
        .filter(|r| {
            (r.starts_with("POST ") && !DEFAULT_LIMITS.contains(&r.as_str()))
                || r.starts_with("GET /v1/admin/")
                || r.starts_with("HEAD /v1/admin/")
        })
        .cloned()
        .collect();
    assert!(DEFAULT_LIMITS.iter().all(|r| routes.contains(*r)), "{DEFAULT_LIMITS:?} are not all routes");
    assert_eq!(throttled, expected, "local.api_auth_routes against the router");
    let (_, route) = tf.resources("aws_apigatewayv2_route").find(|(n, _)| *n == "app").expect("route app");
    assert_eq!(attr(route, "for_each").map(ToString::to_string).as_deref(), Some("local.api_auth_routes"));
}

/// A mail delivery ends within the ledger's claim lease: the worker's
/// timeout may not reach `LEASE_SECS`, or a duplicate SQS delivery could
/// claim a job that is still being sent and send it twice.
#[test]
fn worker_timeout_stays_within_the_mail_ledger_lease() {
    use latchkey_core::mail::delivery::LEASE_SECS;
    let tf = Terraform::load();
    assert!(variable_accepts(&tf, "worker_timeout_seconds", Value::from(LEASE_SECS - 20)));
    for t in [LEASE_SECS, LEASE_SECS + 1, 900] {
        assert!(!variable_accepts(&tf, "worker_timeout_seconds", Value::from(t)), "a {t} s timeout is accepted");
    }
}

/// A worker that dies mid-send leaves its ledger claim for `LEASE_SECS`;
/// each redelivery within it is answered "busy" and spends one of the
/// queue's receives. The receives must outlast the lease, or the job is
/// parked unsent. The claim is taken at the latest a batching window plus
/// a timeout after the first receive (the last job of a batch), so
/// (maxReceiveCount - 1) x visibility >= window + timeout + LEASE_SECS,
/// for the least and the largest timeout the variable accepts with no
/// window and with the largest; and one second less fails it.
#[test]
fn the_mail_queues_redeliveries_outlast_a_dead_workers_claim() {
    use latchkey_core::mail::delivery::LEASE_SECS;
    let tf = Terraform::load();
    let accepts = |t: i64| variable_accepts(&tf, "worker_timeout_seconds", Value::from(t));
    let least = (1..=60).find(|t| accepts(*t)).expect("a timeout under a minute is accepted");
    assert!(!accepts(least - 1));
    let windows = (0..=60).filter(|w| variable_accepts(&tf, "worker_batch_window_seconds", Value::from(*w)));
    let largest_window = windows.max().expect("some batching window is accepted");
    let receives = i64::from(tables::MAIL_MAX_RECEIVE_COUNT);
    let margin = |t: i64, w: i64| {
        let ctx =
            tf.context(&[("worker_timeout_seconds", Value::from(t)), ("worker_batch_window_seconds", Value::from(w))]);
        let (_, mail) = queue(&tf, &ctx, tables::MAIL_QUEUE);
        let visibility = eval_i64(&ctx, mail, "visibility_timeout_seconds", "mail queue");
        (receives - 1) * visibility - (w + t + LEASE_SECS)
    };
    for t in [least, 280] {
        for w in [0, largest_window] {
            assert!(margin(t, w) >= 0, "timeout {t}s, window {w}s: the last receive comes within the lease");
        }
    }
    assert!(margin(least - 1, 0) < 0, "the least timeout is not the bound: {}s would do", least - 1);
}

/// By default every function reserves its concurrency (the worker exactly
/// its mapping's maximum, so SQS never invokes into a throttle); on an
/// account that cannot reserve any (a concurrency quota of 10) each can be
/// left unreserved, and the worker's mapping still caps it.
#[test]
fn each_function_reserves_its_concurrency_unless_told_not_to() {
    let tf = Terraform::load();
    let reserved = |ctx: &Context| {
        [API_FN, WORKER_FN, PROCESSOR_FN].map(|f| {
            let (name, body) = function(&tf, ctx, f.0);
            eval_i64(ctx, body, "reserved_concurrent_executions", name)
        })
    };
    let mapping = || {
        let worker = tf.resources("aws_lambda_event_source_mapping").find(|(_, m)| {
            attr(m, "function_name").is_some_and(|e| e.to_string().contains("aws_lambda_function.mail_worker"))
        });
        let (_, m) = worker.expect("the mail worker's mapping");
        let scaling = blocks(m, "scaling_config").next().expect("scaling_config");
        scaling.body().clone()
    };
    let defaults = tf.context(&[]);
    let cap = eval_i64(&defaults, &mapping(), "maximum_concurrency", "the worker's mapping");
    let [api, worker, processor] = reserved(&defaults);
    assert!(api >= 1 && processor >= 1, "api {api}, processor {processor}");
    assert_eq!(worker, cap, "the worker reserves its mapping's maximum concurrency");

    let unreserved =
        [("api_reserved_concurrency", Value::from(-1)), ("processor_reserved_concurrency", Value::from(-1))];
    for (name, value) in &unreserved {
        assert!(variable_accepts(&tf, name, value.clone()), "{name} = -1 is refused");
    }
    let quota_10 =
        tf.context(&[unreserved[0].clone(), unreserved[1].clone(), ("worker_reserve_concurrency", Value::Bool(false))]);
    assert_eq!(reserved(&quota_10), [-1, -1, -1]);
    assert_eq!(eval_i64(&quota_10, &mapping(), "maximum_concurrency", "the worker's mapping"), cap);
    assert!(!variable_accepts(&tf, "processor_reserved_concurrency", Value::from(0)));
}

/// The worker's send rate is per instance, so Terraform gives each instance
/// its share of the account's rate: together they stay within the quota.
#[test]
fn worker_send_rate_is_the_accounts_rate_shared_by_the_instances() {
    let tf = Terraform::load();
    let ctx = tf.context(&[]);
    let (_, worker) = function(&tf, &ctx, WORKER_FN.0);
    let env = function_env(worker, "mail-worker");
    let rate = env.get("LATCHKEY_SES_MAX_SEND_RATE").expect("LATCHKEY_SES_MAX_SEND_RATE").to_string();
    assert_eq!(rate, "tostring(local.worker_instance_send_rate)");
    for (account, instances) in [(1.0, 2), (14.0, 7), (50.0, 10)] {
        let ctx = tf.context(&[
            ("ses_max_send_rate", Value::from(account)),
            ("worker_max_concurrency", Value::from(instances)),
        ]);
        let probe: Body = hcl::from_str("rate = local.worker_instance_send_rate").expect("probe");
        let got = eval(&ctx, &probe, "rate", "local.worker_instance_send_rate").as_f64().expect("a number");
        assert!((got * f64::from(instances) - account).abs() < 1e-9, "{instances} x {got}/s != {account}/s");
    }
}

/// Terraform's `floor`, for evaluating error messages.
fn floor(args: hcl::eval::FuncArgs) -> Result<Value, String> {
    let n = args[0].as_f64().ok_or("floor of a non-number")?;
    Ok(Value::from(n.floor() as i64))
}

/// A worker instance sends at most its share of the account's rate
/// (`local.worker_instance_send_rate`) and starts no send in the last
/// moments of its invocation (the handler's answer margin, the deliverer's
/// reserve, `MIN_SEND_WINDOW`). Records of a batch larger than rate x
/// (timeout - margin) run out of time before a send attempt, on every
/// receive, and end in the DLQ unsent: `worker_batch_size` refuses such a
/// batch, naming the numbers, and its default is not one.
#[test]
fn worker_batches_fit_the_send_rate_and_timeout() {
    use latchkey_core::mail::delivery::{MIN_SEND_WINDOW, RetryPolicy};
    let tf = Terraform::load();
    let ctx = tf.context(&[]);
    let local = |name: &str| {
        let probe: Body = hcl::from_str(&format!("v = local.{name}")).expect("probe");
        eval(&ctx, &probe, "v", &format!("local.{name}"))
    };

    // The margin Terraform assumes covers the code's.
    let margin = local("worker_send_margin_seconds").as_i64().expect("a whole number of seconds");
    let code_margin = latchkey_mail_worker::ANSWER_MARGIN + RetryPolicy::default().reserve + MIN_SEND_WINDOW;
    assert!(
        std::time::Duration::from_secs(margin.unsigned_abs()) >= code_margin,
        "local.worker_send_margin_seconds ({margin} s) is less than the worker's {code_margin:?}"
    );

    // The check exists, on the batch size, and reads the right numbers.
    let var = variable(&tf, "worker_batch_size");
    let checks: Vec<&Body> = blocks(var, "validation")
        .map(Block::body)
        .filter(|v| attr(v, "condition").is_some_and(|c| c.to_string().contains("local.worker_instance_send_rate")))
        .collect();
    let [check] = checks.as_slice() else { panic!("worker_batch_size: expected one validation against the send rate") };
    let condition = attr(check, "condition").expect("condition").to_string();
    for reference in [
        "var.worker_batch_size",
        "local.worker_instance_send_rate",
        "var.worker_timeout_seconds",
        "local.worker_send_margin_seconds",
    ] {
        assert!(condition.contains(reference), "the batch check does not read {reference}: {condition}");
    }
    let rate_expr = tf
        .blocks
        .iter()
        .filter(|(_, b)| b.identifier() == "locals")
        .find_map(|(_, b)| attr(b.body(), "worker_instance_send_rate"))
        .expect("local.worker_instance_send_rate")
        .to_string();
    assert_eq!(rate_expr, "var.ses_max_send_rate / var.worker_max_concurrency");

    // The defaults pass it, computed here from the parsed defaults.
    let default = |name: &str| {
        let probe: Body = hcl::from_str(&format!("v = var.{name}")).expect("probe");
        eval(&ctx, &probe, "v", &format!("var.{name}")).as_f64().expect("a number")
    };
    let rate = default("ses_max_send_rate") / default("worker_max_concurrency");
    let sending_secs = default("worker_timeout_seconds") - margin as f64;
    let fit = (rate * sending_secs).floor() as i64;
    let batch = default("worker_batch_size") as i64;
    assert!(batch <= fit, "the default batch ({batch}) is more than the {fit} mails an instance sends in time");
    assert!(variable_accepts(&tf, "worker_batch_size", Value::from(batch)));

    // Exactly at the bound: what fits passes, one more fails, with other
    // numbers too; the message names them.
    let cases: [(f64, i64, i64); 4] = [(1.0, 2, 30), (14.0, 7, 30), (50.0, 10, 14), (2.0, 2, 100)];
    for (account, instances, timeout) in cases {
        let fit = ((account / instances as f64) * (timeout - margin) as f64).floor() as i64;
        let with = |batch: i64| {
            [
                ("ses_max_send_rate", Value::from(account)),
                ("worker_max_concurrency", Value::from(instances)),
                ("worker_timeout_seconds", Value::from(timeout)),
                ("worker_batch_size", Value::from(batch)),
            ]
        };
        let what = format!("{account}/s over {instances} instances, {timeout} s");
        assert!((1..100).contains(&fit), "{what}: {fit} is no bound inside 1..100");
        assert!(variable_accepts_with(&tf, "worker_batch_size", &with(fit)), "{what}: {fit} is refused");
        assert!(!variable_accepts_with(&tf, "worker_batch_size", &with(fit + 1)), "{what}: {} passes", fit + 1);
        let mut ctx = tf.context(&with(fit + 1));
        declare_functions(&mut ctx);
        let message = eval_str(&ctx, check, "error_message", "worker_batch_size");
        for number in [fit + 1, timeout, timeout - margin, fit] {
            assert!(message.contains(&format!(" {number} ")), "{what}: {number} missing from {message:?}");
        }
    }
}

/// Each of the api's hashing threads holds `argon2_m_kib` KiB of its own
/// while it hashes (core's `password_hasher::Memory`), so the api's memory
/// must hold `api_hash_threads` of them and 256 MiB for the rest of the
/// process, or every login ends out of memory: `api_memory_mb` refuses
/// less, naming the numbers. The thread count and the memory are what the
/// function gets (LATCHKEY_HASH_THREADS set, so never the code's one per
/// core), and the code takes the thread count as given.
#[test]
fn the_api_has_memory_for_its_hashing_threads() {
    let tf = Terraform::load();
    let ctx = tf.context(&[]);
    let (_, api) = function(&tf, &ctx, API_FN.0);
    let env = function_env(api, "api");
    for (key, var) in [("LATCHKEY_HASH_THREADS", "api_hash_threads"), ("LATCHKEY_ARGON2_M_KIB", "argon2_m_kib")] {
        assert_eq!(env.get(key).map(ToString::to_string), Some(format!("tostring(var.{var})")), "api: {key}");
    }
    assert_eq!(attr(api, "memory_size").map(ToString::to_string).as_deref(), Some("var.api_memory_mb"));
    for threads in [1, 16] {
        let lookup = |k: &str| (k == "LATCHKEY_HASH_THREADS").then(|| threads.to_string());
        let config = latchkey_core::config::Config::from_lookup(lookup).expect("the api takes it");
        assert_eq!(config.hash_threads, threads, "LATCHKEY_HASH_THREADS={threads}");
    }

    // The defaults pass.
    assert!(variable_accepts_with(&tf, "api_memory_mb", &[]), "the defaults are refused");

    // Accepted exactly when the hashing fits, across the variables' ranges.
    let with = |threads: i64, m_kib: i64, memory: i64| {
        [
            ("api_hash_threads", Value::from(threads)),
            ("argon2_m_kib", Value::from(m_kib)),
            ("api_memory_mb", Value::from(memory)),
        ]
    };
    for threads in [1, 2, 4, 16] {
        for m_kib in [19456, 65536, 262144, 1048576] {
            for memory in [1024, 1279, 1280, 1769, 4096, 10240] {
                let fits = threads * m_kib / 1024 + 256 <= memory;
                assert_eq!(
                    variable_accepts_with(&tf, "api_memory_mb", &with(threads, m_kib, memory)),
                    fits,
                    "{threads} thread(s) x {m_kib} KiB in {memory} MB"
                );
            }
        }
    }
    // The case that prompted the check: a GiB per hash in the least memory.
    assert!(!variable_accepts_with(&tf, "api_memory_mb", &with(1, 1048576, 1024)));

    let var = variable(&tf, "api_memory_mb");
    let checks: Vec<&Body> = blocks(var, "validation")
        .map(Block::body)
        .filter(|v| attr(v, "condition").is_some_and(|c| c.to_string().contains("var.argon2_m_kib")))
        .collect();
    let [check] = checks.as_slice() else { panic!("api_memory_mb: expected one validation against argon2_m_kib") };
    let mut ctx = tf.context(&with(4, 1048576, 4096));
    declare_functions(&mut ctx);
    let message = eval_str(&ctx, check, "error_message", "api_memory_mb");
    for number in ["4096 MB", " 4 ", "1048576 KiB", "4096 MiB", "256 MiB"] {
        assert!(message.contains(number), "{number} missing from {message:?}");
    }
}

/// The stream processor's `audit head` lines witness each audit chain's
/// end (docs/security.md C36b): its log group keeps them at least as long
/// as the audit records live, `audit_retention_days` rounded up to a
/// retention CloudWatch allows, and `log_retention_days` if that is longer;
/// the other groups keep `log_retention_days`.
#[test]
fn the_stream_processors_logs_outlive_the_audit_records_they_witness() {
    const CLOUDWATCH_RETENTIONS: &[i64] =
        &[1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653];
    let tf = Terraform::load();
    let group = |ctx: &Context, suffix: &str| {
        let want = format!("/aws/lambda/{}-{suffix}", prefix(ctx));
        let found: Vec<_> = tf
            .resources("aws_cloudwatch_log_group")
            .filter(|(n, b)| eval_str(ctx, b, "name", &format!("aws_cloudwatch_log_group.{n}")) == want)
            .collect();
        let [(label, body)] = found.as_slice() else { panic!("expected one aws_cloudwatch_log_group named {want}") };
        (*label, *body)
    };
    let defaults = tf.context(&[]);
    // The group is the one the processor logs to.
    let (label, _) = group(&defaults, PROCESSOR_FN.0);
    let (_, processor) = function(&tf, &defaults, PROCESSOR_FN.0);
    let target = attr(one_block(processor, "logging_config", "stream-processor"), "log_group").and_then(reference);
    assert_eq!(target, Some(("aws_cloudwatch_log_group".into(), label.into(), "name".into())));

    for v in CLOUDWATCH_RETENTIONS {
        assert!(variable_accepts(&tf, "log_retention_days", Value::from(*v)), "log_retention_days = {v} is refused");
    }
    let audit_days = [1, 2, 30, 31, 364, 365, 366, 400, 401, 3650];
    let cases = [(None, None), (Some(30), Some(400))]
        .into_iter()
        .chain(CLOUDWATCH_RETENTIONS.iter().flat_map(|l| audit_days.map(|a| (Some(*l), Some(a)))));
    for (log, audit) in cases {
        let mut overrides = Vec::new();
        overrides.extend(log.map(|l| ("log_retention_days", Value::from(l))));
        overrides.extend(audit.map(|a| ("audit_retention_days", Value::from(a))));
        let ctx = tf.context(&overrides);
        let days = |name: &str| {
            let probe: Body = hcl::from_str(&format!("v = var.{name}")).expect("probe");
            eval_i64(&ctx, &probe, "v", name)
        };
        let (log, audit) = (days("log_retention_days"), days("audit_retention_days"));
        let what = format!("log_retention_days {log}, audit_retention_days {audit}");
        let (label, body) = group(&ctx, PROCESSOR_FN.0);
        let kept = eval_i64(&ctx, body, "retention_in_days", label);
        let least = *CLOUDWATCH_RETENTIONS.iter().find(|d| **d >= log.max(audit)).expect("an allowed retention");
        assert!(kept >= audit && kept >= log, "{what}: the processor's logs are kept {kept} days");
        assert_eq!(kept, least, "{what}: not the least allowed retention that keeps both");
        for suffix in [API_FN.0, WORKER_FN.0] {
            let (label, body) = group(&ctx, suffix);
            assert_eq!(eval_i64(&ctx, body, "retention_in_days", label), log, "{what}: {label}");
        }
    }
}
