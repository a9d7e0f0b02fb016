#!/usr/bin/env bash
# The longer fuzz run: the property-based targets of filters/core/tests/fuzz.rs (config
# parser and validator, router, header and cookie parsing, strict request framing,
# the request-line scanner),
# which `cargo test` runs for a few seconds each, run here for about MINUTES in all.
#
#   scripts/fuzz.sh [minutes]        (default 10)
#
# Env: FUZZ_THREADS (targets run at once, default 2), SLUICE_FUZZ_SEED (replay a run).
# Prints one line per target and a summary: cases run, minutes, failures. Exits
# non-zero on any failure; the failing target prints its seed and minimal input.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
threads="${FUZZ_THREADS:-2}"
targets=9
secs=$(( minutes * 60 * threads / targets ))
(( secs > 0 )) || secs=1
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test -p sluice-core --test fuzz --no-run >/dev/null 2>&1 || cargo test -p sluice-core --test fuzz --no-run
start=$(date +%s)
status=0
SLUICE_FUZZ_SECS="$secs" SLUICE_FUZZ_CASES="${SLUICE_FUZZ_CASES:-1000000000000}" \
  cargo test -p sluice-core --test fuzz -- --nocapture --test-threads "$threads" >"$log" 2>&1 || status=$?
end=$(date +%s)
grep -E '^fuzz [a-z_]+: [0-9]+ ' "$log" || true
if (( status != 0 )); then
  grep -E 'panicked|failed \(SLUICE_FUZZ_SEED' "$log" || tail -40 "$log"
fi
awk -v secs="$(( end - start ))" '
  /^fuzz [a-z_]+: [0-9]+ cases in/ {
    cases += $3; n++
    for (i = 1; i < NF; i++) if ($(i + 1) ~ /^failures/) fails += $i
  }
  END { printf "fuzz total: %d cases over %d targets in %.1f minutes, %d failures\n", cases, n, secs / 60, fails }
' "$log"
exit "$status"
