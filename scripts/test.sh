#!/usr/bin/env bash
# The README's test command, and what CI runs (.ci/run calls exactly this).
# Installs what the tests need (cmake, protoc, etcd, Redis, wrk, h2load), then runs the
# whole suite: formatting, lints (clippy, warnings denied), unit tests, and the black-box
# integration tests that start the real sluice binary against real upstreams and etcd.
set -euo pipefail
cd "$(dirname "$0")/.."
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
