// The browser chat example (examples/browser-chat) loads a vendored copy of
// the browser bundle; it must be the bundle this source builds.
//
// Run with: npm run build && node --test test/vendored.test.mjs

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

const built = new URL("../dist/browser/", import.meta.url);
const vendored = new URL("../../examples/browser-chat/vendor/sockeye-sdk/", import.meta.url);

for (const name of ["sockeye-sdk.js", "fallback.js", "LICENSES.txt"]) {
  test(`examples/browser-chat vendors the current ${name}`, () => {
    assert.ok(
      readFileSync(new URL(name, vendored)).equals(readFileSync(new URL(name, built))),
      "stale copy: run `npm run build --prefix sdk-js && npm run vendor --prefix examples/browser-chat`",
    );
  });
}
