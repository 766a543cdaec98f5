// A subscription: its bounded buffer, its cursor for resuming, the async
// iterator the application reads, and the notices (gap, reset, lagged,
// interrupted, error) it emits in stream order.

import { Emitter } from "./emitter.js";
import type { SockeyeError } from "./errors.js";

/** Where a subscription starts (protocol section 7). */
export type Position =
  | { kind: "after"; epoch: number; offset: number }
  | { kind: "oldest" }
  | { kind: "last"; count: number };

/** A message delivered on a subscription. */
export interface Message<T = unknown> {
  /** The topic it was published to (matches the subscription's filter). */
  topic: string;
  /** The topic's epoch (0 for ephemeral topics). */
  epoch: number;
  /**
   * Its offset in the epoch (0 for ephemeral topics). Within one epoch of a
   * stored topic a subscription sees offsets that grow by exactly one,
   * unless a `gap` or `reset` event says otherwise.
   */
  offset: number;
  /** When the broker accepted it, unix milliseconds. */
  ts: number;
  /** The `sub` of the publisher's token. */
  publisher: string;
  /** The payload, decoded from MessagePack. */
  payload: T;
}

/** Offsets `from..=to` of `topic` in `epoch` are gone (trimmed before this subscriber read them). */
export interface Gap {
  topic: string;
  epoch: number;
  from: number;
  to: number;
}

/**
 * The topic's stored stream was reset (history deleted, store lost): offsets
 * of the old epoch mean nothing any more; delivery continues in `epoch`
 * from `nextOffset`.
 */
export interface Reset {
  topic: string;
  epoch: number;
  nextOffset: number;
}

/** The broker's reply to a subscription's first `subscribe`. */
export interface Subscribed {
  topic: string;
  /** History is stored for it: the subscription resumes after a reconnect. */
  stored: boolean;
  epoch: number;
  lastOffset: number;
  nextOffset: number;
  /** The requested position was honoured in full. */
  complete: boolean;
}

/** Events of a {@link Subscription}, fired in stream order. */
export interface SubscriptionEvents {
  /** Messages that will never be delivered (trimmed history). */
  gap: Gap;
  /** The topic's history was reset. */
  reset: Reset;
  /**
   * A subscription that cannot be resumed (wildcard filter or ephemeral
   * topic) dropped `missed` messages because its buffer was full.
   */
  lagged: { missed: number };
  /**
   * The connection was lost and a subscription that cannot be resumed was
   * made again: messages published meanwhile are missing.
   */
  interrupted: { topic: string };
  /** The subscription ended with this error (refused by the broker, or the client closed). */
  error: SockeyeError;
}

/** What the subscription needs of its client. */
export interface Owner {
  _unsubscribe(sub: Subscription<any>): Promise<void>;
  _resync(sub: Subscription<any>): void;
  readonly _bufferSize: number;
  readonly _bufferBytes: number;
}

// Buffered items: a message with its size, or a notice to emit.
type Item =
  | [kind: "message", value: Message<any>, size: number]
  | [kind: "gap", value: Gap]
  | [kind: "reset", value: Reset]
  | [kind: "lagged", value: { missed: number }]
  | [kind: "interrupted", value: { topic: string }];

/**
 * A subscription: an async iterable of {@link Message}s that survives
 * reconnects. Read it with `for await (const message of sub)`; leaving the
 * loop (`break`) unsubscribes. Exact subscriptions to stored topics resume
 * after the last message placed in this subscription's buffer, so the
 * stream stays contiguous; every way to miss messages is an event
 * (`gap`, `reset`, `lagged`, `interrupted`), emitted in stream order: after
 * the messages before it were yielded, before the ones after it.
 */
export class Subscription<T = unknown> extends Emitter<SubscriptionEvents> implements AsyncIterable<Message<T>> {
  /** The filter, as subscribed. */
  readonly filter: string;
  /** @internal */ readonly _client: Owner;
  /** @internal */ readonly _exact: boolean;
  /** @internal The position of the first subscribe. */ _position: Position | undefined;
  /** @internal The first `subscribed` reply has not arrived yet. */ _first = true;
  /**
   * @internal For a resumable subscription: the epoch and the offset of the
   * next message to buffer. Everything before it was buffered; anything
   * else that arrives is a duplicate or was skipped while the buffer was
   * full, and is dropped.
   */
  _cursor: [epoch: number, next: number] | undefined;
  /** @internal The broker holds it on the current connection. */ _held = false;
  /** @internal A `subscribe` for it awaits its reply. */ _inFlight = false;
  /** @internal Make it again from the cursor once the buffer has room. */ _needsResync = false;
  /** @internal */ _ended = false;
  private _items: Item[] = [];
  private _count = 0;
  private _bytes = 0;
  private _missed = 0;
  private _error: SockeyeError | undefined;
  private _thrown = false;
  private _wake: (() => void) | undefined;
  private _info: Subscribed | undefined;
  private _ready: [Promise<Subscribed>, (info: Subscribed) => void, (error: SockeyeError) => void] | undefined;

