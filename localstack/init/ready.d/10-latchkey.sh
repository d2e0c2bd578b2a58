#!/usr/bin/env bash
# LocalStack READY hook (mounted at /etc/localstack/init/ready.d): applies
# terraform/ to this LocalStack with tflocal when LATCHKEY_TFLOCAL_APPLY=1.
#
# For people with Docker only; CI never runs this (it uses moto, see
# ../../README.md). Needs network access from the container: it downloads a
# pinned Terraform from releases.hashicorp.com (checked against its
# SHA256SUMS) and the providers from the Terraform registry, and installs
# terraform-local (pinned) from PyPI.
set -euo pipefail

if [ "${LATCHKEY_TFLOCAL_APPLY:-0}" != "1" ]; then
  echo "latchkey: LocalStack ready; LATCHKEY_TFLOCAL_APPLY!=1, nothing applied"
  exit 0
fi

TERRAFORM_VERSION="1.11.4"
TERRAFORM_LOCAL_VERSION="0.27.0"
TOOLS=/opt/latchkey-tools
WORK=/tmp/latchkey-terraform # a writable copy: the repo is mounted read-only

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) echo "latchkey: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac

if [ ! -x "$TOOLS/bin/terraform" ]; then
  echo "latchkey: installing terraform $TERRAFORM_VERSION and terraform-local $TERRAFORM_LOCAL_VERSION"
  mkdir -p "$TOOLS/bin"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "terraform-local==$TERRAFORM_LOCAL_VERSION"
  base="https://releases.hashicorp.com/terraform/$TERRAFORM_VERSION"
  zip="terraform_${TERRAFORM_VERSION}_linux_${arch}.zip"
  curl -fsSL -o "/tmp/$zip" "$base/$zip"
  curl -fsSL -o /tmp/terraform.sha256 "$base/terraform_${TERRAFORM_VERSION}_SHA256SUMS"
  (cd /tmp && grep " $zip\$" terraform.sha256 | sha256sum -c -)
  python3 -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extract('terraform', sys.argv[2])" "/tmp/$zip" "$TOOLS/bin"
  chmod +x "$TOOLS/bin/terraform"
fi
export PATH="$TOOLS/bin:$PATH"

rm -rf "$WORK" && mkdir -p "$WORK" && cp /opt/latchkey/terraform/*.tf "$WORK/"
cd "$WORK"

vars=(
  -var region="${AWS_DEFAULT_REGION:-us-east-1}"
  -var ses_from_address=no-reply@latchkey.test
  -var deletion_protection=false
  -var lambda_zip_dir=/opt/latchkey/lambda
)

# Without a Pro token there is no apigatewayv2, and the functions (which
# need the zips and the API for PUBLIC_BASE_URL) are left out: apply the data
# plane only (tables, queues, secrets, SES, key, alarms topic).
targets=()
if [ -z "${LOCALSTACK_AUTH_TOKEN:-}" ]; then
  echo "latchkey: no LOCALSTACK_AUTH_TOKEN: applying the data plane only"
  for t in \
    aws_dynamodb_table.users aws_dynamodb_table.tokens aws_dynamodb_table.rate_limits \
    aws_dynamodb_table.audit aws_dynamodb_table.mail_ledger \
    aws_sqs_queue.mail aws_sqs_queue.mail_dlq aws_sqs_queue.stream_failures \
    aws_ssm_parameter.jwt_private_key aws_ssm_parameter.jwt_private_key_b aws_ssm_parameter.code_hmac_key \
    aws_ssm_parameter.audit_seal_key \
    aws_sesv2_configuration_set.main aws_sesv2_email_identity.sender \
    aws_sns_topic.alarms; do
    targets+=(-target="$t")
  done
fi

tflocal init -input=false -no-color
tflocal apply -input=false -auto-approve -no-color "${vars[@]}" "${targets[@]}"
echo "latchkey: tflocal apply done"
