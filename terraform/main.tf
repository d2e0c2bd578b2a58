provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ Project = "latchkey", ManagedBy = "terraform", Stack = var.name_prefix }, var.tags)
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  # Names follow core/src/tables.rs: `{prefix}-{suffix}`.
  mail_queue_name = "${var.name_prefix}-mail"
  mail_dlq_name   = "${var.name_prefix}-mail-dlq"

  # Must equal latchkey_core::tables::MAIL_MAX_RECEIVE_COUNT (tests/tests/terraform.rs checks).
  mail_max_receive_count = 5

  # AWS: an SQS event source needs visibility >= 6 x the function timeout
  # (plus the batching window) so a message in flight is never redelivered
  # while its first attempt may still be running.
  mail_visibility_timeout_seconds = 6 * var.worker_timeout_seconds + var.worker_batch_window_seconds

  # LATCHKEY_SES_MAX_SEND_RATE is per worker instance: each of the at most
  # worker_max_concurrency instances gets its share of the account's rate.
  worker_instance_send_rate = var.ses_max_send_rate / var.worker_max_concurrency

  # Seconds at the end of a worker invocation in which no send starts: the
  # handler's answer margin (1.5 s, latchkey_mail_worker::ANSWER_MARGIN),
  # the deliverer's reserve for recording outcomes (0.5 s) and the least
  # time a send is started with (5 s, MIN_SEND_WINDOW). worker_batch_size
  # is checked against it (tests/tests/terraform.rs holds it to the code).
  worker_send_margin_seconds = 7

  # The retentions CloudWatch Logs allows, in days, ascending.
  log_retention_allowed_days = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653]

  # The stream-processor's `audit head` lines witness each audit chain's
  # end (docs/security.md C36b, verify-chain --head): its log group keeps
  # them at least as long as the records they witness live, i.e. the least
  # allowed retention that is both log_retention_days and
  # audit_retention_days or more (audit_retention_days <= 3650, so there is
  # one). The other groups keep log_retention_days.
  processor_log_retention_days = [
    for d in local.log_retention_allowed_days : d
    if d >= var.log_retention_days && d >= var.audit_retention_days
  ][0]

  # 14 days, the SQS maximum: a parked mail or stream record stays long
  # enough to be looked at after a holiday.
  dlq_retention_seconds = 1209600

  # The URL users see in mails and pages. The code builds links from this,
  # never from the Host header.
  public_base_url = (
    var.public_base_url != null ? var.public_base_url :
    var.custom_domain_name != null ? "https://${var.custom_domain_name}" :
    aws_apigatewayv2_api.http.api_endpoint
  )
  jwt_issuer = coalesce(var.jwt_issuer, local.public_base_url)

  # The Ed25519 points of small order, each with either sign of x, as a
  # JWK's x (core/src/keys.rs SMALL_ORDER_Y): a "public key" among them
  # verifies signatures no private key made, so jwt_previous_public_key
  # refuses them, as the api does at start.
  jwt_small_order_keys = [
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIA",
    "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIA",
    "JuiVj8KyJ7BFw_SJ8u-Y8NXfrAXTxjM5sTgCiG1T_AU", "JuiVj8KyJ7BFw_SJ8u-Y8NXfrAXTxjM5sTgCiG1T_IU",
    "xxdqcD1N2E-6PAt2DRBnDyogU_osOczGTsf9d5KsA3o", "xxdqcD1N2E-6PAt2DRBnDyogU_osOczGTsf9d5KsA_o",
    "7P_______________________________________38", "7P________________________________________8",
    "7f_______________________________________38", "7f________________________________________8",
    "7v_______________________________________38", "7v________________________________________8",
  ]

  lambda_zip_dir = coalesce(var.lambda_zip_dir, "${path.module}/../target/lambda")
}
