#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration, doc tests, and the
# examples in other languages (Python client, browser chat in headless
# Chromium, admin calls with curl).
#
# Tests drive a few programs besides our own code. On a fresh Debian machine
# this script installs whichever are missing first (needs root, and access to
# Debian's, PyPI's and npm's registries):
#   - Debian: chromium (browser tests), curl (admin walkthrough),
#             nats-server (benchmark smoke against NATS), nginx and haproxy (proxy tests)
#   - PyPI:   websockets, msgpack (examples/python/requirements.txt)
#   - npm:    playwright-core (examples/browser-chat/package-lock.json)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for tool in chromium curl nats-server nginx haproxy; do
  command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
if ! python3 -c 'import websockets, msgpack' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check -r examples/python/requirements.txt
fi
if [ ! -d examples/browser-chat/node_modules/playwright-core ]; then
  npm ci --prefix examples/browser-chat --no-audit --no-fund
fi

# The benchmark smoke drives the sockeye binary as a separate process.
cargo build -p sockeye
cargo test --workspace --all-targets
cargo test --workspace --doc
