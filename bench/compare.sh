#!/usr/bin/env bash
# Sockeye side by side with a raw tokio-tungstenite baseline and nats-server
# over WebSocket, on this machine, in one run, with one load generator.
#
#   bench/compare.sh                        # the full matrix, 3 repetitions (about 80 minutes)
#   BENCH_PROFILE=quick bench/compare.sh    # the headline cases, 3 repetitions (under 10 minutes)
#
# The method (docs/benchmarks.md, "Method"): for every repetition, for every
# case, the targets run **back to back** (sockeye, baseline, nats; the order
# rotates by one each repetition, so no target always runs first), each on a
# fresh process on loopback. A ratio is taken between the runs of one case in
# one repetition, never between blocks of runs minutes apart, and the report
# shows the median of those ratios with their range. Repetitions are the outer
# loop, so a burst of other load on the machine hits one repetition of a few
# cases rather than every repetition of one case.
#
# Each run is `sockeye-bench <scenario> ... --repetition N --json`, which
# records the target's and the generator's CPU and flags a run where the
# generator was saturated. Then `sockeye-bench report` writes
# bench/results/summary.md, the chart bench/results/chart.svg, and the results
# section of docs/benchmarks.md.
#
# The cluster column (scenario 8) is a Redis (Debian's redis-server,
# installed when missing; `appendonly yes`, `appendfsync everysec`, no RDB
# snapshots) and three Sockeye nodes with `--engine redis`, all fresh per
# run: subscribers on nodes 1 and 2, the publisher on node 3. Its cases run
# on the single node too (sled), so the two share a row.
#
# Environment:
#   BENCH_PROFILE      full (default) or quick
#   BENCH_REPETITIONS  repetitions of every case (default 3)
#   BENCH_DURATION     publishing time per run (default 5s; quick: 3s)
#   BENCH_TARGETS      targets to run (default "sockeye baseline nats cluster")
#   BENCH_CASES        run only these cases of the profile (space-separated
#                      ids such as "fanout-n100-s100-max topics-p1000-s1
#                      durable-k100-fsync"; the JSON files are named after them)
#   BENCH_SOCKEYE      the broker binary (default target/release/sockeye)
#   BENCH_SOCKEYE_VARIANTS
#                      compare builds of the broker in the same interleaved
#                      run, as "NAME=PATH NAME=PATH" (e.g. "before=/old/sockeye
#                      after=target/release/sockeye"): each is a column of its
#                      own, and the report adds each later build / the first
#   BENCH_RESULTS      where JSON, summary.md and chart.svg go (default bench/results;
#                      its *.json files are deleted first)
#   BENCH_DOCS         markdown file whose results section is replaced
#                      (default docs/benchmarks.md; set to "" to leave it alone)
#   BENCH_PORT_BASE    first of the loopback ports used (default 29080, below
#                      Linux's ephemeral range 32768-60999, where a client's or a
#                      node's outgoing connection could hold the port):
#                      sockeye +0, baseline +10, nats WebSocket +20, nats client +21,
#                      cluster: Redis +30, nodes +31, +32, +33
#   BENCH_NO_BUILD=1   use the existing target/release binaries
#
# Every run is bounded: each generator run has --deadline and an outer
# `timeout`; every target process is stopped by its PID, also on exit or Ctrl-C.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SCRIPT_NAME=compare.sh
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

PROFILE=${BENCH_PROFILE:-full}
case "$PROFILE" in
  full) DURATION=${BENCH_DURATION:-5s} ;;
  quick) DURATION=${BENCH_DURATION:-3s} ;;
  *) echo "compare.sh: BENCH_PROFILE must be full or quick, not $PROFILE" >&2; exit 2 ;;
esac
REPETITIONS=${BENCH_REPETITIONS:-3}
[[ "$REPETITIONS" =~ ^[1-9][0-9]*$ ]] || {
  echo "compare.sh: BENCH_REPETITIONS must be a positive number, not $REPETITIONS" >&2
  exit 2
}
TARGETS=${BENCH_TARGETS:-"sockeye baseline nats cluster"}
RESULTS=${BENCH_RESULTS:-$ROOT/bench/results}
DOCS=${BENCH_DOCS-$ROOT/docs/benchmarks.md}
PORT_BASE=${BENCH_PORT_BASE:-29080}
SOCKEYE_PORT=$PORT_BASE
BASELINE_PORT=$((PORT_BASE + 10))
NATS_WS_PORT=$((PORT_BASE + 20))
NATS_PORT=$((PORT_BASE + 21))
REDIS_PORT=$((PORT_BASE + 30))
NODE_PORTS=($((PORT_BASE + 31)) $((PORT_BASE + 32)) $((PORT_BASE + 33)))
CONFIG=$ROOT/bench/sockeye-bench.toml
SOCKEYE=${BENCH_SOCKEYE:-$ROOT/target/release/sockeye}
BENCH=$ROOT/target/release/sockeye-bench
# Longest a single generator run may take, setup (10,000+ connections) included.
RUN_LIMIT=300
STARTED=$SECONDS
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

