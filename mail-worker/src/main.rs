//! The mail worker's entry point: wiring only. With no arguments it is the
//! Lambda (SQS event source mapping with ReportBatchItemFailures); `poll`
//! runs the same handler against the queue from a workstation; `dlq list` /
//! `dlq redrive` are the operator's dead-letter commands (see `dlq.rs`).

use lambda_runtime::{Error, LambdaEvent, service_fn};
use latchkey_core::adapters::aws_calls;
use latchkey_mail_worker::{ANSWER_MARGIN, Clients, Worker, WorkerConfig, dlq, handle, lambda_deadline, poller};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        // The operator's commands, run from a workstation: the system's CA store.
        Some("dlq") => {
            // Arguments first: a typo is answered before any AWS set-up.
            let command = dlq::parse(&args[1..]).unwrap_or_else(|usage| {
                eprintln!("{usage}");
                std::process::exit(2)
            });
            dlq::run(&aws_calls::sqs_client(&aws_calls::sdk_config().await, None), command).await
        }
        Some("poll") => {
            let cfg = WorkerConfig::from_env()?;
            let clients = Clients::from_sdk(&aws_calls::sdk_config().await);
            let url = cfg.queue_url.clone().ok_or("LATCHKEY_MAIL_QUEUE_URL: required to poll")?;
            let poller = poller::Poller::new(clients.sqs.clone(), url).await?;
            let worker = Arc::new(Worker::from_config(&cfg, clients)?);
            poller::run_poller(poller, worker, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await;
            Ok(())
        }
        _ => {
            let cfg = WorkerConfig::from_env()?;
            // The Amazon roots only, unless LATCHKEY_TLS_ROOTS says `system`.
            let sdk = aws_calls::lambda_sdk_config().await?;
            let worker = Arc::new(Worker::from_config(&cfg, Clients::from_sdk(&sdk))?);
            lambda_runtime::run(service_fn(move |event: LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| {
                let worker = worker.clone();
                async move {
                    let deadline = lambda_deadline(event.context.deadline, ANSWER_MARGIN);
                    Ok::<_, Error>(handle(event.payload, &worker, deadline).await)
                }
            }))
            .await
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        tracing_subscriber::fmt().json().with_env_filter(filter).with_current_span(false).without_time().init();
    } else {
        let colours = latchkey_core::config::console_colours_for(&std::io::stderr());
        tracing_subscriber::fmt()
            .compact()
            .with_ansi(colours)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
}
