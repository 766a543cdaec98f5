// The table views: the topic list, one topic (its figures, history browsed
// by offset, the publish form, deleting its history) and the connection
// list with disconnect. Each view loads through the API and reports every
// failure to `ui.showError`, which shows the API's own code and message.

import { api, segment } from "./api.js";
import * as format from "./format.js";
import { kindOf, render } from "./msgpack.js";

/// Payload texts longer than this are cut, with a button to show all.
const PAYLOAD_PREVIEW_CHARS = 2000;

export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") element.className = value;
    else if (key === "text") element.textContent = value;
    else if (key.startsWith("data-")) element.dataset[camel(key.slice(5))] = value;
    else element.setAttribute(key, value === true ? "" : value);
  }
  element.append(...children);
  return element;
}

function camel(name) {
  return name.replace(/-([a-z])/g, (_, letter) => letter.toUpperCase());
}

function cell(col, text, { num = false, title } = {}) {
  return el("td", { "data-col": col, class: num ? "num" : undefined, title, text });
}

function figure(key, label, text, value) {
  return el(
    "div",
    { class: "figure", "data-figure": key, "data-value": value === undefined ? undefined : String(value) },
    el("span", { class: "label", text: label }),
    el("span", { class: "value", text }),
  );
}

/// Runs `load` and ignores its result if another load started meanwhile
/// (the user moved on), marking the view's state for people and tests.
class Loader {
  constructor(section, ui) {
    this.section = section;
    this.ui = ui;
    this.generation = 0;
  }

  async run(load) {
    const generation = ++this.generation;
    this.section.dataset.state = "loading";
    try {
      const apply = await load();
      if (generation !== this.generation) return false;
      apply();
      this.section.dataset.state = "ready";
      this.ui.clearError(this);
      return true;
    } catch (error) {
      if (generation !== this.generation) return false;
      this.section.dataset.state = "error";
      this.ui.showError(error, this);
      return false;
    }
  }
}

/// Cursor pagination over a list route: a stack of the `after` of each
/// page seen, so Previous goes back exactly.
class Pager {
  constructor() {
    this.reset();
  }

  reset() {
    this.afters = [null];
    this.next = null;
  }

  get after() {
    return this.afters[this.afters.length - 1];
  }

  get page() {
    return this.afters.length;
  }

  forward() {
    if (this.next !== null) this.afters.push(this.next);
  }

  back() {
    if (this.afters.length > 1) this.afters.pop();
  }
}

export class TopicsView {
  constructor(ui) {
    this.ui = ui;
    this.section = document.getElementById("topics");
    this.loader = new Loader(this.section, ui);
    this.pager = new Pager();
    this.prefix = "";
    this.body = this.section.querySelector("tbody");
    this.search = document.getElementById("topic-search");
    this.limit = document.getElementById("topics-limit");
    this.prev = document.getElementById("topics-prev");
    this.next = document.getElementById("topics-next");
    this.pageLabel = document.getElementById("topics-page");
    document.getElementById("topic-search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.prefix = this.search.value.trim();
      this.pager.reset();
      this.load();
    });
    this.limit.addEventListener("change", () => {
      this.pager.reset();
      this.load();
    });
    document.getElementById("topics-refresh").addEventListener("click", () => this.load());
    this.prev.addEventListener("click", () => {
      this.pager.back();
      this.load();
    });
    this.next.addEventListener("click", () => {
      this.pager.forward();
      this.load();
    });
  }

  show() {
    this.load();
  }

  load() {
    const query = { prefix: this.prefix, after: this.pager.after, limit: this.limit.value };
    return this.loader.run(async () => {
      const page = await api("GET", "v1/topics", { query });
      return () => this.render(page);
    });
  }

  render(page) {
    this.pager.next = page.next;
    const now = Date.now();
    const rows = page.items.map((topic) =>
      el(
        "tr",
        { "data-topic": topic.name },
        el("td", { "data-col": "name" }, el("a", { href: `#/topics/${segment(topic.name)}`, text: topic.name })),
        cell("kind", topic.stored ? "stored" : "live only"),
        cell("subscribers", format.count(topic.subscribers), {
          num: true,
          title: topic.catching_up > 0 ? `${topic.catching_up} catching up` : undefined,
        }),
        cell("stored_messages", format.count(topic.stored_messages), { num: true }),
        cell("first_offset", String(topic.first_offset), { num: true }),
        cell("last_offset", String(topic.last_offset), { num: true }),
        cell("epoch", String(topic.epoch), { num: true }),
        cell("stored_bytes", format.bytes(topic.stored_bytes), { num: true }),
        cell("publish_rate", format.rate(topic.publish_rate), { num: true }),
        cell("last_publish", format.ago(topic.last_publish_ms, now), {
          title: topic.last_publish_ms ? format.timestamp(topic.last_publish_ms) : undefined,
        }),
      ),
    );
    if (rows.length === 0) {
      const what = this.prefix ? `no topic starts with “${this.prefix}”` : "no topics yet";
      rows.push(el("tr", { class: "empty" }, el("td", { colspan: "10", text: what })));
    }
    this.body.replaceChildren(...rows);
    this.prev.disabled = this.pager.page <= 1;
    this.next.disabled = page.next === null;
    this.pageLabel.textContent = `page ${this.pager.page}`;
  }
}

