#!/usr/bin/env bash
# The cost guard: CPU instructions per proxied request, counted by valgrind's callgrind on
# an optimised binary (the `cost` profile: release with thin LTO), for each case of
# benches/budgets.toml; fails when a case costs more
# than its budget. scripts/test.sh runs it, so a request-path regression cannot land
# unseen. An instruction count barely moves on a busy machine (unlike req/s), which is
# what lets CI hold it to a budget a few percent above the measured figure.
#
# usage: scripts/cost-guard.sh [-n REQUESTS] [-k DIR] [-r] [CASE...]
#   -n  requests counted per case (default 20000, after 2000 to warm up)
#   -k  keep each case's callgrind dump as DIR/CASE.cg, for
#       callgrind_annotate --inclusive=yes DIR/CASE.cg | head -60
#   -r  report only: print the figures, never fail (to set a budget)
#   CASE: the cases to run (default: every case of benches/budgets.toml)
# SLUICE_BIN: the binary to count; without it, target/cost/sluice, built (or brought up
# to date) first with `cargo build --profile cost --locked --bin sluice`.
#
# How: the upstream is benches/cost/upstream.py on 127.0.0.1:18080 (a fixed 200 like
# the peers' nginx). Each case starts `sluice run --config CONFIG` under callgrind with
# instrumentation off, waits for a 2xx on 127.0.0.1:8080, turns instrumentation on,
# warms up with 2000 requests, zeroes the counters, sends REQUESTS with h2load over 8
# keep-alive connections and divides the dump's total (every thread) by REQUESTS. A case
# over its budget is measured once more and the lower figure kept, so a stray
# background wake-up does not fail CI while a real regression still does.
# Needs valgrind, h2load (nghttp2-client), python3 and curl: scripts/deps.sh test.
set -euo pipefail
cd "$(dirname "$0")/.."
N=20000; KEEP=""; REPORT=0
while getopts "n:k:r" o; do
  case $o in n) N=$OPTARG;; k) KEEP=$OPTARG;; r) REPORT=1;; *) exit 2;; esac
done
shift $((OPTIND - 1))
for t in valgrind callgrind_control h2load python3 curl; do
  command -v $t >/dev/null || { echo "cost guard: missing $t (scripts/deps.sh test)" >&2; exit 2; }
done
BIN=${SLUICE_BIN:-target/cost/sluice}
if [ -z "${SLUICE_BIN:-}" ]; then
  cargo build --profile cost --locked --bin sluice
fi
[ -x "$BIN" ] || { echo "cost guard: no binary at $BIN" >&2; exit 2; }

# The cases: name, config, budget and request headers, from the budgets file.
mapfile -t CASES < <(python3 - "$@" <<'PY'
import sys, tomllib
with open("benches/budgets.toml", "rb") as f:
    cases = tomllib.load(f)
want = sys.argv[1:] or list(cases)
for name in want:
    c = cases[name]
    print("\t".join([name, c["config"], str(int(c["budget"]))] + list(c.get("headers", []))))
PY
)

RUN=$(mktemp -d /tmp/cost-guard.XXXXXX)
PIDS=()
stop() { kill -INT "$1" 2>/dev/null || true; for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
         kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
cleanup() { for p in "${PIDS[@]}"; do stop "$p"; done; rm -rf "$RUN"; }
trap cleanup EXIT
python3 benches/cost/upstream.py 18080 & PIDS+=($!)
for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.1; done

# count NAME CONFIG HEADER... : prints the instructions per request (0 on failure).
count() {
  local name=$1 config=$2; shift 2
  local hdrs=() h
  for h in "$@"; do hdrs+=(-H "$h"); done
  valgrind --tool=callgrind --instr-atstart=no --dump-instr=no \
    --callgrind-out-file="$RUN/cg.out.%p" "$BIN" run --config "$config" >"$RUN/$name.log" 2>&1 &
  local px=$! up=0
  for _ in $(seq 300); do
    curl -fs -o /dev/null "${hdrs[@]}" http://127.0.0.1:8080/ && { up=1; break; }
    kill -0 $px 2>/dev/null || break
    sleep 0.2
  done
  if [ $up = 0 ]; then
    echo "cost guard: $name: no 2xx on 127.0.0.1:8080" >&2; tail -5 "$RUN/$name.log" >&2
    stop $px; echo 0; return
  fi
  callgrind_control -i on $px >/dev/null 2>&1 || true
  h2load --h1 -n 2000 -c 8 -m 1 "${hdrs[@]}" http://127.0.0.1:8080/ >/dev/null 2>&1 || true
  callgrind_control -z $px >/dev/null 2>&1 || true
  local out
  out=$(h2load --h1 -n "$N" -c 8 -m 1 "${hdrs[@]}" http://127.0.0.1:8080/ 2>&1 || true)
  callgrind_control -d $px >/dev/null 2>&1 || true
  sleep 0.5
  stop $px
  local ok total
  ok=$(awk '/^status codes:/{print $3}' <<<"$out")
  if [ "${ok:-0}" != "$N" ]; then
    echo "cost guard: $name: $ok of $N requests answered 2xx" >&2; echo 0; return
  fi
  total=$(awk '/^(summary|totals):/{print $2; exit}' "$RUN/cg.out.$px.1" 2>/dev/null || true)
  [ -n "$KEEP" ] && { mkdir -p "$KEEP"; cp "$RUN/cg.out.$px.1" "$KEEP/$name.cg" 2>/dev/null || true; }
  rm -f "$RUN"/cg.out.*
  echo $(( ${total:-0} / N ))
}

printf "%-16s %12s %12s %8s\n" case instr/req budget "used"
fail=0
for line in "${CASES[@]}"; do
  IFS=$'\t' read -r -a f <<<"$line"
  name=${f[0]} config=${f[1]} budget=${f[2]}
  hdrs=("${f[@]:3}")
  per=$(count "$name" "$config" "${hdrs[@]}")
  if [ "$per" -gt "$budget" ] && [ $REPORT = 0 ]; then
    again=$(count "$name" "$config" "${hdrs[@]}")
    echo "cost guard: $name: $per over its budget $budget; measured again: $again" >&2
    [ "$again" -lt "$per" ] && per=$again
  fi
  pct=$(( budget > 0 ? per * 100 / budget : 0 ))
  verdict=ok
  if [ "$per" = 0 ]; then verdict=ERROR; fail=1
  elif [ "$per" -gt "$budget" ]; then verdict=OVER; [ $REPORT = 0 ] && fail=1
  fi
  printf "%-16s %12s %12s %7s%% %s\n" "$name" "$per" "$budget" "$pct" "$verdict"
done
if [ $fail = 1 ]; then
  echo "cost guard: FAILED. A case costs more than benches/budgets.toml allows: find where with" >&2
  echo "  scripts/cost-guard.sh -k /tmp/cg CASE; callgrind_annotate --inclusive=yes /tmp/cg/CASE.cg | head -60" >&2
  echo "and make it cheaper; raise a budget only with the reason in its comment." >&2
  exit 1
fi
