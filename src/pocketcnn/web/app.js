// The pocketcnn page: photos in, top-5 classes out, answered by the server (POST
// v1/predict) or on this device: LiteRT.js running the .tflite file (the faster runtime,
// measured: benchmarks/browser_latency.py) or ONNX Runtime Web running the ONNX file. Where an
// int8 .tflite file lies beside the fp32 one, LiteRT.js times both on this device once, runs
// the faster (remembered per model file, per thread count) and says so; the visitor can
// choose the other.
// Plain ES module, no build step; every file it loads comes from the same origin. A
// service worker (sw.js) keeps the page, its runtime and its model for offline use.
//
// Where a photo goes is a rule, not a label: the mode is "server" or "device" and nothing
// else (an unknown ?mode= is refused and nothing is classified); in device mode no photo
// byte is ever sent: only classifyOnServer sends, and only in server mode.

import { decodeImage, preprocessBlob, preprocessPixels } from "./preprocess.js";

const TOPK = 5;
const MODES = ["server", "device"];
const RUNTIMES = { litert: "LiteRT.js", ort: "ONNX Runtime Web" };
const PRECISIONS = { auto: "the faster here", fp32: "fp32", int8: "INT8" }; // LiteRT.js's two .tflite files
const TIMING = { warmup: 2, runs: 9 }; // per file, on a blank input, to choose between fp32 and INT8
// INT8 runs by itself only when at least this much faster: within it the timing's noise decides, and the
// fp32 file is the exact model
const INT8_LEAD = 0.05;
const body = document.body;
const API = body.dataset.api || ""; // "" in a static folder: no server
const MODEL_URLS = { ort: body.dataset.model, litert: body.dataset.tflite, int8: body.dataset.tfliteInt8 };
const RUNTIME_URLS = {
  ort: new URL(body.dataset.runtime, location.href).href,
  litert: new URL(body.dataset.litert || "static/litert/", location.href).href,
};
const query = new URLSearchParams(location.search);
const $ = (sel) => document.querySelector(sel);

