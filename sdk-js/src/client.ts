// The client: one WebSocket to the broker at a time, kept up with backoff,
// and everything that lives across connections (subscriptions, queued
// publishes, the connection state).

import { Emitter } from "./emitter.js";
import { fail, SockeyeError } from "./errors.js";
import { decodeBody, encodeBody, open, seal } from "./frame.js";
import { type Message, type Position, Subscription } from "./subscription.js";
import { checkTopic, isExact, matches } from "./topic.js";
import type { PayloadOf, TopicMap } from "./types.js";

/** The part of a WebSocket the client uses: the browser's, or `ws` in Node. */
export interface WebSocketLike {
  binaryType: string;
  readonly bufferedAmount: number;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket class: `globalThis.WebSocket`, or `WebSocket` from the `ws` package. */
export type WebSocketConstructor = new (url: string, protocols: string[]) => WebSocketLike;

/** The reconnect schedule: attempt `n` waits a random time in `[0, min(max, initial * multiplier^n)]` ms. */
export interface Backoff {
  /** Ceiling of the first delay, ms. Default 100. */
  initial?: number;
  /** Largest delay, ms, including a broker's `retry_after_ms` hint. Default 30000. */
  max?: number;
  /** Growth of the ceiling per failed attempt. Default 2. */
  multiplier?: number;
  /** Consecutive failed attempts after which the client closes. Default: never. */
  maxAttempts?: number;
}

export interface ClientOptions {
  /** The broker's WebSocket endpoint, `ws://host:port/ws` or `wss://...`. */
  url: string | URL;
  /** A JWT, used for every connection. */
  token?: string;
  /**
   * Called for a token before every connection attempt and when the broker
   * warns that the current one expires (`token_expiring`); the new token is
   * sent in-band (`refresh`) and the connection stays up.
   */
  getToken?: () => string | Promise<string>;
  /** The WebSocket class; default `globalThis.WebSocket`. Node 20 has none: pass `ws`. */
  WebSocket?: WebSocketConstructor;
  backoff?: Backoff;
  /** How often to send `ping`, ms. Default: the broker's `heartbeat_interval_ms`. */
  pingInterval?: number;
  /** Time from opening a socket to the broker's `welcome`, ms. Default 10000. */
  connectTimeout?: number;
  /** Time a publish may wait for its reply, including time queued while disconnected, ms. Default 30000. */
  requestTimeout?: number;
  /** Time `close()` waits for outstanding publish acks and the close handshake, ms. Default 5000. */
  closeTimeout?: number;
  /** Acknowledged publishes awaiting their reply at once; more wait in the queue. Default 256. */
  maxInFlight?: number;
  /** Publishes waiting to be sent; beyond it `publish` rejects with `queue_full`. Default 1024. */
  maxQueuedRequests?: number;
  /** ...and their bytes. Default 8 MiB. */
  maxQueuedBytes?: number;
  /** Bytes the socket may hold unsent before publishes wait. Default 1 MiB. */
  maxBufferedAmount?: number;
  /** Messages a subscription buffers for a slow reader (see the README). Default 256. */
  bufferSize?: number;
  /** ...and their bytes. Default 8 MiB. */
  bufferBytes?: number;
  /** Bytes of received frames waiting to be inflated and read before the connection is dropped and resumed. Default 16 MiB. */
  maxInboxBytes?: number;
}

/** Options of {@link Client.subscribe}. */
export interface SubscribeOptions {
  /** Where to start (exact filters of stored topics only); absent: live messages only. */
  position?: Position;
}

/** Options of {@link Client.publish}. */
export interface PublishOptions {
  /** Wait for the broker's `published` reply (stored and, by default, fsynced). Default true. */
  ack?: boolean;
}

/** Where an acknowledged publish was stored (0, 0 for ephemeral topics). */
export interface Published {
  epoch: number;
  offset: number;
}

/** The connection's state, as `client.state` and the `state` event give it. */
export type ConnectionState =
  | { state: "connecting"; attempt: number }
  | { state: "connected"; connectionId: number | string; subject: string }
  | { state: "reconnecting"; attempt: number; delay: number; cause: string; code?: number; reason?: string }
  | { state: "closed"; code: number; reason: string };

/** Events of a {@link Client}. */
export interface ClientEvents {
  state: ConnectionState;
  /**
   * Problems that do not fail a call: an error reply to a publish sent with
   * `ack: false`, a refused token refresh, a failing `getToken`, an
   * unreadable frame (the client then reconnects and resumes).
   */
  error: SockeyeError;
}

// Close codes after which reconnecting cannot help (protocol section 9).
const FINAL = [1000, 1002, 1003, 1007, 1008];
// Closes to reconnect after "only after backoff" start the schedule here.
const PENALTY = [1011, 4001, 4003];
const PENALTY_ATTEMPT = 3;
const TOKEN_EXPIRED = 4000;
const MiB = 1 << 20;

interface Queued {
  id: number;
  body: Uint8Array;
  ack: boolean;
  resolve: (value: Published | undefined) => void;
  reject: (error: SockeyeError) => void;
  timer: ReturnType<typeof setTimeout>;
}

// What a request in flight waits for; absent from the map: nothing.
type Pending = Queued | Subscription<any> | (() => void) | "refresh";

/**
 * A client of a Sockeye broker. It connects at once and keeps one
 * connection up: it reconnects with full-jitter exponential backoff (never
 * giving up unless `backoff.maxAttempts` says so), honours the broker's
 * `retry_after_ms`, refreshes its token in-band, pings so that it notices
 * a silent broker, and resumes every subscription where it stopped.
 *
 * `Topics` maps topic names (or filters) to payload types, for typed
 * `publish` and `subscribe`.
 */
export class Client<Topics extends TopicMap = TopicMap> extends Emitter<ClientEvents> {
  /** The current connection state. */
  state: ConnectionState = { state: "connecting", attempt: 0 };
  private readonly _url: string;
  private readonly _token: () => string | Promise<string>;
  private readonly _refreshable: boolean;
  private readonly _WebSocket: WebSocketConstructor;
  private readonly _o: Required<Omit<ClientOptions, "url" | "token" | "getToken" | "WebSocket" | "backoff" | "pingInterval">> & { pingInterval?: number };
  private readonly _backoff: Required<Backoff>;
  /** @internal */ readonly _bufferSize: number;
  /** @internal */ readonly _bufferBytes: number;
  private _ws: WebSocketLike | undefined;
  private _connected = false;
  private _closing = false;
  // From the current connection's welcome (defaults before the first).
  private _frameMax = MiB;
  private _inflateMax = 4 * MiB;
  private _threshold = 1024;
  private _topicMax = 255;
  private _subs = new Set<Subscription<any>>();
  private _pending = new Map<number, Pending>();
  private _inFlight = 0;
  private _queue: Queued[] = [];
  private _queuedBytes = 0;
  private _pumping = false;
  private _nextId = 1;
  private _failures = 0;
  private _timer: ReturnType<typeof setTimeout> | undefined;
  private _ticker: ReturnType<typeof setInterval> | undefined;
  private _pingEvery = 0;
  private _silence = 0;
  private _lastHeard = 0;
  private _inbox: Uint8Array[] = [];
  private _inboxBytes = 0;
  private _reading = false;
  private _refreshing = false;
  private _wakeUp = (event: Event): void => {
    if (event.type === "online" || (globalThis as any).document?.visibilityState !== "hidden") this._onWake();
  };
  private _done: Promise<void>;
  private _finished!: () => void;

