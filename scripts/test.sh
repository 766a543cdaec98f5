#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration, doc tests, and the
# examples in other languages.
#
# Tests drive a few programs besides our own code. On a fresh Debian machine
# this script installs whichever are missing first (needs root, and network
# access to Debian's and PyPI's package registries):
#   - python3 packages `websockets` and `msgpack` (the Python example client)
#   - Debian packages `nginx` and `haproxy` (tests/proxies.rs runs them in
#     front of the broker; the tests fail without them)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need_apt+=(nginx)
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null || need_apt+=(haproxy)
if ! python3 -c 'import websockets, msgpack' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check websockets msgpack
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

cargo test --workspace --all-targets
cargo test --workspace --doc