export class TopicView {
  constructor(ui) {
    this.ui = ui;
    this.section = document.getElementById("topic");
    this.topicLoader = new Loader(this.section, ui);
    this.historyLoader = new Loader(document.getElementById("history-table"), ui);
    this.name = null;
    this.topic = null;
    this.page = null;
    this.epoch = null;

    this.title = document.getElementById("topic-name");
    this.figures = document.getElementById("topic-figures");
    this.body = document.querySelector("#history-table tbody");
    this.note = document.getElementById("history-note");
    this.from = document.getElementById("history-from");
    this.limit = document.getElementById("history-limit");
    this.prev = document.getElementById("history-prev");
    this.next = document.getElementById("history-next");
    this.deleteButton = document.getElementById("delete-history");
    this.historyPanel = document.getElementById("history-panel");

    document.getElementById("topic-refresh").addEventListener("click", () => this.refresh());
    document.getElementById("history-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const offset = Number(this.from.value);
      if (!Number.isSafeInteger(offset) || offset < 0) {
        this.ui.showError(new Error("the offset must be a whole number, 0 or more"));
        return;
      }
      this.loadHistory(Math.max(0, offset - 1));
    });
    this.limit.addEventListener("change", () => this.loadHistory(this.page?.after ?? 0));
    document.getElementById("history-oldest").addEventListener("click", () => this.loadHistory(0));
    this.prev.addEventListener("click", () => {
      const first = this.page?.items[0]?.offset ?? (this.page?.after ?? 0) + 1;
      this.loadHistory(Math.max(0, first - 1 - this.pageSize));
    });
    this.next.addEventListener("click", () => {
      if (this.page?.next !== null && this.page?.next !== undefined) this.loadHistory(this.page.next);
    });
    document.getElementById("history-newest").addEventListener("click", async () => {
      if (await this.loadTopic()) this.loadHistory(Math.max(0, this.topic.last_offset - this.pageSize));
    });
    document.getElementById("publish-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.publish();
    });
    this.deleteButton.addEventListener("click", () => this.confirmDelete());
    this.setUpDeleteDialog();
  }

  get pageSize() {
    return Number(this.limit.value);
  }

  show(name) {
    const changed = name !== this.name;
    this.name = name;
    this.title.textContent = name;
    if (changed) {
      this.topic = null;
      this.page = null;
      this.epoch = null;
      this.figures.replaceChildren();
      this.body.replaceChildren();
      this.note.textContent = "";
      const result = document.getElementById("publish-result");
      result.textContent = "";
      delete result.dataset.state;
    }
    this.refresh();
  }

  async refresh() {
    if (!(await this.loadTopic())) return;
    if (this.topic.stored) this.loadHistory(this.page?.after ?? 0);
  }

  loadTopic() {
    const name = this.name;
    return this.topicLoader.run(async () => {
      try {
        const topic = await api("GET", `v1/topics/${segment(name)}`);
        return () => this.renderTopic(topic);
      } catch (error) {
        if (name === this.name) this.renderMissing(error);
        throw error;
      }
    });
  }

  /// The topic could not be read: no figures, no history, nothing to
  /// delete; publishing stays possible (it gives a new topic state).
  renderMissing(error) {
    this.topic = null;
    this.historyPanel.hidden = true;
    this.deleteButton.disabled = true;
    const text = error.code === "topic_not_found"
      ? "The broker has no state for this topic: nothing was stored or subscribed. Publishing to it creates it."
      : "The topic could not be read: see the error above.";
    this.figures.replaceChildren(el("p", { class: "muted", "data-missing": error.code, text }));
  }

  renderTopic(topic) {
    this.topic = topic;
    this.historyPanel.hidden = false;
    this.figures.replaceChildren(
      figure("kind", "Kind", topic.stored ? "stored" : "live only"),
      figure("subscribers", "Subscribers", `${format.count(topic.subscribers)}${
        topic.catching_up > 0 ? ` (${format.count(topic.catching_up)} catching up)` : ""}`, topic.subscribers),
      figure("stored_messages", "Stored messages", format.count(topic.stored_messages), topic.stored_messages),
      figure("offsets", "Offsets", topic.last_offset > 0 ? `${topic.first_offset} – ${topic.last_offset}` : "none"),
      figure("epoch", "Epoch", String(topic.epoch), topic.epoch),
      figure("stored_bytes", "Stored bytes", format.bytes(topic.stored_bytes), topic.stored_bytes),
      figure("published", "Published since start", format.count(topic.published), topic.published),
      figure("publish_rate", "Publish rate", format.rate(topic.publish_rate), topic.publish_rate),
      figure("last_publish", "Last publish", format.ago(topic.last_publish_ms)),
    );
    this.deleteButton.disabled = !topic.stored;
    if (!topic.stored) {
      this.body.replaceChildren();
      this.note.textContent = "This topic is live only: its messages are not stored, so it has no history.";
    }
  }

  loadHistory(after) {
    const name = this.name;
    const limit = this.pageSize;
    return this.historyLoader.run(async () => {
      let page = await api("GET", `v1/topics/${segment(name)}/history`, {
        query: { after, limit, encoding: "msgpack" },
      });
      let reset = null;
      if (this.epoch !== null && page.epoch !== this.epoch && after > 0) {
        // Offsets of the old epoch mean nothing in the new one.
        reset = [this.epoch, page.epoch];
        after = 0;
        page = await api("GET", `v1/topics/${segment(name)}/history`, {
          query: { after, limit, encoding: "msgpack" },
        });
      }
      return () => this.renderHistory({ ...page, after }, reset);
    });
  }

  renderHistory(page, reset) {
    this.page = page;
    this.epoch = page.epoch;
    const rows = page.items.map((message) => {
      const data = format.base64ToBytes(message.payload);
      let text;
      let kind = kindOf(data);
      try {
        text = render(data);
      } catch (error) {
        kind = "undecodable";
        text = `${error.message}; bytes: ${format.hex(data)}`;
      }
      return el(
        "tr",
        { "data-offset": String(message.offset) },
        cell("offset", String(message.offset), { num: true }),
        cell("time", format.timestamp(message.timestamp_ms)),
        cell("publisher", message.publisher),
        cell("type", `${kind}, ${format.bytes(data.length)}`),
        payloadCell(text),
      );
    });
    if (rows.length === 0) {
      rows.push(el("tr", { class: "empty" }, el("td", { colspan: "5", text: "no stored messages here" })));
    }
    this.body.replaceChildren(...rows);
    const items = page.items;
    const span = items.length > 0 ? `offsets ${items[0].offset}–${items[items.length - 1].offset}` : "no messages";
    let note = `${span} of epoch ${page.epoch}${page.next === null ? " (the newest)" : ""}`;
    if (reset) {
      note = `The history was deleted since the previous page (epoch ${reset[0]} became ${reset[1]}); ` +
        `showing the oldest messages again. ${note}`;
    }
    this.note.textContent = note;
    this.from.value = items.length > 0 ? String(items[0].offset) : "";
    this.prev.disabled = (items[0]?.offset ?? page.after + 1) <= 1 || (this.topic && items[0]?.offset <= this.topic.first_offset);
    this.next.disabled = page.next === null;
  }

  async publish() {
    const result = document.getElementById("publish-result");
    result.textContent = "";
    result.dataset.state = "sending";
    const text = document.getElementById("publish-payload").value;
    const how = document.getElementById("publish-encoding").value;
    let body;
    try {
      if (how === "json") {
        body = { payload: JSON.parse(text) };
      } else {
        const encoding = how === "hex" ? "binary" : "msgpack";
        body = { encoding, payload: format.bytesToBase64(format.parseHex(text)) };
      }
    } catch (error) {
      result.dataset.state = "invalid";
      result.textContent = `Not sent: ${how === "json" ? "the payload is not JSON" : "bad hex"} (${error.message})`;
      return;
    }
    try {
      const published = await api("POST", `v1/topics/${segment(this.name)}/messages`, { body });
      result.dataset.state = "published";
      result.textContent = published.stored
        ? `Published at offset ${published.offset} (epoch ${published.epoch}).`
        : "Published live: delivered to the subscribers connected now (this topic is not stored).";
      // Someone reading the newest page sees the message arrive.
      const atNewest = this.page === null || this.page.next === null;
      if ((await this.loadTopic()) && this.topic.stored && atNewest) {
        this.loadHistory(Math.max(0, this.topic.last_offset - this.pageSize));
      }
    } catch (error) {
      result.dataset.state = "failed";
      result.textContent = "Not published: see the error above.";
      this.ui.showError(error);
    }
  }

  setUpDeleteDialog() {
    const dialog = document.getElementById("confirm-delete");
    const input = document.getElementById("confirm-delete-name");
    const go = document.getElementById("confirm-delete-go");
    input.addEventListener("input", () => {
      go.disabled = input.value !== dialog.dataset.topic;
    });
    dialog.querySelector("[data-cancel]").addEventListener("click", () => dialog.close());
    document.getElementById("confirm-delete-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = dialog.dataset.topic;
      if (input.value !== name) return;
      dialog.close();
      try {
        const reset = await api("DELETE", `v1/topics/${segment(name)}/history`);
        this.ui.notice(`The history of ${reset.topic} was deleted; new epoch ${reset.epoch}.`);
        if (name === this.name) {
          this.epoch = reset.epoch;
          this.page = null;
          await this.refresh();
        }
      } catch (error) {
        this.ui.showError(error);
      }
    });
  }

  confirmDelete() {
    if (!this.topic) return;
    const dialog = document.getElementById("confirm-delete");
    dialog.dataset.topic = this.topic.name;
    dialog.querySelector("[data-topic]").textContent = this.topic.name;
    dialog.querySelector("[data-count]").textContent = format.count(this.topic.stored_messages);
    document.getElementById("confirm-delete-name").value = "";
    document.getElementById("confirm-delete-go").disabled = true;
    dialog.showModal();
  }
}

