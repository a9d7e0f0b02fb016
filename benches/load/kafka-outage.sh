#!/usr/bin/env bash
# Client latency with the access log sent to Kafka, the broker up, then dead: issue 28's
# "a dead broker still costs latency". A benchmark, not a test: it prints the figures.
#
# Each run starts, fresh: nginx (the upstream, 127.0.0.1:18080) and the broker (tansu,
# 127.0.0.1:19092, in-memory storage) on CPU 0, sluice on CPU 1 (one worker thread, its
# Kafka producer thread too) with benches/load/access-log-kafka.yaml. wrk (CPU 0) sends a
# steady, moderate load: C connections, each waiting DELAY ms between a response and its
# next request (wrk's delay(), so the proxy is not saturated and p99 is its latency, not
# a queue). Then:
#   up:   WARM s of warm-up, then D s measured, the broker up;
#   down: the broker is killed (SIGKILL); after SETTLE s, D s measured with it dead.
# It prints each run's p50/p99 for both phases and the ratio down/up of p99, then the
# median ratio over the runs. The target: p99 down within 1.2x of p99 up.
#
# usage: benches/load/kafka-outage.sh [-r RUNS] [-d SECONDS] [-c CONNECTIONS] [-w DELAY_MS]
#   SLUICE=path/to/sluice picks the binary (default: target/release/sluice, built here).
#   TANSU=path/to/tansu (default: tansu on PATH, else ~/.cargo/bin/tansu).
# Needs: nginx, wrk, taskset, tansu (scripts/deps.sh bench; tansu: scripts/deps.sh test).
set -euo pipefail
RUNS=5; D=10; C=16; DELAY=2; WARM=3; SETTLE=3
while getopts "r:d:c:w:" o; do
  case $o in r) RUNS=$OPTARG;; d) D=$OPTARG;; c) C=$OPTARG;; w) DELAY=$OPTARG;; *) exit 2;; esac
done
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SLUICE:-}
if [ -z "$bin" ]; then
  cargo build --release --bin sluice --manifest-path "$root/Cargo.toml"
  bin=$root/target/release/sluice
fi
tansu=${TANSU:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}
for t in nginx wrk taskset curl; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 2; }; done
[ -x "$tansu" ] || { echo "missing tansu (cargo install tansu --features dynostore)" >&2; exit 2; }
RUN=$(mktemp -d /tmp/kafka-outage.XXXXXX)
cat >"$RUN/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $RUN/nginx.pid;
error_log $RUN/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:18080 reuseport; location / { return 200 "hello from upstream\n"; } }
}
NGINX
cat >"$RUN/delay.lua" <<LUA
function delay() return $DELAY end
LUA
PIDS=()
stop() { kill -INT "$1" 2>/dev/null || true; for _ in $(seq 30); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
         kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
cleanup() { for p in "${PIDS[@]}"; do stop "$p"; done; rm -rf "$RUN"; }
trap cleanup EXIT
taskset -c 0 nginx -c "$RUN/nginx.conf" & PIDS+=($!)

# Microseconds from wrk's "    50%  1.23ms" lines (--latency prints 50/75/90/99).
us() { awk -v q="$1" '$1==q"%" {v=$2; u=1; if (v ~ /us$/) {sub(/us$/,"",v)} else if (v ~ /ms$/) {sub(/ms$/,"",v); u=1000} else if (v ~ /s$/) {sub(/s$/,"",v); u=1000000}; printf "%d", v*u}'; }
measure() { taskset -c 0 wrk -t1 -c"$C" -d"${D}s" --latency -s "$RUN/delay.lua" http://127.0.0.1:8080/; }

ratios=()
printf "%-4s %10s %10s %10s %10s %8s %10s %10s\n" run up_p50us up_p99us down_p50us down_p99us ratio up_rps down_rps
for run in $(seq "$RUNS"); do
  taskset -c 0 "$tansu" broker --listener-url tcp://127.0.0.1:19092 --advertised-listener-url tcp://127.0.0.1:19092 \
    --storage-engine memory://tansu/ >"$RUN/tansu.$run.log" 2>&1 & broker=$!; PIDS+=($broker)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/19092) 2>/dev/null && break; sleep 0.1; done
  for _ in $(seq 50); do "$tansu" topic create --broker tcp://127.0.0.1:19092 --partitions 1 sluice-access >/dev/null 2>&1 && break; sleep 0.2; done
  taskset -c 1 "$bin" run --config "$root/benches/load/access-log-kafka.yaml" >"$RUN/sluice.$run.log" 2>&1 & px=$!; PIDS+=($px)
  for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:8080/ && break; sleep 0.2; done
  # Warm-up, and the producer connected (records written).
  taskset -c 0 wrk -t1 -c"$C" -d"${WARM}s" -s "$RUN/delay.lua" http://127.0.0.1:8080/ >/dev/null
  written=$(curl -fs http://127.0.0.1:9990/metrics | awk '/^sluice_log_written_total\{.*sink="kafka"/{print $2}')
  up=$(measure)
  kill -KILL "$broker"; wait "$broker" 2>/dev/null || true
  taskset -c 0 wrk -t1 -c"$C" -d"${SETTLE}s" -s "$RUN/delay.lua" http://127.0.0.1:8080/ >/dev/null
  down=$(measure)
  dropped=$(curl -fs http://127.0.0.1:9990/metrics | awk '/^sluice_log_dropped_total\{.*sink="kafka"/{s+=$2} END{print s+0}')
  stop "$px"
  u50=$(us 50 <<<"$up"); u99=$(us 99 <<<"$up"); d50=$(us 50 <<<"$down"); d99=$(us 99 <<<"$down")
  urps=$(awk '/Requests\/sec/{print $2}' <<<"$up"); drps=$(awk '/Requests\/sec/{print $2}' <<<"$down")
  ratio=$(awk -v a="$d99" -v b="$u99" 'BEGIN{printf "%.2f", (b>0)?a/b:0}')
  ratios+=("$ratio")
  printf "%-4s %10s %10s %10s %10s %8s %10s %10s   (kafka written before: %s, dropped while down: %s)\n" \
    "$run" "$u50" "$u99" "$d50" "$d99" "$ratio" "$urps" "$drps" "${written:-0}" "$dropped"
done
median=$(printf "%s\n" "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}')
worst=$(printf "%s\n" "${ratios[@]}" | sort -n | tail -1)
echo "p99 down/up: median $median, worst $worst over $RUNS runs (target: within 1.2)"
echo "json {\"runs\": $RUNS, \"median_ratio\": $median, \"worst_ratio\": $worst, \"ratios\": [$(IFS=,; echo "${ratios[*]}")]}"
