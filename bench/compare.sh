#!/usr/bin/env bash
# Sockeye side by side with a raw tokio-tungstenite baseline and nats-server
# over WebSocket, on this machine, in one run, with one load generator.
#
#   bench/compare.sh            # the full matrix (about 25 minutes)
#   BENCH_PROFILE=quick bench/compare.sh   # a few cases, 2 s each (about 3 minutes)
#
# For each case it starts a fresh target process on loopback (its own config),
# runs `sockeye-bench <scenario> ... --json`, and stops the target by PID.
# Then `sockeye-bench report` writes bench/results/summary.md, the chart
# bench/results/chart.svg, and the results section of docs/benchmarks.md.
#
# Environment:
#   BENCH_PROFILE     full (default) or quick
#   BENCH_DURATION    publishing time per run (default 5s; quick: 2s)
#   BENCH_TARGETS     targets to run (default "sockeye baseline nats")
#   BENCH_RESULTS     where JSON, summary.md and chart.svg go (default bench/results;
#                     its *.json files are deleted first)
#   BENCH_DOCS        markdown file whose results section is replaced
#                     (default docs/benchmarks.md; set to "" to leave it alone)
#   BENCH_PORT_BASE   first of the loopback ports used (default 39080):
#                     sockeye +0, baseline +10, nats WebSocket +20, nats client +21
#   BENCH_NO_BUILD=1  use the existing target/release binaries
#
# Every run is bounded: each generator run has --deadline and an outer
# `timeout`; every target process is stopped by its PID, also on exit or Ctrl-C.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PROFILE=${BENCH_PROFILE:-full}
case "$PROFILE" in
  full) DURATION=${BENCH_DURATION:-5s} ;;
  quick) DURATION=${BENCH_DURATION:-2s} ;;
  *) echo "compare.sh: BENCH_PROFILE must be full or quick, not $PROFILE" >&2; exit 2 ;;
esac
TARGETS=${BENCH_TARGETS:-"sockeye baseline nats"}
RESULTS=${BENCH_RESULTS:-$ROOT/bench/results}
DOCS=${BENCH_DOCS-$ROOT/docs/benchmarks.md}
PORT_BASE=${BENCH_PORT_BASE:-39080}
SOCKEYE_PORT=$PORT_BASE
BASELINE_PORT=$((PORT_BASE + 10))
NATS_WS_PORT=$((PORT_BASE + 20))
NATS_PORT=$((PORT_BASE + 21))
CONFIG=$ROOT/bench/sockeye-bench.toml
SOCKEYE=$ROOT/target/release/sockeye
BENCH=$ROOT/target/release/sockeye-bench
# Longest a single generator run may take, setup (10,000+ connections) included.
RUN_LIMIT=300

log() { printf '\n== %s\n' "$*" >&2; }

if [[ "${BENCH_NO_BUILD:-}" != 1 ]]; then
  log "building release binaries"
  cargo build --release -p sockeye -p sockeye-bench
fi
for binary in "$SOCKEYE" "$BENCH"; do
  [[ -x "$binary" ]] || { echo "compare.sh: $binary missing (unset BENCH_NO_BUILD)" >&2; exit 2; }
done

if [[ " $TARGETS " == *" nats "* ]] && ! command -v nats-server >/dev/null; then
  log "installing nats-server from Debian"
  apt-get install -y nats-server || { apt-get update && apt-get install -y nats-server; }
fi

WORK=$(mktemp -d /tmp/sockeye-compare.XXXXXX)
TARGET_PID=""
cleanup() {
  if [[ -n "$TARGET_PID" ]] && kill -0 "$TARGET_PID" 2>/dev/null; then
    kill -TERM "$TARGET_PID" 2>/dev/null || true
    sleep 1
    kill -KILL "$TARGET_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$WORK/nats.conf" <<EOF
# nats-server for the comparison: loopback only, WebSocket without TLS.
host: 127.0.0.1
port: $NATS_PORT
http_port: 0
max_payload: 1MB
websocket {
  host: 127.0.0.1
  port: $NATS_WS_PORT
  no_tls: true
}
EOF

export BENCH_TOKEN
BENCH_TOKEN=$("$SOCKEYE" token --config "$CONFIG" --data-dir "$WORK/token" --sub bench --ttl 24h)

port_of() {
  case "$1" in
    sockeye) echo "$SOCKEYE_PORT" ;;
    baseline) echo "$BASELINE_PORT" ;;
    nats) echo "$NATS_WS_PORT" ;;
  esac
}