  constructor(options: ClientOptions) {
    super();
    const url = String(options.url);
    if (!/^wss?:\/\//i.test(url)) throw new TypeError(`the broker URL must be ws:// or wss://, not "${url}"`);
    const { token, getToken } = options;
    if (token === undefined && !getToken) throw new TypeError("pass `token` or `getToken`");
    const WebSocket = options.WebSocket ?? (globalThis as any).WebSocket;
    if (!WebSocket) {
      throw new TypeError('no global WebSocket: pass the `WebSocket` option (in Node 20: `import { WebSocket } from "ws"`)');
    }
    this._url = url;
    this._token = getToken ?? (() => token as string);
    this._refreshable = !!getToken;
    this._WebSocket = WebSocket;
    this._o = {
      connectTimeout: 10000,
      requestTimeout: 30000,
      closeTimeout: 5000,
      maxInFlight: 256,
      maxQueuedRequests: 1024,
      maxQueuedBytes: 8 * MiB,
      maxBufferedAmount: MiB,
      bufferSize: 256,
      bufferBytes: 8 * MiB,
      maxInboxBytes: 16 * MiB,
      ...options,
    };
    this._backoff = { initial: 100, max: 30000, multiplier: 2, maxAttempts: Infinity, ...options.backoff };
    this._bufferSize = Math.max(1, this._o.bufferSize);
    this._bufferBytes = this._o.bufferBytes;
    this._done = new Promise((resolve) => (this._finished = resolve));
    // Browsers: a page that comes back online or into view reconnects at
    // once when its socket is stale.
    const g = globalThis as any;
    g.addEventListener?.("online", this._wakeUp);
    g.document?.addEventListener?.("visibilitychange", this._wakeUp);
    this._connect();
  }

  /**
   * Subscribes to a topic or filter. The subscription is made on the
   * current connection (or the next) and again after every reconnect;
   * errors (a refused filter, say) end it with an `error` event, and make
   * its iteration throw when nothing listens for `error`.
   *
   * @throws {SockeyeError} `invalid_topic` for a malformed filter, `closed`
   * when the client is closed.
   */
  subscribe<F extends string>(filter: F, options: SubscribeOptions = {}): Subscription<PayloadOf<Topics, F>> {
    const invalid = this._closing ? fail("closed", "the client is closed") : checkTopic(filter, true, this._topicMax);
    if (invalid) throw invalid;
    const sub = new Subscription<PayloadOf<Topics, F>>(this, filter, isExact(filter), options.position);
    this._subs.add(sub);
    if (this._connected) this._sendSubscribe(sub);
    return sub;
  }

  /**
   * Publishes `payload` (any MessagePack-encodable value; a `Uint8Array` is
   * sent as bytes) to `topic`. With `ack` (the default) it resolves once
   * the broker stored the message, to where it was stored; without, once
   * the frame was handed to the socket. While disconnected, publishes wait
   * in a bounded queue (up to `requestTimeout`).
   *
   * Rejects with a {@link SockeyeError}: the broker's code (`forbidden`,
   * `rate_limited`, ...) or `invalid_topic`, `frame_too_large`,
   * `encode_failed`, `queue_full`, `timeout`, `connection_lost`, `closed`.
   */
  publish<T extends string>(topic: T, payload: PayloadOf<Topics, T>, options: PublishOptions & { ack: false }): Promise<undefined>;
  publish<T extends string>(topic: T, payload: PayloadOf<Topics, T>, options?: PublishOptions): Promise<Published>;
  publish(topic: string, payload: unknown, options: PublishOptions = {}): Promise<Published | undefined> {
    return new Promise((resolve, reject) => {
      const ack = options.ack !== false;
      const id = this._nextId++;
      const invalid = this._closing ? fail("closed", "the client is closed") : checkTopic(topic, false, this._topicMax);
      if (invalid) return reject(invalid);
      const body = encodeBody({ type: "publish", id, topic, payload, ack });
      if (body.length > this._inflateMax) return reject(tooLarge(body.length, this._inflateMax));
      if (this._queue.length >= this._o.maxQueuedRequests || this._queuedBytes + body.length > this._o.maxQueuedBytes) {
        return reject(fail("queue_full", "too many publishes wait for the connection"));
      }
      const entry: Queued = {
        id,
        body,
        ack,
        resolve,
        reject,
        timer: setTimeout(() => {
          if (this._pending.get(id) === entry) this._settle(id);
          else if (!this._dequeue(entry)) return;
          reject(fail("timeout", `no reply within ${this._o.requestTimeout} ms; the publish may or may not have been stored`));
        }, this._o.requestTimeout),
      };
      this._queue.push(entry);
      this._queuedBytes += body.length;
      this._pump();
    });
  }

  /**
   * Closes the client for good: waits (up to `closeTimeout`) for
   * outstanding publish acks, closes the socket with 1000, rejects queued
   * publishes with `closed` and ends every subscription (their buffered
   * messages can still be read).
   */
  async close(): Promise<void> {
    if (!this._closing) {
      this._closing = true;
      clearTimeout(this._timer);
      for (const entry of [...this._queue]) this._dequeue(entry) && entry.reject(fail("closed", "the client is closed"));
      const ws = this._ws;
      if (ws && this._connected) {
        const deadline = Date.now() + this._o.closeTimeout;
        while (this._inFlight && Date.now() < deadline && this._ws === ws) await sleep(10);
        ws.close(1000, "client closing");
        // The broker answers with 1000; do not wait for ever if it does not.
        this._timer = setTimeout(() => this._ended(ws, 1000, ""), this._o.closeTimeout);
      } else {
        this._finish(1000, "closed by the application");
      }
    }
    return this._done;
  }

  // --- connections ------------------------------------------------------

  private async _connect(): Promise<void> {
    this._timer = undefined;
    if (this._closing) return;
    this._setState({ state: "connecting", attempt: this._failures });
    let token: string;
    try {
      token = await this._token();
    } catch (error) {
      this._emit("error", fail("token_failed", `getToken failed: ${(error as Error)?.message ?? error}`));
      return this._retry(`getToken failed: ${error}`);
    }
    if (this._closing) return this._finish(1000, "closed by the application");
    let ws: WebSocketLike;
    try {
      ws = new this._WebSocket(this._url, ["sockeye.v1", `bearer.${token}`]);
    } catch (error) {
      return this._retry(`cannot open a WebSocket: ${(error as Error)?.message ?? error}`);
    }
    this._ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => this._ws === ws && this._receive(ws, event.data);
    ws.onclose = (event) => this._ended(ws, event.code, event.reason);
    ws.onerror = () => {}; // A close event follows.
    this._timer = setTimeout(() => this._drop(ws, `no welcome within ${this._o.connectTimeout} ms`), this._o.connectTimeout);
  }

  /** A failed attempt: wait out the backoff, then try again (or give up). */
  private _retry(cause: string, code?: number, reason?: string, attempt?: number): void {
    if (this._closing) return this._finish(1000, "closed by the application");
    const backoff = this._backoff;
    if (attempt === undefined) {
      attempt = ++this._failures;
      if (attempt >= backoff.maxAttempts) return this._finish(code ?? 1006, `gave up after ${attempt} attempts: ${cause}`);
    }
    const hint = code === 1001 ? /retry_after_ms=(\d+)/.exec(reason ?? "") : null;
    const ceiling = Math.min(backoff.max, backoff.initial * Math.max(1, backoff.multiplier) ** attempt);
    const delay = hint ? Math.min(backoff.max, Number(hint[1])) : Math.random() * ceiling;
    // Armed before the state is announced: a listener may close the client.
    this._timer = setTimeout(() => this._connect(), delay);
    this._setState({ state: "reconnecting", attempt: this._failures, delay, cause, code, reason });
  }

  /** Drops a connection the client gave up on (silent, unreadable, too slow to read). */
  private _drop(ws: WebSocketLike, cause: string): void {
    const terminate = (ws as any).terminate;
    // `ws` in Node can drop at once; a browser socket closes normally.
    terminate ? terminate.call(ws) : ws.close();
    this._ended(ws, 1006, cause);
  }

  /** The socket `ws` closed (or was dropped) with `code`: clean up, then reconnect or finish. */
  private _ended(ws: WebSocketLike, code: number, reason: string): void {
    if (ws !== this._ws) return;
    ws.onmessage = ws.onclose = null;
    this._ws = undefined;
    const wasConnected = this._connected;
    this._connected = false;
    clearTimeout(this._timer);
    clearInterval(this._ticker);
    this._inbox = [];
    this._inboxBytes = 0;
    this._refreshing = false;
    for (const [id, pending] of this._pending) {
      this._settle(id);
      if (typeof pending === "function") pending();
      else if (typeof pending === "object" && !(pending instanceof Subscription)) {
        pending.reject(fail("connection_lost", "the connection was lost before the broker replied; the publish may or may not have been stored"));
      }
    }
    for (const sub of this._subs) sub._connectionEnded();
    const cause = `closed with ${code}${reason ? ` (${reason})` : ""}`;
    if (this._closing) return this._finish(1000, "closed by the application");
    // A fixed token that expired cannot open another connection.
    if (FINAL.includes(code) || (code === TOKEN_EXPIRED && !this._refreshable)) return this._finish(code, reason);
    this._retry(cause, code, reason, PENALTY.includes(code) ? PENALTY_ATTEMPT : wasConnected ? 0 : undefined);
  }

  /** Closed for good. */
  private _finish(code: number, reason: string): void {
    if (this.state.state === "closed") return;
    this._closing = true;
    const ws = this._ws;
    if (ws) {
      // A connection attempt still under way.
      ws.onmessage = ws.onclose = null;
      ws.close();
      this._ws = undefined;
    }
    clearTimeout(this._timer);
    clearInterval(this._ticker);
    const g = globalThis as any;
    g.removeEventListener?.("online", this._wakeUp);
    g.document?.removeEventListener?.("visibilitychange", this._wakeUp);
    const closed = fail("closed", "the client is closed");
    for (const entry of [...this._queue]) this._dequeue(entry) && entry.reject(closed);
    for (const sub of this._subs) sub._end();
    this._subs.clear();
    this._setState({ state: "closed", code, reason });
    this._finished();
  }

  private _setState(state: ConnectionState): void {
    this.state = state;
    this._emit("state", state);
  }

  /** `online` or `visibilitychange`: reconnect now if waiting, or if the socket went stale. */
  private _onWake(): void {
    if (this._timer && this.state.state === "reconnecting") {
      clearTimeout(this._timer);
      this._connect();
    } else if (this._connected && this._ws) {
      if (Date.now() - this._lastHeard > this._pingEvery * 1.5) this._drop(this._ws, "the socket went stale");
      else this._control({ type: "ping" });
    }
  }

  private _onWelcome(ws: WebSocketLike, welcome: Record<string, any>): void {
    clearTimeout(this._timer);
    this._timer = undefined;
    this._connected = true;
    this._failures = 0;
    const limits = welcome.limits ?? {};
    this._frameMax = limits.max_frame_bytes ?? this._frameMax;
    this._inflateMax = limits.max_inflated_bytes ?? this._inflateMax;
    this._threshold = limits.compression_threshold_bytes ?? this._threshold;
    this._topicMax = limits.max_topic_bytes ?? this._topicMax;
    // Browsers cannot see WebSocket pings: ping at the protocol level, and
    // count a broker that sends nothing for its own timeout as gone.
    this._pingEvery = this._o.pingInterval ?? (welcome.heartbeat_interval_ms || 20000);
    this._silence = welcome.heartbeat_timeout_ms || 60000;
    this._ticker = setInterval(() => {
      if (Date.now() - this._lastHeard > this._silence) this._drop(ws, `nothing received for ${this._silence} ms`);
      else this._control({ type: "ping" });
    }, this._pingEvery);
    // Subscriptions are asked for before anyone hears of the connection.
    for (const sub of this._subs) this._sendSubscribe(sub);
    this._setState({ state: "connected", connectionId: welcome.connection_id, subject: welcome.subject });
    this._pump();
  }

  // --- sending ----------------------------------------------------------

  /** Sends a small request (never compressed); returns its id. */
  private _control(message: Record<string, unknown>, pending?: Pending): number {
    const id = this._nextId++;
    if (pending) this._pending.set(id, pending);
    const body = encodeBody({ ...message, id });
    const frame = new Uint8Array(body.length + 1);
    frame.set(body, 1);
    this._ws!.send(frame);
    return id;
  }

  private _sendSubscribe(sub: Subscription<any>): void {
    const cursor = sub._cursor;
    const position = cursor ? { kind: "after", epoch: cursor[0], offset: cursor[1] - 1 } : sub._first ? sub._position : undefined;
    sub._inFlight = true;
    this._control(position ? { type: "subscribe", topic: sub.filter, position } : { type: "subscribe", topic: sub.filter }, sub);
  }

  /** @internal Makes a subscription again from its cursor (the broker replays what it skipped). */
  _resync(sub: Subscription<any>): void {
    if (!this._connected || !sub._held || sub._inFlight) return;
    sub._needsResync = false;
    this._control({ type: "unsubscribe", topic: sub.filter }, () => {});
    this._sendSubscribe(sub);
  }

  /** @internal */
  _unsubscribe(sub: Subscription<any>): Promise<void> {
    this._subs.delete(sub);
    if (!this._connected || !(sub._held || sub._inFlight)) return Promise.resolve();
    return new Promise((resolve) => this._control({ type: "unsubscribe", topic: sub.filter }, resolve));
  }

  private _dequeue(entry: Queued): boolean {
    const at = this._queue.indexOf(entry);
    if (at < 0) return false;
    this._queue.splice(at, 1);
    this._queuedBytes -= entry.body.length;
    clearTimeout(entry.timer);
    return true;
  }

  /** Sends queued publishes in order while the connection has room. */
  private async _pump(): Promise<void> {
    if (this._pumping) return;
    this._pumping = true;
    try {
      while (this._connected && this._queue.length && this._inFlight < this._o.maxInFlight) {
        const ws = this._ws!;
        if (ws.bufferedAmount > this._o.maxBufferedAmount) {
          // Browsers signal no drain: look again shortly.
          setTimeout(() => this._pump(), 10);
          break;
        }
        const entry = this._queue[0];
        const frame = await seal(entry.body, this._threshold);
        if (ws !== this._ws || this._queue[0] !== entry) continue;
        this._dequeue(entry);
        if (frame.length > this._frameMax) {
          entry.reject(tooLarge(frame.length, this._frameMax));
          continue;
        }
        ws.send(frame);
        if (entry.ack) {
          // Its timer keeps running: it bounds the wait for the reply too.
          this._pending.set(entry.id, entry);
          this._inFlight++;
        } else {
          entry.resolve(undefined);
        }
      }
    } finally {
      this._pumping = false;
    }
  }

  /** Removes a pending request, keeping the in-flight count. */
  private _settle(id: number): Pending | undefined {
    const pending = this._pending.get(id);
    if (pending === undefined) return;
    this._pending.delete(id);
    if (typeof pending === "object" && !(pending instanceof Subscription)) {
      clearTimeout(pending.timer);
      this._inFlight--;
      this._pump();
    }
    return pending;
  }

  // --- receiving --------------------------------------------------------

  /** Frames are handled in arrival order; inflating is asynchronous, so later frames wait in a bounded inbox. */
  private _receive(ws: WebSocketLike, data: unknown): void {
    this._lastHeard = Date.now();
    if (!(data instanceof ArrayBuffer)) {
      return this._unreadable(ws, fail("malformed_frame", "the broker sent a text frame"));
    }
    const frame = new Uint8Array(data);
    if (!this._reading && frame[0] === 0) return this._handle(ws, frame.subarray(1));
    this._inboxBytes += frame.length;
    if (this._inboxBytes > this._o.maxInboxBytes) return this._drop(ws, "frames arrive faster than they can be read");
    this._inbox.push(frame);
    this._read();
  }

  private async _read(): Promise<void> {
    if (this._reading) return;
    this._reading = true;
    // The inbox holds the current connection's frames only: `_ended` empties it.
    while (this._inbox.length) {
      const ws = this._ws!;
      const frame = this._inbox.shift()!;
      this._inboxBytes -= frame.length;
      let body: Uint8Array;
      try {
        body = await open(frame, this._inflateMax + 65536);
      } catch (error) {
        this._unreadable(ws, error as SockeyeError);
        break;
      }
      if (this._ws === ws) this._handle(ws, body);
    }
    this._reading = false;
  }

  /** Dropping the connection and resuming loses nothing; skipping an unreadable frame could. */
  private _unreadable(ws: WebSocketLike, error: SockeyeError): void {
    this._emit("error", error);
    this._drop(ws, error.message);
  }

  private _handle(ws: WebSocketLike, body: Uint8Array): void {
    let m: Record<string, any>;
    try {
      m = decodeBody(body);
    } catch (error) {
      return this._unreadable(ws, error as SockeyeError);
    }
    const id = m.id as number;
    switch (m.type) {
      case "welcome":
        return this._onWelcome(ws, m);
      case "message": {
        const { topic, epoch, offset, ts, publisher, payload } = m;
        if (typeof topic !== "string" || !isNumber(epoch) || !isNumber(offset)) {
          return this._unreadable(ws, fail("malformed_frame", "a message frame without topic, epoch or offset"));
        }
        // Buffers count the inflated body: that is the memory held.
        return this._route(topic)?._deliver({ topic, epoch, offset, ts, publisher, payload } as Message, body.length);
      }
      case "gap":
        return this._route(m.topic)?._gap(m.topic, m.epoch, m.from, m.to);
      case "reset":
        return this._route(m.topic)?._reset(m.topic, m.epoch);
      case "subscribed": {
        // A subscription that ended meanwhile sent its unsubscribe already.
        const sub = this._settle(id);
        if (sub instanceof Subscription && !sub._ended) sub._subscribed(m);
        return;
      }
      case "published": {
        const entry = this._settle(id) as Queued | undefined;
        return entry?.resolve({ epoch: m.epoch, offset: m.offset });
      }
      case "error":
        return this._onError(id, m.code, m.message);
      case "token_expiring":
        return void this._refresh(ws);
      case "unsubscribed":
      case "refreshed": {
        const pending = this._settle(id);
        if (typeof pending === "function") pending();
        return;
      }
      // pong, and kinds added in later versions: nothing to do.
    }
  }

  /** The subscription a delivery for `topic` belongs to: a connection's filters are disjoint, so at most one. */
  private _route(topic: string): Subscription<any> | undefined {
    for (const sub of this._subs) {
      if (sub._held && (sub.filter === topic || (!sub._exact && matches(sub.filter, topic)))) return sub;
    }
  }

  private _onError(id: number | null, code: string, message: string): void {
    const error = new SockeyeError(code, message);
    const pending = id == null ? undefined : this._settle(id);
    if (pending instanceof Subscription) {
      const sub = pending;
      sub._inFlight = false;
      if (sub._ended) return;
      if (sub._first) {
        this._subs.delete(sub);
        return sub._end(error);
      }
      if (code === "position_unsupported") {
        // The topic is no longer stored: continue live, and say so.
        sub._cursor = undefined;
        sub._held = true;
        sub._connectionEnded();
        return this._sendSubscribe(sub);
      }
      if (code === "already_subscribed") {
        sub._held = true;
        return;
      }
      this._subs.delete(sub);
      return sub._end(error);
    }
    if (pending && typeof pending === "object") return pending.reject(error);
    // An unsubscribe the broker did not hold: it is gone either way.
    if (typeof pending === "function") return pending();
    this._emit("error", error);
  }

  private async _refresh(ws: WebSocketLike): Promise<void> {
    if (this._refreshing || !this._refreshable) return;
    this._refreshing = true;
    try {
      const token = await this._token();
      if (this._ws === ws && this._connected) this._control({ type: "refresh", token }, "refresh");
    } catch (error) {
      this._emit("error", fail("token_failed", `getToken failed: ${(error as Error)?.message ?? error}`));
    }
    this._refreshing = false;
  }
}

const isNumber = (value: unknown): value is number => typeof value === "number";

const tooLarge = (size: number, max: number): SockeyeError =>
  fail("frame_too_large", `the frame would be ${size} bytes; the broker accepts at most ${max}`);

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
