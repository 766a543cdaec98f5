#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration, doc tests, the
# TypeScript SDK (sdk-js: build, type check, size budget, its tests in Node
# and headless Chromium), and the examples in other languages (Python
# client, browser chat in headless Chromium, admin calls with curl).
#
# Tests drive a few programs besides our own code. On a fresh Debian machine
# this script installs whichever are missing first (needs root, and access to
# Debian's, PyPI's and npm's registries):
#   - Debian: chromium (browser tests), curl (admin walkthrough),
#             nats-server (benchmark smoke against NATS), nginx and haproxy (proxy tests),
#             redis-server (`redis-server` and `redis-cli`, for the cluster tests:
#             tests/cluster*.rs start their own on free loopback ports),
#             procps (`kill`, to stop and freeze processes), python3-pip
#   - PyPI:   websockets, msgpack (examples/python/requirements.txt),
#             schemathesis (admin/tests/requirements.txt)
#   - npm:    playwright-core (examples/browser-chat/package-lock.json and
#             admin/tests/console/package-lock.json, the operator console's test);
#             sdk-js's runtime and build dependencies (sdk-js/package-lock.json)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian package that provides each program the tests run.
need_apt=()
for pair in chromium:chromium curl:curl nats-server:nats-server nginx:nginx \
  haproxy:haproxy redis-server:redis-server redis-cli:redis-server /bin/kill:procps; do
  program=${pair%%:*} package=${pair##*:}
  command -v "$program" >/dev/null 2>&1 || need_apt+=("$package")
done
if ! python3 -m pip --version >/dev/null 2>&1; then
  need_apt+=(python3-pip)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
if ! python3 -c 'import websockets, msgpack' 2>/dev/null; then
  # Debian's own python3 refuses system-wide pip installs (PEP 668); these
  # two packages are for the tests of this checkout only.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check \
    -r examples/python/requirements.txt
fi
if ! python3 -c 'import schemathesis' 2>/dev/null; then
  # The admin API's conformance test fuzzes it from its OpenAPI document.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check \
    -r admin/tests/requirements.txt
fi
if [ ! -d examples/browser-chat/node_modules/playwright-core ]; then
  npm ci --prefix examples/browser-chat --no-audit --no-fund
fi
if [ ! -d admin/tests/console/node_modules/playwright-core ]; then
  npm ci --prefix admin/tests/console --no-audit --no-fund
fi

# The benchmark smoke drives the sockeye binary as a separate process, and
# so do the SDK's tests.
cargo build -p sockeye

# The TypeScript SDK, from its lockfile (again whenever the lockfile is newer
# than the installed tree).
if [ ! -f sdk-js/node_modules/.package-lock.json ] ||
  [ sdk-js/package-lock.json -nt sdk-js/node_modules/.package-lock.json ]; then
  npm ci --prefix sdk-js --no-audit --no-fund
fi
npm run --prefix sdk-js build
npm run --prefix sdk-js typecheck
# The minified + gzipped core must stay within 13 KB.
npm run --prefix sdk-js size
npm test --prefix sdk-js

cargo test --workspace --all-targets
cargo test --workspace --doc
