#!/usr/bin/env python3
"""A Sockeye client in Python, written from docs/protocol.md alone.

Run with: pip install -r examples/python/requirements.txt && python3 examples/python/sockeye_client.py --url ws://127.0.0.1:8080/ws --token "$TOKEN" --topic notes.py --publish 3

It connects (token in the Authorization header, subprotocol sockeye.v1),
subscribes to the topic resuming after the position saved in --state (or
from the oldest retained message the first time), publishes --publish notes
of its own, prints every note it receives until it has seen its own, saves
the last position it processed, and closes normally (1000). Every wait for
the broker (connecting, each message, the close) is bounded by --timeout
seconds (default 30); past it the client exits with status 1.

Output, one line each:
  welcome connection_id=N subject=SUB version=1
  subscribed TOPIC epoch=E next_offset=N complete=true|false
  gap FROM..TO                       (only if history was trimmed)
  epoch changed to E                 (only if the topic was reset)
  published offset=N
  message offset=N from=SUB seq=S text=TEXT   (TEXT shortened past 40 chars)
  pong
  closed 1000
"""

import argparse
import asyncio
import itertools
import json
import os
import sys
import zlib

import msgpack
from websockets.asyncio.client import connect

FLAG_PLAIN = 0x00
FLAG_DEFLATE = 0x01


