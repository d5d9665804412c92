// The File view: one file posted as the raw body of POST /invocations?timeline=true, so one answer carries
// the clip-level result (the ensemble's, docs/timeline_evaluate.md) and the per-window segments.

import { fixed, renderBars, renderChart, renderFlags, renderLegend } from "./render.js";

const $ = (id) => document.getElementById(id);

// The media type the service expects for the file's extension (the contract's table, from config.json),
// else what the browser says, else octet-stream (the service then tells WAV from video by the bytes).
export function mediaType(file, mediaTypes) {
  const dot = file.name.lastIndexOf(".");
  const ext = dot > 0 ? file.name.slice(dot).toLowerCase() : "";
  return mediaTypes[ext] ?? (file.type || "application/octet-stream");
}

function showError(state, message) {
  state.status = "error";
  state.error = message;
  const box = $("file-error");
  box.textContent = message;
  box.hidden = false;
  $("file-status").textContent = "";
}

// The service's own words: its JSON "error" (and status); a non-JSON answer shows its status text.
async function errorText(resp) {
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  const message = body && typeof body.error === "string" ? body.error : resp.statusText || "request failed";
  return `HTTP ${resp.status}: ${message}`;
}

function renderTimeline(segments, config) {
  const section = $("timeline");
  section.hidden = segments.length < 2;
  if (section.hidden) return;
  const points = segments.map((s) => ({ ...s, t: (s.start + s.end) / 2 }));
  renderChart($("timeline-chart"), points, config.labels, {
    t0: segments[0].start, t1: segments[segments.length - 1].end, bands: true,
  });
  renderLegend($("timeline-legend"), config.labels);
  const body = $("timeline-segments").tBodies[0];
  body.replaceChildren();
  for (const s of segments) {
    const row = document.createElement("tr");
    for (const text of [fixed(s.start, 2), fixed(s.end, 2), s.dominant_emotion]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    body.append(row);
  }
}

export function untrained(resp, config) {
  const attributes = resp.headers.get(config.attributes_header) || "";
  return attributes.split(",").map((a) => a.trim()).includes(config.untrained_attribute);
}

export async function analyse(file, config, state) {
  state.status = "busy";
  state.error = null;
  state.lastResult = null;
  state.timeline = [];
  $("file-error").hidden = true;
  $("file-result").hidden = true;
  $("file-status").textContent = `Analysing ${file.name} (${(file.size / 1e6).toFixed(2)} MB)…`;
  let resp;
  try {
    resp = await fetch(`${config.invocations}?timeline=true`, {
      method: "POST", body: file, headers: { "Content-Type": mediaType(file, config.media_types) },
    });
  } catch (err) {
    showError(state, `The service could not be reached: ${err.message}`);
    return;
  }
  if (untrained(resp, config)) $("untrained").hidden = false;
  if (!resp.ok) {
    showError(state, await errorText(resp));
    return;
  }
  const result = await resp.json();
  const segments = result.segments ?? [];
  $("file-dominant").textContent = result.dominant_emotion;
  renderBars($("file-bars"), result, config.labels);
  renderFlags($("file-flags"), result.qa_flags, config.qa_flags, config.not_available);
  renderTimeline(segments, config);
  $("file-result").hidden = false;
  $("file-status").textContent = segments.length > 1
    ? `${file.name}: ${segments.length} segments of up to ${config.window_s} s.`
    : `${file.name}: one window.`;
  state.lastResult = result;
  state.timeline = segments;
  state.status = "done";
}

// Choosing, and dropping onto the zone (keyboard users choose through the labelled input).
export function setUpFileView(config, state) {
  const input = $("file-input");
  const drop = $("drop");
  input.addEventListener("change", () => {
    if (input.files.length) analyse(input.files[0], config, state);
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) analyse(file, config, state);
  });
}
