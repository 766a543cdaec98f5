// What the SDK's tests share on the Node side: a real `sockeye serve`
// child process on a free loopback port, tokens minted with
// `sockeye token`, and a TCP proxy in front of the broker that the tests
// cut (a network failure the client cannot tell from a real one) and
// point at a restarted broker. Every wait is bounded.

import { execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";

const run = promisify(execFile);
const repo = new URL("../../..", import.meta.url).pathname;
/** The broker binary: `cargo build -p sockeye` puts it here. */
export const BIN = process.env.SOCKEYE_BIN ?? join(repo, "target/debug/sockeye");
/** Bound on each wait for a process; a hang detector, not a speed requirement. */
const WAIT = 30_000;

// Brokers not disposed of when this process ends (a test runner's timeout,
// Ctrl-C) are killed with it, by PID, and their directories removed.
const live = new Set();
const killRunning = () => {
  for (const broker of live) {
    if (broker.child?.exitCode === null && broker.child?.signalCode === null) broker.child.kill("SIGKILL");
    rmSync(broker.dir, { recursive: true, force: true });
  }
};
process.once("exit", killRunning);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    killRunning();
    process.exit(128 + (signal === "SIGINT" ? 2 : 15));
  });
}

/** The configuration every SDK test broker runs with; `extra` TOML is put first. */
export function config(extra = "") {
  return `${extra}
[admin]
enabled = false

[limits]
# Small, so the frame-limit tests stay cheap.
max_frame_size = "64 KiB"

[shutdown]
reconnect_spread = "200ms"

[store]
trim_interval = "100ms"

# trim.*: a short history, for the gap tests; live.*: not stored.
[[retention]]
pattern = "trim.>"
store = true
max_messages = 3

[[retention]]
pattern = "live.>"
store = false

[[retention]]
pattern = ">"
store = true
max_messages = 10000
`;
}

/** A `sockeye serve` process over one data directory, restartable. */
export class Broker {
  constructor(configText) {
    this.dir = mkdtempSync(join(tmpdir(), "sockeye-sdk-"));
    this.configFile = join(this.dir, "sockeye.toml");
    writeFileSync(this.configFile, configText);
    this.dataDir = join(this.dir, "data");
    live.add(this);
    this.child = undefined;
    this.addr = undefined;
  }

  /** Starts it (again) and waits for the log line with its address. */
  async start() {
    const child = spawn(
      BIN,
      ["serve", "--listen", "127.0.0.1:0", "--data-dir", this.dataDir, "--config", this.configFile],
      { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, RUST_LOG: "info", NO_COLOR: "1" } },
    );
    this.child = child;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    this.exited = exited;
    const lines = createInterface({ input: child.stderr });
    const log = [];
    this.addr = undefined;
    this.addr = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`sockeye serve did not serve within ${WAIT} ms:\n${log.join("\n")}`)), WAIT);
      exited.then((code) => reject(new Error(`sockeye serve exited (${code}) before serving:\n${log.join("\n")}`)));
      lines.on("line", (line) => {
        if (process.env.SOCKEYE_LOG) console.error(`sockeye[${child.pid}]: ${line}`);
        if (this.addr) return;
        log.push(line);
        const listen = line.includes("serving WebSocket clients") && /listen=(\S+)/.exec(line);
        if (listen) {
          clearTimeout(timer);
          resolve(listen[1]);
        }
      });
    });
    return this;
  }

  /** The WebSocket URL of the running broker. */
  get url() {
    return `ws://${this.addr}/ws`;
  }

  /** Mints a token for `sub`, valid for `ttl` (like "1h", "3s"), with optional extra `sockeye token` arguments. */
  async token(sub, ttl = "1h", args = []) {
    const { stdout } = await run(
      BIN,
      ["token", "--sub", sub, "--ttl", ttl, ...args, "--data-dir", this.dataDir, "--config", this.configFile],
      { timeout: WAIT },
    );
    return stdout.trim();
  }

  signal(name) {
    process.kill(this.child.pid, name);
  }

  /** SIGTERM, then waits for it to exit. */
  async stop() {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.signal("SIGTERM");
    const timeout = setTimeout(() => this.signal("SIGKILL"), WAIT);
    await this.exited;
    clearTimeout(timeout);
  }

  /** Stops it and removes its directory. */
  async dispose() {
    if (this.child?.exitCode === null && this.child?.signalCode === null) this.signal("SIGCONT");
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
    live.delete(this);
  }
}

/** A TCP proxy on a free loopback port in front of `target` (host:port). */
export class Proxy {
  constructor(target) {
    this.target = target;
    this.cut = false;
    this.sockets = new Set();
    this.server = createServer((client) => {
      if (this.cut) return client.destroy();
      const [host, port] = this.target.split(":");
      const upstream = connect(Number(port), host);
      for (const socket of [client, upstream]) {
        this.sockets.add(socket);
        socket.on("close", () => this.sockets.delete(socket));
        socket.on("error", () => {});
      }
      client.pipe(upstream).on("close", () => upstream.destroy());
      upstream.pipe(client).on("close", () => client.destroy());
      upstream.on("close", () => client.destroy());
      client.on("close", () => upstream.destroy());
    });
  }

  async listen() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return this;
  }

  get url() {
    return `ws://127.0.0.1:${this.server.address().port}/ws`;
  }

  /** Drops every connection through it and refuses new ones until `heal`. */
  sever() {
    this.cut = true;
    for (const socket of this.sockets) socket.destroy();
  }

  heal() {
    this.cut = false;
  }

  close() {
    this.sever();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

/**
 * The test-side controls a scenario may call (`env.ctl(name, ...args)`), in
 * Node directly and from a browser page through an exposed function.
 */
export function controls(broker, proxy) {
  return {
    token: (sub, ttl, args) => broker.token(sub, ttl, args),
    directUrl: () => broker.url,
    cut: () => proxy.sever(),
    heal: () => proxy.heal(),
    /** The broker shuts down (clients get 1001); the proxy refuses connections until `heal`. */
    stopBroker: async () => {
      proxy.cut = true;
      await broker.stop();
    },
    /** A new broker process on the same data directory, behind the proxy. */
    startBroker: async () => {
      await broker.start();
      proxy.target = broker.addr;
      return broker.url;
    },
    pause: () => broker.signal("SIGSTOP"),
    resume: () => broker.signal("SIGCONT"),
  };
}