function payloadCell(text) {
  const td = el("td", { "data-col": "payload", class: "payload" });
  if (text.length <= PAYLOAD_PREVIEW_CHARS) {
    td.textContent = text;
    return td;
  }
  const preview = el("span", { text: `${text.slice(0, PAYLOAD_PREVIEW_CHARS)}…` });
  const more = el("button", {
    type: "button",
    class: "quiet small",
    text: `show all ${format.count(text.length)} characters`,
  });
  more.addEventListener("click", () => {
    td.textContent = text;
  });
  td.append(preview, " ", more);
  return td;
}

export class ConnectionsView {
  constructor(ui) {
    this.ui = ui;
    this.section = document.getElementById("connections");
    this.loader = new Loader(this.section, ui);
    this.pager = new Pager();
    this.body = this.section.querySelector("tbody");
    this.limit = document.getElementById("connections-limit");
    this.prev = document.getElementById("connections-prev");
    this.next = document.getElementById("connections-next");
    this.pageLabel = document.getElementById("connections-page");
    this.limit.addEventListener("change", () => {
      this.pager.reset();
      this.load();
    });
    document.getElementById("connections-refresh").addEventListener("click", () => this.load());
    this.prev.addEventListener("click", () => {
      this.pager.back();
      this.load();
    });
    this.next.addEventListener("click", () => {
      this.pager.forward();
      this.load();
    });
    this.setUpDisconnectDialog();
  }

