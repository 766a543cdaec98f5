// Frames (protocol section 2): the flags byte, MessagePack bodies, raw
// deflate both ways with an inflate cap, and 64-bit integers as numbers.

import { Decoder, Encoder } from "@msgpack/msgpack";
import { fail, SockeyeError } from "./errors.js";

type Fallback = typeof import("./fallback.js");

// Numbers encode as MessagePack integers when they are safe integers (the
// protocol's uints); `useBigInt64` here would turn integers of 2^32 and more
// into floats.
const encoder = new Encoder();
// 64-bit integers decode exactly, as BigInt, and become numbers when safe.
const decoder = new Decoder({ useBigInt64: true });

let fallback: Promise<Fallback> | undefined;
/** fflate, loaded on first use by runtimes without (de)compression streams. */
const loadFallback = (): Promise<Fallback> => (fallback ??= import("./fallback.js"));

/** Whether the runtime has a native `deflate-raw` stream of this kind. */
function native(kind: "CompressionStream" | "DecompressionStream"): boolean {
  try {
    new (globalThis as any)[kind]("deflate-raw");
    return true;
  } catch {
    return false;
  }
}
const nativeDeflate = native("CompressionStream");
const nativeInflate = native("DecompressionStream");

/** Encodes a body (a map); throws `encode_failed` for values MessagePack cannot hold. */
export function encodeBody(message: object): Uint8Array {
  try {
    return encoder.encode(message);
  } catch (error) {
    throw fail("encode_failed", `cannot encode the payload as MessagePack: ${(error as Error).message}`);
  }
}

/** Reads a whole stream, failing as soon as more than `cap` bytes came out. */
async function drain(stream: { writable: WritableStream; readable: ReadableStream<Uint8Array> }, input: Uint8Array, cap: number): Promise<Uint8Array> {
  const writer = stream.writable.getWriter();
  // Not awaited: the readable side must be read for the write to finish.
  writer.write(input).then(() => writer.close()).catch(() => {});
  const reader = stream.readable.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return concat(chunks, total);
    total += value.length;
    if (total > cap) {
      reader.cancel().catch(() => {});
      throw fail("frame_too_large", `a compressed frame inflates past ${cap} bytes`);
    }
    chunks.push(value);
  }
}

function concat(chunks: Uint8Array[], total: number, head?: number): Uint8Array {
  const start = head === undefined ? 0 : 1;
  const out = new Uint8Array(total + start);
  if (head !== undefined) out[0] = head;
  let at = start;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

/**
 * The frame for `body`: compressed when it is larger than `threshold` and
 * deflate makes it smaller, plain otherwise.
 */
export async function seal(body: Uint8Array, threshold: number): Promise<Uint8Array> {
  if (body.length > threshold) {
    const compressed = nativeDeflate
      ? await drain(new CompressionStream("deflate-raw"), body, Infinity)
      : (await loadFallback()).deflate(body);
    if (compressed.length < body.length) return concat([compressed], compressed.length, 1);
  }
  return concat([body], body.length, 0);
}

/**
 * A frame's body, inflated when its flags say so. Throws `frame_too_large`
 * past `cap` inflated bytes, `malformed_frame` for anything unreadable.
 */
export async function open(frame: Uint8Array, cap: number): Promise<Uint8Array> {
  const body = frame.subarray(1);
  if (frame[0] === 0) return body;
  if (frame[0] !== 1) throw fail("malformed_frame", `reserved frame flags ${frame[0]}`);
  let inflated: Uint8Array | undefined;
  try {
    inflated = nativeInflate
      ? await drain(new DecompressionStream("deflate-raw"), body, cap)
      : (await loadFallback()).inflate(body, cap);
  } catch (error) {
    // Node's zlib errors carry a `code` of their own: only ours pass.
    if (error instanceof SockeyeError) throw error;
    throw fail("malformed_frame", `corrupt deflate stream: ${(error as Error).message}`);
  }
  if (!inflated) throw fail("frame_too_large", `a compressed frame inflates past ${cap} bytes`);
  return inflated;
}

/** Decodes a body into a map with 64-bit integers as numbers when safe. */
export function decodeBody(body: Uint8Array): Record<string, unknown> {
  let value: unknown;
  try {
    value = normalize(decoder.decode(body));
  } catch (error) {
    throw fail("malformed_frame", `unreadable frame body: ${(error as Error).message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw fail("malformed_frame", "a frame body is not a map");
  }
  return value as Record<string, unknown>;
}

const SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** BigInts from 64-bit integers become numbers where that is exact. */
function normalize(value: unknown): unknown {
  if (typeof value === "bigint") return value <= SAFE && value >= -SAFE ? Number(value) : value;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = normalize(value[i]);
  } else if (value !== null && typeof value === "object" && !ArrayBuffer.isView(value)) {
    for (const key in value) (value as any)[key] = normalize((value as any)[key]);
  }
  return value;
}