const state = {
  mode: null, // "server" | "device"; null: nothing is classified
  runtime: null, // the device runtime: "litert" | "ort"
  refused: null, // why the page classifies nothing (an unknown ?mode=)
  server: null, // {info, runtime} when the API answers
  serverProblem: null, // why the server cannot be used, if it cannot
  devices: {}, // runtime -> {run, info, threads, runtime, layout} once loaded
  loading: {}, // runtime -> the promise of loading it
  device: null, // the device runtime in use (one of devices)
  available: {}, // runtime -> true, or why it cannot run
  int8: null, // true when the int8 .tflite is beside the fp32 one, else why LiteRT.js runs fp32 only
  plan: null, // offline.json: the model's hash, the cache name, what is stored
  offline: { supported: "serviceWorker" in navigator, ready: false, bytes: 0, files: 0, cache: null, problem: null },
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

/**
 * The pocketcnn metadata of a .tflite file: the JSON in its metadata entry "pocketcnn_metadata"
 * (the flatbuffer's Model.metadata[i] = {name, buffer} -> Model.buffers[buffer].data), or {}.
 */
export function tfliteMetadata(bytes) {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const u32 = (p) => dv.getUint32(p, true);
  const field = (table, i) => { // absolute position of field i of the table at `table`, or 0
    const vt = table - dv.getInt32(table, true);
    const vsize = dv.getUint16(vt, true);
    if (4 + 2 * i >= vsize) return 0;
    const off = dv.getUint16(vt + 4 + 2 * i, true);
    return off ? table + off : 0;
  };
  const vector = (pos) => { const v = pos + u32(pos); return { at: v + 4, length: u32(v) }; };
  const tableAt = (vec, k) => { const p = vec.at + 4 * k; return p + u32(p); };
  const text = new TextDecoder();
  if (b.length < 8) throw new Error("not a .tflite file (too short)");
  const root = u32(0);
  const metaField = field(root, 6);
  const bufField = field(root, 4);
  if (!metaField || !bufField) return {};
  const entries = vector(metaField);
  const buffers = vector(bufField);
  for (let k = 0; k < entries.length; k++) {
    const entry = tableAt(entries, k);
    const nameField = field(entry, 0);
    if (!nameField) continue;
    const name = vector(nameField);
    if (text.decode(b.subarray(name.at, name.at + name.length)) !== "pocketcnn_metadata") continue;
    const index = field(entry, 1) ? u32(field(entry, 1)) : 0;
    const buf = tableAt(buffers, index);
    let raw;
    const offField = field(buf, 1);
    const offset = offField ? Number(dv.getBigUint64(offField, true)) : 0;
    if (offset) raw = b.subarray(offset, offset + Number(dv.getBigUint64(field(buf, 2), true)));
    else {
      const data = vector(field(buf, 0));
      raw = b.subarray(data.at, data.at + data.length);
    }
    return JSON.parse(text.decode(raw));
  }
  return {};
}

/** The model as the page shows it, from GET v1/model (server) or the file's metadata (device). */
function infoFromServer(m) {
  return {
    name: m.name, fileBytes: m.file_bytes, params: m.params, labels: m.labels, dataset: m.dataset,
    spec: { channels: m.channels, crop: m.preprocessing.crop, resize: m.preprocessing.resize,
            mean: m.preprocessing.mean, std: m.preprocessing.std },
  };
}

function infoFromMeta(meta, fileBytes) {
  for (const key of ["in_chans", "image_size", "mean", "std", "classes"]) {
    if (!(key in meta)) throw new Error(`the model file carries no pocketcnn metadata (${key}); export it with 'pocketcnn export'`);
  }
  return {
    name: meta.model || "model", fileBytes, params: typeof meta.params === "number" ? meta.params : null,
    labels: meta.classes, dataset: meta.dataset, layout: String(meta.layout || "NCHW").toUpperCase(),
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
  const d = state.device;
  const t = d ? d.threads : 1;
  const name = d ? `${RUNTIMES[d.runtime]}${d.precision ? ` ${PRECISIONS[d.precision]}` : ""}` : "WebAssembly";
  return `on this device (${name}, WebAssembly, ${t} thread${t === 1 ? "" : "s"})`;
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
    state.plan ? `<span id="sha" title="SHA-256 of the model file">sha256 ${escapeHtml(state.plan.sha256.slice(0, 12))}</span>` : null,
  ].filter(Boolean);
  $("#model").innerHTML = parts.join(" \u00b7 ");
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

function setStatus(text) {
  $("#status").textContent = text;
}

// ---------------------------------------------------------------- offline: the service worker
async function fetchPlan() {
  try {
    const r = await fetch("offline.json", { cache: "no-store" });
    if (!r.ok || !(r.headers.get("content-type") || "").includes("json")) return null;
    const plan = await r.json();
    return plan && plan.cache && plan.sha256 ? plan : null;
  } catch {
    return null;
  }
}

function controlled(cache) {
  const c = navigator.serviceWorker.controller;
  return Boolean(c && new URL(c.scriptURL).searchParams.get("cache") === cache);
}

/**
 * Register sw.js for the plan's cache and wait (up to timeoutMs) until it controls the page,
 * so that the runtime and the model are fetched through it, once. A new model is a new cache
 * name: the new worker replaces the old one and its cache.
 */
async function ensureWorker(plan, timeoutMs = 30000) {
  if (!state.offline.supported || !plan) return false;
  if (controlled(plan.cache)) return true;
  const changed = new Promise((resolve) => {
    const check = () => controlled(plan.cache) && resolve(true);
    navigator.serviceWorker.addEventListener("controllerchange", check);
    check();
  });
  try {
    await navigator.serviceWorker.register(`sw.js?cache=${encodeURIComponent(plan.cache)}`, { scope: "./", updateViaCache: "none" });
  } catch (err) {
    state.offline.problem = `the service worker did not start (${err.message || err})`;
    return false;
  }
  const timeout = new Promise((resolve) => setTimeout(() => resolve(false), timeoutMs));
  const ok = await Promise.race([changed, timeout]);
  if (!ok) state.offline.problem = "the service worker did not take over the page in time";
  return ok;
}

/** What the page's cache holds: {files, bytes}, and whether everything device mode needs is in it. */
async function storedReport() {
  const name = state.plan && state.plan.cache;
  if (!name || !(await caches.has(name))) return null;
  const cache = await caches.open(name);
  let bytes = 0;
  const urls = new Set();
  for (const req of await cache.keys()) {
    const r = await cache.match(req);
    bytes += (await r.blob()).size;
    urls.add(req.url);
  }
  return { files: urls.size, bytes, urls };
}

async function updateOffline() {
  const o = state.offline;
  const note = $("#offline");
  if (!o.supported) {
    note.textContent = "This browser cannot keep the page for offline use (no service workers).";
    return;
  }
  const report = await storedReport().catch(() => null);
  if (report) {
    const need = [new URL("./", location.href).href];
    const device = state.device || state.offline.prefetched;
    if (device) need.push(...device.files);
    else need.push(null); // nothing for device mode stored yet
    o.ready = controlled(state.plan.cache) && need.every((u) => u && report.urls.has(new URL(u, location.href).href.split("?")[0]));
    Object.assign(o, { bytes: report.bytes, files: report.files, cache: state.plan.cache });
  }
  note.dataset.ready = String(o.ready);
  if (o.ready) {
    const rt = (state.device || state.offline.prefetched).runtime;
    note.textContent = `Ready to work offline: ${mb(o.bytes)} stored on this device (${o.files} files: the page, `
      + `${RUNTIMES[rt]} and the model).`;
  } else if (o.problem) {
    note.textContent = `Not available offline: ${o.problem}.`;
  } else {
    note.textContent = state.plan ? "Not yet ready to work offline: storing the page, its runtime and the model\u2026"
      : "Not available offline: this server does not offer the page's offline plan (offline.json).";
  }
}

// ---------------------------------------------------------------- the server and the device runtimes
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

const progress = (what) => (got, total) => setStatus(`Loading ${what}: ${mb(got)} of ${mb(total)}`);

async function loadOrt() {
  const base = RUNTIME_URLS.ort;
  if (!window.ort) await loadScript(`${base}ort.wasm.min.js`);
  const ort = window.ort;
  ort.env.logLevel = "error";
  ort.env.wasm.wasmPaths = base;
  ort.env.wasm.numThreads = threadCount();
  ort.env.wasm.proxy = false;
  const bytes = await fetchBytes(MODEL_URLS.ort, progress("the model for this device"));
  const info = infoFromMeta(onnxMetadata(bytes), bytes.length);
  setStatus("Starting ONNX Runtime Web\u2026");
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  const threads = ort.env.wasm.numThreads;
  return {
    runtime: "ort", info, threads, layout: "NCHW", files: await deviceFiles("ort"),
    async run(data, dims) {
      const out = await session.run({ [session.inputNames[0]]: new ort.Tensor("float32", data, dims) });
      return out[session.outputNames[0]].data;
    },
  };
}

let litertLib = null; // loadLiteRt may run once per page

/** The files `runtime` fetches on this browser: its API, the WebAssembly build it picks, the model. */
async function deviceFiles(runtime) {
  if (runtime === "ort") {
    const base = RUNTIME_URLS.ort;
    return [`${base}ort.wasm.min.js`, `${base}ort-wasm-simd-threaded.mjs`, `${base}ort-wasm-simd-threaded.wasm`, MODEL_URLS.ort];
  }
  const base = RUNTIME_URLS.litert;
  const lt = await import(`${base}core/index.js`);
  const build = threadCount() > 1 ? "litert_wasm_threaded_internal" : (await lt.supportsFeature("relaxedSimd"))
    ? "litert_wasm_internal" : "litert_wasm_compat_internal";
  return [`${base}core/index.js`, `${base}wasm-utils/index.js`, `${base}core/wasm/${build}.js`,
          `${base}core/wasm/${build}.wasm`, MODEL_URLS.litert, ...(state.int8 === true ? [MODEL_URLS.int8] : [])];
}

/**
 * In server mode, store what device mode needs in the background (through the service worker),
 * so that the page also classifies offline after this first visit. Nothing is compiled or run.
 */
async function prefetchDevice() {
  const runtime = state.runtime;
  if (!runtime || state.available[runtime] !== true || !state.plan || !controlled(state.plan.cache)) return;
  const files = await deviceFiles(runtime);
  for (const url of files) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`GET ${url}: ${r.status}`);
    await r.arrayBuffer();
  }
  state.offline.prefetched = { runtime, files };
}

