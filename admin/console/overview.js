// The overview: polls `/v1/stats` and `/metrics` once a second, keeps the
// last minutes of samples in memory, and draws figures and charts from
// them. Rates are differences between consecutive samples (so the charts
// move with each second, where `/v1/stats` rates are 10-second averages);
// fan-out latency quantiles come from the deltas of the
// `sockeye_publish_to_deliver_seconds` histogram buckets between samples.

import { api } from "./api.js";
import { LineChart, niceBytesCeiling } from "./chart.js";
import * as format from "./format.js";

/// How often the broker is asked.
export const POLL_MS = 1000;
/// How much the charts show (and the samples kept: WINDOW_MS / POLL_MS).
export const WINDOW_MS = 5 * 60 * 1000;

const LATENCY_METRIC = "sockeye_publish_to_deliver_seconds";

const CHARTS = [
  {
    key: "connections", title: "Connections", format: (v) => format.count(v),
    series: [{ key: "connections", label: "open" }, { key: "subscriptions", label: "subscriptions" }],
  },
  {
    key: "messages", title: "Messages per second", format: (v) => format.count(v, v < 10 ? 1 : 0),
    series: [{ key: "messages_in", label: "in (published)" }, { key: "messages_out", label: "out (delivered)" }],
  },
  {
    key: "deliveries", title: "Deliveries per second", format: (v) => format.count(v, v < 10 ? 1 : 0),
    series: [{ key: "live", label: "live" }, { key: "replayed", label: "replayed from the store" }],
  },
  {
    key: "bytes", title: "Bytes per second", format: (v) => format.bytes(v), ceiling: niceBytesCeiling,
    series: [{ key: "bytes_in", label: "in (payloads)" }, { key: "bytes_out", label: "out (to WebSockets)" }],
  },
  {
    key: "latency", title: "Fan-out latency (publish to queued for every subscriber)", format: (v) => format.latency(v),
    series: [{ key: "p50", label: "p50" }, { key: "p99", label: "p99" }],
  },
  {
    key: "slow", title: "Slow-consumer events per second", format: (v) => format.count(v, 2),
    series: [{ key: "catch_ups", label: "caught up from the store" }, { key: "disconnects", label: "disconnected (4002)" }],
  },
];

/// The figures above the charts: key, label, and how to get the value and
/// its text from the latest sample.
const FIGURES = [
  ["uptime", "Uptime", (s) => s.stats.uptime_seconds, format.duration],
  ["connections", "Connections", (s) => s.stats.connections, (v) => format.count(v)],
  ["connections_total", "Accepted since start", (s) => s.stats.connections_total, (v) => format.count(v)],
  ["topics", "Topics", (s) => s.stats.topics, (v) => format.count(v)],
  ["subscriptions", "Subscriptions", (s) => s.stats.subscriptions, (v) => format.count(v)],
  ["messages_in_rate", "Messages in", (s) => s.rates.messages_in, format.rate],
  ["deliveries_rate", "Deliveries", (s) => s.rates.messages_out, format.rate],
  ["messages_in_total", "Published since start", (s) => s.stats.messages_in, (v) => format.count(v)],
  ["deliveries_total", "Delivered since start", (s) => s.stats.deliveries, (v) => format.count(v)],
  ["latency_p99", "Fan-out p99", (s) => s.rates.p99, format.latency],
  ["store_bytes", "Store on disk", (s) => s.stats.store_bytes_on_disk, format.bytes],
  ["memory_bytes", "Resident memory", (s) => s.stats.memory_resident_bytes, format.bytes],
  ["error_replies", "Error replies", (s) => s.stats.error_replies, (v) => format.count(v)],
  ["refused", "Refused handshakes", (s) => refusals(s.stats), (v) => format.count(v)],
];

function refusals(stats) {
  const authFailures = Object.values(stats.auth_failures ?? {}).reduce((sum, n) => sum + n, 0);
  return (
    stats.connections_refused + stats.per_ip_refused + stats.handshake_rate_refused +
    stats.origin_refused + stats.handshake_timeouts + stats.tls_failures + authFailures
  );
}

/// The latency histogram of a Prometheus text: { buckets: [[le, cumulative]], count }
/// or null if the metric is absent.
export function parseHistogram(text, name = LATENCY_METRIC) {
  const buckets = [];
  let count = null;
  const bucketLine = `${name}_bucket{le="`;
  for (const line of text.split("\n")) {
    if (line.startsWith(bucketLine)) {
      const close = line.indexOf('"}', bucketLine.length);
      const bound = line.slice(bucketLine.length, close);
      const value = Number(line.slice(close + 2).trim());
      buckets.push([bound === "+Inf" ? Infinity : Number(bound), value]);
    } else if (line.startsWith(`${name}_count `)) {
      count = Number(line.slice(name.length + 7));
    }
  }
  if (buckets.length === 0 || count === null) return null;
  buckets.sort((a, b) => a[0] - b[0]);
  return { buckets, count };
}

