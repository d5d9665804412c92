// The Live view: the microphone (and optionally the camera) streamed with the documented /stream protocol
// (docs/streaming.md): a config message, binary pcm_f32le audio, JPEG frames stamped with their stream time,
// and {"end": true} on Stop; every update is drawn as it arrives.

import { renderChart, renderFlags, renderLegend } from "./render.js";

const $ = (id) => document.getElementById(id);
const ROLLING_S = 30; // seconds of updates the chart shows
const FPS = 5; // camera frames sent per second
const MAX_FRAME_WIDTH = 640;

function wsUrl(path) {
  const url = new URL(path, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function base64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// The device rate when the service takes it (8-48 kHz), else 48 kHz resampled by the browser.
async function openContext() {
  let ctx = new AudioContext();
  if (ctx.sampleRate < 8000 || ctx.sampleRate > 48000) {
    await ctx.close();
    ctx = new AudioContext({ sampleRate: 48000 });
  }
  await ctx.resume();
  return ctx;
}

export class LiveView {
  constructor(config, state) {
    this.config = config;
    this.state = state;
    this.reset();
  }

  reset() {
    this.ws = null;
    this.ctx = null;
    this.media = null;
    this.timer = null;
    this.ready = false;
    this.ending = false;
    this.samples = 0;
    this.rate = 0;
    this.frameBusy = false;
  }

  bind() {
    if (this.config.live_unavailable) {
      $("live-unavailable").textContent = this.config.live_unavailable;
      $("live-unavailable").hidden = false;
      $("live-start").disabled = true;
    }
    $("live-hop").value = String(this.config.stream_hop_s);
    renderLegend($("live-legend"), this.config.labels);
    $("live-start").addEventListener("click", () => this.start());
    $("live-stop").addEventListener("click", () => this.stop());
  }

  status(text) {
    $("live-status").textContent = text;
  }

  fail(message) {
    this.state.status = "error";
    this.state.error = message;
    $("live-error").textContent = message;
    $("live-error").hidden = false;
    this.status("");
  }

  async start() {
    Object.assign(this.state, { status: "busy", error: null, updates: [] });
    $("live-error").hidden = true;
    $("live-start").disabled = true;
    const camera = $("live-camera").checked;
    this.status(camera ? "Asking for the microphone and the camera…" : "Asking for the microphone…");
    try {
      this.media = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
        video: camera ? { width: { ideal: MAX_FRAME_WIDTH } } : false,
      });
      this.ctx = await openContext();
      await this.ctx.audioWorklet.addModule("./capture-worklet.js");
    } catch (err) {
      this.release();
      this.fail(`Could not open the ${camera ? "microphone or camera" : "microphone"}: ${err.message}`);
      $("live-start").disabled = false;
      return;
    }
    this.rate = this.ctx.sampleRate;
    const node = new AudioWorkletNode(this.ctx, "pcm-capture", {
      numberOfInputs: 1, numberOfOutputs: 0, processorOptions: { chunk: Math.round(this.rate / 10) },
    });
    this.ctx.createMediaStreamSource(this.media).connect(node);
    node.port.onmessage = (event) => this.audio(event.data);
    if (camera) this.startCamera();
    this.open(Number($("live-hop").value));
    $("live-stop").disabled = false;
  }

  open(hop) {
    const ws = new WebSocket(wsUrl(this.config.stream));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => ws.send(JSON.stringify({
      sample_rate: this.rate, encoding: "pcm_f32le", channels: 1, hop_s: hop,
    }));
    ws.onmessage = (event) => this.message(JSON.parse(event.data));
    ws.onclose = (event) => this.closed(event);
    this.ws = ws;
    this.status("Connecting…");
  }

  audio(buffer) {
    if (!this.ready || this.ending || this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(buffer);
    this.samples += buffer.byteLength / 4;
  }

  startCamera() {
    const preview = $("live-preview");
    preview.srcObject = this.media;
    preview.hidden = false;
    preview.play();
    const canvas = document.createElement("canvas");
    this.timer = setInterval(() => this.frame(preview, canvas), 1000 / FPS);
  }

  // One JPEG at the audio's current end, so it goes out before the audio that passes its time.
  frame(preview, canvas) {
    if (!this.ready || this.ending || this.frameBusy || !preview.videoWidth) return;
    this.frameBusy = true;
    canvas.width = Math.min(MAX_FRAME_WIDTH, preview.videoWidth);
    canvas.height = Math.round((preview.videoHeight * canvas.width) / preview.videoWidth / 2) * 2;
    canvas.getContext("2d").drawImage(preview, 0, 0, canvas.width, canvas.height);
    canvas.toBlob(async (blob) => {
      try {
        const data = await base64(blob);
        if (this.ready && !this.ending && this.ws.readyState === WebSocket.OPEN) {
          this.ws.send(JSON.stringify({ frame_jpeg_b64: data, t: Number((this.samples / this.rate).toFixed(6)) }));
        }
      } finally {
        this.frameBusy = false;
      }
    }, "image/jpeg", 0.8);
  }

  message(msg) {
    if (msg.ready) {
      this.ready = true;
      this.status(`Streaming ${msg.sample_rate} Hz audio: an update every ${msg.hop_s} s over ${msg.window_s} s.`);
    } else if ("t_end" in msg) {
      this.state.updates.push(msg);
      this.draw();
    } else if ("error" in msg) {
      this.fail(`${msg.error} (close code ${msg.close_code})`);
    }
  }

  draw() {
    const updates = this.state.updates;
    const last = updates[updates.length - 1];
    const t0 = Math.max(0, last.t_end - ROLLING_S);
    const points = updates.filter((u) => u.t_end >= t0).map((u) => ({ ...u, t: u.t_end }));
    renderChart($("live-chart"), points, this.config.labels, { t0, t1: Math.max(last.t_end, t0 + 1) });
    $("live-dominant").textContent = `${last.dominant_emotion} (${last.t_start.toFixed(1)}–${last.t_end.toFixed(1)} s)`;
    renderFlags($("live-flags"), last.qa_flags, this.config.qa_flags, this.config.not_available);
  }

  stop() {
    $("live-stop").disabled = true;
    if (this.ws && this.ws.readyState === WebSocket.OPEN && !this.ending) {
      this.ending = true;
      this.ws.send(JSON.stringify({ end: true }));
      this.status("Waiting for the last update…");
    }
    this.release();
  }

  release() {
    clearInterval(this.timer);
    this.timer = null;
    if (this.media) this.media.getTracks().forEach((track) => track.stop());
    if (this.ctx) this.ctx.close();
    this.media = null;
    this.ctx = null;
    $("live-preview").hidden = true;
    $("live-preview").srcObject = null;
  }

  closed(event) {
    this.release();
    const count = this.state.updates.length;
    if (this.state.status !== "error") {
      if (event.code === 1000) {
        this.state.status = "done";
        this.status(`Stopped after ${count} update${count === 1 ? "" : "s"}.`);
      } else {
        this.fail(`The stream closed with code ${event.code}${event.reason ? `: ${event.reason}` : ""}`);
      }
    }
    this.reset();
    $("live-start").disabled = Boolean(this.config.live_unavailable);
    $("live-stop").disabled = true;
  }
}
