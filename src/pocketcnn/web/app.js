// The pocketcnn page: photos in, top-5 classes out, answered by the server (POST
// v1/predict) or on this device (ONNX Runtime Web running the same ONNX file).
// Plain ES module, no build step; every file it loads comes from the same origin.

import { decodeImage, preprocessBlob, preprocessPixels } from "./preprocess.js";

const TOPK = 5;
const body = document.body;
const API = body.dataset.api || ""; // "" in a static folder: no server
const MODEL_URL = body.dataset.model;
const RUNTIME_URL = new URL(body.dataset.runtime, location.href).href;
const query = new URLSearchParams(location.search);
const $ = (sel) => document.querySelector(sel);

const state = {
  mode: null, // "server" | "device"
  server: null, // {info} when the API answers
  device: null, // {session, info, threads} once loaded
  deviceLoading: null, // the promise of loading it
  deviceProblem: null, // why the device mode cannot run, if it cannot
  queue: Promise.resolve(),
  count: 0,
};

// ---------------------------------------------------------------- model metadata
/** The string key/value pairs of an ONNX ModelProto's metadata_props (field 14), values JSON-parsed. */
export function onnxMetadata(bytes) {
  const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const text = new TextDecoder();
  let pos = 0;
  const varint = (end) => {
    let value = 0;
    for (let shift = 1; pos < end; shift *= 128) {
      const b = buf[pos++];
      value += (b & 0x7f) * shift;
      if (b < 0x80) return value;
    }
    throw new Error("truncated ONNX file");
  };
  const skip = (wire, end) => {
    if (wire === 0) varint(end);
    else if (wire === 1) pos += 8;
    else if (wire === 2) {
      const n = varint(end); // read before `pos +=`: varint moves pos
      pos += n;
    }
    else if (wire === 5) pos += 4;
    else throw new Error(`not an ONNX file (protobuf wire type ${wire})`);
  };
  const props = {};
  while (pos < buf.length) {
    const tag = varint(buf.length);
    const field = Math.floor(tag / 8);
    const wire = tag % 8;
    if (field === 14 && wire === 2) {
      const n = varint(buf.length);
      const end = pos + n;
      let key = "";
      let value = "";
      while (pos < end) {
        const t = varint(end);
        if (t % 8 === 2 && (t >> 3 === 1 || t >> 3 === 2)) {
          const n = varint(end);
          const s = text.decode(buf.subarray(pos, pos + n));
          pos += n;
          if (t >> 3 === 1) key = s;
          else value = s;
        } else skip(t % 8, end);
      }
      try {
        props[key] = JSON.parse(value);
      } catch {
        props[key] = value;
      }
    } else skip(wire, buf.length);
  }
  return props;
}

/** The model as the page shows it, from GET v1/model (server) or the ONNX metadata (device). */
function infoFromServer(m) {
  return {
    name: m.name, fileBytes: m.file_bytes, params: m.params, labels: m.labels, dataset: m.dataset,
    spec: { channels: m.channels, crop: m.preprocessing.crop, resize: m.preprocessing.resize,
            mean: m.preprocessing.mean, std: m.preprocessing.std },
  };
}

function infoFromOnnx(meta, fileBytes) {
  for (const key of ["in_chans", "image_size", "mean", "std", "classes"]) {
    if (!(key in meta)) throw new Error(`the model file carries no pocketcnn metadata (${key}); export it with 'pocketcnn export'`);
  }
  return {
    name: meta.model || "model", fileBytes, params: typeof meta.params === "number" ? meta.params : null,
    labels: meta.classes, dataset: meta.dataset,
    spec: { channels: meta.in_chans, crop: meta.image_size, resize: meta.resize_size || meta.image_size,
            mean: meta.mean, std: meta.std },
  };
}

// ---------------------------------------------------------------- formatting
const mb = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(2)} MB` : `${(n / 1e3).toFixed(0)} kB`);
const count = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} k` : `${n}`);
const ms = (t) => (t >= 100 ? `${t.toFixed(0)} ms` : `${t.toFixed(1)} ms`);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function modeLabel(mode) {
  if (mode === "server") return `on the server (${state.server ? state.server.runtime : "onnxruntime"})`;
  const t = state.device ? state.device.threads : 1;
  return `on this device (WebAssembly, ${t} thread${t === 1 ? "" : "s"})`;
}