async function loadLiteRt() {
  const base = RUNTIME_URLS.litert;
  const threads = threadCount();
  const lt = await import(`${base}core/index.js`);
  if (!litertLib) {
    setStatus("Starting LiteRT.js\u2026");
    litertLib = lt.loadLiteRt(`${base}core/wasm/`, { threads: threads > 1 }).catch((err) => {
      litertLib = null;
      throw err;
    });
  }
  await litertLib;
  const fp32 = await compileTflite(lt, MODEL_URLS.litert, threads);
  const models = { fp32 };
  let int8Problem = state.int8 === true ? null : state.int8;
  if (!int8Problem) {
    try {
      models.int8 = await compileTflite(lt, MODEL_URLS.int8, threads, fp32.info);
    } catch (err) {
      int8Problem = `${MODEL_URLS.int8}: ${err.message || err}`;
    }
  }
  const device = {
    runtime: "litert", info: fp32.info, threads, layout: "NHWC", files: await deviceFiles("litert"),
    models, precision: "fp32", choice: null, int8Problem,
    run(data, dims) {
      return runTflite(lt, models[device.precision].model, data, dims);
    },
  };
  if (models.int8) await choosePrecision(device, lt);
  return device;
}

/** A .tflite file compiled by LiteRT.js: {model, info, meta, bytes}; an int8 file must be `fp32`'s model. */
async function compileTflite(lt, url, threads, fp32 = null) {
  const bytes = await fetchBytes(url, progress(fp32 ? "the INT8 model for this device" : "the model for this device"));
  const meta = tfliteMetadata(bytes);
  const info = infoFromMeta(meta, bytes.length);
  if (info.layout !== "NHWC") throw new Error(`the .tflite file takes ${info.layout} input; pocketcnn writes NHWC`);
  if (fp32) {
    const q = meta.quantization || {};
    if (q.interface !== "float32") {
      throw new Error("not an int8 file with a float32 interface (LiteRT.js takes no int8 tensors): "
        + "write it with 'pocketcnn export CKPT --format web'");
    }
    if (info.name !== fp32.name || JSON.stringify(info.labels) !== JSON.stringify(fp32.labels)
        || JSON.stringify(info.spec) !== JSON.stringify(fp32.spec)) {
      throw new Error(`holds ${info.name}, not the fp32 file's ${fp32.name}; export both from one checkpoint`);
    }
  }
  const model = await lt.loadAndCompile(bytes, { accelerator: "wasm", cpuOptions: { numThreads: threads } });
  return { model, info, meta, bytes: bytes.length, sha256: await sha256Hex(bytes) };
}

