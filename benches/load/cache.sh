#!/usr/bin/env bash
# Instructions per request of a response-cache hit against plain proxying, one run of
# ../shared/bench/instructions.sh (callgrind, h2load over 8 keep-alive connections):
# nginx, Sluice passthrough (benches/load/passthrough.yaml) and Sluice answering every
# request from its cache (benches/load/cache-hit.yaml). Builds the release binary first.
#
# usage: benches/load/cache.sh [-n REQUESTS]   (arguments go to instructions.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
shared=${SHARED:-$root/../shared}
bin=${SLUICE_BIN:-$root/target/release/sluice}
[ -n "${SLUICE_BIN:-}" ] || cargo build --release --bin sluice --manifest-path "$root/Cargo.toml"
exec "$shared/bench/instructions.sh" "$@" nginx \
  "passthrough=8080=$bin run --config $root/benches/load/passthrough.yaml" \
  "cache-hit=8080=$bin run --config $root/benches/load/cache-hit.yaml"
