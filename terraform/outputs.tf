output "api_url" {
  description = "Base URL of the API (the public base URL the mails link to)."
  value       = local.public_base_url
}

output "api_gateway_endpoint" {
  description = "The execute-api endpoint, with or without a custom domain."
  value       = aws_apigatewayv2_api.http.api_endpoint
}

output "custom_domain_target" {
  description = "Where to point custom_domain_name (CNAME or alias) when route53_zone_id is not set."
  value       = var.custom_domain_name == null ? null : aws_apigatewayv2_domain_name.custom[0].domain_name_configuration[0].target_domain_name
}

output "table_names" {
  description = "DynamoDB table names, by core suffix."
  value = {
    users       = aws_dynamodb_table.users.name
    tokens      = aws_dynamodb_table.tokens.name
    rate-limits = aws_dynamodb_table.rate_limits.name
    audit       = aws_dynamodb_table.audit.name
    mail-ledger = aws_dynamodb_table.mail_ledger.name
  }
}

output "mail_queue_url" {
  description = "SQS mail queue (LATCHKEY_MAIL_QUEUE_URL)."
  value       = aws_sqs_queue.mail.url
}

output "mail_dlq_url" {
  description = "SQS mail dead-letter queue."
  value       = aws_sqs_queue.mail_dlq.url
}

output "stream_failures_queue_url" {
  description = "SQS queue receiving the stream batches the stream-processor gave up on."
  value       = aws_sqs_queue.stream_failures.url
}

output "function_names" {
  description = "Lambda function names."
  value = {
    api              = aws_lambda_function.api.function_name
    mail_worker      = aws_lambda_function.mail_worker.function_name
    stream_processor = aws_lambda_function.stream_processor.function_name
  }
}

output "secret_parameter_names" {
  description = "SSM SecureString parameters holding the api's secrets and the stream processor's audit seal key."
  value = {
    jwt_private_key   = aws_ssm_parameter.jwt_private_key.name
    jwt_private_key_b = aws_ssm_parameter.jwt_private_key_b.name
    code_hmac_key     = aws_ssm_parameter.code_hmac_key.name
    admin_key_hash    = aws_ssm_parameter.admin_key_hash.name
    audit_seal_key    = aws_ssm_parameter.audit_seal_key.name
  }
}

output "ses_configuration_set" {
  description = "SES v2 configuration set (LATCHKEY_SES_CONFIGURATION_SET)."
  value       = aws_sesv2_configuration_set.main.configuration_set_name
}

output "ses_dkim_records" {
  description = "DKIM CNAME records to publish for ses_domain (empty without a domain)."
  value       = local.ses_dkim_records
}

output "alarm_topic_arn" {
  description = "SNS topic the alarms notify."
  value       = aws_sns_topic.alarms.arn
}