class Connection:
    """One WebSocket connection speaking the Sockeye frame format (section 2)."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.threshold = 1024  # replaced by welcome.limits

    def encode(self, body):
        packed = msgpack.packb(body, use_bin_type=True)
        if len(packed) > self.threshold:
            deflate = zlib.compressobj(6, zlib.DEFLATED, -15)  # raw deflate
            compressed = deflate.compress(packed) + deflate.flush()
            if len(compressed) < len(packed):
                return bytes([FLAG_DEFLATE]) + compressed
        return bytes([FLAG_PLAIN]) + packed

    @staticmethod
    def decode(frame):
        if not isinstance(frame, bytes):
            raise ValueError("the broker sent a text frame")
        flags, body = frame[0], frame[1:]
        if flags == FLAG_DEFLATE:
            body = zlib.decompress(body, -15)
        elif flags != FLAG_PLAIN:
            raise ValueError(f"reserved frame flags {flags:#x}")
        message = msgpack.unpackb(body, raw=False)
        if not isinstance(message, dict):
            raise ValueError("the frame body is not a map")
        return message

    async def send(self, body):
        await self.ws.send(self.encode(body))

    async def request(self, body):
        """Sends a request with a fresh id and returns the id."""
        request_id = next(self.ids)
        await self.send({**body, "id": request_id})
        return request_id

    async def receive(self, timeout):
        """The next message; TimeoutError if none arrives within `timeout` s."""
        return self.decode(await asyncio.wait_for(self.ws.recv(), timeout))


def load_position(path):
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            saved = json.load(file)
        return {"kind": "after", "epoch": saved["epoch"], "offset": saved["offset"]}
    return {"kind": "oldest"}


def save_position(path, epoch, offset):
    if path:
        with open(path, "w", encoding="utf-8") as file:
            json.dump({"epoch": epoch, "offset": offset}, file)


def shorten(text):
    return text if len(text) <= 40 else text[:37] + "..."


async def run(args):
    headers = {"Authorization": f"Bearer {args.token}"}
    async with connect(
        args.url,
        subprotocols=["sockeye.v1"],
        additional_headers=headers,
        max_size=16 * 1024 * 1024,
        open_timeout=args.timeout,
        close_timeout=args.timeout,
    ) as ws:
        conn = Connection(ws)
        welcome = await conn.receive(args.timeout)
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"expected welcome, got {welcome!r}")
        conn.threshold = welcome["limits"]["compression_threshold_bytes"]
        connection_id = welcome["connection_id"]
        # An unsigned integer on the wire: the id the admin API lists.
        if type(connection_id) is not int or connection_id < 0:
            raise RuntimeError(f"connection_id is not an unsigned integer: {connection_id!r}")
        print(
            f"welcome connection_id={connection_id} subject={welcome['subject']}"
            f" version={welcome['version']}",
            flush=True,
        )

        waiting = {}  # request id -> kind of request
        sub_id = await conn.request(
            {"type": "subscribe", "topic": args.topic, "position": load_position(args.state)}
        )
        waiting[sub_id] = "subscribe"

        own_offsets = set()
        last = None
        published = 0
        pinged = False
        while True:
            message = await conn.receive(args.timeout)
            kind = message.get("type")
            if kind == "subscribed":
                waiting.pop(message["id"], None)
                complete = "true" if message["complete"] else "false"
                print(
                    f"subscribed {message['topic']} epoch={message['epoch']} "
                    f"next_offset={message['next_offset']} complete={complete}",
                    flush=True,
                )
                if message.get("epoch_changed"):
                    print(f"epoch changed to {message['epoch']}", flush=True)
                if message.get("gap"):
                    print(f"gap {message['gap']['from']}..{message['gap']['to']}", flush=True)
                # Subscribed first, so our own notes come back to us.
                for seq in range(1, args.publish + 1):
                    text = args.text if seq < args.publish or not args.big else args.text * 200
                    request_id = await conn.request(
                        {
                            "type": "publish",
                            "topic": args.topic,
                            "payload": {"seq": seq, "text": text},
                            "ack": True,
                        }
                    )
                    waiting[request_id] = "publish"
            elif kind == "published":
                waiting.pop(message["id"], None)
                own_offsets.add(message["offset"])
                published += 1
                print(f"published offset={message['offset']}", flush=True)
            elif kind == "message":
                payload = message["payload"]
                last = (message["epoch"], message["offset"])
                save_position(args.state, *last)
                print(
                    f"message offset={message['offset']} from={message['publisher']} "
                    f"seq={payload['seq']} text={shorten(payload['text'])}",
                    flush=True,
                )
            elif kind == "gap":
                print(f"gap {message['from']}..{message['to']}", flush=True)
            elif kind == "reset":
                print(f"epoch changed to {message['epoch']}", flush=True)
            elif kind == "pong":
                waiting.pop(message["id"], None)
                print("pong", flush=True)
                break
            elif kind == "error":
                print(f"error {message['code']}: {message['message']}", file=sys.stderr, flush=True)
                return 1
            elif kind == "token_expiring":
                print("token expiring; a long-running client would send refresh", file=sys.stderr)
            # Unknown kinds are ignored (section 10).

            done = (
                published == args.publish
                and last is not None
                and all(offset <= last[1] for offset in own_offsets)
            )
            if done and not pinged:
                # Everything we published has come back: check liveness and stop.
                pinged = True
                waiting[await conn.request({"type": "ping"})] = "ping"

        await ws.close(code=1000)
        print(f"closed {ws.close_code}", flush=True)
    return 0


def main():
    parser = argparse.ArgumentParser(description="Sockeye Python client example")
    parser.add_argument("--url", default=os.environ.get("SOCKEYE_URL", "ws://127.0.0.1:8080/ws"))
    parser.add_argument("--token", default=os.environ.get("SOCKEYE_TOKEN"))
    parser.add_argument("--topic", default=os.environ.get("SOCKEYE_TOPIC", "notes.py"))
    parser.add_argument("--publish", type=int, default=1, help="notes to publish")
    parser.add_argument("--text", default="hello from python")
    parser.add_argument("--big", action="store_true", help="make the last note large (compressed)")
    parser.add_argument("--state", help="file keeping the last processed position, for resume")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the broker at each step (connect, each message, close)",
    )
    args = parser.parse_args()
    if not args.token:
        parser.error("--token or SOCKEYE_TOKEN is required")
    if args.publish < 1:
        parser.error("--publish must be at least 1")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    try:
        sys.exit(asyncio.run(run(args)))
    except (TimeoutError, asyncio.TimeoutError):
        print(f"error: no answer from the broker within {args.timeout} s", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