async function runTflite(lt, model, data, dims) {
  const input = new lt.Tensor(data, dims);
  let outs = [];
  try {
    outs = await model.run(input);
    return Float32Array.from(outs[0].toTypedArray());
  } finally {
    input.delete();
    for (const t of outs) t.delete();
  }
}

async function sha256Hex(bytes) {
  if (!(globalThis.crypto && crypto.subtle)) return null; // not a secure context: nothing is remembered
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------- LiteRT.js: fp32 or INT8, the faster here
/** Where the choice for this pair of files and thread count is remembered (null: nowhere). */
function precisionKey(device) {
  const planned = (kind) => (state.plan && state.plan.models[kind] ? state.plan.models[kind].sha256 : null);
  const fp32 = device.models.fp32.sha256 || planned("tflite");
  const int8 = device.models.int8.sha256 || planned("tflite_int8");
  return fp32 && int8 ? `pocketcnn-precision-${fp32.slice(0, 16)}-${int8.slice(0, 16)}-${device.threads}t` : null;
}

function recall(key) {
  try {
    return key ? JSON.parse(localStorage.getItem(key) || "null") : null;
  } catch {
    return null;
  }
}

function remember(key, record) {
  try {
    if (key) localStorage.setItem(key, JSON.stringify(record));
  } catch { /* storage full or refused: the page measures again next time */ }
}

/** Median ms per run of each file on a blank input: warm-ups first, then the runs interleaved. */
async function timePrecisions(lt, device) {
  const { channels, crop } = device.info.spec;
  const dims = [1, crop, crop, channels];
  const blank = new Float32Array(crop * crop * channels);
  const times = { fp32: [], int8: [] };
  for (const p of ["fp32", "int8"]) {
    for (let i = 0; i < TIMING.warmup; i++) await runTflite(lt, device.models[p].model, blank, dims);
  }
  for (let i = 0; i < TIMING.runs; i++) {
    for (const p of i % 2 ? ["int8", "fp32"] : ["fp32", "int8"]) {
      const t0 = performance.now();
      await runTflite(lt, device.models[p].model, blank, dims);
      times[p].push(performance.now() - t0);
    }
  }
  const median = (v) => v.slice().sort((a, b) => a - b)[Math.floor(v.length / 2)];
  return { fp32: median(times.fp32), int8: median(times.int8) };
}

/**
 * Choose the file LiteRT.js runs: the visitor's choice (?precision=, or the one made on this page
 * before), else the faster of the two as measured on this device (once; remembered): INT8 when it
 * leads fp32 by INT8_LEAD or more.
 */
async function choosePrecision(device, lt) {
  const key = precisionKey(device);
  const stored = recall(key) || {};
  let timings = stored.timings && stored.timings.fp32 > 0 && stored.timings.int8 > 0 ? stored.timings : null;
  if (!timings) {
    setStatus("Timing the fp32 and INT8 models on this device\u2026");
    timings = await timePrecisions(lt, device);
  }
  const asked = query.get("precision") || stored.asked || "auto";
  const faster = timings.int8 < (1 - INT8_LEAD) * timings.fp32 ? "int8" : "fp32";
  device.precision = asked === "auto" ? faster : asked;
  device.choice = { asked, faster, timings, remembered: Boolean(stored.timings) };
  remember(key, { timings, asked: query.get("precision") ? stored.asked || "auto" : asked, at: new Date().toISOString() });
}

/** The visitor picks "auto", "fp32" or "int8" for LiteRT.js; kept for this model on this device. */
function setPrecision(asked) {
  const d = state.devices.litert;
  if (!Object.hasOwn(PRECISIONS, asked)) throw new Error(`unknown precision ${JSON.stringify(String(asked))}: "auto", "fp32" or "int8"`);
  if (!d || !d.models.int8) throw new Error(d && d.int8Problem ? d.int8Problem : "there is no INT8 model beside this page");
  d.choice.asked = asked;
  d.precision = asked === "auto" ? d.choice.faster : asked;
  remember(precisionKey(d), { timings: d.choice.timings, asked, at: new Date().toISOString() });
  showPrecision();
}

/** The choice and the two timings, under the runtime choice and in the mode's note. */
function precisionText(d) {
  if (!d || d.runtime !== "litert") return "";
  if (!d.models.int8) { // say why only where an INT8 file was offered or asked for
    const why = state.int8 === true ? d.int8Problem : query.get("precision") === "int8" ? state.int8 : null;
    return why ? ` LiteRT.js runs fp32 (no INT8 model: ${why}).` : "";
  }
  const { asked, faster, timings } = d.choice;
  const both = `INT8 ${ms(timings.int8)}, fp32 ${ms(timings.fp32)} per image on this device`;
  const why = asked === "auto" ? "the faster here" : faster === asked ? "your choice, also the faster here" : "your choice";
  return ` LiteRT.js runs the ${PRECISIONS[d.precision]} model (${why}): ${both}.`;
}

function showPrecision() {
  const d = state.mode === "device" ? state.device : null;
  const shown = Boolean(d && d.runtime === "litert" && d.models.int8);
  $("#precisions").hidden = !shown;
  if (shown) {
    for (const r of document.querySelectorAll('input[name="precision"]')) r.checked = r.value === d.choice.asked;
    const t = d.choice.timings;
    $("#precision-note").textContent = `Measured on this device${d.choice.remembered ? " (on an earlier visit)" : ""}: `
      + `INT8 ${ms(t.int8)}, fp32 ${ms(t.fp32)} per image, ${d.threads} thread${d.threads === 1 ? "" : "s"}.`;
  }
  if (state.mode === "device") {
    $("#mode-note").textContent = `Photos are classified ${modeLabel("device")}. They never leave this device.${precisionText(d)}`;
  }
}

function ensureDevice(runtime) {
  if (state.available[runtime] !== true) return Promise.reject(new Error(state.available[runtime] || `unknown runtime ${runtime}`));
  if (!state.loading[runtime]) {
    state.loading[runtime] = (runtime === "litert" ? loadLiteRt() : loadOrt()).then((d) => {
      if (state.server) { // the file the device runs must be the model the server runs
        const a = state.server.info;
        if (d.info.name !== a.name || JSON.stringify(d.info.labels) !== JSON.stringify(a.labels)) {
          throw new Error(`${MODEL_URLS[runtime]} holds ${d.info.name}, not the served ${a.name}; export both files from one checkpoint`);
        }
      }
      state.devices[runtime] = d;
      setStatus("");
      return d;
    }).catch((err) => {
      state.loading[runtime] = null;
      throw err;
    });
  }
  return state.loading[runtime];
}

/** Use `mode` ("server" or "device"; anything else is refused) and, for the device, `runtime`. */
async function setMode(mode, runtime = state.runtime) {
  if (!MODES.includes(mode)) throw new Error(`unknown mode ${JSON.stringify(String(mode))}: the page classifies "server" or "device"`);
  if (mode === "device") {
    if (!(runtime in RUNTIMES)) throw new Error(`unknown runtime ${JSON.stringify(String(runtime))}: "litert" or "ort"`);
    const d = await ensureDevice(runtime);
    state.device = d;
    state.runtime = runtime;
  } else if (!state.server) {
    throw new Error(state.serverProblem || "no server to send photos to: this page is a static folder");
  }
  state.mode = mode;
  state.refused = null;
  for (const r of document.querySelectorAll('input[name="mode"]')) r.checked = r.value === mode;
  for (const r of document.querySelectorAll('input[name="runtime"]')) r.checked = r.value === state.runtime;
  $("#runtimes").hidden = mode !== "device";
  $("#mode-note").textContent = `Photos are classified ${modeLabel(mode)}.`
    + (mode === "device" ? " They never leave this device." : " They are sent to the server and not stored.");
  showPrecision();
  body.dataset.mode = mode;
  showModel();
  if (mode === "device") updateOffline();
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
  const t0 = performance.now();
  const logits = await state.device.run(data, dims);
  return { logits, inferMs: performance.now() - t0 };
}

async function classifyOnDevice(file) {
  const { info, layout } = state.device;
  const t0 = performance.now();
  let input;
  try {
    input = await preprocessBlob(file, info.spec, layout);
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
  if (state.mode !== "server") throw new Error("refused: photos are sent to the server only in server mode");
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
  let result;
  if (mode === "device") {
    text.querySelector(".meta").textContent = `classifying ${modeLabel(mode)}\u2026`;
    try {
      result = await classifyOnDevice(file);
    } catch (err) {
      result = { error: `${file.name}: ${err.message || err}` };
    }
  } else if (mode === "server") {
    text.querySelector(".meta").textContent = `classifying ${modeLabel(mode)}\u2026`;
    try {
      result = await classifyOnServer(file);
    } catch (err) {
      result = { error: `${file.name}: ${err.message || err}` };
    }
  } else {
    result = { error: `${file.name}: not classified: ${state.refused || "no mode chosen"}` };
  }
  fill(card, text, result, mode || "none");
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
    setStatus(state.refused ? `Nothing is classified: ${state.refused}` : "");
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
  const restore = () => {
    for (const r of document.querySelectorAll('input[name="mode"]')) r.checked = r.value === state.mode;
    for (const r of document.querySelectorAll('input[name="runtime"]')) r.checked = r.value === state.runtime;
  };
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", async () => {
      try {
        await setMode(radio.value, state.runtime || state.plan?.preferred || "ort");
        setStatus("");
      } catch (err) {
        setStatus(`Cannot run ${radio.value === "device" ? "on this device" : "on the server"}: ${err.message || err}`);
        restore();
      }
    });
  }
  for (const radio of document.querySelectorAll('input[name="precision"]')) {
    radio.addEventListener("change", () => {
      try {
        setPrecision(radio.value);
        setStatus("");
      } catch (err) {
        setStatus(`Cannot run the ${PRECISIONS[radio.value]} model: ${err.message || err}`);
        showPrecision();
      }
    });
  }
  for (const radio of document.querySelectorAll('input[name="runtime"]')) {
    radio.addEventListener("change", async () => {
      try {
        await setMode("device", radio.value);
        setStatus("");
      } catch (err) {
        setStatus(`Cannot run ${RUNTIMES[radio.value]}: ${err.message || err}`);
        restore();
      }
    });
  }
}

