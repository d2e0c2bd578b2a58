# One customer-managed key for everything at rest: tables and their streams,
# queues, the alarm topic, log groups, Lambda environment and SSM secrets.
# ~1 USD/month plus requests; it gives one place to audit (CloudTrail) and to
# revoke, and a key policy that says which services may use it.
resource "aws_kms_key" "main" {
  description             = "${var.name_prefix}: data at rest (DynamoDB, SQS, SNS, logs, Lambda env, SSM)"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "main" {
  name          = "alias/${var.name_prefix}"
  target_key_id = aws_kms_key.main.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:This is a KMS key policy: Resource "*" in a key policy means this key only, and the kms:* statement is AWS's default delegation to the account's IAM.
  #checkov:skip=CKV_AWS_111:This is a KMS key policy: Resource "*" in a key policy means this key only; service principals are limited by source-account/encryption-context conditions.
  #checkov:skip=CKV_AWS_356:This is a KMS key policy: a key policy can only name its own key, as "*".
  # A key policy must name its own key as "*" (the policy is attached to the
  # key). Delegating to the account's IAM is AWS's default key policy; the
  # roles in iam.tf then get only Decrypt/GenerateDataKey on this key.
  statement {
    sid       = "AccountAdministersKeyThroughIam"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # CloudWatch Logs encrypts the function and access log groups.
  statement {
    sid       = "CloudWatchLogsUseKey"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:*"]
    }
  }

  # CloudWatch alarms publish to the encrypted SNS topic.
  statement {
    sid       = "CloudWatchAlarmsPublishToEncryptedTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}