  show() {
    this.load();
  }

  load() {
    const query = { after: this.pager.after, limit: this.limit.value };
    return this.loader.run(async () => {
      const page = await api("GET", "v1/connections", { query });
      return () => this.render(page);
    });
  }

  render(page) {
    this.pager.next = page.next;
    const now = Date.now();
    const rows = page.items.map((connection) => {
      const button = el("button", {
        type: "button",
        class: "danger small",
        "data-disconnect": String(connection.id),
        text: "Disconnect",
      });
      button.addEventListener("click", () => this.confirmDisconnect(connection));
      const subscriptions = connection.subscriptions.join(", ");
      return el(
        "tr",
        { "data-id": String(connection.id), "data-sub": connection.sub },
        cell("id", String(connection.id), { num: true }),
        cell("sub", connection.sub),
        cell("remote", connection.remote),
        cell("user_agent", connection.user_agent ?? "—"),
        cell("since", format.ago(connection.connected_at_ms, now), {
          title: format.timestamp(connection.connected_at_ms),
        }),
        cell("subscriptions", subscriptions || "none", { title: subscriptions || undefined }),
        cell("messages", `${format.count(connection.messages_in)} / ${format.count(connection.messages_out)}`, {
          num: true,
        }),
        cell("bytes", `${format.bytes(connection.bytes_in)} / ${format.bytes(connection.bytes_out)}`, {
          num: true,
        }),
        cell("queue_depth", format.count(connection.queue_depth), { num: true }),
        el("td", { "data-col": "actions" }, button),
      );
    });
    if (rows.length === 0) {
      rows.push(el("tr", { class: "empty" }, el("td", { colspan: "10", text: "no WebSocket connections" })));
    }
    this.body.replaceChildren(...rows);
    this.prev.disabled = this.pager.page <= 1;
    this.next.disabled = page.next === null;
    this.pageLabel.textContent = `page ${this.pager.page}`;
  }