url_of() {
  case "$1" in
    nats) echo "ws://127.0.0.1:$NATS_WS_PORT" ;;
    *) echo "ws://127.0.0.1:$(port_of "$1")/ws" ;;
  esac
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_target TARGET [VAR=value ...]: a fresh process; sets TARGET_PID.
RUN_INDEX=0
start_target() {
  local target=$1
  shift
  local port
  port=$(port_of "$target")
  if port_open "$port"; then
    echo "compare.sh: port $port is already in use; set BENCH_PORT_BASE" >&2
    exit 2
  fi
  RUN_INDEX=$((RUN_INDEX + 1))
  local log_file="$WORK/$target-$RUN_INDEX.log"
  case "$target" in
    sockeye)
      env "$@" RUST_LOG=warn "$SOCKEYE" serve --config "$CONFIG" \
        --data-dir "$WORK/sockeye-data-$RUN_INDEX" --listen "127.0.0.1:$port" >"$log_file" 2>&1 &
      ;;
    baseline)
      env "$@" RUST_LOG=warn "$BENCH" baseline --listen "127.0.0.1:$port" --max-lifetime 1h \
        --read-buffer "2 KiB" --write-buffer "16 KiB" >"$log_file" 2>&1 &
      ;;
    nats)
      nats-server -c "$WORK/nats.conf" >"$log_file" 2>&1 &
      ;;
  esac
  TARGET_PID=$!
  for _ in $(seq 100); do
    if port_open "$port"; then return 0; fi
    if ! kill -0 "$TARGET_PID" 2>/dev/null; then break; fi
    sleep 0.2
  done
  echo "compare.sh: $target did not start; its log:" >&2
  cat "$log_file" >&2
  exit 1
}

stop_target() {
  [[ -n "$TARGET_PID" ]] || return 0
  kill -TERM "$TARGET_PID" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$TARGET_PID" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL "$TARGET_PID" 2>/dev/null || true
  wait "$TARGET_PID" 2>/dev/null || true
  TARGET_PID=""
}

