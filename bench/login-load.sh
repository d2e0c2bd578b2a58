#!/usr/bin/env bash
# A bounded login load against the local runner (release build, embedded
# store, production argon2 parameters, rate limits relaxed): registers and
# verifies one user through the real API and outbox, then runs wrk for a
# fixed time at two concurrencies. Prints figures; asserts nothing.
#   bench/login-load.sh [seconds]     (needs `wrk`: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
# LATCHKEY_BENCH_ORDER: the concurrencies, in the order they run on this
# one runner (default "8 32"; bench/run alternates it between repeats, so
# neither load always comes second, on a store the first one filled).
order="${LATCHKEY_BENCH_ORDER:-8 32}"
for c in $order; do
  [[ "$c" =~ ^[1-9][0-9]{0,3}$ ]] || { echo "LATCHKEY_BENCH_ORDER: '$c' is not a concurrency (1-9999)" >&2; exit 2; }
done
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
[ -n "${LATCHKEY_BENCH_NO_BUILD:-}" ] || cargo build --release -p latchkey-local >&2
# LATCHKEY_BENCH_DATA_PARENT: where the runner's data dir goes (bench/run
# puts it on tmpfs); default: the system temp dir.
dir="$(mktemp -d ${LATCHKEY_BENCH_DATA_PARENT:+-p "$LATCHKEY_BENCH_DATA_PARENT"})"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
LATCHKEY_DATA_DIR="$dir" LATCHKEY_BIND="127.0.0.1:$port" LATCHKEY_RATE_LIMITS=relaxed RUST_LOG=warn \
  target/release/latchkey >"$dir/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -fs "$base/healthz" >/dev/null && break; sleep 0.05; done
curl -fs -X POST "$base/v1/register" -H 'content-type: application/json' \
  -d '{"username":"benchuser","email":"bench@example.com","password":"correct horse battery staple"}' >/dev/null
for _ in $(seq 100); do ls "$dir/outbox/"*.eml >/dev/null 2>&1 && break; sleep 0.05; done
token=$(tr -d '\r' < "$(ls "$dir"/outbox/*.eml | head -1)" | sed -e ':a;/=$/{N;s/=\n//;ba}' | grep -o 'token=3D[A-Za-z0-9_-]*\|token=[A-Za-z0-9_-]\{43\}' | head -1 | sed 's/token=\(3D\)\{0,1\}//')
curl -fs -X POST "$base/v1/verify-email" -H 'content-type: application/json' -d "{\"token\":\"$token\"}" >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F); data dir on $(df -T "$dir" | awk 'NR==2{print $2}')"
# LATCHKEY_BENCH_BETWEEN: a command run before each load and after the
# last, its output printed after "--- between:" (bench/run measures the
# argon2 baseline there, so each load has one just before and just after).
between() { [ -z "${LATCHKEY_BENCH_BETWEEN:-}" ] || echo "--- between: $(bash -c "$LATCHKEY_BENCH_BETWEEN")"; }
# One wrk thread: the load generator shares the cores with the server, and
# one thread keeps up with ~100 logins/s at either concurrency.
for c in $order; do
  between
  echo "--- login (password step), concurrency $c, ${secs}s"
  wrk -t1 -c"$c" -d"${secs}s" --latency -s bench/login.lua "$base/v1/login" | grep -E 'Requests/sec|Latency|50%|99%|Non-2xx|requests in'
done
between
echo "--- server RSS after load: $(ps -o rss= -p $pid | xargs) KiB"
