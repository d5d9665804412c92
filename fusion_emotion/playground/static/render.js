// Drawing: probability bars, the QA-flag table, and the SVG line charts (plain SVG, no library).

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = {
  angry: "#d62728", disgust: "#2ca02c", fearful: "#9467bd",
  happy: "#ff7f0e", neutral: "#7f7f7f", sad: "#1f77b4",
};
const SPARE = ["#17becf", "#bcbd22", "#e377c2", "#8c564b"];

export function color(label, labels) {
  return PALETTE[label] ?? SPARE[labels.indexOf(label) % SPARE.length];
}

export function fixed(value, digits = 4) {
  return value === null || value === undefined ? "null" : Number(value).toFixed(digits);
}

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

// One row per label: name, a bar as wide as the probability, the number (4 decimals; data-value holds it all).
export function renderBars(container, result, labels) {
  container.replaceChildren();
  for (const label of labels) {
    const p = result[label];
    const row = el("div", { class: "bar-row", role: "listitem", "data-label": label });
    row.append(el("span", { class: "bar-name" }, label));
    const track = el("span", {
      class: "bar-track", role: "meter", "aria-label": label,
      "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": String(p),
    });
    const fill = el("span", { class: "bar-fill" });
    fill.style.width = `${(100 * p).toFixed(2)}%`;
    fill.style.background = color(label, labels);
    track.append(fill);
    row.append(track, el("span", { class: "bar-value", "data-value": String(p) }, fixed(p)));
    if (label === result.dominant_emotion) row.classList.add("dominant");
    container.append(row);
  }
}

// The flags in guide order: value, one-line meaning, and the guide's warning when the value crosses it.
export function renderFlags(table, flags, guide, notAvailable) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const g of guide) {
    const value = flags ? flags[g.name] : null;
    const unreliable = value !== null && value !== undefined
      && ((g.warn_above !== null && value > g.warn_above) || (g.warn_below !== null && value < g.warn_below));
    const row = el("tr", { "data-flag": g.name });
    row.append(el("th", { scope: "row" }, g.name));
    row.append(el("td", { class: "flag-value", "data-value": String(value) }, fixed(value, 3)));
    const meaning = el("td", {}, value === null || value === undefined ? `${g.meaning} (${notAvailable})` : g.meaning);
    if (unreliable) {
      row.classList.add("unreliable");
      meaning.append(el("strong", { class: "flag-warning" }, ` ⚠ ${g.warning}`));
    }
    row.append(meaning);
    body.append(row);
  }
}

export function renderLegend(container, labels) {
  container.replaceChildren();
  for (const label of labels) {
    const item = el("span", { class: "legend-item" });
    const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = color(label, labels);
    item.append(swatch, document.createTextNode(label));
    container.append(item);
  }
}

const BOX = { left: 40, right: 710, top: 10, bottom: 210 };

function axes(chart, t0, t1, top) {
  const x = (t) => BOX.left + ((t - t0) / Math.max(1e-9, t1 - t0)) * (BOX.right - BOX.left);
  const y = (p) => BOX.bottom - (p / top) * (BOX.bottom - BOX.top);
  for (const p of [0, top / 2, top]) {
    chart.append(svg("line", { x1: BOX.left, x2: BOX.right, y1: y(p), y2: y(p), class: "grid" }));
    const label = svg("text", { x: BOX.left - 6, y: y(p) + 4, "text-anchor": "end", class: "tick" });
    label.textContent = p.toFixed(2);
    chart.append(label);
  }
  const step = niceStep((t1 - t0) / 6);
  for (let t = Math.ceil(t0 / step) * step; t <= t1 + 1e-9; t += step) {
    const label = svg("text", { x: x(t), y: BOX.bottom + 18, "text-anchor": "middle", class: "tick" });
    label.textContent = `${Number(t.toFixed(2))} s`;
    chart.append(label);
  }
  return { x, y };
}

function niceStep(raw) {
  const base = 10 ** Math.floor(Math.log10(Math.max(raw, 1e-3)));
  return [1, 2, 5, 10].map((m) => m * base).find((s) => s >= raw) ?? base * 10;
}

// The probability axis ends at the next tenth above the largest value (at least 0.3), so near-uniform
// answers (untrained weights) stay readable; the tick labels say where it ends.
function probabilityTop(points, labels) {
  const most = Math.max(...points.flatMap((pt) => labels.map((label) => pt[label])));
  return Math.min(1, Math.max(0.3, Math.ceil((most + 0.02) * 10) / 10));
}

// Six lines over time. points: [{t, start, end, probs...}]; bands: shade each segment by its dominant emotion.
export function renderChart(chart, points, labels, { t0, t1, bands = false }) {
  chart.replaceChildren();
  if (!points.length) return;
  const { x, y } = axes(chart, t0, t1, probabilityTop(points, labels));
  if (bands) {
    points.forEach((pt, i) => {
      const from = i === 0 ? pt.start : (points[i - 1].t + pt.t) / 2;
      const to = i === points.length - 1 ? pt.end : (pt.t + points[i + 1].t) / 2;
      chart.append(svg("rect", {
        x: x(from), y: BOX.top, width: Math.max(0, x(to) - x(from)), height: BOX.bottom - BOX.top,
        fill: color(pt.dominant_emotion, labels), "fill-opacity": 0.14, class: "band",
        "data-dominant": pt.dominant_emotion,
      }));
    });
  }
  for (const label of labels) {
    const coords = points.map((pt) => `${x(pt.t).toFixed(1)},${y(pt[label]).toFixed(1)}`).join(" ");
    chart.append(svg("polyline", {
      points: coords, fill: "none", stroke: color(label, labels), "stroke-width": 2, "data-label": label,
    }));
    for (const pt of points) {
      chart.append(svg("circle", { cx: x(pt.t), cy: y(pt[label]), r: 2.5, fill: color(label, labels) }));
    }
  }
}
