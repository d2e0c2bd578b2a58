//! Implementations of the ports: DynamoDB + SQS (`aws` feature) and the
//! embedded SQLite store with its in-process mail queue (`embedded`).

#[cfg(feature = "aws")]
pub mod aws_calls;
#[cfg(feature = "aws")]
pub mod dynamo;
#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "aws")]
pub mod ses;
#[cfg(feature = "aws")]
pub mod sqs;
#[cfg(feature = "aws")]
pub mod ssm;
