// The end-to-end scenarios (test/scenarios.mjs) in Node 20, with `ws` as
// the WebSocket, against a real broker behind a TCP proxy.
//
// Run with: cargo build -p sockeye && npm run build && npm test

import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import * as sdk from "../dist/index.js";
import { scenarios } from "./scenarios.mjs";
import { Broker, config, controls, Proxy } from "./support/broker.mjs";

let broker;
let proxy;
let env;

before(async () => {
  broker = await new Broker(config()).start();
  proxy = await new Proxy(broker.addr).listen();
  env = { sdk, url: proxy.url, WebSocket, ctl: (name, ...args) => ctl[name](...args) };
  const ctl = controls(broker, proxy);
});

after(async () => {
  await proxy?.close();
  await broker?.dispose();
});

for (const [name, scenario] of Object.entries(scenarios)) {
  test(name.replaceAll("_", " "), async (t) => {
    const summary = await scenario({ ...env, prefix: `node${Math.random().toString(16).slice(2, 10)}` });
    t.diagnostic(summary);
  });
}