log() { printf '\n== %s\n' "$*" >&2; }

if [[ "${BENCH_NO_BUILD:-}" != 1 ]]; then
  log "building release binaries"
  cargo build --release -p sockeye -p sockeye-bench
fi

# The columns: one per target, or one per build of the broker.
COLUMNS=()
declare -A BINARY_OF=()
for target in $TARGETS; do
  case "$target" in
    sockeye)
      if [[ -n "${BENCH_SOCKEYE_VARIANTS:-}" ]]; then
        for spec in $BENCH_SOCKEYE_VARIANTS; do
          name=${spec%%=*}
          path=${spec#*=}
          [[ "$name" =~ ^[A-Za-z0-9_-]+$ && "$spec" == *=* ]] || {
            echo "compare.sh: BENCH_SOCKEYE_VARIANTS entries are NAME=PATH, not $spec" >&2
            exit 2
          }
          COLUMNS+=("sockeye:$name")
          BINARY_OF["sockeye:$name"]=$path
        done
      else
        COLUMNS+=("sockeye")
        BINARY_OF[sockeye]=$SOCKEYE
      fi
      ;;
    baseline | nats) COLUMNS+=("$target") ;;
    cluster)
      COLUMNS+=("cluster")
      BINARY_OF[cluster]=$SOCKEYE
      ;;
    *) echo "compare.sh: unknown target $target (sockeye, baseline, nats, cluster)" >&2; exit 2 ;;
  esac
done
for binary in "$BENCH" "${BINARY_OF[@]}"; do
  [[ -x "$binary" ]] || { echo "compare.sh: $binary missing (unset BENCH_NO_BUILD)" >&2; exit 2; }
done
# Tokens are minted by the first broker binary; every build reads the same
# secret from the config.
TOKEN_MINTER=${BINARY_OF[${COLUMNS[0]}]:-$SOCKEYE}
[[ -x "$TOKEN_MINTER" ]] || TOKEN_MINTER=$SOCKEYE

[[ " $TARGETS " != *" nats "* ]] || need_package nats-server nats-server
[[ " $TARGETS " != *" cluster "* ]] || need_package redis-server redis-server

WORK=$(mktemp -d /tmp/sockeye-compare.XXXXXX)
# The target's processes: TARGET_PID is the one whose URL publishers use
# (the generator's --broker-pid); EXTRA_PIDS are the cluster's others.
TARGET_PID=""
EXTRA_PIDS=()
cleanup() {
  local pid
  for pid in $TARGET_PID "${EXTRA_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 1
  for pid in $TARGET_PID "${EXTRA_PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
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
BENCH_TOKEN=$("$TOKEN_MINTER" token --config "$CONFIG" --data-dir "$WORK/token" --sub bench --ttl 24h)

target_of() { echo "${1%%:*}"; }
# What the generator's --target is: the cluster is Sockeye too.
generator_target_of() { [[ "$1" == cluster ]] && echo sockeye || echo "$1"; }
variant_of() { [[ "$1" == *:* ]] && echo "${1#*:}" || true; }

port_of() {
  case "$1" in
    sockeye) echo "$SOCKEYE_PORT" ;;
    baseline) echo "$BASELINE_PORT" ;;
    nats) echo "$NATS_WS_PORT" ;;
    cluster) echo "${NODE_PORTS[2]}" ;;
  esac
}

url_of() {
  case "$1" in
    nats) echo "ws://127.0.0.1:$NATS_WS_PORT" ;;
    *) echo "ws://127.0.0.1:$(port_of "$1")/ws" ;;
  esac
}


