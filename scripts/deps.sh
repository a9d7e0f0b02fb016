#!/usr/bin/env bash
# Installs the Debian packages Sluice needs. Usage: scripts/deps.sh build|test|bench
#   build: cmake (libz-ng-sys, aws-lc-sys), protoc (etcd-client), a C toolchain
#   test:  build + etcd, Redis, curl, wrk, h2load, Prometheus + promtool, Chromium +
#          chromedriver (the integration tests start real ones), python3-venv, and (see
#          the end) the Kafka-protocol broker tansu and a venv with confluent-kafka
#          (librdkafka) for the log-sink tests and opentelemetry-proto for the tracing tests;
#          kubectl (kubernetes-client, for `kubectl kustomize`) and kubernetes-validate in
#          the venv for tests/deploy.rs; valgrind (callgrind) for the cost guard
#          (scripts/cost-guard.sh)
#   bench: test + nginx, HAProxy (../shared/bench/peers/run.sh)
set -euo pipefail
want=(cmake protobuf-compiler libprotobuf-dev build-essential pkg-config curl)
case "${1:-build}" in
  build) ;;
  test) want+=(etcd-server etcd-client redis-server wrk nghttp2-client prometheus chromium chromium-driver python3-venv valgrind) ;;
  bench) want+=(etcd-server etcd-client redis-server wrk nghttp2-client prometheus nginx haproxy valgrind) ;;
  *) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
esac
# tests/deploy.rs renders the Kustomize overlays with `kubectl kustomize`: Debian's
# kubernetes-client, unless a kubectl (another package's) is installed already, which
# would conflict with it over /usr/bin/kubectl.
if [ "${1:-build}" = test ] && ! command -v kubectl >/dev/null 2>&1; then
  want+=(kubernetes-client)
fi
missing=()
for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${1:-build}" = test ]; then
  # tansu: the Kafka-compatible broker the log-sink tests start (tests/support/kafka.rs).
  # Installed once into ~/.cargo/bin, where it stays; a cold install takes 10-35 minutes
  # on 2 shared cores (35 min measured with other builds running), so it runs only when
  # tansu is missing.
  if ! command -v tansu >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
    echo "installing tansu (cargo install tansu --features dynostore --locked)" >&2
    cargo install tansu --features dynostore --locked \
      || cargo install tansu --features dynostore
  fi
  # librdkafka through confluent-kafka, the independent client the tests read back with.
  venv="${SLUICE_TEST_VENV:-$HOME/.cache/sluice/venv}"
  # opentelemetry-proto: the tracing tests' OTLP receiver decodes with it.
  # kubernetes-validate (it brings jsonschema and PyYAML): the offline schema checks of
  # tests/deploy.rs (tests/fixtures/deploy/validate.py).
  # grpcio and grpcio-tools: the real gRPC server behind the gRPC-Web tests (stubs made
  # from tests/fixtures/grpc/echo.proto at test time); brotli and zstandard: the
  # compression tests' Python client decodes every coding with them.
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import confluent_kafka, opentelemetry.proto, kubernetes_validate, jsonschema, grpc, grpc_tools, brotli, zstandard" 2>/dev/null; then
    echo "creating $venv with confluent-kafka, opentelemetry-proto, kubernetes-validate, jsonschema, grpcio, grpcio-tools, brotli and zstandard" >&2
    mkdir -p "$(dirname "$venv")"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q confluent-kafka opentelemetry-proto kubernetes-validate jsonschema \
      grpcio grpcio-tools brotli zstandard
  fi
fi
