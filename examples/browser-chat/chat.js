// Sockeye browser chat: the protocol client (docs/protocol.md) and the page.
//
// Run with: see the comment at the top of index.html.
//
// Frames are binary: one flags byte (0 = plain, 1 = raw deflate), then a
// MessagePack map. The token travels as a `bearer.<jwt>` subprotocol entry
// next to `sockeye.v1`, because browsers cannot set WebSocket headers.

const { encode, decode } = globalThis.MessagePack;

const params = new URLSearchParams(location.search);
const brokerUrl = params.get("url") ?? `ws://${location.hostname}:8080/ws`;
const token = params.get("token") ?? "";
const topic = params.get("topic") ?? "chat.lobby";
const HISTORY = 50;

const statusLine = document.getElementById("status");
const log = document.getElementById("log");
const form = document.getElementById("compose");
const input = document.getElementById("text");
const sendButton = document.getElementById("send");

// --- frames ---------------------------------------------------------------

async function transform(bytes, stream) {
  const piped = new Blob([bytes]).stream().pipeThrough(stream);
  return new Uint8Array(await new Response(piped).arrayBuffer());
}

// 64-bit integers decode as BigInt (exact); the protocol keeps every number
// it sends below 2^53, so they become plain numbers again when safe.
function normalize(value) {
  if (typeof value === "bigint") {
    return value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= BigInt(Number.MIN_SAFE_INTEGER)
      ? Number(value)
      : value;
  }
  if (Array.isArray(value)) return value.map(normalize);
  if (value !== null && typeof value === "object" && !(value instanceof Uint8Array)) {
    const out = {};
    for (const [key, inner] of Object.entries(value)) out[key] = normalize(inner);
    return out;
  }
  return value;
}

async function openFrame(data) {
  const frame = new Uint8Array(data);
  let body = frame.subarray(1);
  if (frame[0] === 1) {
    body = await transform(body, new DecompressionStream("deflate-raw"));
  } else if (frame[0] !== 0) {
    throw new Error(`reserved frame flags ${frame[0]}`);
  }
  return normalize(decode(body, { useBigInt64: true }));
}

async function sealFrame(message, threshold) {
  const body = encode(message);
  if (body.length > threshold) {
    const compressed = await transform(body, new CompressionStream("deflate-raw"));
    if (compressed.length < body.length) {
      const frame = new Uint8Array(compressed.length + 1);
      frame[0] = 1;
      frame.set(compressed, 1);
      return frame;
    }
  }
  const frame = new Uint8Array(body.length + 1);
  frame.set(body, 1);
  return frame;
}

// --- connection -----------------------------------------------------------

let socket = null;
let threshold = 1024;
let nextId = 1;
let pingTimer = null;
let failures = 0;
// The last message shown, so a reconnect resumes right after it.
let last = null;
// Frames are decoded asynchronously (inflate); this keeps them in order.
let inbound = Promise.resolve();

function setStatus(state, text) {
  statusLine.dataset.state = state;
  statusLine.textContent = text;
  const ready = state === "connected";
  input.disabled = !ready;
  sendButton.disabled = !ready;
}

async function send(message) {
  const frame = await sealFrame({ ...message, id: nextId++ }, threshold);
  socket.send(frame);
}

function show(className, who, text, offset) {
  const item = document.createElement("li");
  item.className = className;
  if (offset !== undefined) item.dataset.offset = String(offset);
  if (who) {
    const name = document.createElement("span");
    name.className = "who";
    name.textContent = `${who}: `;
    item.append(name);
  }
  item.append(document.createTextNode(text));
  log.append(item);
}

function handle(message) {
  switch (message.type) {
    case "welcome": {
      threshold = message.limits.compression_threshold_bytes;
      failures = 0;
      const position = last
        ? { kind: "after", epoch: last.epoch, offset: last.offset }
        : { kind: "last", count: HISTORY };
      send({ type: "subscribe", topic, position });
      // Browsers cannot see WebSocket pings: ping at the protocol level.
      pingTimer = setInterval(() => send({ type: "ping" }), message.heartbeat_interval_ms);
      statusLine.dataset.subject = message.subject;
      break;
    }
    case "subscribed":
      if (message.gap) show("notice", "", `messages ${message.gap.from}–${message.gap.to} are gone`);
      if (message.epoch_changed) show("notice", "", "the chat history was reset");
      setStatus("connected", `connected as ${statusLine.dataset.subject} to ${topic}`);
      break;
    case "message": {
      last = { epoch: message.epoch, offset: message.offset };
      const text = message.payload?.text ?? JSON.stringify(message.payload);
      show("msg", message.publisher, String(text), message.offset);
      break;
    }
    case "gap":
      show("notice", "", `messages ${message.from}–${message.to} are gone`);
      break;
    case "reset":
      show("notice", "", "the chat history was reset");
      break;
    case "error":
      show("notice", "", `error ${message.code}: ${message.message}`);
      break;
    case "token_expiring":
      show("notice", "", "your token expires soon; reload with a new one");
      break;
    default:
      // published, pong, and kinds added in later versions: nothing to do.
      break;
  }
}

// Close codes after which reconnecting cannot help (protocol section 9).
const FINAL_CLOSES = new Set([1000, 1002, 1003, 1007, 1008]);

function connect() {
  setStatus("connecting", "connecting…");
  socket = new WebSocket(brokerUrl, ["sockeye.v1", `bearer.${token}`]);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (event) => {
    inbound = inbound
      .then(() => openFrame(event.data))
      .then(handle)
      .catch((error) => {
        show("notice", "", `unreadable frame: ${error}`);
        socket.close(1000);
      });
  };
  socket.onclose = (event) => {
    clearInterval(pingTimer);
    if (FINAL_CLOSES.has(event.code)) {
      setStatus("closed", `disconnected (${event.code} ${event.reason})`);
      return;
    }
    // Exponential backoff with full jitter, honouring the broker's hint.
    const hint = /retry_after_ms=(\d+)/.exec(event.reason);
    const ceiling = Math.min(30000, 500 * 2 ** failures++);
    const delay = hint ? Number(hint[1]) : Math.random() * ceiling;
    setStatus("reconnecting", `reconnecting in ${Math.round(delay)} ms (${event.code})`);
    setTimeout(connect, delay);
  };
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text || socket?.readyState !== WebSocket.OPEN) return;
  send({ type: "publish", topic, payload: { text }, ack: true });
  input.value = "";
});

connect();