  /** @internal Made by `Client.subscribe`. */
  constructor(client: Owner, filter: string, exact: boolean, position: Position | undefined) {
    super();
    this._client = client;
    this.filter = filter;
    this._exact = exact;
    this._position = position;
  }

  /**
   * Resolves with the broker's reply to the first subscribe (whether the
   * topic is stored, its epoch, the first offset delivered), or rejects
   * when the broker refused the subscription.
   */
  get ready(): Promise<Subscribed> {
    if (!this._ready) {
      let resolve!: (info: Subscribed) => void;
      let reject!: (error: SockeyeError) => void;
      const promise = new Promise<Subscribed>((yes, no) => ((resolve = yes), (reject = no)));
      this._ready = [promise, resolve, reject];
      if (this._info) resolve(this._info);
      else if (this._error) reject(this._error);
    }
    return this._ready[0];
  }

  /**
   * Ends the subscription and drops what its buffer holds; resolves once the
   * broker confirmed (or at once when there is no connection).
   */
  unsubscribe(): Promise<void> {
    if (this._ended) return Promise.resolve();
    this._items = [];
    this._end();
    return this._client._unsubscribe(this);
  }

  [Symbol.asyncIterator](): AsyncIterator<Message<T>> {
    return {
      next: () => this._next(),
      return: async () => {
        await this.unsubscribe();
        return { done: true, value: undefined };
      },
    };
  }

  private async _next(): Promise<IteratorResult<Message<T>>> {
    for (;;) {
      const item = this._items.shift();
      if (item) {
        if (item[0] === "message") {
          this._count--;
          this._bytes -= item[2];
          this._resyncIfRoom();
          return { done: false, value: item[1] };
        }
        this._emit(item[0], item[1] as never);
      } else if (this._missed) {
        const missed = this._missed;
        this._missed = 0;
        this._emit("lagged", { missed });
      } else if (this._ended) {
        // An error ends the iteration by throwing, unless a listener took it.
        if (this._error && !this._thrown && !this._has("error")) {
          this._thrown = true;
          throw this._error;
        }
        return { done: true, value: undefined };
      } else {
        await new Promise<void>((resolve) => (this._wake = resolve));
      }
    }
  }

  private _push(item: Item): void {
    this._items.push(item);
    this._wake?.();
    this._wake = undefined;
  }

  private _full(): boolean {
    return this._count >= this._client._bufferSize || this._bytes >= this._client._bufferBytes;
  }

  /** A notice that must reach the application, whatever the buffer holds. Consecutive ones of a kind coalesce. */
  private _notice(item: Item): void {
    const last = this._items[this._items.length - 1];
    if (last && last[0] === item[0] && (last[1] as Gap).topic === (item[1] as Gap).topic) {
      if (item[0] === "gap") {
        (last[1] as Gap).to = item[1].to;
      } else {
        last[1] = item[1];
      }
      return;
    }
    this._push(item);
  }

  /** Resubscribes from the cursor once the application has read half of a full buffer. */
  private _resyncIfRoom(): void {
    const client = this._client;
    if (
      this._needsResync &&
      !this._inFlight &&
      this._count <= client._bufferSize / 2 &&
      this._bytes <= client._bufferBytes / 2
    ) {
      client._resync(this);
    }
  }

  /** The buffer is full, or a frame skipped past the cursor: make the subscription again from the cursor. */
  private _skip(): void {
    if (this._inFlight) return; // Frames of the subscription being replaced.
    this._needsResync = true;
    this._resyncIfRoom();
  }

