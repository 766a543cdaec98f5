// The SDK's end-to-end scenarios, each run against a real broker both in
// Node (test/node.test.mjs) and in headless Chromium (test/browser.test.mjs).
// This module runs in both, so it imports nothing: it gets the SDK and an
// environment:
//
//   env.sdk        the module (`Client`, `SockeyeError`, ...)
//   env.url        the broker's URL through the test's TCP proxy
//   env.WebSocket  the WebSocket class (the browser's, or `ws`)
//   env.ctl(name, ...args)  test-side controls (test/support/broker.mjs):
//                  token, directUrl, cut, heal, stopBroker, startBroker,
//                  pause, resume
//   env.prefix     a topic segment unique to this run
//
// Each scenario throws on the first failed check and returns a summary.

/** Bound on each wait; a hang detector, not a speed requirement. */
const WAIT = 20000;

export class CheckFailed extends Error {}

function check(condition, what) {
  if (!condition) throw new CheckFailed(what);
}

function show(value) {
  return JSON.stringify(value, (_, v) => (v instanceof Uint8Array ? `bytes[${Array.from(v).join(",")}]` : v));
}

function same(actual, expected, what) {
  check(show(actual) === show(expected), `${what}: expected ${show(expected)}, got ${show(actual)}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function within(promise, what, ms = WAIT) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CheckFailed(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function until(condition, what, ms = WAIT) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new CheckFailed(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** The next `n` messages of a subscription's iterator. */
async function take(iterator, n, what) {
  const messages = [];
  for (let i = 0; i < n; i++) {
    const next = await within(iterator.next(), `${what}: message ${i + 1} of ${n}`);
    check(!next.done, `${what}: the subscription ended after ${i} messages`);
    messages.push(next.value);
  }
  return messages;
}

async function rejection(promise, what) {
  try {
    await within(promise, what);
  } catch (error) {
    return error;
  }
  throw new CheckFailed(`${what}: expected a rejection`);
}

function randomBytes(n) {
  const bytes = new Uint8Array(n);
  for (let at = 0; at < n; at += 65536) crypto.getRandomValues(bytes.subarray(at, at + 65536));
  return bytes;
}

/** A WebSocket class that records the flags byte and size of every frame it sends and receives. */
function recording(Base) {
  const sent = [];
  const received = [];
  class Recording extends Base {
    constructor(url, protocols) {
      super(url, protocols);
      this.addEventListener("message", (event) => {
        const frame = new Uint8Array(event.data);
        received.push([frame[0], frame.length]);
      });
    }
    send(data) {
      sent.push([data[0], data.length]);
      super.send(data);
    }
  }
  return { Recording, sent, received };
}

/** A connected client for `sub`, with its state changes recorded. */
async function connect(env, { sub = "alice", url = env.url, ...options } = {}) {
  const token = options.getToken ? undefined : await env.ctl("token", sub);
  const client = new env.sdk.Client({ url, token, WebSocket: env.WebSocket, ...options });
  const states = [];
  client.on("state", (state) => states.push(state));
  await until(() => client.state.state === "connected", `${sub} to connect`);
  return { client, states };
}

export const scenarios = {
  async publish_with_ack(env) {
    const { client } = await connect(env);
    const topic = `${env.prefix}.ack`;
    const sub = client.subscribe(topic, { position: { kind: "oldest" } });
    const info = await within(sub.ready, "subscribed");
    check(info.stored && info.complete && info.nextOffset === 1, `a new stored topic: ${show(info)}`);
    const payload = { text: "hi", big: 2 ** 40, bytes: new Uint8Array([1, 2, 3]), list: [1, "two", null] };
    const stored = await within(client.publish(topic, payload), "the ack");
    same(stored, { epoch: info.epoch, offset: 1 }, "where the publish was stored");
    same(await within(client.publish(topic, "no ack", { ack: false }), "publish without ack"), undefined, "no-ack result");
    const iterator = sub[Symbol.asyncIterator]();
    const [first, second] = await take(iterator, 2, "the two messages");
    same(first.payload, payload, "the payload, through MessagePack both ways");
    same([first.topic, first.epoch, first.offset, first.publisher], [topic, info.epoch, 1, "alice"], "message fields");
    check(Math.abs(Date.now() - first.ts) < 60000, `ts is the broker's unix ms: ${first.ts}`);
    same([second.payload, second.offset], ["no ack", 2], "the no-ack message");
    const state = client.state;
    // This tree's broker sends the id as an integer (older brokers sent a string).
    check(Number.isSafeInteger(state.connectionId) && state.connectionId > 0 && state.subject === "alice", `state: ${show(state)}`);
    await within(client.close(), "close");
    same([client.state.state, client.state.code], ["closed", 1000], "closed by the application");
    same(await within(iterator.next(), "the end of the stream"), { done: true }, "subscriptions end on close");
    return `alice published offset ${stored.offset} and read it back`;
  },

  async refusals(env) {
    const token = await env.ctl("token", "carol", "1h", ["--publish", `${env.prefix}.carol.>`]);
    const { client } = await connect(env, { getToken: () => token });
    const { SockeyeError } = env.sdk;
    const invalid = await rejection(client.publish("no spaces allowed", 1), "an invalid topic");
    check(invalid instanceof SockeyeError && invalid.code === "invalid_topic", `client-side check: ${invalid}`);
    let thrown;
    try {
      client.subscribe("orders.>.late");
    } catch (error) {
      thrown = error;
    }
    same(thrown?.code, "invalid_topic", "an invalid filter throws");
    const forbidden = await rejection(client.publish(`${env.prefix}.elsewhere`, 1), "a forbidden publish");
    same([forbidden.code, forbidden instanceof SockeyeError], ["forbidden", true], "the broker's refusal");
    same((await client.publish(`${env.prefix}.carol.ok`, 1)).offset, 1, "an allowed publish");
    // Filters on one connection may not overlap; the iteration throws the error.
    const wide = client.subscribe(`${env.prefix}.x.>`);
    await within(wide.ready, "the first filter");
    const narrow = client.subscribe(`${env.prefix}.x.y`);
    const refused = await rejection(narrow[Symbol.asyncIterator]().next(), "an overlapping subscription");
    same(refused.code, "subscription_overlaps", "overlap refused");
    await client.close();
    same((await rejection(client.publish(`${env.prefix}.carol.ok`, 1), "publish after close")).code, "closed", "closed client");
    return "invalid_topic, forbidden, subscription_overlaps and closed";
  },

  async wildcards(env) {
    const { client } = await connect(env);
    const p = env.prefix;
    const orders = client.subscribe(`${p}.orders.*`);
    const metrics = client.subscribe(`${p}.metrics.>`);
    const info = await within(orders.ready, "orders subscribed");
    await within(metrics.ready, "metrics subscribed");
    same([info.stored, info.epoch], [false, 0], "wildcard subscriptions are not resumable");
    for (const topic of [`${p}.orders.eu`, `${p}.orders.eu.late`, `${p}.metrics.cpu.0`, `${p}.orders.us`, `${p}.other`]) {
      await client.publish(topic, topic);
    }
    const got = await take(orders[Symbol.asyncIterator](), 2, "orders");
    same(got.map((m) => m.topic), [`${p}.orders.eu`, `${p}.orders.us`], "orders.* matches one segment");
    same(got.map((m) => m.payload), [`${p}.orders.eu`, `${p}.orders.us`], "payloads");
    const [metric] = await take(metrics[Symbol.asyncIterator](), 1, "metrics");
    same(metric.topic, `${p}.metrics.cpu.0`, "metrics.> matches several segments");
    // Nothing else arrived: the next publish to each is the next message.
    await client.publish(`${p}.orders.last`, "last");
    same((await take(orders[Symbol.asyncIterator](), 1, "last order"))[0].topic, `${p}.orders.last`, "no stray delivery");
    await client.close();
    return "orders.* got 2 of 5 topics, metrics.> got 1";
  },

  async resume_after_cut(env) {
    const { client, states } = await connect(env);
    const topic = `${env.prefix}.resume`;
    const sub = client.subscribe(topic);
    const iterator = sub[Symbol.asyncIterator]();
    await within(sub.ready, "subscribed");
    for (let i = 1; i <= 3; i++) await client.publish(topic, i);
    same((await take(iterator, 3, "before the cut")).map((m) => m.payload), [1, 2, 3], "before the cut");
    await env.ctl("cut");
    await until(() => client.state.state !== "connected", "the client to notice the cut");
    const { client: publisher } = await connect(env, { sub: "bob", url: await env.ctl("directUrl") });
    for (let i = 4; i <= 8; i++) await publisher.publish(topic, i);
    await env.ctl("heal");
    const missed = await take(iterator, 5, "the missed messages");
    same(missed.map((m) => [m.offset, m.payload, m.publisher]), [4, 5, 6, 7, 8].map((i) => [i, i, "bob"]), "replayed exactly once, in order");
    await publisher.publish(topic, 9);
    same((await take(iterator, 1, "live again"))[0].offset, 9, "then live, with no duplicate in between");
    const kinds = states.map((s) => s.state);
    check(kinds.includes("reconnecting") && kinds.at(-1) === "connected", `states: ${kinds}`);
    await client.close();
    await publisher.close();
    return `missed 4..8 replayed once after the cut; states ${kinds.join(" > ")}`;
  },

  async resume_across_restart(env) {
    const { client, states } = await connect(env);
    const topic = `${env.prefix}.restart`;
    const sub = client.subscribe(topic);
    const iterator = sub[Symbol.asyncIterator]();
    await within(sub.ready, "subscribed");
    await client.publish(topic, "a");
    await client.publish(topic, "b");
    const before = await take(iterator, 2, "before the restart");
    await env.ctl("stopBroker");
    const url = await env.ctl("startBroker");
    const { client: publisher } = await connect(env, { sub: "bob", url });
    for (const payload of ["c", "d", "e"]) await publisher.publish(topic, payload);
    await env.ctl("heal");
    const after = await take(iterator, 3, "after the restart");
    same(after.map((m) => [m.offset, m.payload]), [[3, "c"], [4, "d"], [5, "e"]], "the messages published while it was down");
    check(after.every((m) => m.epoch === before[0].epoch), "the epoch survives a restart");
    const goingAway = states.find((s) => s.state === "reconnecting" && s.code === 1001);
    check(goingAway && /retry_after_ms=\d+/.test(goingAway.reason), `the broker's 1001 with its hint: ${show(states)}`);
    await publisher.publish(topic, "f");
    same((await take(iterator, 1, "live"))[0].payload, "f", "then live");
    await client.close();
    await publisher.close();
    return `resumed at offset 3 after a restart (1001, ${goingAway.reason})`;
  },

  async trimmed_history_gap(env) {
    const { client } = await connect(env);
    const topic = `trim.${env.prefix}`;
    const sub = client.subscribe(topic);
    const seen = [];
    sub.on("gap", (gap) => seen.push(gap));
    const iterator = sub[Symbol.asyncIterator]();
    const info = await within(sub.ready, "subscribed");
    await client.publish(topic, 1);
    same((await take(iterator, 1, "the first message"))[0].offset, 1, "first offset");
    await env.ctl("cut");
    await until(() => client.state.state !== "connected", "the client to notice the cut");
    const { client: publisher } = await connect(env, { sub: "bob", url: await env.ctl("directUrl") });
    for (let i = 2; i <= 11; i++) await publisher.publish(topic, i);
    // The topic keeps 3 messages; the trimmer runs every 100 ms.
    await sleep(1000);
    const order = [];
    sub.on("gap", () => order.push("gap"));
    await env.ctl("heal");
    for (let i = 0; i < 3; i++) order.push((await take(iterator, 1, "the retained messages"))[0].offset);
    // In stream order: the gap event comes before the messages after it.
    same(order, ["gap", 9, 10, 11], "the gap, then what is still retained");
    same(seen, [{ topic, epoch: info.epoch, from: 2, to: 8 }], "the gap event");
    // A new subscriber asking for everything after offset 0 learns of the same loss.
    const { client: other } = await connect(env, { sub: "dave" });
    const again = other.subscribe(topic, { position: { kind: "after", epoch: info.epoch, offset: 0 } });
    const gaps = [];
    again.on("gap", (gap) => gaps.push(gap));
    const againInfo = await within(again.ready, "subscribed after 0");
    check(!againInfo.complete, "the position could not be honoured in full");
    same((await take(again[Symbol.asyncIterator](), 3, "replay")).map((m) => m.offset), [9, 10, 11], "replayed");
    same(gaps, [{ topic, epoch: info.epoch, from: 1, to: 8 }], "the first subscribe's gap");
    for (const c of [client, publisher, other]) await c.close();
    return "gap 2..8 reported, then 9..11";
  },

  async slow_reader(env) {
    // Buffers of 4 messages: the application reads nothing while 20 arrive.
    const { client } = await connect(env, { bufferSize: 4 });
    const { client: publisher } = await connect(env, { sub: "bob" });
    const topic = `${env.prefix}.slow`;
    const exact = client.subscribe(topic);
    const wild = client.subscribe(`${env.prefix}.wild.*`);
    const lagged = [];
    wild.on("lagged", (event) => lagged.push(event));
    await within(Promise.all([exact.ready, wild.ready]), "subscribed");
    for (let i = 1; i <= 20; i++) {
      await publisher.publish(topic, i);
      await publisher.publish(`${env.prefix}.wild.x`, i);
    }
    // Let every live delivery reach the client before reading.
    await publisher.publish(`${env.prefix}.wild.x`, "last");
    await sleep(500);
    // The exact subscription to a stored topic loses nothing: it resubscribes
    // from its cursor as the buffer drains, and the broker replays the rest.
    const all = await take(exact[Symbol.asyncIterator](), 20, "every stored message");
    same(all.map((m) => m.offset), Array.from({ length: 20 }, (_, i) => i + 1), "contiguous, once each");
    // A wildcard subscription cannot be replayed: it drops, then says how many.
    const iterator = wild[Symbol.asyncIterator]();
    const kept = await take(iterator, 4, "what the wildcard buffer held");
    same(kept.map((m) => m.payload), [1, 2, 3, 4], "the first four");
    same(lagged, [], "lagged comes after the buffered messages");
    await publisher.publish(`${env.prefix}.wild.x`, "after");
    const [next] = await take(iterator, 1, "the next live message");
    same([lagged, next.payload], [[{ missed: 17 }], "after"], "17 dropped and reported, then live again");
    await client.close();
    await publisher.close();
    return "a 4-message buffer: 20 of 20 stored messages replayed in order; the wildcard reported 17 missed";
  },

  async token_refresh(env) {
    let calls = 0;
    const { client, states } = await connect(env, {
      getToken: () => env.ctl("token", "erin", ++calls === 1 ? "3s" : "1h"),
    });
    const id = client.state.connectionId;
    const topic = `${env.prefix}.refresh`;
    const sub = client.subscribe(topic);
    await within(sub.ready, "subscribed");
    // Past the first token's expiry (3 s; the broker closes with 4000 at exp).
    await sleep(5000);
    same(states.map((s) => s.state), ["connected"], "the connection never dropped");
    same(client.state.connectionId, id, "the same connection");
    check(calls >= 2, `getToken was asked again on token_expiring (${calls} calls)`);
    await client.publish(topic, "still here");
    same((await take(sub[Symbol.asyncIterator](), 1, "after expiry"))[0].payload, "still here", "a message after expiry");
    await client.close();
    // Without a provider the same token runs out: closed with 4000, for good.
    const fixed = new env.sdk.Client({ url: env.url, token: await env.ctl("token", "frank", "2s"), WebSocket: env.WebSocket });
    await until(() => fixed.state.state === "closed", "a fixed short token to expire");
    same(fixed.state.code, 4000, "closed with token expired");
    return `refreshed in-band (${calls} tokens) on connection ${id}; a fixed token closed with 4000`;
  },

  async compression_both_ways(env) {
    const { Recording, sent, received } = recording(env.WebSocket);
    const { client } = await connect(env, { WebSocket: Recording });
    const topic = `${env.prefix}.deflate`;
    const sub = client.subscribe(topic);
    const iterator = sub[Symbol.asyncIterator]();
    await within(sub.ready, "subscribed");
    const text = "sockeye ".repeat(1000);
    sent.length = received.length = 0;
    await client.publish(topic, { text });
    const [message] = await take(iterator, 1, "the long message");
    same(message.payload.text.length, text.length, "the text arrived whole");
    check(message.payload.text === text, "the text arrived unchanged");
    const [flags, size] = sent[0];
    check(flags === 1 && size < 1000, `sent deflated: flags ${flags}, ${size} bytes for ${text.length}`);
    const inbound = received.find(([f, s]) => f === 1);
    check(inbound && inbound[1] < 1000, `received a deflated frame: ${show(received)}`);
    // Random bytes do not compress: the plain frame goes out.
    const noise = randomBytes(4000);
    sent.length = 0;
    await client.publish(topic, noise);
    same((await take(iterator, 1, "the noise"))[0].payload, noise, "bytes arrive as bytes");
    check(sent[0][0] === 0 && sent[0][1] > 4000, `incompressible frames go plain: ${show(sent)}`);
    await client.close();
    return `sent ${text.length} chars in a ${size}-byte deflated frame and read a deflated one back (${inbound[1]} bytes)`;
  },

  async frame_over_the_limit(env) {
    const { Recording, sent } = recording(env.WebSocket);
    const { client, states } = await connect(env, { WebSocket: Recording });
    const topic = `${env.prefix}.big`;
    const sub = client.subscribe(topic);
    const iterator = sub[Symbol.asyncIterator]();
    await within(sub.ready, "subscribed");
    const frames = sent.length;
    // The test broker's max_frame_size is 64 KiB.
    const error = await rejection(client.publish(topic, randomBytes(100000)), "a 100 kB incompressible publish");
    check(error instanceof env.sdk.SockeyeError && error.code === "frame_too_large", `refused client-side: ${error}`);
    check(/65536/.test(error.message), `the message names the limit: ${error.message}`);
    same(sent.length, frames, "nothing was sent");
    // Compressible, it fits: deflate brings it under the limit.
    const text = "x".repeat(200000);
    await client.publish(topic, text);
    same((await take(iterator, 1, "the large compressible message"))[0].payload.length, 200000, "200 kB through a 64 KiB limit");
    same(states.map((s) => s.state), ["connected"], "the connection stayed up");
    await client.close();
    return `refused: ${error.message}`;
  },
};

