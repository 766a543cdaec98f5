// Node without CompressionStream/DecompressionStream (as in older runtimes):
// the client loads the fflate fallback and still deflates and inflates.
//
// Run with: cargo build -p sockeye && npm run build && node --test test/fallback.test.mjs

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { scenarios } from "./scenarios.mjs";
import { Broker, config, controls, Proxy } from "./support/broker.mjs";

delete globalThis.CompressionStream;
delete globalThis.DecompressionStream;
const sdk = await import("../dist/index.js");

let broker;
let proxy;
let env;

before(async () => {
  assert.equal(typeof DecompressionStream, "undefined");
  broker = await new Broker(config()).start();
  proxy = await new Proxy(broker.addr).listen();
  const ctl = controls(broker, proxy);
  env = { sdk, url: proxy.url, WebSocket, ctl: (name, ...args) => ctl[name](...args) };
});

after(async () => {
  await proxy?.close();
  await broker?.dispose();
});

for (const name of ["compression_both_ways", "frame_over_the_limit"]) {
  test(`without deflate streams: ${name.replaceAll("_", " ")}`, async (t) => {
    t.diagnostic(await scenarios[name]({ ...env, prefix: `fb${Math.random().toString(16).slice(2, 10)}` }));
  });
}