async function headOk(url) {
  try {
    return (await fetch(url, { method: "HEAD" })).ok;
  } catch {
    return false;
  }
}

/** Which device runtimes can run here: from offline.json, else by asking for their files. */
async function findRuntimes(plan) {
  const out = {};
  const wasm = typeof WebAssembly === "object";
  for (const rt of Object.keys(RUNTIMES)) {
    let there;
    if (plan) there = rt in plan.runtimes;
    else if (rt === "litert") there = Boolean(MODEL_URLS.litert) && await headOk(`${RUNTIME_URLS.litert}core/index.js`) && await headOk(MODEL_URLS.litert);
    else there = await headOk(`${RUNTIME_URLS.ort}ort.wasm.min.js`);
    if (!wasm) out[rt] = "this browser has no WebAssembly";
    else if (there) out[rt] = true;
    else if (rt === "litert") out[rt] = "no .tflite model or no LiteRT.js beside this page (export it with 'pocketcnn export CKPT --format tflite' next to the ONNX file; fetch the runtime with 'pocketcnn web-runtime')";
    else out[rt] = "ONNX Runtime Web is not installed beside this page (run 'pocketcnn web-runtime' where it is served from)";
  }
  return out;
}

/** Whether the int8 .tflite is beside the fp32 one (true), else why not: from offline.json, else by asking. */
async function findInt8(plan, available) {
  if (available.litert !== true) return null;
  const there = plan ? "tflite_int8" in plan.models : Boolean(MODEL_URLS.int8) && await headOk(MODEL_URLS.int8);
  return there || "no INT8 .tflite beside the fp32 one ('pocketcnn export CKPT --format web' writes one where it "
    + "can calibrate on the checkpoint's data)";
}

