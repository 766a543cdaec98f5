// Frames: the inflate cap (a compressed frame that inflates past it is
// refused, by DecompressionStream and by the fflate fallback alike), corrupt
// and reserved frames, and 64-bit integers. The frame module is compiled
// from src/frame.ts for this test; the fallback is dist/fallback.js.
//
// Run with: npm run build && node --test test/frame.test.mjs

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { pathToFileURL } from "node:url";
import { deflateRawSync } from "node:zlib";
import { encode } from "@msgpack/msgpack";
import { build } from "esbuild";
import * as fallback from "../dist/fallback.js";

const dir = mkdtempSync(join(tmpdir(), "sockeye-frame-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const { outputFiles } = await build({
  entryPoints: [new URL("../src/frame.ts", import.meta.url).pathname],
  bundle: true,
  format: "esm",
  platform: "node",
  write: false,
});
writeFileSync(join(dir, "frame.mjs"), outputFiles[0].text);
const frame = await import(pathToFileURL(join(dir, "frame.mjs")));

const MiB = 1 << 20;
const zeros = deflateRawSync(new Uint8Array(MiB));
const bomb = new Uint8Array([1, ...zeros]);

test("DecompressionStream inflates up to the cap and refuses a frame that inflates past it", async () => {
  assert.equal((await frame.open(bomb, MiB)).length, MiB);
  await assert.rejects(frame.open(bomb, MiB - 1), { code: "frame_too_large" });
});

test("the fflate fallback stops at the cap too", () => {
  assert.equal(fallback.inflate(zeros, MiB).length, MiB);
  assert.equal(fallback.inflate(zeros, MiB - 1), undefined);
  assert.throws(() => fallback.inflate(new Uint8Array([0xff, 0xff, 0xff]), MiB));
  assert.deepEqual(fallback.inflate(fallback.deflate(new Uint8Array([1, 2, 3])), MiB), new Uint8Array([1, 2, 3]));
});

test("corrupt deflate and reserved flags are malformed frames", async () => {
  await assert.rejects(frame.open(new Uint8Array([1, 0xff, 0xff, 0xff]), MiB), { code: "malformed_frame" });
  await assert.rejects(frame.open(new Uint8Array([2, 0x80]), MiB), { code: "malformed_frame" });
});

test("a body is sealed deflated only above the threshold and when that is smaller", async () => {
  const text = frame.encodeBody({ text: "a".repeat(2000) });
  const small = frame.encodeBody({ text: "a" });
  assert.equal((await frame.seal(text, 1024))[0], 1);
  assert.equal((await frame.seal(text, 4096))[0], 0);
  assert.equal((await frame.seal(small, 0))[0], 0, "deflate makes tiny bodies larger");
  const sealed = await frame.seal(text, 1024);
  assert.deepEqual(frame.decodeBody(await frame.open(sealed, MiB)), { text: "a".repeat(2000) });
});

test("64-bit integers decode as numbers when safe and as exact BigInts otherwise", () => {
  // The protocol's epochs and timestamps arrive in the 64-bit forms.
  const body = encode({ epoch: 2n ** 52n + 1n, ts: 1700000000000n, huge: 2n ** 63n + 5n, list: [7n] }, { useBigInt64: true });
  assert.deepEqual(frame.decodeBody(body), { epoch: 2 ** 52 + 1, ts: 1700000000000, huge: 2n ** 63n + 5n, list: [7] });
  // Numbers of 2^32 and more are encoded as integers, not floats.
  assert.deepEqual([...frame.encodeBody({ n: 2 ** 40 })].slice(3, 4), [0xcf]);
  assert.throws(() => frame.decodeBody(encode([1, 2])), { code: "malformed_frame" });
  assert.throws(() => frame.decodeBody(new Uint8Array([0xc1])), { code: "malformed_frame" });
  assert.throws(() => frame.encodeBody({ n: 1n }), { code: "encode_failed" });
});
