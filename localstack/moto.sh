#!/usr/bin/env bash
# Local AWS emulator for latchkey: a pinned moto server in a project-local venv.
#
#   localstack/moto.sh install        create <repo>/.venv and install localstack/requirements.txt
#   localstack/moto.sh start [PORT]   start moto_server on 127.0.0.1:PORT (free port if omitted),
#                                     wait until it answers, print the endpoint URL on stdout
#   localstack/moto.sh stop           stop the server started by `start`
#   localstack/moto.sh reset          wipe all emulated state (POST /moto-api/reset)
#
# State lives in <repo>/var/moto/: moto.pid, endpoint, moto.log.
# Everything except the endpoint URL is written to stderr.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
VENV="$REPO_ROOT/.venv"
REQS="$SCRIPT_DIR/requirements.txt"
STAMP="$VENV/.latchkey-moto-requirements.sha256"
STATE_DIR="$REPO_ROOT/var/moto"
PID_FILE="$STATE_DIR/moto.pid"
ENDPOINT_FILE="$STATE_DIR/endpoint"
LOG_FILE="$STATE_DIR/moto.log"
START_TIMEOUT_SECS=30

log() { printf 'moto.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

reqs_hash() { sha256sum "$REQS" | cut -d' ' -f1; }

is_installed() {
  [[ -x "$VENV/bin/python" && -x "$VENV/bin/moto_server" && -f "$STAMP" ]] &&
    [[ "$(cat "$STAMP")" == "$(reqs_hash)" ]]
}

cmd_install() {
  if is_installed; then
    log "venv up to date ($VENV)"
    return 0
  fi
  command -v python3 >/dev/null || die "python3 not found"
  if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    # --clear: a venv a first run left without pip (Debian's python3 without
    # python3-venv makes bin/python, then fails) is made again.
    log "creating venv at $VENV"
    python3 -m venv --clear "$VENV" >&2
  fi
  log "installing $REQS (pinned)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQS" >&2
  reqs_hash >"$STAMP"
  log "installed moto $("$VENV/bin/python" -c 'import moto; print(moto.__version__)')"
}

# Prints the pid if the pid file names a live process, else nothing (and returns 1).
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  printf '%s\n' "$pid"
}

# Exit 0 iff GET <url>/moto-api/ answers with HTTP 200.
probe() {
  "$VENV/bin/python" - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

free_port() {
  "$VENV/bin/python" -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

port_is_free() {
  "$VENV/bin/python" - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

cmd_start() {
  local port="${1:-}"
  cmd_install
  mkdir -p "$STATE_DIR"

  local pid
  if pid="$(running_pid)"; then
    local existing
    existing="$(cat "$ENDPOINT_FILE" 2>/dev/null || true)"
    if [[ -n "$existing" ]] && probe "$existing"; then
      if [[ -z "$port" || "$existing" == "http://127.0.0.1:$port" ]]; then
        log "already running (pid $pid)"
        printf '%s\n' "$existing"
        return 0
      fi
    fi
    die "a moto server is already running (pid $pid, ${existing:-unknown endpoint}); run '$0 stop' first"
  fi

  if [[ -z "$port" ]]; then
    port="$(free_port)"
  fi
  [[ "$port" =~ ^[0-9]+$ ]] || die "invalid port: $port"
  port_is_free "$port" || die "127.0.0.1:$port is already in use"
  local endpoint="http://127.0.0.1:$port"

  rm -f "$PID_FILE" "$ENDPOINT_FILE"
  # setsid (when available) detaches the server from the caller's process group,
  # so it survives the calling shell and job-control signals.
  local launcher=()
  command -v setsid >/dev/null && launcher=(setsid)
  ${launcher[@]+"${launcher[@]}"} "$VENV/bin/python" "$SCRIPT_DIR/moto_server.py" -H 127.0.0.1 -p "$port" \
    >"$LOG_FILE" 2>&1 </dev/null 9>&- &
  pid=$!
  printf '%s\n' "$pid" >"$PID_FILE"

  local deadline=$((SECONDS + START_TIMEOUT_SECS))
  until probe "$endpoint"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      tail -n 20 "$LOG_FILE" >&2 || true
      die "moto_server exited during startup (log: $LOG_FILE)"
    fi
    if ((SECONDS >= deadline)); then
      kill "$pid" 2>/dev/null || true
      rm -f "$PID_FILE"
      tail -n 20 "$LOG_FILE" >&2 || true
      die "moto_server did not answer on $endpoint within ${START_TIMEOUT_SECS}s (log: $LOG_FILE)"
    fi
    sleep 0.2
  done

  kill -0 "$pid" 2>/dev/null || die "moto_server exited during startup (log: $LOG_FILE)"
  printf '%s\n' "$endpoint" >"$ENDPOINT_FILE"
  log "started (pid $pid) on $endpoint"
  printf '%s\n' "$endpoint"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    log "not running"
    rm -f "$PID_FILE" "$ENDPOINT_FILE"
    return 0
  fi
  kill "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid ignored SIGTERM, sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE" "$ENDPOINT_FILE"
  log "stopped (pid $pid)"
}

cmd_reset() {
  running_pid >/dev/null || die "not running (no live pid in $PID_FILE)"
  local endpoint
  endpoint="$(cat "$ENDPOINT_FILE" 2>/dev/null)" || die "no endpoint file $ENDPOINT_FILE"
  "$VENV/bin/python" - "$endpoint" <<'PY'
import sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/moto-api/reset", data=b"", method="POST")
with urllib.request.urlopen(req, timeout=10) as r:
    if r.status != 200:
        sys.exit(f"reset failed: HTTP {r.status}")
PY
  log "reset $endpoint"
}

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# install/start/stop take an exclusive lock, so concurrent callers (parallel
# test processes) find one server instead of racing to start two.
with_lock() {
  mkdir -p "$STATE_DIR"
  exec 9>"$STATE_DIR/moto.lock"
  flock 9
  "$@"
}

main() {
  local sub="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$sub" in
    install | start | stop) with_lock "cmd_$sub" "$@" ;;
    reset) cmd_reset ;;
    -h | --help | help | "") usage ;;
    *) log "unknown subcommand: $sub"; usage ;;
  esac
}

main "$@"
