#!/usr/bin/env python3
"""Broker RSS held by worst-case wildcard filters (docs/benchmarks.md,
"Wildcard flood"): TOKENS x PER_TOKEN connections each subscribe FILTERS
filters of 16 segments, 15 of them literals unique to the filter and one `*`,
so no two filters share a trie node below the root. Prints the filters
accepted and the broker's RSS before and after (read from /proc/PID/status).

Run with (python3 packages websockets and msgpack, as scripts/test.sh installs):
  target/release/sockeye serve --config bench/sockeye-bench.toml --data-dir /tmp/d --listen 127.0.0.1:39291 &
  for i in $(seq 0 63); do target/release/sockeye token --config bench/sockeye-bench.toml \\
    --sub "m$i" --ttl 1h; done > /tmp/tokens.txt
  python3 bench/wildcard-memory.py ws://127.0.0.1:39291/ws $! /tmp/tokens.txt 64 4
  kill %1

Every wait is bounded (connect and each reply: 30 s).
"""

import asyncio
import sys

import msgpack
from websockets.asyncio.client import connect

WAIT = 30


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def frame(message):
    return b"\x00" + msgpack.packb(message)


async def subscriber(url, token, connection, filters, held):
    ws = await asyncio.wait_for(
        connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                subprotocols=["sockeye.v1"], max_size=None), WAIT)
    await asyncio.wait_for(ws.recv(), WAIT)  # welcome
    for n in range(filters):
        segments = [f"c{connection}n{n}p{k}" for k in range(15)]
        segments.insert(7, "*")
        await ws.send(frame({"type": "subscribe", "id": n + 1, "topic": ".".join(segments)}))
    accepted = 0
    for _ in range(filters):
        reply = msgpack.unpackb((await asyncio.wait_for(ws.recv(), WAIT))[1:])
        accepted += reply["type"] == "subscribed"
    held.append(ws)
    return accepted


async def main():
    url, pid, tokens_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    filters, per_token = int(sys.argv[4]), int(sys.argv[5])
    with open(tokens_file) as tokens:
        tokens = tokens.read().split()
    before = rss_kib(pid)
    held = []
    accepted = await asyncio.gather(*(
        subscriber(url, tokens[c // per_token], c, filters, held)
        for c in range(len(tokens) * per_token)))
    await asyncio.sleep(1)
    after = rss_kib(pid)
    print(f"connections {len(held)}, filters accepted {sum(accepted)}, "
          f"broker RSS {before} KiB before, {after} KiB after (+{after - before} KiB)")
    for ws in held:
        await ws.close()


asyncio.run(main())
