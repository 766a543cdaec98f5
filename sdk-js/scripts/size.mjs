// Checks the size budget: the core (dist/browser/sockeye-sdk.js, minified,
// with @msgpack/msgpack inside) gzipped at level 9 must stay at or under
// 13 KB. The deflate fallback chunk, loaded only where the runtime has no
// `deflate-raw` streams, is reported but not counted.
//
// Run with: npm run build && npm run size

import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const BUDGET = 13 * 1024;
const dir = new URL("../dist/browser/", import.meta.url);
const gzipped = (name) => gzipSync(readFileSync(new URL(name, dir)), { level: 9 }).length;

const core = gzipped("sockeye-sdk.js");
const fallback = gzipped("fallback.js");
console.log(`core (sockeye-sdk.js, min+gz): ${core} bytes of a ${BUDGET}-byte budget`);
console.log(`deflate fallback (fallback.js, min+gz, loaded on demand): ${fallback} bytes`);
if (core > BUDGET) {
  console.error(`the core bundle is ${core - BUDGET} bytes over budget`);
  process.exit(1);
}