function showModel() {
  const info = state.mode === "device" && state.device ? state.device.info : state.server ? state.server.info
    : state.device ? state.device.info : null;
  if (!info) return;
  const [c, s] = [info.spec.channels, info.spec.crop];
  const parts = [
    `<strong>${escapeHtml(info.name)}</strong>`,
    `${mb(info.fileBytes)}`,
    info.params ? `${count(info.params)} parameters` : null,
    `input ${c}\u00d7${s}\u00d7${s}`,
    `${info.labels.length} classes${info.dataset ? ` (${escapeHtml(info.dataset)})` : ""}`,
  ].filter(Boolean);
  $("#model").innerHTML = parts.join(" \u00b7 ");
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

function setStatus(text) {
  $("#status").textContent = text;
}

// ---------------------------------------------------------------- the two modes
async function loadServer() {
  if (!API) return null;
  const r = await fetch(`${API}model`, { headers: { Accept: "application/json" } });
  if (!r.ok || !(r.headers.get("content-type") || "").includes("json")) throw new Error(`GET ${API}model: ${r.status}`);
  const m = await r.json();
  return { info: infoFromServer(m), runtime: m.runtime || "onnxruntime" };
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = el("script", { src });
    s.onload = resolve;
    s.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.append(s);
  });
}

async function fetchBytes(url, onProgress) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`GET ${url}: ${r.status} ${r.statusText}`);
  const total = Number(r.headers.get("content-length")) || 0; // compressed size, if the server compresses
  if (!r.body) return new Uint8Array(await r.arrayBuffer());
  const chunks = [];
  const reader = r.body.getReader();
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    got += value.length;
    if (total) onProgress(Math.min(got, total), total);
  }
  const out = new Uint8Array(got);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

function threadCount() {
  const asked = parseInt(query.get("threads") || "", 10);
  if (asked > 0) return crossOriginIsolated ? asked : 1;
  // threads need SharedArrayBuffer, which only a cross-origin isolated page gets
  return crossOriginIsolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
}

async function loadDevice() {
  if (!window.ort) await loadScript(`${RUNTIME_URL}ort.wasm.min.js`);
  const ort = window.ort;
  ort.env.logLevel = "error";
  ort.env.wasm.wasmPaths = RUNTIME_URL;
  ort.env.wasm.numThreads = threadCount();
  ort.env.wasm.proxy = false;
  const bytes = await fetchBytes(MODEL_URL, (got, total) =>
    setStatus(`Loading the model for this device: ${mb(got)} of ${mb(total)}`));
  const info = infoFromOnnx(onnxMetadata(bytes), bytes.length);
  setStatus("Starting ONNX Runtime Web\u2026");
  const session = await ort.InferenceSession.create(bytes, {
    executionProviders: ["wasm"], graphOptimizationLevel: "all",
  });
  setStatus("");
  return { session, info, threads: ort.env.wasm.numThreads, ort };
}

function ensureDevice() {
  if (!state.deviceLoading) {
    state.deviceLoading = loadDevice().then((d) => (state.device = d)).catch((err) => {
      state.deviceLoading = null;
      throw err;
    });
  }
  return state.deviceLoading;
}

async function setMode(mode) {
  if (mode === "device") {
    if (state.deviceProblem) throw new Error(state.deviceProblem);
    await ensureDevice();
  } else if (!state.server) {
    throw new Error("no server to send photos to: this page is a static folder");
  }
  state.mode = mode;
  for (const r of document.querySelectorAll('input[name="mode"]')) r.checked = r.value === mode;
  $("#mode-note").textContent = `Photos are classified ${modeLabel(mode)}.`;
  showModel();
}

// ---------------------------------------------------------------- classifying
function softmaxTopk(logits, labels, k) {
  // as pocketcnn's softmax: float32 logits in float64 arithmetic; ties keep the lower index
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const e = Array.from(logits, (v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v, index) => ({ index, prob: v / sum, label: labels[index] ?? String(index) }))
    .sort((a, b) => b.prob - a.prob || a.index - b.index).slice(0, k);
}

