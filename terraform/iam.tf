# One role per function, each with only what its code calls, on named ARNs.
# Two kinds of statement need Resource "*" because AWS offers no resource-
# level permission for them; each carries a comment saying so, and
# tests/tests/terraform.rs whitelists exactly those (sid + actions).

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# ---------------------------------------------------------------- api

resource "aws_iam_role" "api" {
  name               = "${var.name_prefix}-api"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

resource "aws_iam_role_policy" "api" {
  name   = "${var.name_prefix}-api"
  role   = aws_iam_role.api.id
  policy = data.aws_iam_policy_document.api.json
}

data "aws_iam_policy_document" "api" {
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.api.arn}:*"]
  }

  # X-Ray trace segments have no resource-level permissions (AWS requires "*").
  statement {
    sid       = "XRayTraces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }

  # The flows' stores, each table with only the actions the api uses on it
  # (tests/tests/aws_calls.rs holds these lists to the calls the flows make,
  # both ways). Users: conditional puts/updates and transactions (uniqueness
  # claims; an unverified account replaced by a new registration is
  # deleted; a registration refused for its email checks, in the username
  # hold's transaction, that the account holding the email still keeps it:
  # a ConditionCheck item, which IAM asks ConditionCheckItem for; an owner
  # deleting their account deletes the user and its claims in one).
  statement {
    sid = "AppUsers"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:DeleteItem",
      "dynamodb:ConditionCheckItem",
    ]
    resources = [aws_dynamodb_table.users.arn]
  }

  # Lookup by username or email.
  statement {
    sid       = "AppUserLookups"
    actions   = ["dynamodb:Query"]
    resources = ["${aws_dynamodb_table.users.arn}/index/*"]
  }

  # A user's sessions, for their list.
  statement {
    sid       = "AppSessionLookups"
    actions   = ["dynamodb:Query"]
    resources = ["${aws_dynamodb_table.tokens.arn}/index/*"]
  }

  # Challenges, sessions, standalone codes: read and written; their TTL
  # ends them, except that deleting an account deletes its sessions,
  # challenges and links at once (BatchWriteItem: the items its user
  # index lists).
  statement {
    sid       = "AppTokens"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem"]
    resources = [aws_dynamodb_table.tokens.arn]
  }

  # Rate-limit counters: only counted (an ADD in a transaction), so a
  # compromised api cannot read them back or delete them.
  statement {
    sid       = "AppRateLimits"
    actions   = ["dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.rate_limits.arn]
  }

  # The admin endpoints read the audit trail; only the stream-processor
  # writes it.
  statement {
    sid       = "ReadAuditTrail"
    actions   = ["dynamodb:GetItem", "dynamodb:Query"]
    resources = [aws_dynamodb_table.audit.arn]
  }

  statement {
    sid       = "EnqueueMail"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.mail.arn]
  }

  statement {
    sid     = "ReadSecretsAtColdStart"
    actions = ["ssm:GetParameters"]
    resources = [
      aws_ssm_parameter.jwt_private_key.arn,
      aws_ssm_parameter.jwt_private_key_b.arn,
      aws_ssm_parameter.code_hmac_key.arn,
      aws_ssm_parameter.admin_key_hash.arn,
    ]
  }

  # The tables, SSM SecureString decryption and SQS SSE all go through the
  # stack key: a caller of a table encrypted with a customer managed key
  # needs the key through DynamoDB, or every call is refused.
  statement {
    sid       = "UseStackKeyViaDynamoDbSsmAndSqs"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values = [
        "dynamodb.${var.region}.amazonaws.com",
        "ssm.${var.region}.amazonaws.com",
        "sqs.${var.region}.amazonaws.com",
      ]
    }
  }
}

# ---------------------------------------------------------------- mail-worker