# start_cluster LOG_PREFIX: Redis and three nodes; sets TARGET_PID (node 3)
# and EXTRA_PIDS (nodes 1 and 2, Redis).
start_cluster() {
  local prefix=$1 port
  for port in "$REDIS_PORT" "${NODE_PORTS[@]}"; do
    if port_open "$port"; then
      echo "compare.sh: port $port is already in use; set BENCH_PORT_BASE" >&2
      exit 2
    fi
  done
  mkdir -p "$WORK/redis"
  # AOF with a background fsync every second, as a cluster would run; no
  # RDB snapshots (a fork in the middle of a run).
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly yes \
    --appendfsync everysec --dir "$WORK/redis" --protected-mode yes \
    >"$prefix-redis.log" 2>&1 &
  local redis_pid=$!
  EXTRA_PIDS=("$redis_pid")
  wait_listening "$REDIS_PORT" "$redis_pid" "$prefix-redis.log" "redis-server"
  local node pids=()
  for node in 0 1 2; do
    RUST_LOG=warn SOCKEYE_ENGINE__REDIS__NODE_NAME="bench-$node" "${BINARY_OF[cluster]}" serve \
      --config "$CONFIG" --data-dir "$WORK/node-$node" --listen "127.0.0.1:${NODE_PORTS[$node]}" \
      --engine redis --redis-url "redis://127.0.0.1:$REDIS_PORT" >"$prefix-node-$node.log" 2>&1 &
    pids+=($!)
    EXTRA_PIDS+=($!)
  done
  for node in 0 1 2; do
    wait_listening "${NODE_PORTS[$node]}" "${pids[$node]}" "$prefix-node-$node.log" "cluster node $node"
  done
  TARGET_PID=${pids[2]}
  EXTRA_PIDS=("${pids[0]}" "${pids[1]}" "$redis_pid")
}

# start_target COLUMN [VAR=value ...]: a fresh process; sets TARGET_PID.
RUN_INDEX=0
start_target() {
  local column=$1
  shift
  local target port
  target=$(target_of "$column")
  port=$(port_of "$target")
  if port_open "$port"; then
    echo "compare.sh: port $port is already in use; set BENCH_PORT_BASE" >&2
    exit 2
  fi
  RUN_INDEX=$((RUN_INDEX + 1))
  local log_file="$WORK/$target-$RUN_INDEX.log"
  if [[ "$target" == cluster ]]; then
    start_cluster "$WORK/cluster-$RUN_INDEX"
    return 0
  fi
  case "$target" in
    sockeye)
      env "$@" RUST_LOG=warn "${BINARY_OF[$column]}" serve --config "$CONFIG" \
        --data-dir "$WORK/sockeye-data" --listen "127.0.0.1:$port" >"$log_file" 2>&1 &
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
  wait_listening "$port" "$TARGET_PID" "$log_file" "$column"
}

stop_target() {
  [[ -n "$TARGET_PID" ]] || return 0
  stop_pids 50 "$TARGET_PID" "${EXTRA_PIDS[@]}"
  TARGET_PID=""
  EXTRA_PIDS=()
  # A fresh store per run, and no disk filling up over a long run.
  rm -rf "$WORK/sockeye-data" "$WORK/redis" "$WORK"/node-*
}

# supports CASE TARGET: whether the target can run the case.
supports() {
  case "$1" in
    # Through Redis: the cluster only.
    *-redis) [[ "$2" == cluster ]] ;;
    # A stored topic, on one node (sled) and on the cluster.
    cluster-*) [[ "$2" == sockeye || "$2" == cluster ]] ;;
    # The cluster runs only the cases above.
    *) [[ "$2" != cluster ]] && supports_single "$1" "$2" ;;
  esac
}

supports_single() {
  case "$1" in
    durable-* | resume-*) [[ "$2" == sockeye ]] ;;
    # nats-server never compresses: "plain" rows exist to compare with it.
    *-plain) [[ "$2" != nats ]] ;;
    *) true ;;
  esac
}

