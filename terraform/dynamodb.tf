# The tables exactly as core/src/tables.rs defines them (USERS, TOKENS,
# RATE_LIMITS, AUDIT, MAIL_LEDGER); tests/tests/terraform.rs compares them with core's specs.
# On-demand billing: traffic is bursty and small, and nothing to tune.

resource "aws_dynamodb_table" "users" {
  name                        = "${var.name_prefix}-users"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  deletion_protection_enabled = var.deletion_protection

  # The audit trail (stream-processor) reads every change.
  stream_enabled   = true
  stream_view_type = "NEW_AND_OLD_IMAGES"

  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "username"
    type = "S"
  }
  attribute {
    name = "email"
    type = "S"
  }

  global_secondary_index {
    name            = "by_username"
    hash_key        = "username"
    projection_type = "ALL"
  }
  global_secondary_index {
    name            = "by_email"
    hash_key        = "email"
    projection_type = "ALL"
  }

  # Only an unverified account's item and a username hold carry `ttl`: an
  # account nobody verifies goes 30 days after it was made (verifying
  # removes its `ttl`); the stream processor then releases its claims.
  ttl {
    attribute_name = "ttl"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.main.arn
  }
}

resource "aws_dynamodb_table" "tokens" {
  name                        = "${var.name_prefix}-tokens"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  deletion_protection_enabled = var.deletion_protection

  stream_enabled   = true
  stream_view_type = "NEW_AND_OLD_IMAGES"

  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "user_id"
    type = "S"
  }

  # A user's sessions, for their list (challenges and verifications carry
  # `user_id` too; the list filters on the `SESSION#` key).
  global_secondary_index {
    name            = "by_user"
    hash_key        = "user_id"
    projection_type = "ALL"
  }

  # TTL deletes up to ~2 days late; the code checks expiry on every read.
  ttl {
    attribute_name = "ttl"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.main.arn
  }
}

resource "aws_dynamodb_table" "rate_limits" {
  name                        = "${var.name_prefix}-rate-limits"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  deletion_protection_enabled = var.deletion_protection

  # No stream: counters are not audited.
  stream_enabled = false

  attribute {
    name = "pk"
    type = "S"
  }

  ttl {
    attribute_name = "ttl"
    enabled        = true
  }

  # Counters are rebuilt by traffic; PITR is kept anyway because checkov
  # asks for it on every table and it costs little on a table this small.
  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.main.arn
  }
}

# The audit trail, written only by the stream-processor; read by the api's
# admin endpoints. Hash-chained records per subject, idempotency markers and
# daily counters, all expiring by TTL (audit_retention_days).
resource "aws_dynamodb_table" "audit" {
  name                        = "${var.name_prefix}-audit"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  range_key                   = "sk"
  deletion_protection_enabled = var.deletion_protection

  # Not streamed: the audit trail does not audit itself.
  stream_enabled = false

  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "sk"
    type = "S"
  }

  ttl {
    attribute_name = "ttl"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.main.arn
  }
}

# The mail ledger: one item per mail job (claim lease, sent / failed with
# reason), the worker's idempotency record. Streamed so each delivery outcome
# reaches the audit trail.
resource "aws_dynamodb_table" "mail_ledger" {
  name                        = "${var.name_prefix}-mail-ledger"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  deletion_protection_enabled = var.deletion_protection

  stream_enabled   = true
  stream_view_type = "NEW_AND_OLD_IMAGES"

  attribute {
    name = "pk"
    type = "S"
  }

  ttl {
    attribute_name = "ttl"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.main.arn
  }
}