/// The q-quantile of the observations between two histogram readings,
/// interpolated inside its bucket as Prometheus' histogram_quantile does;
/// null when nothing was observed in between.
export function quantileBetween(before, after, q) {
  if (!before || !after || before.buckets.length !== after.buckets.length) return null;
  const deltas = after.buckets.map(([bound, cumulative], i) => [bound, cumulative - before.buckets[i][1]]);
  const total = deltas[deltas.length - 1][1];
  if (!(total > 0) || deltas.some(([, n]) => n < 0)) return null;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [bound, cumulative] of deltas) {
    if (cumulative >= rank) {
      if (bound === Infinity) return lowerBound;
      const inBucket = cumulative - lowerCount;
      return inBucket > 0 ? lowerBound + ((bound - lowerBound) * (rank - lowerCount)) / inBucket : bound;
    }
    lowerBound = bound;
    lowerCount = cumulative;
  }
  return lowerBound;
}

export class Overview {
  constructor({ root, onError, onOk }) {
    this.root = root;
    this.onError = onError;
    this.onOk = onOk;
    this.samples = [];
    this.latest = null;
    this.timer = null;
    this.running = false;

    this.figures = new Map();
    const figureRoot = root.querySelector("#figures");
    for (const [key, label] of FIGURES) {
      const element = document.createElement("div");
      element.className = "figure";
      element.dataset.figure = key;
      const name = document.createElement("span");
      name.className = "label";
      name.textContent = label;
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = "—";
      element.append(name, value);
      figureRoot.append(element);
      this.figures.set(key, element);
    }
    const chartRoot = root.querySelector("#charts");
    this.charts = CHARTS.map((spec) => {
      const chart = new LineChart({ ...spec, windowMs: WINDOW_MS, gapMs: POLL_MS * 3.5 });
      chartRoot.append(chart.element);
      return chart;
    });
    root.querySelector("#chart-window").textContent = `${WINDOW_MS / 60000} minutes`;
    this.updated = root.querySelector("#overview-updated");
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.tick();
  }

  stop() {
    this.running = false;
    clearTimeout(this.timer);
    this.samples = [];
    this.latest = null;
  }

  async tick() {
    if (!this.running) return;
    const started = Date.now();
    try {
      // Hidden tabs skip samples (the charts show the gap) instead of
      // polling the broker for nobody.
      if (document.visibilityState !== "hidden") {
        const [stats, metrics] = await Promise.all([
          api("GET", "v1/stats"),
          api("GET", "metrics", { text: true }),
        ]);
        if (!this.running) return;
        this.add(Date.now(), stats, parseHistogram(metrics));
        this.onOk();
      }
    } catch (error) {
      if (this.running) this.onError(error);
    }
    if (this.running) {
      this.timer = setTimeout(() => this.tick(), Math.max(0, POLL_MS - (Date.now() - started)));
    }
  }

  add(t, stats, histogram) {
    const previous = this.latest;
    const rates = {};
    const seconds = previous ? (t - previous.t) / 1000 : 0;
    // A broker that restarted has smaller counters: no rate across that.
    const comparable = previous && seconds > 0 && stats.uptime_seconds >= previous.stats.uptime_seconds;
    const per = (now, then) => (comparable && now >= then ? (now - then) / seconds : null);
    if (comparable) {
      const p = previous.stats;
      rates.messages_in = per(stats.messages_in, p.messages_in);
      rates.messages_out = per(stats.deliveries, p.deliveries);
      rates.replayed = per(stats.replayed, p.replayed);
      rates.live = per(stats.deliveries - stats.replayed, p.deliveries - p.replayed);
      rates.bytes_in = per(stats.bytes_in, p.bytes_in);
      rates.bytes_out = per(stats.bytes_out, p.bytes_out);
      rates.catch_ups = per(stats.slow_consumers.catch_ups, p.slow_consumers.catch_ups);
      rates.disconnects = per(stats.slow_consumers.disconnects, p.slow_consumers.disconnects);
      rates.p50 = quantileBetween(previous.histogram, histogram, 0.5);
      rates.p99 = quantileBetween(previous.histogram, histogram, 0.99);
    }
    this.latest = { t, stats, histogram, rates };
    this.samples.push({
      t,
      values: { connections: stats.connections, subscriptions: stats.subscriptions, ...rates },
    });
    const oldest = t - WINDOW_MS - POLL_MS;
    while (this.samples.length > 0 && this.samples[0].t < oldest) this.samples.shift();
    this.render();
  }

  render() {
    const sample = this.latest;
    if (!sample) return;
    for (const [key, , value, text] of FIGURES) {
      const element = this.figures.get(key);
      const number = value(sample);
      element.dataset.value = Number.isFinite(number) ? String(number) : "";
      element.querySelector(".value").textContent = text(number);
    }
    for (const chart of this.charts) chart.update(this.samples, sample.t);
    this.root.dataset.samples = String(this.samples.length);
    this.root.dataset.state = "ready";
    this.updated.textContent = `updated ${format.timestamp(sample.t)}`;
  }
}
