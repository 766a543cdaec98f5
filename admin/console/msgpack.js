// MessagePack payloads shown as text: maps, arrays, strings, numbers,
// booleans and nil as JSON; what JSON cannot hold written in angle
// brackets (`<bin de ad>`, `<ext 5: 01 02>`, `<timestamp ...>`); integers
// exact to 64 bits (BigInt); a payload that is just bytes as hex.
//
// The console reads history with `?encoding=msgpack`, so it always sees the
// exact bytes and does the decoding here. Lengths in the input are not
// trusted: every read is checked against the bytes that remain, and
// nesting is bounded, so no payload can make the page allocate or recurse
// without limit.

import { hex } from "./format.js";

/// Deeper nesting is reported as undecodable instead of recursing on.
export const MAX_DEPTH = 256;

export class MsgpackError extends Error {
  constructor(message, offset) {
    super(`${message} at byte ${offset}`);
    this.name = "MsgpackError";
  }
}

/// What the payload is, for the Type column: "map", "array", "string",
/// "integer", "float", "boolean", "nil", "bin", "ext".
export function kindOf(data) {
  if (data.length === 0) return "empty";
  const b = data[0];
  if (b <= 0x7f || b >= 0xe0 || (b >= 0xcc && b <= 0xd3)) return "integer";
  if (b <= 0x8f || b === 0xde || b === 0xdf) return "map";
  if (b <= 0x9f || b === 0xdc || b === 0xdd) return "array";
  if (b <= 0xbf || (b >= 0xd9 && b <= 0xdb)) return "string";
  if (b === 0xc0) return "nil";
  if (b === 0xc2 || b === 0xc3) return "boolean";
  if (b >= 0xc4 && b <= 0xc6) return "bin";
  if (b === 0xca || b === 0xcb) return "float";
  return "ext";
}

/// The text of one MessagePack value. A value that is only a `bin` is its
/// bytes in hex ("de ad be ef"), without brackets. Throws MsgpackError.
export function render(data) {
  const reader = new Reader(data);
  if (kindOf(data) === "bin") {
    const marker = reader.u8();
    const bytes = reader.binary(reader.length(1 << (marker - 0xc4)));
    reader.end();
    return hex(bytes);
  }
  const text = reader.value(0);
  reader.end();
  return text;
}

const utf8 = new TextDecoder("utf-8");

class Reader {
  constructor(data) {
    this.data = data;
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.pos = 0;
  }

  need(n) {
    if (n > this.data.length - this.pos) {
      throw new MsgpackError(`${n} bytes announced, ${this.data.length - this.pos} left`, this.pos);
    }
  }

  end() {
    if (this.pos !== this.data.length) {
      throw new MsgpackError(`${this.data.length - this.pos} bytes after the value`, this.pos);
    }
  }

  u8() {
    this.need(1);
    return this.data[this.pos++];
  }

  take(n, read) {
    this.need(n);
    const value = read(this.view, this.pos);
    this.pos += n;
    return value;
  }

  u16() { return this.take(2, (v, at) => v.getUint16(at)); }
  u32() { return this.take(4, (v, at) => v.getUint32(at)); }

  /// A length field of `width` bytes (1, 2 or 4).
  length(width) {
    if (width === 1) return this.u8();
    if (width === 2) return this.u16();
    return this.u32();
  }

  binary(n) {
    this.need(n);
    const bytes = this.data.subarray(this.pos, this.pos + n);
    this.pos += n;
    return bytes;
  }

  string(n) {
    return JSON.stringify(utf8.decode(this.binary(n)));
  }

  /// `n` items of an array, each needs at least one byte.
  array(n, depth) {
    this.need(n);
    const items = [];
    for (let i = 0; i < n; i += 1) items.push(this.value(depth + 1));
    return `[${items.join(",")}]`;
  }

  map(n, depth) {
    this.need(2 * n);
    const entries = [];
    for (let i = 0; i < n; i += 1) {
      const key = this.value(depth + 1);
      entries.push(`${key}:${this.value(depth + 1)}`);
    }
    return `{${entries.join(",")}}`;
  }

