#!/usr/bin/env bash
# Installs the Debian packages Sluice needs. Usage: scripts/deps.sh build|test|bench
#   build: cmake (libz-ng-sys, aws-lc-sys), protoc (etcd-client), a C toolchain
#   test:  build + etcd, Redis, curl, wrk, h2load, Prometheus + promtool, Chromium + chromedriver (the integration tests start real ones)
#   bench: test + nginx, HAProxy (../shared/bench/peers/run.sh)
set -euo pipefail
want=(cmake protobuf-compiler libprotobuf-dev build-essential pkg-config curl)
case "${1:-build}" in
  build) ;;
  test) want+=(etcd-server etcd-client redis-server wrk nghttp2-client prometheus chromium chromium-driver) ;;
  bench) want+=(etcd-server etcd-client redis-server wrk nghttp2-client prometheus nginx haproxy) ;;
  *) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
esac
missing=()
for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
