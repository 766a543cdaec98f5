#!/usr/bin/env bash
# Instructions per delivery (or per acked publish) of a target, counted by
# `valgrind --tool=callgrind`: unlike wall time on a shared machine, an
# instruction count repeats to within a fraction of a percent, so it shows a
# change of a few percent. (`perf stat -e instructions` would be cheaper, but
# this machine's virtual CPU has no hardware counters: `perf stat -e
# instructions true` prints "<not supported>".)
#
#   bench/instructions.sh                                   # Sockeye and the baseline, 1->1 and 1000x(1->1)
#   INSTR_SOCKEYE_VARIANTS="before=/old/sockeye after=target/release/sockeye" \
#     INSTR_TARGETS=sockeye INSTR_CASES="fanout-n1 fanout-n100 topics-p1000-s1 durable-k100" \
#     bench/instructions.sh                                 # two builds of the broker
#
# Method: the target runs under callgrind (`--fair-sched=yes`: valgrind's
# default scheduler lets a thread spinning on a lock, such as sled's thread
# pool starting up, keep the CPU for whole time slices, which made counts
# vary by up to 20%) from start to exit (every thread, setup and shutdown
# included), twice per measurement, with a small and a
# large number of messages per publisher (`--max-messages`, a count, not a
# time, bounds each run; the generator runs natively). The difference of the
# two instruction totals divided by the difference of the deliveries (acks
# for durable) is the cost of one more delivery: process start, connection
# setup and shutdown cancel out. Under callgrind the target is 20-50x slower
# than the generator, so it always has input waiting and works in full
# batches; the figure is the cost of the target's own work per delivery,
# not of its idle wake-ups.
#
# Environment:
#   INSTR_TARGETS    targets (default "sockeye baseline"; nats-server is a Go
#                    program, which valgrind does not run reliably)
#   INSTR_CASES      cases (default "fanout-n1 topics-p1000-s1"; also
#                    fanout-n100 and durable-k100, the latter Sockeye only)
#   INSTR_SOCKEYE    the broker binary (default target/release/sockeye)
#   INSTR_SOCKEYE_VARIANTS  builds to compare, "NAME=PATH NAME=PATH"; runs
#                    alternate between them
#   INSTR_REPEAT     measurements per case and target (default 2), to show
#                    how well the count repeats
#   INSTR_PORT       loopback port of the targets (default 29280, below the
#                    ephemeral range, which outgoing connections draw from)
#   INSTR_KEEP       a directory to keep the callgrind files in (for
#                    callgrind_annotate); default: deleted at the end
#
# Every run is bounded: the generator has --deadline and an outer `timeout`,
# and the target is stopped by its PID, also on exit or Ctrl-C.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SCRIPT_NAME=instructions.sh
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

BENCH=$ROOT/target/release/sockeye-bench
CONFIG=$ROOT/bench/sockeye-bench.toml
TARGETS=${INSTR_TARGETS:-"sockeye baseline"}
CASES=${INSTR_CASES:-"fanout-n1 topics-p1000-s1"}
REPEAT=${INSTR_REPEAT:-2}
PORT=${INSTR_PORT:-29280}
RUN_LIMIT=900

COLUMNS=()
declare -A BINARY_OF=()
for target in $TARGETS; do
  case "$target" in
    sockeye)
      for spec in ${INSTR_SOCKEYE_VARIANTS:-"sockeye=${INSTR_SOCKEYE:-$ROOT/target/release/sockeye}"}; do
        [[ "$spec" == *=* ]] || { echo "instructions.sh: INSTR_SOCKEYE_VARIANTS entries are NAME=PATH" >&2; exit 2; }
        COLUMNS+=("sockeye:${spec%%=*}")
        BINARY_OF["sockeye:${spec%%=*}"]=${spec#*=}
      done
      ;;
    baseline) COLUMNS+=(baseline) ;;
    *) echo "instructions.sh: unknown target $target (sockeye, baseline)" >&2; exit 2 ;;
  esac
done
for binary in "$BENCH" "${BINARY_OF[@]}"; do
  [[ -x "$binary" ]] || {
    echo "instructions.sh: $binary missing: cargo build --release -p sockeye -p sockeye-bench" >&2
    exit 2
  }
done
need_package valgrind valgrind

WORK=$(mktemp -d /tmp/sockeye-instructions.XXXXXX)
KEEP=${INSTR_KEEP:-}
TARGET_PID=""
cleanup() {
  if [[ -n "$TARGET_PID" ]] && kill -0 "$TARGET_PID" 2>/dev/null; then
    kill -KILL "$TARGET_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export BENCH_TOKEN
TOKEN_MINTER=${BINARY_OF[${COLUMNS[0]}]:-}
[[ -n "$TOKEN_MINTER" ]] || TOKEN_MINTER=$ROOT/target/release/sockeye
BENCH_TOKEN=$("$TOKEN_MINTER" token --config "$CONFIG" --data-dir "$WORK/token" --sub bench --ttl 24h)


# start_target COLUMN OUT: the target under callgrind; sets TARGET_PID.
start_target() {
  local column=$1 out=$2
  if port_open "$PORT"; then
    echo "instructions.sh: port $PORT is in use; set INSTR_PORT" >&2
    exit 2
  fi
  local callgrind=(valgrind --tool=callgrind --fair-sched=yes "--callgrind-out-file=$out")
  case "$column" in
    sockeye:*)
      RUST_LOG=warn "${callgrind[@]}" "${BINARY_OF[$column]}" serve --config "$CONFIG" \
        --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" >"$WORK/target.log" 2>&1 &
      ;;
    baseline)
      RUST_LOG=warn "${callgrind[@]}" "$BENCH" baseline --listen "127.0.0.1:$PORT" --max-lifetime 1h \
        --read-buffer "2 KiB" --write-buffer "16 KiB" >"$WORK/target.log" 2>&1 &
      ;;
  esac
  TARGET_PID=$!
  wait_listening "$PORT" "$TARGET_PID" "$WORK/target.log" "$column" 600
}

