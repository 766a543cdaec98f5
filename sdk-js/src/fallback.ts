// Raw deflate for runtimes without `CompressionStream("deflate-raw")`:
// fflate, loaded on first use so the core bundle does not carry it. It
// imports nothing else of the SDK, so it stays a chunk of its own.

import { deflateSync, Inflate } from "fflate";

/** Input is inflated in slices this big, so one step's output stays bounded. */
const SLICE = 1024;

export const deflate = (body: Uint8Array): Uint8Array => deflateSync(body, { level: 1 });

/**
 * Inflates raw deflate; undefined as soon as more than `cap` bytes came
 * out. Throws on a corrupt stream.
 */
export function inflate(data: Uint8Array, cap: number): Uint8Array | undefined {
  const chunks: Uint8Array[] = [];
  let total = 0;
  const inflater = new Inflate((chunk) => {
    total += chunk.length;
    chunks.push(chunk);
  });
  for (let at = 0; at < data.length; at += SLICE) {
    inflater.push(data.subarray(at, at + SLICE), at + SLICE >= data.length);
    if (total > cap) return undefined;
  }
  const out = new Uint8Array(total);
  total = 0;
  for (const chunk of chunks) {
    out.set(chunk, total);
    total += chunk.length;
  }
  return out;
}