async function runDevice(data, dims) {
  const { session, ort } = state.device;
  const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", data, dims) };
  const t0 = performance.now();
  const out = await session.run(feeds);
  const inferMs = performance.now() - t0;
  return { logits: out[session.outputNames[0]].data, inferMs };
}

async function classifyOnDevice(file) {
  const { info } = state.device;
  const t0 = performance.now();
  let input;
  try {
    input = await preprocessBlob(file, info.spec);
  } catch (err) {
    return { error: `${file.name}: ${err.message}` };
  }
  const t1 = performance.now();
  const { logits, inferMs } = await runDevice(input.data, input.dims);
  return {
    topk: softmaxTopk(logits, info.labels, TOPK), latencyMs: inferMs,
    detail: `model ${ms(inferMs)} + decoding and preprocessing ${ms(t1 - t0)}`,
  };
}

async function classifyOnServer(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const t0 = performance.now();
  const r = await fetch(`${API}predict?topk=${TOPK}`, { method: "POST", body: form });
  const roundTrip = performance.now() - t0;
  let answer;
  try {
    answer = await r.json();
  } catch {
    return { error: `${file.name}: the server answered ${r.status} ${r.statusText}` };
  }
  const rec = answer.predictions ? answer.predictions[0] : null;
  if (!rec) return { error: `${file.name}: ${answer.error || `the server answered ${r.status}`}` };
  if (rec.error) return { error: rec.error };
  return {
    topk: rec.topk, latencyMs: answer.latency_ms,
    detail: `server ${ms(answer.latency_ms)}, round trip ${ms(roundTrip)}`,
  };
}

function cardFor(file) {
  const url = URL.createObjectURL(file);
  const img = el("img", { src: url, alt: "" });
  img.onerror = () => img.replaceWith(el("div", { class: "noimage" }));
  img.onload = () => img.naturalWidth < 64 && img.classList.add("pixelated"); // tiny images: show their pixels
  const text = el("div", { class: "text" }, el("p", { class: "name" }, file.name), el("p", { class: "meta" }, "waiting\u2026"));
  const card = el("li", { class: "card", dataset: { status: "pending", name: file.name } }, img, text);
  return { card, text, url };
}

function fill(card, text, result, mode) {
  card.dataset.mode = mode;
  const meta = text.querySelector(".meta");
  if (result.error) {
    card.classList.add("error");
    card.dataset.status = "error";
    meta.textContent = modeLabel(mode);
    text.append(el("p", { class: "message" }, result.error));
    return;
  }
  const top = result.topk[0];
  Object.assign(card.dataset, {
    status: "done", top1Label: top.label, top1Index: String(top.index), top1Prob: String(top.prob),
    latencyMs: String(result.latencyMs),
  });
  meta.textContent = `${modeLabel(mode)} \u00b7 ${result.detail}`;
  const bars = el("ol", { class: "bars" });
  for (const t of result.topk) {
    const pct = 100 * t.prob;
    bars.append(el("li", { dataset: { index: String(t.index), prob: String(t.prob) } },
      el("span", { class: "label", title: t.label }, t.label),
      el("span", { class: "track", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100",
                   "aria-valuenow": pct.toFixed(1), "aria-label": t.label },
        el("span", { class: "fill", style: `width: ${pct.toFixed(2)}%` })),
      el("span", { class: "pct" }, `${pct.toFixed(1)}%`)));
  }
  text.append(bars);
}

async function classifyOne(file, card, text) {
  const mode = state.mode;
  text.querySelector(".meta").textContent = `classifying ${modeLabel(mode)}\u2026`;
  let result;
  try {
    result = mode === "device" ? await classifyOnDevice(file) : await classifyOnServer(file);
  } catch (err) {
    result = { error: `${file.name}: ${err.message || err}` };
  }
  fill(card, text, result, mode);
  return { name: file.name, mode, ...result };
}

/** Classify files one after another; their cards appear at the top, in the order given. */
function classify(files) {
  const list = Array.from(files);
  const cards = list.map(cardFor);
  const results = $("#results");
  const first = results.firstChild;
  for (const c of cards) results.insertBefore(c.card, first);
  const run = state.queue.then(async () => {
    const out = [];
    for (const [i, f] of list.entries()) {
      if (list.length > 1) setStatus(`Classifying ${i + 1} of ${list.length}\u2026`);
      out.push(await classifyOne(f, cards[i].card, cards[i].text));
    }
    setStatus("");
    return out;
  });
  state.queue = run.catch(() => {});
  return run;
}

