#!/usr/bin/env bash
# The README's run command: installs the build dependencies, builds sluice, starts two demo
# backends (`sluice echo` on 127.0.0.1:9001 and :9002) and the gateway on
# config/examples/quickstart.yaml (proxy on 127.0.0.1:8080, admin on 127.0.0.1:9900).
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh build
cargo build --release --bin sluice
bin=target/release/sluice
pids=()
cleanup() { for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
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
wait
