// How numbers, sizes, times and bytes are written on the page, and the
// conversions between hex, base64 and bytes the payload forms need.

const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/// 1536 -> "1.5 KiB"; integers below 1024 as they are.
export function bytes(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  let unit = 0;
  let scaled = value;
  while (Math.abs(scaled) >= 1024 && unit < BYTE_UNITS.length - 1) {
    scaled /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${Math.round(scaled)} B` : `${scaled.toFixed(scaled < 10 ? 2 : 1)} ${BYTE_UNITS[unit]}`;
}

/// Counts: 1234567 -> "1,234,567". Fractions get at most `digits` decimals.
export function count(value, digits = 0) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  return value.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

/// A rate per second with a sensible precision.
export function rate(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  return `${count(value, value < 10 ? 1 : 0)}/s`;
}

/// Seconds -> "3 d 4 h", "2 h 5 min", "4 min 10 s", "12 s".
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.floor(seconds));
  const days = Math.floor(s / 86400);
  const hours = Math.floor((s % 86400) / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  if (days > 0) return `${days} d ${hours} h`;
  if (hours > 0) return `${hours} h ${minutes} min`;
  if (minutes > 0) return `${minutes} min ${s % 60} s`;
  return `${s} s`;
}

/// Seconds of latency -> "850 µs", "1.2 ms", "2.5 s".
export function latency(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  if (seconds < 0.001) return `${Math.round(seconds * 1e6)} µs`;
  if (seconds < 1) return `${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1)} ms`;
  return `${seconds.toFixed(2)} s`;
}

/// Unix milliseconds -> "2026-01-02 13:04:05.123" in the browser's time zone.
export function timestamp(ms) {
  if (ms === null || ms === undefined) return "—";
  const date = new Date(ms);
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.` +
    pad(date.getMilliseconds(), 3)
  );
}

/// Unix milliseconds -> "5 s ago", "3 min ago".
export function ago(ms, now = Date.now()) {
  if (ms === null || ms === undefined) return "never";
  return `${duration((now - ms) / 1000)} ago`;
}

/// Bytes -> "de ad be ef".
export function hex(data) {
  let out = "";
  for (let i = 0; i < data.length; i += 1) {
    if (i > 0) out += " ";
    out += data[i].toString(16).padStart(2, "0");
  }
  return out;
}

/// "de ad be ef" or "deadbeef" -> bytes; throws a readable Error on
/// anything but pairs of hex digits (spaces, colons and newlines between
/// bytes are ignored).
export function parseHex(text) {
  const digits = text.replace(/[\s:]/g, "");
  if (!/^[0-9a-fA-F]*$/.test(digits)) {
    throw new Error("only hex digits (0-9, a-f) and spaces are allowed");
  }
  if (digits.length % 2 !== 0) {
    throw new Error(`an odd number of hex digits (${digits.length}): each byte is two`);
  }
  const data = new Uint8Array(digits.length / 2);
  for (let i = 0; i < data.length; i += 1) {
    data[i] = parseInt(digits.slice(2 * i, 2 * i + 2), 16);
  }
  return data;
}

export function base64ToBytes(text) {
  const binary = atob(text);
  const data = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) data[i] = binary.charCodeAt(i);
  return data;
}

export function bytesToBase64(data) {
  let binary = "";
  // In slices: String.fromCharCode takes its arguments on the stack.
  for (let i = 0; i < data.length; i += 0x8000) {
    binary += String.fromCharCode(...data.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/// Length of a string in UTF-8 bytes (close reasons are bounded in bytes).
export function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}