function refuse(message) {
  state.refused = message;
  state.mode = null;
  body.dataset.mode = "refused";
  for (const r of document.querySelectorAll('input[name="mode"]')) r.checked = false;
  for (const id of ["#files", "#camera"]) $(id).disabled = true;
  $("#mode-note").textContent = "";
  setStatus(`Nothing is classified: ${message}`);
  $("#status").classList.add("problem");
}

async function init() {
  wire();
  const wantedMode = query.get("mode");
  const wantedRuntime = query.get("runtime");
  if (wantedMode !== null && !MODES.includes(wantedMode)) {
    refuse(`unknown mode ${JSON.stringify(wantedMode)} in the address: use ?mode=server (photos are sent to the server) or ?mode=device (photos never leave this device)`);
    return;
  }
  const wantedPrecision = query.get("precision");
  if (wantedPrecision !== null && !Object.hasOwn(PRECISIONS, wantedPrecision)) {
    refuse(`unknown precision ${JSON.stringify(wantedPrecision)} in the address: use ?precision=int8, ?precision=fp32 or ?precision=auto (the faster here)`);
    return;
  }
  if (wantedRuntime !== null && !(wantedRuntime in RUNTIMES)) {
    refuse(`unknown runtime ${JSON.stringify(wantedRuntime)} in the address: use ?runtime=litert (LiteRT.js) or ?runtime=ort (ONNX Runtime Web)`);
    return;
  }
  const plan = await fetchPlan();
  state.plan = plan;
  const [server, available, worker] = await Promise.all([
    loadServer().catch((err) => {
      if (API) state.serverProblem = `the server cannot be reached (${err.message || err}); classify on this device instead`;
      return null;
    }),
    findRuntimes(plan),
    ensureWorker(plan),
  ]);
  state.server = server;
  state.available = available;
  state.int8 = await findInt8(plan, available);
  state.offline.worker = worker;
  const radios = Object.fromEntries(Array.from(document.querySelectorAll('input[name="mode"]'), (r) => [r.value, r]));
  const runtimeOk = Object.keys(RUNTIMES).filter((rt) => available[rt] === true);
  for (const r of document.querySelectorAll('input[name="runtime"]')) {
    r.disabled = available[r.value] !== true;
    r.parentElement.title = available[r.value] === true ? "" : available[r.value];
  }
  radios.server.disabled = !server;
  radios.device.disabled = runtimeOk.length === 0;
  const preferred = plan && plan.preferred && available[plan.preferred] === true ? plan.preferred : runtimeOk[0] || null;
  state.runtime = wantedRuntime || preferred;
  const mode = wantedMode || (server ? "server" : "device");
  try {
    await setMode(mode === "device" && runtimeOk.length === 0 && server ? "server" : mode);
  } catch (err) {
    setStatus(`Cannot classify ${mode === "server" ? "on the server" : "on this device"}: ${err.message || err}`);
  }
  if (API && !server) {
    $("#server-note").textContent = `The server cannot be reached (offline?). ${runtimeOk.length ? "Photos can be classified on this device." : ""}`;
    $("#server-note").hidden = false;
  }
  const missing = Object.keys(RUNTIMES).filter((rt) => available[rt] !== true);
  if (!runtimeOk.length) $("#mode-note").textContent += ` On this device: unavailable (${available[missing[0]]}).`;
  if (!server && !state.device) $("#model").textContent = "No model could be loaded.";
  await updateOffline();
  if (state.mode !== "device" && !state.offline.ready) {
    prefetchDevice().then(updateOffline).catch((err) => {
      state.offline.problem = `device mode could not be stored (${err.message || err})`;
      updateOffline();
    });
  }
}

