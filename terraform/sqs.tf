# The mail queue (api -> mail-worker), its dead-letter queue, and the queue
# that receives stream batches the stream-processor gave up on. Names follow
# core/src/tables.rs (`{prefix}-mail`, `{prefix}-mail-dlq`).

resource "aws_sqs_queue" "mail" {
  name                              = local.mail_queue_name
  visibility_timeout_seconds        = local.mail_visibility_timeout_seconds
  message_retention_seconds         = 345600 # 4 days; a mail older than that is useless anyway
  receive_wait_time_seconds         = 20
  kms_master_key_id                 = aws_kms_key.main.arn
  kms_data_key_reuse_period_seconds = 300

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.mail_dlq.arn
    maxReceiveCount     = local.mail_max_receive_count
  })
}

resource "aws_sqs_queue" "mail_dlq" {
  name                              = local.mail_dlq_name
  message_retention_seconds         = local.dlq_retention_seconds
  kms_master_key_id                 = aws_kms_key.main.arn
  kms_data_key_reuse_period_seconds = 300
}

# Only the mail queue may redrive into the DLQ.
resource "aws_sqs_queue_redrive_allow_policy" "mail_dlq" {
  queue_url = aws_sqs_queue.mail_dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.mail.arn]
  })
}

# On-failure destination of the DynamoDB Streams mappings: Lambda writes the
# shard/sequence range of a batch it discarded, so the audit gap is visible
# (and alarmed). The records themselves are not kept: the stream holds them
# 24 hours, and PITR restores items, not the changes between
# (docs/operations.md).
resource "aws_sqs_queue" "stream_failures" {
  name                              = "${var.name_prefix}-stream-failures"
  message_retention_seconds         = local.dlq_retention_seconds
  kms_master_key_id                 = aws_kms_key.main.arn
  kms_data_key_reuse_period_seconds = 300
}
