# The functions' secrets, in SSM Parameter Store SecureString (stack KMS key).
# The Lambda environment holds only the parameter NAMES
# (LATCHKEY_JWT_PRIVATE_KEY_PARAM, LATCHKEY_CODE_HMAC_KEY_PARAM,
# LATCHKEY_ADMIN_KEY_HASH_PARAM for the api; LATCHKEY_AUDIT_KEY_PARAM for the
# stream processor); each function reads its values once per cold start, in
# one GetParameters call.
#
# The values are written with the write-only `value_wo` argument from
# ephemeral sources (ephemeral input variables or ephemeral generators), so
# they appear in neither the plan nor the state file. The price: Terraform
# cannot see drift in them, and a new value is written only when
# `secrets_version` changes (a JWT key slot also when its own version does).
# See README.md, "Secrets and state".

# Generated only when no key is supplied; regenerated on every plan, but
# written to SSM only when its slot's version changes. One generator per
# slot, so an apply that writes both gives them two keys.
ephemeral "tls_private_key" "jwt" {
  algorithm = "ED25519"
}

ephemeral "tls_private_key" "jwt_b" {
  algorithm = "ED25519"
}

ephemeral "random_password" "audit_seal" {
  # As code_hmac: unpadded base64 of 48 bytes.
  length  = 64
  special = false
}

ephemeral "random_password" "code_hmac" {
  # 64 characters from [A-Za-z0-9] are valid unpadded base64 of 48 bytes
  # (~380 bits of entropy); the code wants base64 of >= 32 bytes.
  length  = 64
  special = false
}

locals {
  # The code wants base64 PKCS#8 DER: the PEM body without its armour lines.
  generated_jwt_private_key = join("", [
    for line in split("\n", trimspace(ephemeral.tls_private_key.jwt.private_key_pem_pkcs8)) : line
    if !startswith(line, "-----")
  ])
  generated_jwt_private_key_b = join("", [
    for line in split("\n", trimspace(ephemeral.tls_private_key.jwt_b.private_key_pem_pkcs8)) : line
    if !startswith(line, "-----")
  ])
}

# The JWT keys live in two slots, a and b. The api signs with the one
# jwt_signing_slot names and publishes and accepts the other, its standby:
# the next key, published ahead of a rotation (the switch writes no key,
# only the function's configuration changes), and after the switch the key
# that signed before, until a new key is written in its place
# (docs/operations.md, "Rotating the JWT signing key").
#
# Raising either number writes a new key into slot a: secrets_version
# rotates it with the code HMAC key, jwt_key_version alone. With
# jwt_key_version at 1 its version is secrets_version, as before
# jwt_key_version existed.
resource "aws_ssm_parameter" "jwt_private_key" {
  name             = "/${var.name_prefix}/jwt-private-key"
  description      = "latchkey api: base64 PKCS#8 Ed25519 JWT key, slot a"
  type             = "SecureString"
  key_id           = aws_kms_key.main.arn
  value_wo         = var.jwt_private_key != null ? var.jwt_private_key : local.generated_jwt_private_key
  value_wo_version = var.secrets_version + var.jwt_key_version - 1
}

# Slot b, as slot a with jwt_private_key_b and jwt_key_b_version (a key of
# one's own for each slot: never one key in both). A stack made before the slots
# gets it at its next apply, with a generated key: the next key from then on.
resource "aws_ssm_parameter" "jwt_private_key_b" {
  name             = "/${var.name_prefix}/jwt-private-key-b"
  description      = "latchkey api: base64 PKCS#8 Ed25519 JWT key, slot b"
  type             = "SecureString"
  key_id           = aws_kms_key.main.arn
  value_wo         = var.jwt_private_key_b != null ? var.jwt_private_key_b : local.generated_jwt_private_key_b
  value_wo_version = var.secrets_version + var.jwt_key_b_version - 1
}

resource "aws_ssm_parameter" "code_hmac_key" {
  name             = "/${var.name_prefix}/code-hmac-key"
  description      = "latchkey api: base64 HMAC-SHA256 key for one-time codes"
  type             = "SecureString"
  key_id           = aws_kms_key.main.arn
  value_wo         = var.code_hmac_key != null ? var.code_hmac_key : ephemeral.random_password.code_hmac.result
  value_wo_version = var.secrets_version
}

# The admin API's credential: the hex SHA-256 of the admin bearer key, or
# `off` (SSM refuses an empty value) when none is given, which keeps the admin
# API closed. Written only when admin_key_hash_version changes, so later
# applies need not pass the hash again.
resource "aws_ssm_parameter" "admin_key_hash" {
  name             = "/${var.name_prefix}/admin-key-hash"
  description      = "latchkey api: hex SHA-256 of the admin bearer key, or off"
  type             = "SecureString"
  key_id           = aws_kms_key.main.arn
  value_wo         = var.admin_key_hash != null ? var.admin_key_hash : "off"
  value_wo_version = var.admin_key_hash_version
}

# The audit trail's seal key: an HMAC key over each audit record's hash, held
# by the stream processor alone (the trail's only writer; the api reads the
# trail and cannot read this parameter), so whoever can write the audit table
# cannot re-seal a chain they changed. Rotated only by audit_seal_key_version,
# not with secrets_version: the records sealed before a new key verify only
# with the retired one (`verify-chain --retired-key`), and this write-only
# value is not kept anywhere else, so the operator saves it first
# (docs/operations.md, "Rotating the seal key").
resource "aws_ssm_parameter" "audit_seal_key" {
  name             = "/${var.name_prefix}/audit-seal-key"
  description      = "latchkey stream processor: base64 HMAC-SHA256 key sealing the audit trail"
  type             = "SecureString"
  key_id           = aws_kms_key.main.arn
  value_wo         = var.audit_seal_key != null ? var.audit_seal_key : ephemeral.random_password.audit_seal.result
  value_wo_version = var.audit_seal_key_version
}
