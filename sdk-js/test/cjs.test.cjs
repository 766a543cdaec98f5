// The CommonJS entry: `require("sockeye-sdk")` resolves through the exports
// map to dist/index.cjs, and that build talks to a real broker too.
//
// Run with: cargo build -p sockeye && npm run build && node --test test/cjs.test.cjs

const assert = require("node:assert/strict");
const { test } = require("node:test");
const { WebSocket } = require("ws");

test("require and import resolve to the CommonJS and ESM builds", async () => {
  assert.match(require.resolve("sockeye-sdk"), /dist\/index\.cjs$/);
  const cjs = require("sockeye-sdk");
  const esm = await import("sockeye-sdk");
  assert.equal(typeof cjs.Client, "function");
  assert.equal(typeof cjs.SockeyeError, "function");
  assert.notEqual(cjs.Client, esm.Client, "two builds, not one re-exported");
});

test("the CommonJS build publishes, subscribes and deflates", async () => {
  const { Broker, config } = await import("./support/broker.mjs");
  const { Client } = require("sockeye-sdk");
  const broker = await new Broker(config()).start();
  try {
    const client = new Client({ url: broker.url, token: await broker.token("cjs"), WebSocket });
    const sub = client.subscribe("cjs.check");
    const info = await sub.ready;
    const text = "deflated ".repeat(500);
    const stored = await client.publish("cjs.check", { text });
    const { value } = await sub[Symbol.asyncIterator]().next();
    assert.deepEqual([value.offset, value.epoch, value.payload.text], [stored.offset, info.epoch, text]);
    await client.close();
    assert.equal(client.state.state, "closed");
  } finally {
    await broker.dispose();
  }
});
