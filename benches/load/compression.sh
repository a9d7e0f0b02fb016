#!/usr/bin/env bash
# req/s with gzip compression on, Sluice against nginx (`gzip on`) at the same level,
# beside the compression ratio each achieves, in one run. Layout as
# ../shared/bench/peers/run.sh: the upstream (nginx serving a 16 KiB JSON document) and
# wrk share CPU 0, the proxy under test runs alone on CPU 1 with one worker.
#
# usage: benches/load/compression.sh [-d SECONDS] [-c CONNECTIONS] [-l GZIP_LEVEL]
# Needs nginx, wrk, curl. Builds the release binary unless SLUICE_BIN is set.
set -euo pipefail
D=10; C=64; L=6
while getopts "d:c:l:" o; do
  case $o in d) D=$OPTARG;; c) C=$OPTARG;; l) L=$OPTARG;; *) exit 2;; esac
done
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SLUICE_BIN:-$root/target/release/sluice}
[ -n "${SLUICE_BIN:-}" ] || cargo build --release --bin sluice --manifest-path "$root/Cargo.toml"
RUN=$(mktemp -d /tmp/compress.XXXXXX)
chmod 755 "$RUN"   # nginx workers run as nobody and must read doc.json
PIDS=()
stop() { kill -INT "$1" 2>/dev/null || true; for _ in $(seq 30); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
         kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
cleanup() { for p in "${PIDS[@]}"; do stop "$p"; done; rm -rf "$RUN"; }
trap cleanup EXIT

# A JSON document like an API's list answer: 16 KiB, compressible as such answers are.
python3 - "$RUN/doc.json" <<'PY'
import json, sys
items = [{"id": i, "name": f"item {i}", "price": round(i * 1.37, 2), "tags": ["a", "b", str(i % 7)],
          "description": "a product of the catalogue, described at some length"} for i in range(120)]
open(sys.argv[1], "w").write(json.dumps({"items": items})[:16384])
PY
cat >"$RUN/upstream.conf" <<NGX
worker_processes 1; daemon off; pid $RUN/up.pid; error_log $RUN/up.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; default_type application/json;
  server { listen 127.0.0.1:18081 reuseport; root $RUN; location / { try_files /doc.json =404; } } }
NGX
cat >"$RUN/proxy.conf" <<NGX
worker_processes 1; daemon off; pid $RUN/px.pid; error_log $RUN/px.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  gzip on; gzip_comp_level $L; gzip_min_length 1024; gzip_types application/json; gzip_proxied any;
  upstream up { server 127.0.0.1:18081; keepalive 128; }
  server { listen 127.0.0.1:18000 reuseport;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
sed "s/__LEVEL__/$L/" "$root/benches/load/compression.yaml" >"$RUN/sluice.yaml"
taskset -c 0 nginx -c "$RUN/upstream.conf" & PIDS+=($!)
sleep 0.5
original=$(curl -fs http://127.0.0.1:18081/ | wc -c)
printf "%-14s %10s %9s %9s %10s %8s\n" candidate req/s p50 p99 bytes ratio
for c in nginx sluice; do
  case $c in
    nginx) taskset -c 1 nginx -c "$RUN/proxy.conf" & PX=$!; PORT=18000;;
    sluice) taskset -c 1 "$bin" run --config "$RUN/sluice.yaml" >"$RUN/sluice.log" 2>&1 & PX=$!; PORT=8080;;
  esac
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.2; done
  bytes=$(curl -fs -H 'accept-encoding: gzip' "http://127.0.0.1:$PORT/" | wc -c)
  enc=$(curl -fs -o /dev/null -w '%header{content-encoding}' -H 'accept-encoding: gzip' "http://127.0.0.1:$PORT/")
  [ "$enc" = gzip ] || { echo "$c did not compress (content-encoding: '$enc')" >&2; stop $PX; continue; }
  taskset -c 0 wrk -t1 -c"$C" -d2s -H 'accept-encoding: gzip' "http://127.0.0.1:$PORT/" >/dev/null 2>&1
  out=$(taskset -c 0 wrk -t1 -c"$C" -d"${D}s" --latency -H 'accept-encoding: gzip' "http://127.0.0.1:$PORT/")
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  p50=$(awk '$1=="50%"{print $2}' <<<"$out"); p99=$(awk '$1=="99%"{print $2}' <<<"$out")
  ratio=$(awk -v o="$original" -v b="$bytes" 'BEGIN{printf "%.2f", o/b}')
  printf "%-14s %10s %9s %9s %10s %8s\n" "$c" "$rps" "$p50" "$p99" "$bytes" "$ratio"
  echo "json {\"candidate\":\"$c\",\"gzip_level\":$L,\"rps\":$rps,\"bytes\":$bytes,\"original\":$original,\"ratio\":$ratio}"
  stop $PX
  sleep 0.5
done