resource "aws_iam_role" "mail_worker" {
  name               = "${var.name_prefix}-mail-worker"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

resource "aws_iam_role_policy" "mail_worker" {
  name   = "${var.name_prefix}-mail-worker"
  role   = aws_iam_role.mail_worker.id
  policy = data.aws_iam_policy_document.mail_worker.json
}

data "aws_iam_policy_document" "mail_worker" {
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.mail_worker.arn}:*"]
  }

  # X-Ray trace segments have no resource-level permissions (AWS requires "*").
  statement {
    sid       = "XRayTraces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }

  # What the SQS event source mapping does with the role.
  statement {
    sid = "ConsumeMailQueue"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
    ]
    resources = [aws_sqs_queue.mail.arn]
  }

  # The mail ledger: claim a job (conditional update), record its outcome.
  statement {
    sid       = "MailLedger"
    actions   = ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.mail_ledger.arn]
  }

  # Permanent failures (bad payload, rejected address) are parked at once
  # with their reason instead of being retried maxReceiveCount times.
  statement {
    sid       = "ParkPermanentFailures"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.mail_dlq.arn]
  }

  # SendEmail is authorised on the sender's identity and on the
  # configuration set, and, while the account is in the SES sandbox, on
  # each recipient's verified identity too (identity/<address> or
  # <domain>): hence identity/*. The From condition pins the one sender
  # address whatever the identity.
  statement {
    sid     = "SendMailAsConfiguredSender"
    actions = ["ses:SendEmail"]
    resources = [
      local.ses_identity_arn,
      "arn:${local.partition}:ses:${var.region}:${local.account_id}:identity/*",
      aws_sesv2_configuration_set.main.arn,
    ]
    condition {
      test     = "StringEquals"
      variable = "ses:FromAddress"
      values   = [var.ses_from_address]
    }
  }

  # The ledger table and the queues' SSE go through the stack key.
  statement {
    sid       = "UseStackKeyViaDynamoDbAndSqs"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["dynamodb.${var.region}.amazonaws.com", "sqs.${var.region}.amazonaws.com"]
    }
  }
}

# ---------------------------------------------------------------- stream-processor

resource "aws_iam_role" "stream_processor" {
  name               = "${var.name_prefix}-stream-processor"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

resource "aws_iam_role_policy" "stream_processor" {
  name   = "${var.name_prefix}-stream-processor"
  role   = aws_iam_role.stream_processor.id
  policy = data.aws_iam_policy_document.stream_processor.json
}

data "aws_iam_policy_document" "stream_processor" {
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.stream_processor.arn}:*"]
  }

  # X-Ray trace segments have no resource-level permissions (AWS requires "*").
  statement {
    sid       = "XRayTraces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }

  statement {
    sid     = "ReadTableStreams"
    actions = ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"]
    resources = [
      aws_dynamodb_table.users.stream_arn,
      aws_dynamodb_table.tokens.stream_arn,
      aws_dynamodb_table.mail_ledger.stream_arn,
    ]
  }

  # The audit seal key, read once per cold start; no other function can.
  statement {
    sid       = "ReadAuditSealKeyAtColdStart"
    actions   = ["ssm:GetParameters"]
    resources = [aws_ssm_parameter.audit_seal_key.arn]
  }

  # Append to the hash chain: a transaction of conditional puts and a
  # counter update, plus reads of the chain head (GetItem) and, when the
  # head has expired before its records, of the last record (Query).
  statement {
    sid = "WriteAuditTrail"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:Query",
    ]
    resources = [aws_dynamodb_table.audit.arn]
  }

  # When the TTL deletes an account nobody verified, its username and
  # email claims go too (each only while it still names that account).
  # Claims only: the partition key must be one of theirs.
  statement {
    sid       = "ReleaseExpiredAccountsNames"
    actions   = ["dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.users.arn]
    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["UNAME#*", "EMAIL#*"]
    }
  }

  # dynamodb:ListStreams has no resource-level permissions (AWS requires
  # "*"); Lambda checks for it when it creates a stream mapping. It returns
  # stream ARNs only, no data.
  statement {
    sid       = "ListStreams"
    actions   = ["dynamodb:ListStreams"]
    resources = ["*"]
  }

  # Lambda sends the on-failure record with the function's role.
  statement {
    sid       = "ReportDiscardedBatches"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.stream_failures.arn]
  }

  # Encrypted stream records are decrypted through DynamoDB, the seal key
  # through SSM; the on-failure queue is SSE-KMS.
  statement {
    sid       = "UseStackKeyViaDynamoDbSsmAndSqs"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values = [
        "dynamodb.${var.region}.amazonaws.com",
        "ssm.${var.region}.amazonaws.com",
        "sqs.${var.region}.amazonaws.com",
      ]
    }
  }
}
