#!/usr/bin/env bash
# LocalStack READY hook (mounted at /etc/localstack/init/ready.d).
# Placeholder: latchkey creates its tables and queues itself at startup,
# so nothing is provisioned here yet.
set -euo pipefail
echo "latchkey: LocalStack ready (no resources provisioned by init hook)"
