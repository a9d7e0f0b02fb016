#!/usr/bin/env bash
# Mirroring's effect on client latency, in one run of ../shared/bench/peers/run.sh:
#   sluice            passthrough.yaml, no mirror
#   mirror-healthy    every request also copied to a healthy upstream (the same nginx)
#   mirror-hang       every request also copied to a mirror that never answers
#                     (benches/load/hang.py on 127.0.0.1:18099)
# The sluice process (proxy worker and background runtime, where copies are sent) is
# pinned to CPU 1, wrk, nginx and hang.py to CPU 0.
#
# usage: benches/load/mirror.sh [-d SECONDS] [-c CONNECTIONS]   (arguments go to run.sh)
#   SLUICE=path/to/sluice picks the binary (default: target/release/sluice, built here).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
shared=${SHARED:-$root/../shared}
bin=${SLUICE:-}
if [ -z "$bin" ]; then
  cargo build --release --bin sluice --manifest-path "$root/Cargo.toml"
  bin=$root/target/release/sluice
fi
taskset -c 0 python3 "$root/benches/load/hang.py" 18099 &
hang=$!
trap 'kill "$hang" 2>/dev/null; wait "$hang" 2>/dev/null' EXIT
"$shared/bench/peers/run.sh" "$@" \
  "sluice=8080=$bin run --config $root/benches/load/passthrough.yaml" \
  "mirror-healthy=8080=$bin run --config $root/benches/load/mirror-healthy.yaml" \
  "mirror-hang=8080=$bin run --config $root/benches/load/mirror-hang.yaml"
