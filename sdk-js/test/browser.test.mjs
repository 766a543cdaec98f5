// The end-to-end scenarios (test/scenarios.mjs) in headless Chromium
// (Debian's /usr/bin/chromium driven by playwright-core, never a downloaded
// browser) with the minified browser bundle, against a real broker behind
// a TCP proxy. Requests to anything but loopback are refused. A second page
// runs without CompressionStream/DecompressionStream, so the fflate
// fallback chunk is loaded and used.
//
// Run with: cargo build -p sockeye && npm run build && node --test test/browser.test.mjs

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import { Broker, config, controls, Proxy } from "./support/broker.mjs";

const root = new URL("..", import.meta.url);
// The only files the page may load.
const files = {
  "/dist/browser/sockeye-sdk.js": "text/javascript",
  "/dist/browser/fallback.js": "text/javascript",
  "/test/scenarios.mjs": "text/javascript",
};
const PAGE = `<!doctype html><meta charset="utf-8"><title>sockeye-sdk test</title>
<script type="module">
  import * as sdk from "/dist/browser/sockeye-sdk.js";
  import { scenarios, browserScenarios } from "/test/scenarios.mjs";
  const all = { ...scenarios, ...browserScenarios };
  window.run = (name, url, prefix) =>
    all[name]({ sdk, url, prefix, WebSocket, ctl: (command, ...args) => window.ctl(command, args) });
  window.loaded = true;
</script>`;

let site;
let broker;
let proxy;
let browser;
let pages;
const requests = [];
const pageErrors = [];

const loopback = (url) => ["127.0.0.1", "localhost", "[::1]"].includes(new URL(url).hostname);

before(async () => {
  site = createServer(async (request, response) => {
    const path = new URL(request.url, "http://x").pathname;
    if (path === "/test/page.html") return response.writeHead(200, { "content-type": "text/html" }).end(PAGE);
    if (!files[path]) return response.writeHead(404).end();
    const body = await readFile(new URL(`.${path}`, root));
    response.writeHead(200, { "content-type": files[path] }).end(body);
  });
  await new Promise((resolve) => site.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${site.address().port}`;
  // The page's origin is the one a browser sends; the broker allows exactly it.
  broker = await new Broker(config(`[server]\nallowed_origins = ["${origin}"]\n`)).start();
  proxy = await new Proxy(broker.addr).listen();
  const ctl = controls(broker, proxy);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ],
  });
  const context = await browser.newContext();
  await context.route("**/*", (route) => (loopback(route.request().url()) ? route.continue() : route.abort()));
  context.on("request", (request) => requests.push(request.url()));
  const open = async (withoutStreams) => {
    const page = await context.newPage();
    page.on("pageerror", (error) => pageErrors.push(String(error)));
    page.on("websocket", (socket) => requests.push(socket.url()));
    if (withoutStreams) {
      await page.addInitScript(() => {
        delete globalThis.CompressionStream;
        delete globalThis.DecompressionStream;
      });
    }
    await page.exposeFunction("ctl", (command, args) => ctl[command](...args));
    await page.goto(`${origin}/test/page.html`);
    await page.waitForFunction(() => window.loaded);
    return page;
  };
  pages = { native: await open(false), fallback: await open(true) };
});

after(async () => {
  await browser?.close();
  await proxy?.close();
  await broker?.dispose();
  site?.close();
});

async function run(page, name) {
  const prefix = `web${Math.random().toString(16).slice(2, 10)}`;
  return page.evaluate(([name, url, prefix]) => window.run(name, url, prefix), [name, proxy.url, prefix]);
}

for (const name of [
  "publish_with_ack",
  "refusals",
  "wildcards",
  "resume_after_cut",
  "resume_across_restart",
  "trimmed_history_gap",
  "slow_reader",
  "token_refresh",
  "compression_both_ways",
  "frame_over_the_limit",
  "stale_socket_on_online_and_visible",
]) {
  test(`chromium: ${name.replaceAll("_", " ")}`, async (t) => {
    t.diagnostic(await run(pages.native, name));
  });
}

for (const name of ["compression_both_ways", "frame_over_the_limit"]) {
  test(`chromium without deflate streams: ${name.replaceAll("_", " ")}`, async (t) => {
    const missing = await pages.fallback.evaluate(() => [typeof CompressionStream, typeof DecompressionStream]);
    assert.deepEqual(missing, ["undefined", "undefined"]);
    t.diagnostic(await run(pages.fallback, name));
  });
}

test("the pages loaded the fallback chunk only where the streams are missing, and touched only loopback", () => {
  assert.deepEqual(pageErrors, []);
  assert.equal(requests.filter((url) => url.endsWith("/fallback.js")).length, 1);
  assert.deepEqual(requests.filter((url) => !loopback(url)), []);
});