  /** @internal A delivery routed to this subscription. */
  _deliver(message: Message<T>, size: number): void {
    if (this._ended) return;
    const cursor = this._cursor;
    if (cursor) {
      const place = arrival(cursor, message.epoch, message.offset, message.offset);
      if (place === 0) {
        if (this._needsResync || this._full()) return this._skip();
        cursor[1]++;
      } else {
        if (place > 0) this._skip();
        return;
      }
    } else if (this._full()) {
      this._missed++;
      return;
    } else if (this._missed) {
      this._push(["lagged", { missed: this._missed }]);
      this._missed = 0;
    }
    this._count++;
    this._bytes += size;
    this._push(["message", message, size]);
  }

  /** @internal A `gap` frame: offsets `from..=to` will not be delivered. */
  _gap(topic: string, epoch: number, from: number, to: number): void {
    const cursor = this._cursor;
    if (!cursor) return this._notice(["gap", { topic, epoch, from, to }]);
    const place = arrival(cursor, epoch, from, to);
    if (place > 0) return this._skip();
    if (place < 0) return;
    if (this._needsResync || this._full()) return this._skip();
    // Offsets before the cursor were delivered: they are not part of it.
    this._push(["gap", { topic, epoch, from: cursor[1], to }]);
    cursor[1] = to + 1;
  }

  /** @internal A `reset` frame: the topic continues in a new epoch. */
  _reset(topic: string, epoch: number): void {
    const cursor = this._cursor;
    if (!cursor) return this._notice(["reset", { topic, epoch, nextOffset: 1 }]);
    if (cursor[0] === epoch) return; // Already there: a stale frame.
    if (this._needsResync || this._full()) return this._skip();
    this._push(["reset", { topic, epoch, nextOffset: 1 }]);
    this._cursor = [epoch, 1];
  }

  /** @internal The broker's `subscribed` reply. */
  _subscribed(reply: Record<string, any>): void {
    this._inFlight = false;
    this._held = true;
    const topic: string = reply.topic;
    const epoch: number = reply.epoch;
    const next: number = reply.next_offset;
    if (this._first) {
      this._first = false;
      this._info = {
        topic,
        stored: reply.stored,
        epoch,
        lastOffset: reply.last_offset,
        nextOffset: next,
        complete: reply.complete,
      };
      this._ready?.[1](this._info);
    }
    if (!reply.stored || !this._exact) {
      this._cursor = undefined;
      return;
    }
    const cursor = this._cursor;
    const gap = reply.gap as { from: number; to: number } | undefined;
    let notice: Item | undefined;
    if (reply.epoch_changed) notice = ["reset", { topic, epoch, nextOffset: next }];
    else if (gap) notice = ["gap", { topic, epoch, from: Math.max(gap.from, cursor?.[1] ?? 0), to: gap.to }];
    if (!cursor) {
      // A new cursor: there is none to resubscribe from, so the notice is owed.
      this._cursor = [epoch, next];
      if (notice) this._push(notice);
    } else if (notice && (notice[0] === "reset" || (notice[1] as Gap).from <= (notice[1] as Gap).to)) {
      if (this._full()) {
        // Keep the old cursor: resubscribing from it reports this again.
        this._needsResync = true;
        return;
      }
      this._push(notice);
      this._cursor = [epoch, next];
    } else if (cursor[0] === epoch) {
      // Deliveries of the replaced subscription may have moved the cursor
      // past the broker's start: those the replay repeats are dropped.
      cursor[1] = Math.max(cursor[1], next);
    } else {
      this._cursor = [epoch, next];
    }
    this._resyncIfRoom();
  }

  /** @internal The connection ended: it is no longer held, and if it cannot be resumed, messages are being missed. */
  _connectionEnded(): void {
    if (this._held && !this._cursor) this._notice(["interrupted", { topic: this.filter }]);
    this._held = this._inFlight = this._needsResync = false;
  }

  /** @internal Ends the subscription, with an error or without. */
  _end(error?: SockeyeError): void {
    if (this._ended) return;
    this._ended = true;
    if (error) {
      this._error = error;
      this._ready?.[2](error);
      this._emit("error", error);
    }
    this._wake?.();
  }
}

/**
 * Where a frame covering offsets `from..=to` of `epoch` stands against the
 * cursor: 0 it covers the next offset, -1 it was all buffered already, 1 it
 * starts past the next offset or is of another epoch (offsets in between
 * are missing).
 */
function arrival([cursorEpoch, next]: [number, number], epoch: number, from: number, to: number): number {
  return epoch !== cursorEpoch || from > next ? 1 : to < next ? -1 : 0;
}
