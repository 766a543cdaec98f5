#!/usr/bin/env bash
# Regenerates docs/console-overview.png, the overview of the operator console
# shown in docs/admin.md. It runs the console's browser test
# (admin/tests/it/console.rs) with SOCKEYE_CONSOLE_DOCS_SCREENSHOT set: the
# test then puts 150 s of varied load on its broker (publishers at
# rising and falling rates, subscribers, connections coming and going) and
# writes the overview, as headless Chromium renders it, to that file, before
# going on with its usual checks. Takes about three minutes.
#
# Needs what the test needs: chromium, and `npm ci --prefix admin/tests/console`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d admin/tests/console/node_modules/playwright-core ]; then
  npm ci --prefix admin/tests/console --no-audit --no-fund
fi
SOCKEYE_CONSOLE_DOCS_SCREENSHOT="$PWD/docs/console-overview.png" \
  cargo test -p sockeye-admin --test it -- --exact \
  console::the_console_watches_and_acts_on_the_broker --nocapture
echo "wrote docs/console-overview.png"
