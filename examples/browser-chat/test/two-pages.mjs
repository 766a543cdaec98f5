// Two headless Chromium pages chat through a Sockeye broker.
//
// Run with: SOCKEYE_URL=ws://127.0.0.1:8080/ws TOKEN_ALICE=<jwt> TOKEN_BOB=<jwt> node examples/browser-chat/test/two-pages.mjs
// (after `npm ci --prefix examples/browser-chat`). The Rust test
// `cargo test -p example-clients --test browser` starts a broker and runs
// this. It serves the page itself, on 127.0.0.1, and prints:
//   bob saw: alice: hello bob
//   alice saw: bob: hi alice
//   bob saw a long message of 3000 characters
//   alice sees the history after a reload: 3 messages

import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css" };

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name}`);
  return value;
}

const brokerUrl = required("SOCKEYE_URL");
const tokens = { alice: required("TOKEN_ALICE"), bob: required("TOKEN_BOB") };
const topic = process.env.SOCKEYE_TOPIC ?? "chat.lobby";

// A static server for the page: files under this folder only.
const server = createServer(async (request, response) => {
  const path = normalize(decodeURIComponent(new URL(request.url, "http://x").pathname));
  if (path.includes("..") || path.startsWith("/node_modules")) {
    response.writeHead(404).end();
    return;
  }
  try {
    const body = await readFile(join(root, path));
    response.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream" });
    response.end(body);
  } catch {
    response.writeHead(404).end();
  }
});
// SITE_PORT lets the caller know the page's origin in advance, so the broker
// can allow exactly that origin.
await new Promise((resolve) =>
  server.listen(Number(process.env.SITE_PORT ?? 0), "127.0.0.1", resolve),
);
const site = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});

let failed = false;
async function open(user) {
  const page = await browser.newPage();
  page.on("pageerror", (error) => {
    failed = true;
    console.error(`${user} page error: ${error}`);
  });
  page.on("console", (message) => console.error(`${user} console: ${message.text()}`));
  const query = new URLSearchParams({ url: brokerUrl, token: tokens[user], topic });
  await page.goto(`${site}/index.html?${query}`);
  await page.waitForSelector('#status[data-state="connected"]');
  return page;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
}

async function lastMessage(page, containing) {
  const item = page.locator("#log li.msg", { hasText: containing }).last();
  await item.waitFor();
  return (await item.textContent()).trim();
}

try {
  const alice = await open("alice");
  const bob = await open("bob");

  await say(alice, "hello bob");
  console.log(`bob saw: ${await lastMessage(bob, "hello bob")}`);

  await say(bob, "hi alice");
  console.log(`alice saw: ${await lastMessage(alice, "hi alice")}`);

  // Larger than the compression threshold: deflated in both directions.
  const long = "x".repeat(3000);
  await say(alice, long);
  const seen = await lastMessage(bob, long);
  console.log(`bob saw a long message of ${seen.replace(/^alice: /, "").length} characters`);

  // A reload subscribes with `last`: the history comes back from the broker.
  await alice.reload();
  await alice.waitForSelector('#status[data-state="connected"]');
  await alice.locator("#log li.msg").nth(2).waitFor();
  const history = await alice.locator("#log li.msg").count();
  console.log(`alice sees the history after a reload: ${history} messages`);
} finally {
  await browser.close();
  server.close();
}
if (failed) process.exit(1);