  ext(n) {
    this.need(1);
    const type = this.view.getInt8(this.pos);
    this.pos += 1;
    const body = this.binary(n);
    if (type === -1) {
      const time = timestampOf(body);
      if (time !== null) return `<timestamp ${time}>`;
    }
    return `<ext ${type}: ${hex(body)}>`;
  }

  value(depth) {
    if (depth > MAX_DEPTH) throw new MsgpackError(`nested deeper than ${MAX_DEPTH} levels`, this.pos);
    const at = this.pos;
    const b = this.u8();
    if (b <= 0x7f) return String(b);
    if (b >= 0xe0) return String(b - 0x100);
    if (b <= 0x8f) return this.map(b & 0x0f, depth);
    if (b <= 0x9f) return this.array(b & 0x0f, depth);
    if (b <= 0xbf) return this.string(b & 0x1f);
    switch (b) {
      case 0xc0: return "null";
      case 0xc2: return "false";
      case 0xc3: return "true";
      case 0xc4: case 0xc5: case 0xc6: {
        const bytes = this.binary(this.length(1 << (b - 0xc4)));
        return bytes.length === 0 ? "<bin>" : `<bin ${hex(bytes)}>`;
      }
      case 0xc7: case 0xc8: case 0xc9:
        return this.ext(this.length(1 << (b - 0xc7)));
      case 0xca: return number(this.take(4, (v, i) => v.getFloat32(i)));
      case 0xcb: return number(this.take(8, (v, i) => v.getFloat64(i)));
      case 0xcc: return String(this.u8());
      case 0xcd: return String(this.u16());
      case 0xce: return String(this.u32());
      case 0xcf: return this.take(8, (v, i) => v.getBigUint64(i)).toString();
      case 0xd0: return String(this.take(1, (v, i) => v.getInt8(i)));
      case 0xd1: return String(this.take(2, (v, i) => v.getInt16(i)));
      case 0xd2: return String(this.take(4, (v, i) => v.getInt32(i)));
      case 0xd3: return this.take(8, (v, i) => v.getBigInt64(i)).toString();
      case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
        return this.ext(1 << (b - 0xd4));
      case 0xd9: case 0xda: case 0xdb:
        return this.string(this.length(1 << (b - 0xd9)));
      case 0xdc: return this.array(this.u16(), depth);
      case 0xdd: return this.array(this.u32(), depth);
      case 0xde: return this.map(this.u16(), depth);
      case 0xdf: return this.map(this.u32(), depth);
      default: throw new MsgpackError(`0x${b.toString(16)} is not a MessagePack type`, at);
    }
  }
}

/// Floats as JSON writes them, and the values JSON has no words for.
function number(value) {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "Infinity";
  if (value === -Infinity) return "-Infinity";
  if (Object.is(value, -0)) return "-0.0";
  return String(value);
}

/// The MessagePack timestamp extension (type -1) as an ISO date, or null
/// if the body is not one of its three forms.
function timestampOf(body) {
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  let seconds;
  let nanos;
  if (body.length === 4) {
    seconds = BigInt(view.getUint32(0));
    nanos = 0;
  } else if (body.length === 8) {
    const high = view.getUint32(0);
    nanos = high >>> 2;
    seconds = (BigInt(high & 0x3) << 32n) | BigInt(view.getUint32(4));
  } else if (body.length === 12) {
    nanos = view.getUint32(0);
    seconds = view.getBigInt64(4);
  } else {
    return null;
  }
  const ms = Number(seconds) * 1000 + Math.floor(nanos / 1e6);
  const date = new Date(ms);
  if (Number.isNaN(date.getTime())) return null;
  const iso = date.toISOString();
  return nanos % 1e6 === 0 ? iso : iso.replace(/\.\d{3}Z$/, `.${String(nanos).padStart(9, "0")}Z`);
}