# stop_target: SIGTERM, so the target shuts down and callgrind writes its file.
stop_target() {
  stop_pids 600 "$TARGET_PID"
  TARGET_PID=""
  rm -rf "$WORK/data"
}

# The target's total instruction count in a callgrind output file.
instructions() { awk '/^(summary|totals):/ { print $2; exit }' "$1"; }

# The generator's arguments for CASE with N messages per publisher.
case_args() {
  local id=$1 messages=$2
  case "$id" in
    fanout-n*) echo "fanout --subscribers ${id#fanout-n} --size 100 --rate max --max-messages $messages --stall-timeout 60s" ;;
    topics-p*-s*)
      local shape=${id#topics-p}
      echo "topics --publishers ${shape%-s*} --subscribers ${shape#*-s} --size 100 --max-messages $messages --stall-timeout 60s"
      ;;
    durable-k*) echo "durable --publishers ${id#durable-k} --max-messages $messages" ;;
    *) echo "instructions.sh: unknown case $id" >&2; exit 2 ;;
  esac
}

# Messages per publisher of the small and the large run (multiples of the
# fan-out window's block of 64, so the counts are exact).
sizes_of() {
  case "$1" in
    fanout-n1) echo "10240 51200" ;;
    fanout-n*) echo "1024 5120" ;;
    topics-*) echo "64 256" ;;
    durable-*) echo "100 500" ;;
  esac
}

# measure CASE COLUMN N: one run; sets INSTRUCTIONS and DELIVERED. (Not
# called in a command substitution: a subshell would neither keep RUN nor
# stop its target on a failure.)
RUN=0
INSTRUCTIONS=0
DELIVERED=0
measure() {
  local id=$1 column=$2 messages=$3
  RUN=$((RUN + 1))
  local out="$WORK/callgrind-$RUN.out" json="$WORK/run-$RUN.json"
  start_target "$column" "$out"
  local target=${column%%:*}
  # Under callgrind the target drains a backlog at a few thousand
  # deliveries/s (1000 topics): give it time, within the run's bound.
  local drain=(--drain-timeout "$((RUN_LIMIT - 180))s")
  # shellcheck disable=SC2046 # the case's arguments are words
  timeout --kill-after=10 "$RUN_LIMIT" "$BENCH" $(case_args "$id" "$messages") \
    --target "$target" --url "ws://127.0.0.1:$PORT/ws" --broker-pid "$TARGET_PID" \
    --duration "$((RUN_LIMIT - 120))s" --deadline "$((RUN_LIMIT - 10))s" \
    --connect-timeout 60s "${drain[@]}" --json "$json" >"$WORK/generator.log" 2>&1 || {
    echo "instructions.sh: $id on $column failed:" >&2
    cat "$WORK/generator.log" >&2
    exit 1
  }
  stop_target
  [[ -s "$out" ]] || { echo "instructions.sh: callgrind wrote no $out" >&2; exit 1; }
  if [[ -n "$KEEP" ]]; then
    mkdir -p "$KEEP"
    cp "$out" "$KEEP/$id-${column/:/-}-$messages-$RUN.out"
  fi
  DELIVERED=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["ok"], r; print(r["delivered"])' "$json")
  INSTRUCTIONS=$(instructions "$out")
}

printf '%-18s %-16s %14s %14s %14s %14s %10s\n' case target "small run" "deliveries" "large run" "deliveries" "per unit" >&2
for id in $CASES; do
  read -r small large <<<"$(sizes_of "$id")"
  for repeat in $(seq "$REPEAT"); do
    for column in "${COLUMNS[@]}"; do
      if [[ "$id" == durable-* && "$column" != sockeye:* ]]; then continue; fi
      measure "$id" "$column" "$small"
      i1=$INSTRUCTIONS d1=$DELIVERED
      measure "$id" "$column" "$large"
      i2=$INSTRUCTIONS d2=$DELIVERED
      per=$(((i2 - i1) / (d2 - d1)))
      # A small run that counts more than 60% of the large one (normal:
      # 20-40%) did extra work of its own (a slow start, a background pass): its
      # difference means nothing; measure again.
      note=""
      if ((i1 * 5 > i2 * 3)); then note="  (small run out of line: repeat)"; fi
      printf '%-18s %-16s %14s %14s %14s %14s %10s%s\n' "$id" "${column#sockeye:}" "$i1" "$d1" "$i2" "$d2" "$per" "$note"
    done
  done
done