# run CASE COLUMN REPETITION: one run of a case on a fresh target. The case
# id says what to run (fanout-n<N>-s<S>-max[-plain], fanout-n<N>-s<S>-<R>k,
# topics-p<P>-s<S>, idle-c<C>, churn-k<K>, durable-k<K>-fsync|interval|redis,
# resume-m<M>, cluster-n<N>-s<S>-max, cluster-n<N>-s<S>-<R>k). A run that is not ok still writes its report (ok: false) and
# the comparison goes on.
FAILED=0
run() {
  local id=$1 column=$2 repetition=$3
  local target variant scenario
  target=$(target_of "$column")
  variant=$(variant_of "$column")
  local env_vars=() args=()
  if [[ "$id" =~ ^cluster-n([0-9]+)-s([0-9]+)-(max|([0-9]+)k)$ ]]; then
    scenario=cluster
    local rate=max
    [[ -z "${BASH_REMATCH[4]}" ]] || rate="${BASH_REMATCH[4]}000"
    args=(--subscribers "${BASH_REMATCH[1]}" --size "${BASH_REMATCH[2]}" --rate "$rate" --duration "$DURATION")
    # The single node in `interval` mode: the promise of Redis with
    # `appendfsync everysec` (a crash may take back the last moments), not
    # a wait for fsync before every delivery.
    env_vars=(SOCKEYE_STORE__DURABILITY=interval)
  elif [[ "$id" =~ ^durable-k([0-9]+)-redis$ ]]; then
    scenario=durable
    args=(--publishers "${BASH_REMATCH[1]}" --duration "$DURATION" --label redis)
  elif [[ "$id" =~ ^fanout-n([0-9]+)-s([0-9]+)-max(-plain)?$ ]]; then
    scenario=fanout
    args=(--subscribers "${BASH_REMATCH[1]}" --size "${BASH_REMATCH[2]}" --rate max --duration "$DURATION")
    if [[ -n "${BASH_REMATCH[3]}" ]]; then
      # Compression off where it would be on.
      env_vars=(SOCKEYE_WEBSOCKET__COMPRESSION_THRESHOLD="1 MiB" BENCH_BASELINE_COMPRESSION_THRESHOLD="1 MiB")
      args+=(--label uncompressed)
    fi
  elif [[ "$id" =~ ^fanout-n([0-9]+)-s([0-9]+)-([0-9]+)k$ ]]; then
    scenario=fanout
    args=(--subscribers "${BASH_REMATCH[1]}" --size "${BASH_REMATCH[2]}"
      --rate "${BASH_REMATCH[3]}000" --duration "$DURATION")
  elif [[ "$id" =~ ^topics-p([0-9]+)-s([0-9]+)$ ]]; then
    scenario=topics
    args=(--publishers "${BASH_REMATCH[1]}" --subscribers "${BASH_REMATCH[2]}" --size 100 --duration "$DURATION")
  elif [[ "$id" =~ ^idle-c([0-9]+)$ ]]; then
    scenario=idle
    args=(--connections "${BASH_REMATCH[1]}" --settle 3s)
  elif [[ "$id" =~ ^churn-k([0-9]+)$ ]]; then
    scenario=churn
    args=(--concurrency "${BASH_REMATCH[1]}" --duration "$DURATION")
  elif [[ "$id" =~ ^durable-k([0-9]+)-(fsync|interval)$ ]]; then
    scenario=durable
    env_vars=(SOCKEYE_STORE__DURABILITY="${BASH_REMATCH[2]}")
    args=(--publishers "${BASH_REMATCH[1]}" --duration "$DURATION" --label "${BASH_REMATCH[2]}")
  elif [[ "$id" =~ ^resume-m([0-9]+)$ ]]; then
    scenario=resume
    args=(--messages "${BASH_REMATCH[1]}")
  else
    echo "compare.sh: unknown case $id" >&2
    exit 2
  fi
  [[ -z "$variant" ]] || args+=(--variant "$variant")
  log "repetition $repetition/$REPETITIONS: $id on $column ($((SECONDS - STARTED)) s so far)"
  start_target "$column" "${env_vars[@]}"
  if [[ "$target" == cluster ]]; then
    # Subscribers on nodes 1 and 2, publishers on node 3; the CPU and
    # memory figures are the sum of the three nodes and Redis.
    args+=(--variant redis-3-nodes)
    if [[ "$scenario" == cluster ]]; then
      args+=(--subscriber-url "ws://127.0.0.1:${NODE_PORTS[0]}/ws"
        --subscriber-url "ws://127.0.0.1:${NODE_PORTS[1]}/ws")
    fi
    local pid
    for pid in "${EXTRA_PIDS[@]}"; do args+=(--also-pid "$pid"); done
  fi
  if ! timeout --kill-after=10 "$RUN_LIMIT" "$BENCH" "$scenario" --target "$(generator_target_of "$target")" \
      --url "$(url_of "$target")" --broker-pid "$TARGET_PID" --deadline "$((RUN_LIMIT - 10))s" \
      --repetition "$repetition" --json "$RESULTS/$id-${column/:/-}-r$repetition.json" "${args[@]}"; then
    echo "compare.sh: $id on $column (repetition $repetition) failed" >&2
    FAILED=$((FAILED + 1))
  fi
  stop_target
}