// ---------------------------------------------------------------- wiring
function wire() {
  for (const id of ["#files", "#camera"]) {
    $(id).addEventListener("change", (e) => {
      if (e.target.files.length) classify(e.target.files);
      e.target.value = "";
    });
  }
  const drop = $("#drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files.length) classify(e.dataTransfer.files);
  });
  window.addEventListener("dragover", (e) => e.preventDefault()); // a missed drop must not open the file
  window.addEventListener("drop", (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    const files = Array.from(e.clipboardData ? e.clipboardData.files : []);
    if (files.length) classify(files);
  });
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", async () => {
      try {
        await setMode(radio.value);
      } catch (err) {
        setStatus(`Cannot run ${radio.value === "device" ? "on this device" : "on the server"}: ${err.message || err}`);
        for (const r of document.querySelectorAll('input[name="mode"]')) r.checked = r.value === state.mode;
      }
    });
  }
}

async function runtimeAvailable() {
  try {
    const r = await fetch(`${RUNTIME_URL}ort.wasm.min.js`, { method: "HEAD" });
    return r.ok;
  } catch {
    return false;
  }
}

async function init() {
  wire();
  const [server, runtime] = await Promise.all([loadServer().catch(() => null), runtimeAvailable()]);
  state.server = server;
  if (!runtime) {
    state.deviceProblem = "ONNX Runtime Web is not installed beside this page (run 'pocketcnn web-runtime' where it is served from)";
  } else if (typeof WebAssembly !== "object") {
    state.deviceProblem = "this browser has no WebAssembly";
  }
  const radios = Object.fromEntries(Array.from(document.querySelectorAll('input[name="mode"]'), (r) => [r.value, r]));
  radios.server.disabled = !server;
  radios.device.disabled = Boolean(state.deviceProblem);
  const wanted = query.get("mode") || (server ? "server" : "device");
  try {
    await setMode(wanted === "device" && state.deviceProblem && server ? "server" : wanted);
  } catch (err) {
    setStatus(`Cannot classify: ${err.message || err}`);
  }
  if (state.deviceProblem) $("#mode-note").textContent += ` On this device: unavailable (${state.deviceProblem}).`;
  if (!server && !state.device) $("#model").textContent = "No model could be loaded.";
}

const ready = init();

// A small API for tests and benchmarks (and the curious, from the console).
window.pocketcnn = {
  ready,
  state,
  setMode,
  classify,
  onnxMetadata,
  /** The model input the page builds for encoded image bytes: {dims, data: number[]}. */
  async preprocess(bytes, spec) {
    const useSpec = spec || (state.device ? state.device.info : state.server.info).spec;
    const input = await preprocessBlob(new Blob([bytes]), useSpec);
    return { dims: input.dims, data: Array.from(input.data) };
  },
  /** Time `n` runs: decode + preprocess, and the model on the device, in ms each. */
  async timeDevice(bytes, n) {
    const { info } = state.device;
    const blob = new Blob([bytes]);
    const pre = [];
    const model = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      const img = await decodeImage(blob);
      const input = preprocessPixels(img.rgba, img.width, img.height, info.spec);
      pre.push(performance.now() - t0);
      model.push((await runDevice(input.data, input.dims)).inferMs);
    }
    return { preprocess: pre, model };
  },
  /** Time `n` round trips of POST v1/predict with one image, in ms each (and the server's own latency). */
  async timeServer(bytes, n, name = "image.png") {
    const roundTrip = [];
    const server = [];
    for (let i = 0; i < n; i++) {
      const form = new FormData();
      form.append("file", new Blob([bytes]), name);
      const t0 = performance.now();
      const r = await fetch(`${API}predict?topk=${TOPK}`, { method: "POST", body: form });
      const answer = await r.json();
      roundTrip.push(performance.now() - t0);
      server.push(answer.latency_ms);
    }
    return { roundTrip, server };
  },
};