# run NAME TARGET SCENARIO [VAR=value ...] [ARGS...]: one case on a fresh
# target (VAR=value goes to the target's environment). A run that is not ok
# still writes its report (ok: false) and the comparison goes on.
FAILED=0
run() {
  local name=$1 target=$2 scenario=$3
  shift 3
  local env_vars=()
  while [[ $# -gt 0 && "$1" == *=* && "$1" != --* ]]; do env_vars+=("$1"); shift; done
  log "$scenario $name on $target"
  start_target "$target" "${env_vars[@]}"
  if ! timeout --kill-after=10 "$RUN_LIMIT" "$BENCH" "$scenario" --target "$target" \
      --url "$(url_of "$target")" --broker-pid "$TARGET_PID" --deadline "$((RUN_LIMIT - 10))s" \
      --json "$RESULTS/$scenario-$name-$target.json" "$@"; then
    echo "compare.sh: $scenario $name on $target failed" >&2
    FAILED=$((FAILED + 1))
  fi
  stop_target
}

mkdir -p "$RESULTS"
rm -f "$RESULTS"/*.json

if [[ "$PROFILE" == quick ]]; then
  FANOUT_SUBSCRIBERS="100 1000"
  FANOUT_SIZES="100 1024"
  FIXED_SUBSCRIBERS="1000"
  FIXED_SIZES="100"
  IDLE_CONNECTIONS="1000"
  RESUME_MESSAGES="10000"
  TOPICS_SHAPES="10x10"
else
  FANOUT_SUBSCRIBERS="1 100 1000 10000"
  FANOUT_SIZES="100 1024 16384"
  FIXED_SUBSCRIBERS="1 100 1000 10000"
  # Not 16 KiB: at 100k deliveries/s its inflating alone would need more
  # cores than the machine has, so the latency would be the generator's.
  FIXED_SIZES="100 1024"
  IDLE_CONNECTIONS="1000 10000 19000"
  RESUME_MESSAGES="10000 100000"
  TOPICS_SHAPES="100x10 1000x1"
fi

for target in $TARGETS; do
  # Scenario 1: fan-out at max rate and at a fixed 100k deliveries/s.
  for subscribers in $FANOUT_SUBSCRIBERS; do
    for size in $FANOUT_SIZES; do
      run "n$subscribers-s$size-max" "$target" fanout \
        --subscribers "$subscribers" --size "$size" --rate max --duration "$DURATION"
    done
  done
  # The same with compression off, where it would be on: nats-server never
  # compresses, so these rows compare equal work on the subscriber side.
  if [[ "$target" != nats ]]; then
    for subscribers in $FANOUT_SUBSCRIBERS; do
      for size in $FANOUT_SIZES; do
        [[ "$size" -gt 1000 ]] || continue
        run "n$subscribers-s$size-max-plain" "$target" fanout \
          SOCKEYE_WEBSOCKET__COMPRESSION_THRESHOLD="1 MiB" BENCH_BASELINE_COMPRESSION_THRESHOLD="1 MiB" \
          --subscribers "$subscribers" --size "$size" --rate max --duration "$DURATION" --label uncompressed
      done
    done
  fi
  for subscribers in $FIXED_SUBSCRIBERS; do
    for size in $FIXED_SIZES; do
      run "n$subscribers-s$size-100k" "$target" fanout \
        --subscribers "$subscribers" --size "$size" --rate 100000 --duration "$DURATION"
    done
  done
  # Scenario 2: many topics.
  for shape in $TOPICS_SHAPES; do
    run "p${shape%x*}-s${shape#*x}" "$target" topics \
      --publishers "${shape%x*}" --subscribers "${shape#*x}" --size 100 --duration "$DURATION"
  done
  # Scenario 3: idle connections.
  for connections in $IDLE_CONNECTIONS; do
    run "c$connections" "$target" idle --connections "$connections" --settle 3s
  done
  # Scenario 6: connection churn.
  run "k32" "$target" churn --concurrency 32 --duration "$DURATION"
  if [[ "$target" == sockeye ]]; then
    # Scenario 4: durable publish, in both durability modes.
    run "k100-fsync" sockeye durable SOCKEYE_STORE__DURABILITY=fsync \
      --publishers 100 --duration "$DURATION" --label fsync
    run "k100-interval" sockeye durable SOCKEYE_STORE__DURABILITY=interval \
      --publishers 100 --duration "$DURATION" --label interval
    # Scenario 5: resume behind by M messages.
    for messages in $RESUME_MESSAGES; do
      run "m$messages" sockeye resume --messages "$messages"
    done
  fi
done

log "writing the summary"
MODEL=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)
PREAMBLE="Run of $(date -u +%Y-%m-%dT%H:%MZ) at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), \
profile \`$PROFILE\`, $DURATION per run. Machine: $(nproc) cores (${MODEL:-unknown CPU}), \
$(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}') memory, Linux $(uname -r); \
$(rustc --version 2>/dev/null || echo rustc unknown); \
$(command -v nats-server >/dev/null && nats-server --version 2>/dev/null || echo "nats-server not installed"). \
Broker and generator share the machine."
report_args=(--results "$RESULTS" --markdown "$RESULTS/summary.md" --svg "$RESULTS/chart.svg" --preamble "$PREAMBLE")
if [[ -n "$DOCS" ]]; then report_args+=(--docs "$DOCS"); fi
"$BENCH" report "${report_args[@]}"

echo
echo "Results: $RESULTS/*.json"
echo "Tables:  $RESULTS/summary.md"
echo "Chart:   $RESULTS/chart.svg"
[[ -n "$DOCS" ]] && echo "Docs:    $DOCS (results section replaced)"
if [[ "$FAILED" -gt 0 ]]; then
  echo "$FAILED run(s) failed or were not ok: see the tables." >&2
  exit 1
fi