if [[ "$PROFILE" == quick ]]; then
  # The cases of issue 14's targets, at 100 B: fan-out with one, 100 and
  # 1,000 subscribers, latency with one, many topics, durable acks, memory.
  PROFILE_CASES="fanout-n1-s100-max fanout-n100-s100-max fanout-n1000-s100-max
    fanout-n1-s100-100k topics-p1000-s1 topics-p100-s10 idle-c1000 durable-k100-fsync
    durable-k100-interval cluster-n100-s100-max cluster-n100-s100-100k durable-k100-redis"
else
  PROFILE_CASES=""
  # Scenario 1: fan-out at max rate; 1 KiB and 16 KiB also uncompressed
  # (nats-server never compresses, so those rows compare equal work).
  for subscribers in 1 100 1000 10000; do
    for size in 100 1024 16384; do PROFILE_CASES+=" fanout-n$subscribers-s$size-max"; done
  done
  for subscribers in 1 100 1000 10000; do
    for size in 1024 16384; do PROFILE_CASES+=" fanout-n$subscribers-s$size-max-plain"; done
  done
  # At a fixed 100k deliveries/s. Not 16 KiB: at 100k deliveries/s its
  # inflating alone would need more cores than the machine has, so the
  # latency would be the generator's.
  for subscribers in 1 100 1000 10000; do
    for size in 100 1024; do PROFILE_CASES+=" fanout-n$subscribers-s$size-100k"; done
  done
  # Scenarios 2, 3, 6, 4 and 5.
  PROFILE_CASES+=" topics-p100-s10 topics-p1000-s1 idle-c1000 idle-c10000 idle-c19000 churn-k32"
  PROFILE_CASES+=" durable-k100-fsync durable-k100-interval resume-m10000 resume-m100000"
  # Scenario 8: the cluster next to one node, and acks through Redis.
  PROFILE_CASES+=" cluster-n100-s100-max cluster-n1000-s100-max cluster-n100-s100-100k durable-k100-redis"
fi
CASES=${BENCH_CASES:-$PROFILE_CASES}
for id in $CASES; do
  [[ " $(echo $PROFILE_CASES) " == *" $id "* ]] || {
    echo "compare.sh: $id is not a case of the $PROFILE profile: $(echo $PROFILE_CASES)" >&2
    exit 2
  }
done

mkdir -p "$RESULTS"
rm -f "$RESULTS"/*.json

for repetition in $(seq "$REPETITIONS"); do
  # Rotate the columns by one per repetition.
  shift_by=$(((repetition - 1) % ${#COLUMNS[@]}))
  order=("${COLUMNS[@]:shift_by}" "${COLUMNS[@]:0:shift_by}")
  for id in $CASES; do
    for column in "${order[@]}"; do
      supports "$id" "$(target_of "$column")" || continue
      run "$id" "$column" "$repetition"
    done
  done
done

log "writing the summary ($((SECONDS - STARTED)) s of runs)"
MODEL=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)
VARIANTS=""
for column in "${COLUMNS[@]}"; do
  [[ "$column" == sockeye:* ]] || continue
  VARIANTS+=" Broker build \`${column#sockeye:}\`: \`${BINARY_OF[$column]}\`."
done
PREAMBLE="Run of $(date -u +%Y-%m-%dT%H:%MZ) at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), \
profile \`$PROFILE\`, $REPETITIONS repetitions of $DURATION per run, $(((SECONDS - STARTED) / 60)) minutes in all.\
$VARIANTS Machine: $(nproc) cores (${MODEL:-unknown CPU}), \
$(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}') memory, Linux $(uname -r), \
load average $LOAD_BEFORE before the run and $(cut -d' ' -f1-3 /proc/loadavg) after; \
$(rustc --version 2>/dev/null || echo rustc unknown); \
$(command -v nats-server >/dev/null && nats-server --version 2>/dev/null || echo "nats-server not installed"); \
$(command -v redis-server >/dev/null && redis-server --version 2>/dev/null | cut -d' ' -f1-3 || echo "redis-server not installed") \
(cluster: \`appendonly yes\`, \`appendfsync everysec\`, three nodes and Redis on the same machine). \
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