const ready = init();

// A small API for tests and benchmarks (and the curious, from the console).
window.pocketcnn = {
  ready,
  state,
  setMode,
  setPrecision,
  classify,
  onnxMetadata,
  tfliteMetadata,
  updateOffline,
  /** The model input the page builds for encoded image bytes: {dims, data: number[]}. */
  async preprocess(bytes, spec, layout = "NCHW") {
    const useSpec = spec || (state.device ? state.device.info : state.server.info).spec;
    const input = await preprocessBlob(new Blob([bytes]), useSpec, layout);
    return { dims: input.dims, data: Array.from(input.data) };
  },
  /** Time `n` runs: decode + preprocess, and the model on the device, in ms each. */
  async timeDevice(bytes, n) {
    const { info, layout } = state.device;
    const blob = new Blob([bytes]);
    const pre = [];
    const model = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      const img = await decodeImage(blob);
      const input = preprocessPixels(img.rgba, img.width, img.height, info.spec, layout);
      pre.push(performance.now() - t0);
      model.push((await runDevice(input.data, input.dims)).inferMs);
    }
    return { preprocess: pre, model };
  },
  /** Time `n` round trips of POST v1/predict with one image, in ms each (and the server's own latency). */
  async timeServer(bytes, n, name = "image.png") {
    if (state.mode !== "server") throw new Error("timeServer sends photos: switch to server mode first");
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
