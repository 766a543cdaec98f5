#!/usr/bin/env bash
# The wildcard-flood measurement of docs/benchmarks.md: scenario 7
# (`sockeye-bench wildcard`) against one `sockeye` binary, in three cases:
#
#   none      no attacker: a healthy client's round trips on an idle broker
#   repeat    the reported flood (64 connections x 256 filters, one token),
#             the healthy client publishing to one near-miss topic
#   distinct  the same flood, a new near-miss topic for every publish (no
#             cached match can help: the worst case of the match itself)
#
#   bench/wildcard.sh                                  # target/release/sockeye
#   WILDCARD_SOCKEYE=/path/to/old/sockeye bench/wildcard.sh
#   WILDCARD_CALLGRIND=1 bench/wildcard.sh             # instructions per publish
#
# With WILDCARD_CALLGRIND=1 the broker runs under `valgrind --tool=callgrind`
# counting only the instructions inside `Engine::publish` (and what it calls:
# encoding, the store, fan-out, the wildcard match), so setup and timers do
# not count; divided by the round trips, that is the cost of one publish.
#
# Environment:
#   WILDCARD_SOCKEYE   the broker binary (default target/release/sockeye)
#   WILDCARD_CASES     cases to run (default "none repeat distinct")
#   WILDCARD_MESSAGES  round trips per run (default 2000; callgrind: 200)
#   WILDCARD_PORT      first loopback port of the brokers (default 39180; one
#                      more per run)
#   WILDCARD_RESULTS   where the JSON reports go (default a temporary directory)
#   WILDCARD_CALLGRIND 1: count instructions instead of timing
#   WILDCARD_ENV       extra VAR=value settings for the broker, space-separated
#                      (e.g. "SOCKEYE_LIMITS__WILDCARD_MATCH_CACHE=0")
#
# Every run is bounded: the generator has --deadline and an outer `timeout`;
# the broker is stopped by its PID, also on exit or Ctrl-C.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SCRIPT_NAME=wildcard.sh
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

SOCKEYE=${WILDCARD_SOCKEYE:-$ROOT/target/release/sockeye}
BENCH=$ROOT/target/release/sockeye-bench
CONFIG=$ROOT/bench/sockeye-bench.toml
CASES=${WILDCARD_CASES:-"none repeat distinct"}
CALLGRIND=${WILDCARD_CALLGRIND:-}
if [[ -n "$CALLGRIND" ]]; then
  MESSAGES=${WILDCARD_MESSAGES:-200}
else
  MESSAGES=${WILDCARD_MESSAGES:-2000}
fi
PORT=${WILDCARD_PORT:-39180}
read -r -a EXTRA_ENV <<<"${WILDCARD_ENV:-}"
RUN_LIMIT=900

for binary in "$SOCKEYE" "$BENCH"; do
  [[ -x "$binary" ]] || {
    echo "wildcard.sh: $binary missing: cargo build --release -p sockeye -p sockeye-bench" >&2
    exit 2
  }
done
[[ -z "$CALLGRIND" ]] || need_package valgrind valgrind

WORK=$(mktemp -d /tmp/sockeye-wildcard.XXXXXX)
RESULTS=${WILDCARD_RESULTS:-$WORK/results}
mkdir -p "$RESULTS"
BROKER_PID=""
cleanup() {
  if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill -KILL "$BROKER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export BENCH_TOKEN
BENCH_TOKEN=$("$SOCKEYE" token --config "$CONFIG" --data-dir "$WORK/token" --sub bench --ttl 24h)
export BENCH_HEALTHY_TOKEN
BENCH_HEALTHY_TOKEN=$("$SOCKEYE" token --config "$CONFIG" --data-dir "$WORK/token" --sub healthy --ttl 24h)


RUN=0
# start_broker OUT_FILE: a fresh broker (under callgrind if asked) on a port of
# its own (the last run's closed connections may hold the previous one in
# TIME-WAIT); sets BROKER_PID and BROKER_PORT.
start_broker() {
  RUN=$((RUN + 1))
  BROKER_PORT=$((PORT + RUN - 1))
  if port_open "$BROKER_PORT"; then
    echo "wildcard.sh: port $BROKER_PORT is in use; set WILDCARD_PORT" >&2
    exit 2
  fi
  local wrapper=()
  if [[ -n "$CALLGRIND" ]]; then
    # Counted from the engine's publish in, which holds the hub's wildcard
    # matching and fan-out (the seam's entry point; before it, the module
    # `topics`).
    wrapper=(valgrind --tool=callgrind --fair-sched=yes "--callgrind-out-file=$1"
      "--toggle-collect=sockeye_broker::engine::Engine::publish")
  fi
  env "${EXTRA_ENV[@]}" RUST_LOG=warn "${wrapper[@]}" "$SOCKEYE" serve --config "$CONFIG" \
    --data-dir "$WORK/data-$RUN" --listen "127.0.0.1:$BROKER_PORT" >"$WORK/broker-$RUN.log" 2>&1 &
  BROKER_PID=$!
  wait_listening "$BROKER_PORT" "$BROKER_PID" "$WORK/broker-$RUN.log" "the broker" 600
}

stop_broker() {
  stop_pids 600 "$BROKER_PID"
  BROKER_PID=""
}

# measure CASE MESSAGES JSON
measure() {
  local case=$1 messages=$2 json=$3
  local args=(--messages "$messages")
  case "$case" in
    none) args+=(--attackers 0) ;;
    repeat) ;;
    distinct) args+=(--distinct) ;;
    *) echo "wildcard.sh: unknown case $case" >&2; exit 2 ;;
  esac
  timeout --kill-after=10 "$RUN_LIMIT" "$BENCH" wildcard --target sockeye \
    --url "ws://127.0.0.1:$BROKER_PORT/ws" --broker-pid "$BROKER_PID" \
    --deadline "$((RUN_LIMIT - 10))s" --duration "$((RUN_LIMIT - 60))s" \
    --label "$(basename "$SOCKEYE")" --json "$json" "${args[@]}" >&2
}

# The broker's total instruction count in a callgrind output file.
instructions() { awk '/^(summary|totals):/ { print $2; exit }' "$1"; }

for case in $CASES; do
  if [[ -z "$CALLGRIND" ]]; then
    start_broker ""
    measure "$case" "$MESSAGES" "$RESULTS/wildcard-$case.json"
    stop_broker
    python3 - "$case" "$RESULTS/wildcard-$case.json" <<'EOF'
import json, sys
case, path = sys.argv[1], sys.argv[2]
report = json.load(open(path))
lat = report.get("latency_us") or {}
extra = report.get("extra", {})
refused = ", ".join(f"{k[len('filters_refused_'):]} {int(v)}" for k, v in sorted(extra.items())
                    if k.startswith("filters_refused_"))
print(f"{case}: {report['delivered']}/{report['published']} round trips, "
      f"p50 {lat.get('p50', 0):.0f} us, p99 {lat.get('p99', 0):.0f} us, max {lat.get('max', 0):.0f} us, "
      f"broker CPU {extra.get('broker_cpu_us_per_publish', 0):.1f} us/publish, "
      f"filters accepted {int(extra.get('filters_accepted', 0))}"
      + (f", refused: {refused}" if refused else "") + f", ok {report['ok']}")
EOF
  else
    out="$WORK/callgrind-$case.out"
    start_broker "$out"
    measure "$case" "$MESSAGES" "$RESULTS/wildcard-$case-callgrind.json"
    stop_broker
    total=$(instructions "$out")
    echo "$case: $((total / MESSAGES)) instructions per publish" \
      "($total in Engine::publish for $MESSAGES round trips)"
  fi
done
