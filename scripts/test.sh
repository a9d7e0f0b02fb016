#!/usr/bin/env bash
# The README's test command, and what CI runs (.ci/run calls exactly this).
# Installs what the tests need (cmake, protoc, etcd, Redis, wrk, h2load, valgrind), then
# runs the whole suite: formatting, lints (clippy, warnings denied), unit tests, the
# black-box integration tests that start the real sluice binary against real upstreams
# and etcd, and the cost guard (instructions per request against benches/budgets.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
# The cost guard (last step) counts instructions per request on an optimised build (the
# `cost` profile: release with thin LTO). A cold optimised build is the longest single
# step, so it starts first, in its own target directory (a second cargo on `target`
# would wait for the first's lock) and at the lowest priority: it uses the CPU the steps
# below leave idle and never slows the integration tests.
scripts/deps.sh build
mkdir -p target
( CARGO_TARGET_DIR=target/guard exec nice -n 19 cargo build --profile cost --locked --bin sluice \
    >target/guard-build.log 2>&1 ) &
release=$!
trap 'kill $release 2>/dev/null || true' EXIT
scripts/deps.sh test
# Where the log-sink tests find tansu and the confluent-kafka venv (tests/support/kafka.rs).
export SLUICE_TEST_PYTHON="${SLUICE_TEST_VENV:-$HOME/.cache/sluice/venv}/bin/python"
[ -x "$HOME/.cargo/bin/tansu" ] && export SLUICE_TANSU="${SLUICE_TANSU:-$HOME/.cargo/bin/tansu}"
cargo fmt --all -- --check
# The integration tests need the test-only filter kinds (a `panic` kind, to show that a
# bug in one request does not take the process down); a build without this feature, as
# every release build is, does not contain them.
FEATURES=(--features sluice-gateway/test-kinds)
cargo clippy --workspace --all-targets --locked "${FEATURES[@]}" -- -D warnings
cargo build --workspace --all-targets --locked "${FEATURES[@]}"
cargo test --workspace --locked "${FEATURES[@]}" -- --test-threads 4
if ! wait "$release"; then
  tail -30 target/guard-build.log >&2
  echo "the optimised build for the cost guard failed" >&2
  exit 1
fi
# Instructions per request for passthrough and the full pipeline, against
# benches/budgets.toml.
SLUICE_BIN=target/guard/cost/sluice scripts/cost-guard.sh