/** Browser only: a page that comes back online or into view reconnects at once when its socket is stale. */
export const browserScenarios = {
  async stale_socket_on_online_and_visible(env) {
    const { client } = await connect(env, { pingInterval: 500, connectTimeout: 3000 });
    const topic = `${env.prefix}.stale`;
    const sub = client.subscribe(topic);
    const iterator = sub[Symbol.asyncIterator]();
    await within(sub.ready, "subscribed");
    const rounds = [];
    for (const [name, fire] of [
      ["online", () => window.dispatchEvent(new Event("online"))],
      ["visibilitychange", () => document.dispatchEvent(new Event("visibilitychange"))],
    ]) {
      // A fresh socket is not stale: the event only pings.
      fire();
      same(client.state.state, "connected", `${name} on a live socket`);
      await env.ctl("pause");
      try {
        await sleep(1200);
        same(client.state.state, "connected", "the broker's 60 s heartbeat timeout has not passed");
        fire();
        const state = client.state;
        check(state.state === "reconnecting" && /stale/.test(state.cause), `${name} on a stale socket: ${show(state)}`);
      } finally {
        await env.ctl("resume");
      }
      await until(() => client.state.state === "connected", "reconnected");
      await client.publish(topic, name);
      same((await take(iterator, 1, "after reconnecting"))[0].payload, name, "resumed");
      rounds.push(name);
    }
    await client.close();
    return `reconnected at once on ${rounds.join(" and ")}`;
  },
};
