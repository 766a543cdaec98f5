// Drives the operator console in Debian's headless Chromium for the Rust
// test admin/tests/it/console.rs, which starts the broker, plays the
// WebSocket clients and asserts what the page shows.
//
// Protocol: one JSON command per line on stdin, one JSON answer per line on
// stdout ({"id", "ok": true, "result"} or {"id", "ok": false, "error"}).
// Commands are user actions and reads: open, click, fill, select, wait,
// text, rows, figures, storage, screenshot, report, close. Everything else
// the page logs goes to stderr.
//
// Every request to a host other than the loopback address is aborted and
// recorded (and Chromium resolves no other name): `report` lists them, so
// the test can assert the console fetched nothing from anywhere else.
//
// Needs `npm ci --prefix admin/tests/console` (scripts/test.sh runs it).

import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

/// Each Playwright wait (for an element, a click to be possible) is
/// bounded by this; the Rust side bounds the whole run.
const ACTION_TIMEOUT_MS = 15_000;

const LOOPBACK = new Set(["127.0.0.1", "localhost", "[::1]"]);

let browser = null;
let page = null;
let screenshots = null;
const blocked = [];
const requests = [];
const pageErrors = [];
const consoleErrors = [];

async function open({ url, screenshot_dir: dir }) {
  screenshots = dir;
  mkdirSync(dir, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
  await context.route("**/*", (route) => {
    const target = new URL(route.request().url());
    requests.push(route.request().url());
    if (LOOPBACK.has(target.hostname)) return route.continue();
    blocked.push(route.request().url());
    return route.abort("blockedbyclient");
  });
  page = await context.newPage();
  page.setDefaultTimeout(ACTION_TIMEOUT_MS);
  page.on("pageerror", (error) => {
    pageErrors.push(String(error));
    console.error(`page error: ${error}`);
  });
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
    console.error(`console ${message.type()}: ${message.text()}`);
  });
  await page.goto(url);
  return { url: page.url() };
}

function locate({ selector, text }) {
  const locator = page.locator(selector, text === undefined ? {} : { hasText: text });
  return locator.first();
}

const commands = {
  open,
  async goto({ url }) {
    await page.goto(url);
    return { url: page.url() };
  },
  async reload() {
    await page.reload();
    return { url: page.url() };
  },
  async click(args) {
    await locate(args).click();
    return null;
  },
  async fill(args) {
    await locate(args).fill(args.value);
    return null;
  },
  async select(args) {
    await locate(args).selectOption(args.value);
    return null;
  },
  async wait(args) {
    await locate(args).waitFor({ state: args.state ?? "visible" });
    return null;
  },
  /// The text of the first match, or null when nothing matches now.
  async text(args) {
    const locator = locate(args);
    return (await locator.count()) === 0 ? null : (await locator.textContent()).trim();
  },
  async attr(args) {
    const locator = locate(args);
    return (await locator.count()) === 0 ? null : await locator.getAttribute(args.name);
  },
  async visible(args) {
    return await locate(args).isVisible();
  },
  async disabled(args) {
    return await locate(args).isDisabled();
  },
  /// Table rows as objects: each `td[data-col]` cell's text by its column.
  async rows({ selector }) {
    return await page.locator(selector).evaluateAll((rows) =>
      rows.map((row) => {
        const cells = {};
        for (const cell of row.querySelectorAll("td[data-col]")) cells[cell.dataset.col] = cell.textContent.trim();
        return cells;
      }),
    );
  },
  /// The figures under `selector`: { key: { text, value } }.
  async figures({ selector }) {
    return await page.locator(`${selector} [data-figure]`).evaluateAll((figures) =>
      Object.fromEntries(
        figures.map((figure) => [
          figure.dataset.figure,
          { text: figure.querySelector(".value").textContent.trim(), value: figure.dataset.value ?? null },
        ]),
      ),
    );
  },
  /// The charts: { key: { points, legend: { series: value } } }.
  async charts() {
    return await page.locator("[data-chart]").evaluateAll((charts) =>
      Object.fromEntries(
        charts.map((chart) => [
          chart.dataset.chart,
          {
            points: Number(chart.dataset.points ?? 0),
            legend: Object.fromEntries(
              [...chart.querySelectorAll(".legend-item")].map((item) => [item.dataset.series, item.dataset.value ?? ""]),
            ),
          },
        ]),
      ),
    );
  },
  async storage() {
    return await page.evaluate(() => ({
      session: { ...sessionStorage },
      local: { ...localStorage },
      url: window.location.href,
      cookies: document.cookie,
    }));
  },
  async screenshot({ name, path }) {
    const file = path ?? join(screenshots, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    return file;
  },
  async report() {
    return { blocked, requests, page_errors: pageErrors, console_errors: consoleErrors };
  },
  async close() {
    await browser?.close();
    browser = null;
    return null;
  },
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (line.trim() === "") continue;
  let id = null;
  try {
    const command = JSON.parse(line);
    id = command.id;
    const run = commands[command.do];
    if (!run) throw new Error(`unknown command ${command.do}`);
    const result = await run(command);
    process.stdout.write(`${JSON.stringify({ id, ok: true, result })}\n`);
  } catch (error) {
    process.stdout.write(`${JSON.stringify({ id, ok: false, error: String(error?.message ?? error) })}\n`);
  }
}
await browser?.close();