  setUpDisconnectDialog() {
    const dialog = document.getElementById("confirm-disconnect");
    const reason = document.getElementById("disconnect-reason");
    const hint = dialog.querySelector("[data-reason-error]");
    reason.addEventListener("input", () => {
      const length = format.utf8Length(reason.value);
      hint.hidden = length <= 120;
      hint.textContent = `The reason is ${length} bytes; the broker accepts at most 120.`;
    });
    dialog.querySelector("[data-cancel]").addEventListener("click", () => dialog.close());
    document.getElementById("confirm-disconnect-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const id = dialog.dataset.id;
      dialog.close();
      try {
        const result = await api("DELETE", `v1/connections/${segment(id)}`, { query: { reason: reason.value } });
        this.ui.notice(`Connection ${result.id} is being closed with code ${result.close_code} (“${result.reason}”).`);
      } catch (error) {
        this.ui.showError(error);
      }
      // The close is asynchronous: the connection may be listed a moment longer.
      setTimeout(() => this.load(), 300);
    });
  }

  confirmDisconnect(connection) {
    const dialog = document.getElementById("confirm-disconnect");
    dialog.dataset.id = String(connection.id);
    dialog.querySelector("[data-id]").textContent = String(connection.id);
    dialog.querySelector("[data-sub]").textContent = connection.sub;
    dialog.querySelector("[data-remote]").textContent = connection.remote;
    const reason = document.getElementById("disconnect-reason");
    reason.value = "disconnected by an operator";
    dialog.querySelector("[data-reason-error]").hidden = true;
    dialog.showModal();
  }
}
