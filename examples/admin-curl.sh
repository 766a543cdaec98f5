#!/usr/bin/env bash
# Sockeye admin API with curl: probes, publish over HTTP, topics, history,
# connections, stats, and deleting history (see docs/admin.md).
#
# Run with: ADMIN=http://127.0.0.1:8081 TOKEN=$(sockeye token --sub ops --admin) bash examples/admin-curl.sh [TOPIC]
#
# TOKEN is an admin JWT (claim "admin": true) or one of `admin.api_keys`.
# Each step prints a `== step` line and the JSON answer. Exits non-zero on
# the first HTTP error, after printing the error body.
set -euo pipefail

ADMIN=${ADMIN:-http://127.0.0.1:8081}
# Seconds each request may take before curl gives up (and the script fails).
CURL_MAX_TIME=${CURL_MAX_TIME:-30}
: "${TOKEN:?set TOKEN to an admin token or API key}"
TOPIC=${1:-demo.admin}

call() {
  # call METHOD PATH [JSON-BODY]
  local method=$1 path=$2
  local args=(-sS --fail-with-body --max-time "$CURL_MAX_TIME" -X "$method" -H "Authorization: Bearer $TOKEN")
  if [[ $# -ge 3 ]]; then
    args+=(-H 'Content-Type: application/json' --data "$3")
  fi
  curl "${args[@]}" "$ADMIN$path"
  echo
}

echo "== health"
curl -sS --fail-with-body --max-time "$CURL_MAX_TIME" "$ADMIN/healthz"
echo

echo "== publish two messages to $TOPIC"
call POST "/v1/topics/$TOPIC/messages" '{"payload": {"order": 1, "status": "new"}}'
call POST "/v1/topics/$TOPIC/messages" '{"encoding": "binary", "payload": "aGVsbG8="}'

echo "== topic $TOPIC"
call GET "/v1/topics/$TOPIC"

echo "== topics starting with ${TOPIC%%.*}."
call GET "/v1/topics?prefix=${TOPIC%%.*}.&limit=10"

echo "== history of $TOPIC"
call GET "/v1/topics/$TOPIC/history?limit=10"

echo "== connections"
call GET "/v1/connections?limit=10"

echo "== stats"
call GET "/v1/stats"

echo "== delete the history of $TOPIC (starts a new epoch)"
call DELETE "/v1/topics/$TOPIC/history"

echo "== history of $TOPIC after the delete"
call GET "/v1/topics/$TOPIC/history"
