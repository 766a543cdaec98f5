# Helpers shared by bench/compare.sh, bench/instructions.sh and
# bench/wildcard.sh (sourced, not run). Each caller sets SCRIPT_NAME for its
# messages.

# port_open PORT: true if something accepts on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# need_package COMMAND PACKAGE: installs PACKAGE from Debian when COMMAND is
# missing.
need_package() {
  command -v "$1" >/dev/null && return 0
  apt-get install -y "$2" || { apt-get update && apt-get install -y "$2"; }
}

# wait_listening PORT PID LOG WHAT [TRIES]: until PORT accepts (every 0.2 s,
# TRIES times, default 100), or exit 1 with LOG if PID died or time ran out.
wait_listening() {
  local port=$1 pid=$2 log_file=$3 what=$4 tries=${5:-100}
  for _ in $(seq "$tries"); do
    if port_open "$port"; then return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  echo "$SCRIPT_NAME: $what did not start; its log:" >&2
  cat "$log_file" >&2
  exit 1
}

# stop_pids TRIES PID...: SIGTERM to each, then up to TRIES x 0.2 s for each
# to exit (so a target under callgrind can write its file), then SIGKILL.
stop_pids() {
  local tries=$1 pid
  shift
  for pid in "$@"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "$@"; do
    for _ in $(seq "$tries"); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
