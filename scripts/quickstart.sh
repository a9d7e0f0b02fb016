#!/usr/bin/env bash
# The README's run command: installs the build dependencies, builds sluice, starts two demo
# backends (`sluice echo` on 127.0.0.1:9001 and :9002) and the gateway on
# config/examples/quickstart.yaml (proxy on 127.0.0.1:8080, admin on 127.0.0.1:9900).
#
# Ctrl-C (or SIGTERM to this script) stops everything: the backends and the gateway stop
# on SIGINT and SIGTERM themselves, and this script signals each of them, waits for them,
# and kills any that is still there after 15 s, so the ports are free again when it exits.
#
# SLUICE_BIN=path/to/sluice uses that binary instead of installing and building one (the
# integration tests run the script that way, with the dev build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${SLUICE_BIN:-}" ]]; then
  bin=$SLUICE_BIN
else
  scripts/deps.sh build
  cargo build --release --bin sluice
  bin=target/release/sluice
fi

pids=()
stopping=0
# Signals every child (SIGINT: the gateway stops at once; SIGTERM would first keep
# accepting for server.grace_period), then waits for them, bounded.
stop() {
  ((stopping)) && return
  stopping=1
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for _ in $(seq 150); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      echo "quickstart: process $p did not stop; killing it" >&2
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

"$bin" echo --listen 127.0.0.1:9001 --name backend-1 & pids+=($!)
"$bin" echo --listen 127.0.0.1:9002 --name backend-2 & pids+=($!)
"$bin" validate --config config/examples/quickstart.yaml
"$bin" run --config config/examples/quickstart.yaml & pids+=($!)
cat <<'TXT'

Sluice is running. Try:
  curl -s localhost:8080/api/users               # proxied to backend-1 / backend-2 in turn
  curl -s -H 'x-debug: on' localhost:8080/api/x   # a more specific route (header match)
  curl -s localhost:8080/hello                    # direct response
  curl -si localhost:8080/old-docs                # 301 redirect
  curl -s localhost:8080/nope                     # 404 JSON error with a request id
  curl -s localhost:9900/api/v1/routes            # admin API
  curl -s localhost:9900/metrics | grep sluice_   # Prometheus metrics
Ctrl-C to stop.
TXT
# `wait` returns when a trapped signal arrives (the trap then stops the children) or
# when one child exits (a backend or the gateway failed: stop the others too).
wait -n "${pids[@]}" || true
