// A small SVG line chart, written for the overview: a few series over a
// sliding time window, gaps where samples are missing, a zero-based y axis
// with round ticks. No library: the console must work offline and build
// without npm, and this is all it needs.

const SVG = "http://www.w3.org/2000/svg"; // The SVG namespace name, not a fetch.
const WIDTH = 480;
const HEIGHT = 150;
const MARGIN = { left: 64, right: 8, top: 10, bottom: 20 };

function svg(name, attributes = {}) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

/// The smallest of 1, 2, 2.5, 5 times a power of ten that is >= value.
export function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= value * (1 - 1e-9)) return step * power;
  }
  return 10 * power;
}

/// The same for sizes: 1, 2, 2.5 or 5 times a power of ten, of a power of
/// 1024 (20 KiB rather than 19.5 KiB).
export function niceBytesCeiling(value) {
  if (!(value > 0)) return 1;
  const unit = 1024 ** Math.max(0, Math.floor(Math.log(value) / Math.log(1024)));
  return niceCeiling(value / unit) * unit;
}

export class LineChart {
  /// `series`: [{ key, label }]; `format`: value -> text for the axis and
  /// the legend; `windowMs`: the span shown; `gapMs`: samples further apart
  /// than this are not joined.
  /// `ceiling`: the axis top for a maximum (round decimal numbers unless
  /// given, e.g. round binary sizes for bytes).
  constructor({ key, title, series, format, windowMs, gapMs, ceiling = niceCeiling }) {
    this.series = series;
    this.format = format;
    this.ceiling = ceiling;
    this.windowMs = windowMs;
    this.gapMs = gapMs;

    this.element = document.createElement("figure");
    this.element.className = "chart";
    this.element.dataset.chart = key;
    const caption = document.createElement("figcaption");
    caption.textContent = title;
    this.element.append(caption);

    this.svg = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": title });
    this.grid = svg("g", { class: "grid-lines" });
    this.lines = svg("g");
    this.axis = svg("g", { class: "axis" });
    this.svg.append(this.grid, this.lines, this.axis);
    this.paths = series.map((one, index) => {
      const path = svg("path", { class: `line s${index}`, "data-series": one.key, d: "" });
      this.lines.append(path);
      return path;
    });
    this.element.append(this.svg);

    this.legend = document.createElement("div");
    this.legend.className = "legend";
    this.legendValues = series.map((one, index) => {
      const item = document.createElement("span");
      item.className = "legend-item";
      item.dataset.series = one.key;
      const swatch = document.createElement("i");
      swatch.className = `swatch s${index}`;
      const label = document.createElement("span");
      label.textContent = `${one.label} `;
      const value = document.createElement("b");
      value.textContent = "—";
      item.append(swatch, label, value);
      this.legend.append(item);
      return value;
    });
    this.element.append(this.legend);
  }

  /// `samples`: [{ t: unix ms, values: { key: number | null } }] in time order.
  update(samples, now = Date.now()) {
    const start = now - this.windowMs;
    const visible = samples.filter((sample) => sample.t >= start);
    let max = 0;
    for (const sample of visible) {
      for (const one of this.series) {
        const value = sample.values[one.key];
        if (Number.isFinite(value) && value > max) max = value;
      }
    }
    const top = this.ceiling(max);
    const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
    const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
    const x = (t) => MARGIN.left + ((t - start) / this.windowMs) * plotWidth;
    const y = (value) => MARGIN.top + plotHeight - (Math.min(value, top) / top) * plotHeight;

    this.grid.replaceChildren();
    this.axis.replaceChildren();
    for (const fraction of [0, 0.5, 1]) {
      const at = y(top * fraction);
      this.grid.append(svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: at, y2: at }));
      const label = svg("text", { x: MARGIN.left - 6, y: at + 4, "text-anchor": "end" });
      label.textContent = this.format(top * fraction);
      this.axis.append(label);
    }
    const minutes = Math.round(this.windowMs / 60000);
    for (const [text, anchor, at] of [
      [`${minutes} min ago`, "start", MARGIN.left],
      ["now", "end", WIDTH - MARGIN.right],
    ]) {
      const label = svg("text", { x: at, y: HEIGHT - 4, "text-anchor": anchor });
      label.textContent = text;
      this.axis.append(label);
    }

    let points = 0;
    this.series.forEach((one, index) => {
      let d = "";
      let previous = null;
      let last = null;
      for (const sample of visible) {
        const value = sample.values[one.key];
        if (!Number.isFinite(value)) {
          previous = null;
          continue;
        }
        const joined = previous !== null && sample.t - previous <= this.gapMs;
        d += `${joined ? "L" : "M"}${x(sample.t).toFixed(1)} ${y(value).toFixed(1)} `;
        previous = sample.t;
        last = value;
        if (index === 0) points += 1;
      }
      this.paths[index].setAttribute("d", d.trim());
      this.legendValues[index].textContent = last === null ? "—" : this.format(last);
      this.legendValues[index].parentElement.dataset.value = last === null ? "" : String(last);
    });
    this.element.dataset.points = String(points);
  }
}
