// Sockeye browser chat: a page on the TypeScript SDK (sdk-js), vendored as
// its browser bundle in vendor/sockeye-sdk/ (`npm run vendor` refreshes it).
//
// Run with: see the comment at the top of index.html.
//
// The SDK does the protocol: framing and deflate, the token as a
// `bearer.<jwt>` subprotocol entry (browsers cannot set headers), pings,
// reconnecting with backoff, and resuming after the last message shown.

import { Client } from "./vendor/sockeye-sdk/sockeye-sdk.js";

const params = new URLSearchParams(location.search);
const url = params.get("url") ?? `ws://${location.hostname}:8080/ws`;
const token = params.get("token") ?? "";
const topic = params.get("topic") ?? "chat.lobby";
const HISTORY = 50;

const statusLine = document.getElementById("status");
const log = document.getElementById("log");
const form = document.getElementById("compose");
const input = document.getElementById("text");
const sendButton = document.getElementById("send");

function setStatus(state, text) {
  statusLine.dataset.state = state;
  statusLine.textContent = text;
  const ready = state === "connected";
  input.disabled = !ready;
  sendButton.disabled = !ready;
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

const client = new Client({ url, token });
// The last messages, then live ones; after a reconnect the SDK resumes right
// after the last message it delivered.
const chat = client.subscribe(topic, { position: { kind: "last", count: HISTORY } });
chat.on("gap", ({ from, to }) => show("notice", "", `messages ${from}–${to} are gone`));
chat.on("reset", () => show("notice", "", "the chat history was reset"));
chat.on("error", (error) => show("notice", "", `error ${error.code}: ${error.message}`));
client.on("error", (error) => show("notice", "", `error ${error.code}: ${error.message}`));

let subscribed = false;
function reflect(state) {
  if (state.state === "connected" && subscribed) {
    setStatus("connected", `connected as ${state.subject} to ${topic}`);
  } else if (state.state === "reconnecting") {
    setStatus("reconnecting", `reconnecting in ${Math.round(state.delay)} ms (${state.cause})`);
  } else if (state.state === "closed") {
    setStatus("closed", `disconnected (${state.code} ${state.reason})`);
  } else if (state.state !== "connected") {
    setStatus("connecting", "connecting…");
  }
}
client.on("state", reflect);
chat.ready.then(
  () => {
    subscribed = true;
    reflect(client.state);
  },
  () => {},
);

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  client.publish(topic, { text }).catch((error) => show("notice", "", `not sent: ${error.message}`));
  input.value = "";
});

for await (const message of chat) {
  const text = message.payload?.text ?? JSON.stringify(message.payload);
  show("msg", message.publisher, String(text), message.offset);
}
