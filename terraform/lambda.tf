# The three functions: provided.al2023 on arm64 (Graviton: ~20% cheaper per
# GB-s), zips built by scripts/package-lambdas. Logs are Lambda's JSON format
# in groups created here (retention, KMS); X-Ray tracing is active.

# ---------------------------------------------------------------- log groups

resource "aws_cloudwatch_log_group" "api" {
  name              = "/aws/lambda/${var.name_prefix}-api"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

resource "aws_cloudwatch_log_group" "mail_worker" {
  name              = "/aws/lambda/${var.name_prefix}-mail-worker"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

resource "aws_cloudwatch_log_group" "stream_processor" {
  name              = "/aws/lambda/${var.name_prefix}-stream-processor"
  retention_in_days = local.processor_log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

# ---------------------------------------------------------------- api

resource "aws_lambda_function" "api" {
  #checkov:skip=CKV_AWS_116:Invoked synchronously by API Gateway only; a DLQ applies to asynchronous invocations and would never receive anything.
  #checkov:skip=CKV_AWS_117:No VPC on purpose: the function talks only to AWS APIs (DynamoDB, SQS, SSM) over TLS, and a VPC would add NAT or endpoint cost and cold-start latency for no isolation gain.
  #checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile and a signing step in packaging; zips are built and deployed from the same trusted checkout by the same operator.
  function_name = "${var.name_prefix}-api"
  description   = "latchkey HTTP API (axum under lambda_http)"
  role          = aws_iam_role.api.arn
  runtime       = "provided.al2023"
  architectures = ["arm64"]
  handler       = "bootstrap"

  filename         = "${local.lambda_zip_dir}/latchkey-api/bootstrap.zip"
  source_code_hash = filebase64sha256("${local.lambda_zip_dir}/latchkey-api/bootstrap.zip")

  memory_size                    = var.api_memory_mb
  timeout                        = var.api_timeout_seconds
  reserved_concurrent_executions = var.api_reserved_concurrency
  kms_key_arn                    = aws_kms_key.main.arn

  tracing_config {
    mode = "Active"
  }
  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.api.name
  }

  # Every key of latchkey_core::config::CONFIG_KEYS except LATCHKEY_DATA_DIR
  # (embedded backend only) and LATCHKEY_BIND (lambda_http does not bind a
  # socket), plus LATCHKEY_TLS_ROOTS (all three functions). Secrets are not
  # here: only the names of their SSM parameters, read once per cold start.
  environment {
    variables = {
      LATCHKEY_BACKEND        = "aws"
      LATCHKEY_TABLE_PREFIX   = var.name_prefix
      LATCHKEY_MAIL_QUEUE_URL = aws_sqs_queue.mail.url
      LATCHKEY_BOOTSTRAP      = "false" # tables and queues are Terraform's
      PUBLIC_BASE_URL         = local.public_base_url
      LATCHKEY_JWT_ISSUER     = local.jwt_issuer
      LATCHKEY_JWT_AUDIENCE   = var.jwt_audience
      # The JWT key slot that signs, and the other, the standby
      # (published and accepted): ssm.tf.
      LATCHKEY_JWT_PRIVATE_KEY_PARAM = var.jwt_signing_slot == "b" ? aws_ssm_parameter.jwt_private_key_b.name : aws_ssm_parameter.jwt_private_key.name
      LATCHKEY_JWT_STANDBY_KEY_PARAM = var.jwt_signing_slot == "b" ? aws_ssm_parameter.jwt_private_key.name : aws_ssm_parameter.jwt_private_key_b.name
      LATCHKEY_CODE_HMAC_KEY_PARAM   = aws_ssm_parameter.code_hmac_key.name
      LATCHKEY_ADMIN_KEY_HASH_PARAM  = aws_ssm_parameter.admin_key_hash.name
      # The secrets' rotation numbers: raising one rewrites its parameters
      # and, through this, the function's configuration, so no warm
      # instance goes on signing or checking with the old values (each
      # reads them once, at its cold start); the api logs them at start.
      LATCHKEY_SECRETS_VERSION        = tostring(var.secrets_version)
      LATCHKEY_JWT_KEY_VERSION        = tostring(var.jwt_key_version)
      LATCHKEY_JWT_KEY_B_VERSION      = tostring(var.jwt_key_b_version)
      LATCHKEY_ADMIN_KEY_HASH_VERSION = tostring(var.admin_key_hash_version)
      # The replaced JWT key (public), accepted and published during a
      # rotation's overlap; empty is none.
      LATCHKEY_JWT_PREVIOUS_PUBLIC_KEY = var.jwt_previous_public_key
      # The client IP comes from the API Gateway request context, which the
      # client cannot forge; X-Forwarded-For can be.
      LATCHKEY_TRUST_FORWARDED_FOR      = "false"
      LATCHKEY_HASH_THREADS             = tostring(var.api_hash_threads)
      LATCHKEY_ARGON2_M_KIB             = tostring(var.argon2_m_kib)
      LATCHKEY_ARGON2_T                 = tostring(var.argon2_t)
      LATCHKEY_ARGON2_P                 = tostring(var.argon2_p)
      LATCHKEY_PASSWORD_MIN_CHARS       = tostring(var.password_min_chars)
      LATCHKEY_ACCESS_TTL_SECS          = tostring(var.access_ttl_secs)
      LATCHKEY_OTP_TTL_SECS             = tostring(var.otp_ttl_secs)
      LATCHKEY_REFRESH_RETRY_GRACE_SECS = tostring(var.refresh_retry_grace_secs)
      LATCHKEY_RATE_LIMITS              = var.rate_limits
      LATCHKEY_AUDIT_RETENTION_DAYS     = tostring(var.audit_retention_days)
      LATCHKEY_TLS_ROOTS                = var.tls_roots
    }
  }

  depends_on = [aws_iam_role_policy.api, aws_cloudwatch_log_group.api]
}

resource "aws_lambda_permission" "api_from_apigw" {
  statement_id  = "AllowHttpApiInvoke"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.api.function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.http.execution_arn}/*/*"
}

# ---------------------------------------------------------------- mail-worker

resource "aws_lambda_function" "mail_worker" {
  #checkov:skip=CKV_AWS_116:Invoked by the SQS event source mapping only; failed mails go to the mail queue's redrive DLQ, which is where a DLQ belongs for SQS sources.
  #checkov:skip=CKV_AWS_117:No VPC on purpose: the function talks only to AWS APIs (SQS, SES) over TLS; a VPC would add NAT or endpoint cost for no isolation gain.
  #checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile and a signing step in packaging; zips are built and deployed from the same trusted checkout by the same operator.
  function_name = "${var.name_prefix}-mail-worker"
  description   = "latchkey mail worker: SQS mail jobs -> SES v2"
  role          = aws_iam_role.mail_worker.arn
  runtime       = "provided.al2023"
  architectures = ["arm64"]
  handler       = "bootstrap"

  filename         = "${local.lambda_zip_dir}/latchkey-mail-worker/bootstrap.zip"
  source_code_hash = filebase64sha256("${local.lambda_zip_dir}/latchkey-mail-worker/bootstrap.zip")

  memory_size = var.worker_memory_mb
  timeout     = var.worker_timeout_seconds
  # Equal to the mapping's maximum concurrency, so SQS never invokes into a
  # throttle (AWS's advice when both are set) and a flood of api requests
  # cannot take the worker's instances; unreserved (-1) on an account that
  # cannot reserve any, where the mapping's maximum_concurrency still caps it.
  reserved_concurrent_executions = var.worker_reserve_concurrency ? var.worker_max_concurrency : -1
  kms_key_arn                    = aws_kms_key.main.arn

  tracing_config {
    mode = "Active"
  }
  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.mail_worker.name
  }

  environment {
    variables = {
      LATCHKEY_TABLE_PREFIX          = var.name_prefix
      LATCHKEY_MAIL_QUEUE_URL        = aws_sqs_queue.mail.url
      LATCHKEY_MAIL_DLQ_URL          = aws_sqs_queue.mail_dlq.url
      LATCHKEY_SES_FROM              = var.ses_from_address
      LATCHKEY_SES_CONFIGURATION_SET = aws_sesv2_configuration_set.main.configuration_set_name
      LATCHKEY_SES_MAX_SEND_RATE     = tostring(local.worker_instance_send_rate)
      PUBLIC_BASE_URL                = local.public_base_url
      LATCHKEY_TLS_ROOTS             = var.tls_roots
    }
  }

  depends_on = [aws_iam_role_policy.mail_worker, aws_cloudwatch_log_group.mail_worker]
}

resource "aws_lambda_event_source_mapping" "mail" {
  event_source_arn                   = aws_sqs_queue.mail.arn
  function_name                      = aws_lambda_function.mail_worker.arn
  batch_size                         = var.worker_batch_size
  maximum_batching_window_in_seconds = var.worker_batch_window_seconds
  # The worker reports only the failed records; one bad mail never fails or
  # redelivers the batch.
  function_response_types = ["ReportBatchItemFailures"]

  scaling_config {
    maximum_concurrency = var.worker_max_concurrency
  }
}

# ---------------------------------------------------------------- stream-processor

resource "aws_lambda_function" "stream_processor" {
  #checkov:skip=CKV_AWS_116:Invoked by DynamoDB Streams mappings only; their on-failure destination (the stream-failures queue) is the DLQ for stream sources.
  #checkov:skip=CKV_AWS_117:No VPC on purpose: the function talks only to AWS APIs over TLS; a VPC would add NAT or endpoint cost for no isolation gain.
  #checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile and a signing step in packaging; zips are built and deployed from the same trusted checkout by the same operator.
  function_name = "${var.name_prefix}-stream-processor"
  description   = "latchkey stream processor: DynamoDB Streams -> audit trail"
  role          = aws_iam_role.stream_processor.arn
  runtime       = "provided.al2023"
  architectures = ["arm64"]
  handler       = "bootstrap"

  filename         = "${local.lambda_zip_dir}/latchkey-stream-processor/bootstrap.zip"
  source_code_hash = filebase64sha256("${local.lambda_zip_dir}/latchkey-stream-processor/bootstrap.zip")

  memory_size                    = var.processor_memory_mb
  timeout                        = var.processor_timeout_seconds
  reserved_concurrent_executions = var.processor_reserved_concurrency
  kms_key_arn                    = aws_kms_key.main.arn

  tracing_config {
    mode = "Active"
  }
  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.stream_processor.name
  }

  environment {
    variables = {
      LATCHKEY_TABLE_PREFIX         = var.name_prefix
      LATCHKEY_AUDIT_RETENTION_DAYS = tostring(var.audit_retention_days)
      LATCHKEY_AUDIT_KEY_PARAM      = aws_ssm_parameter.audit_seal_key.name
      # Raising the version changes the function's configuration, so no
      # warm instance goes on sealing with the retired key (each reads the
      # key once, at its cold start); the processor logs it at start.
      LATCHKEY_AUDIT_KEY_VERSION = tostring(var.audit_seal_key_version)
      LATCHKEY_TLS_ROOTS         = var.tls_roots
    }
  }

  depends_on = [aws_iam_role_policy.stream_processor, aws_cloudwatch_log_group.stream_processor]
}

# One mapping per streamed table (core: `stream: true`), same settings.
resource "aws_lambda_event_source_mapping" "users_stream" {
  event_source_arn                   = aws_dynamodb_table.users.stream_arn
  function_name                      = aws_lambda_function.stream_processor.arn
  starting_position                  = "TRIM_HORIZON"
  batch_size                         = var.stream_batch_size
  maximum_batching_window_in_seconds = 1
  function_response_types            = ["ReportBatchItemFailures"]
  # A failing batch is split until the bad record stands alone; it is then
  # retried a finite number of times and parked, so a shard never stalls.
  bisect_batch_on_function_error = true
  maximum_retry_attempts         = var.stream_max_retry_attempts
  maximum_record_age_in_seconds  = var.stream_max_record_age_seconds

  destination_config {
    on_failure {
      destination_arn = aws_sqs_queue.stream_failures.arn
    }
  }
}

resource "aws_lambda_event_source_mapping" "tokens_stream" {
  event_source_arn                   = aws_dynamodb_table.tokens.stream_arn
  function_name                      = aws_lambda_function.stream_processor.arn
  starting_position                  = "TRIM_HORIZON"
  batch_size                         = var.stream_batch_size
  maximum_batching_window_in_seconds = 1
  function_response_types            = ["ReportBatchItemFailures"]
  bisect_batch_on_function_error     = true
  maximum_retry_attempts             = var.stream_max_retry_attempts
  maximum_record_age_in_seconds      = var.stream_max_record_age_seconds

  destination_config {
    on_failure {
      destination_arn = aws_sqs_queue.stream_failures.arn
    }
  }
}

resource "aws_lambda_event_source_mapping" "mail_ledger_stream" {
  event_source_arn                   = aws_dynamodb_table.mail_ledger.stream_arn
  function_name                      = aws_lambda_function.stream_processor.arn
  starting_position                  = "TRIM_HORIZON"
  batch_size                         = var.stream_batch_size
  maximum_batching_window_in_seconds = 1
  function_response_types            = ["ReportBatchItemFailures"]
  bisect_batch_on_function_error     = true
  maximum_retry_attempts             = var.stream_max_retry_attempts
  maximum_record_age_in_seconds      = var.stream_max_record_age_seconds

  # Only the outcomes the audit trail records (core's ledger_state::AUDITED):
  # a claim or a retry is no audit event, so it invokes nothing. Half of a
  # mail's ledger writes are claims.
  filter_criteria {
    filter {
      pattern = jsonencode({ dynamodb = { NewImage = { state = { S = ["sent", "failed"] } } } })
    }
  }

  destination_config {
    on_failure {
      destination_arn = aws_sqs_queue.stream_failures.arn
    }
  }
}
