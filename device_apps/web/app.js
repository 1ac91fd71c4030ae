// turbovaed web demo: load an app bundle (bundle.json + manifest.json + ONNX artifact + sample latents),
// decode in the browser with onnxruntime-web (WebGPU when available, else WASM), play the frames on a
// canvas, report ms per frame, and offer a profile record in the project's schema (profiles/README.md).
import * as ort from "/ort/ort.all.min.mjs";

const params = new URLSearchParams(location.search);
const bundleUrl = params.get("bundle") || "/bundle/";
const runs = Number(params.get("runs") || 5);
const device = params.get("device");  // a device id from profiles/devices/: no record without one
const wanted = params.get("ep") || "auto";     // auto | webgpu | wasm
const state = { done: false, error: null };
window.turbovaed = state;

const status = (text) => { document.getElementById("status").textContent = text; };

async function fetchJson(name) {
  const r = await fetch(bundleUrl + name);
  if (!r.ok) throw new Error(`${name}: HTTP ${r.status}`);
  return r.json();
}

async function sha256(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function quantile(sorted, q) {  // linear interpolation, like Python's statistics.quantiles(method="inclusive")
  const pos = (sorted.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

function draw(frames, shape, t) {  // frames: (1, 3, T, H, W) in [-1, 1]
  const [, , , h, w] = shape;
  const canvas = document.getElementById("view");
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  const plane = h * w, frameStride = plane, channelStride = shape[2] * plane;
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) {
      const v = frames[c * channelStride + t * frameStride + i];
      img.data[4 * i + c] = Math.max(0, Math.min(255, Math.round((v + 1) * 127.5)));
    }
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

async function main() {
  const bundle = await fetchJson("bundle.json");
  const manifest = await fetchJson("manifest.json");
  if (bundle.format !== "turbovaed-app-bundle" || manifest.backend !== "onnx") {
    throw new Error(`this page runs ONNX app bundles; got ${bundle.format} / ${manifest.backend}`);
  }
  if (bundle.stream || manifest.stream) {
    throw new Error("this is a streaming step-graph bundle (inputs: latents chunk, first, states); this page decodes " +
                    "whole-clip bundles only: export a recipe without shape.stream_chunk");
  }
  const inputLatents = manifest.input_latents || "raw";  // "normalized": the graph de-normalises
  const modelBytes = await (await fetch(bundleUrl + manifest.artifact)).arrayBuffer();
  const latents = new Float32Array(await (await fetch(bundleUrl + bundle.latents.file)).arrayBuffer());
  // One provider per session, so the record names the provider that really ran (a provider list would
  // fall back silently): WebGPU first when asked or available, else WASM.
  const candidates = wanted === "auto" ? (navigator.gpu ? ["webgpu", "wasm"] : ["wasm"]) : [wanted];
  ort.env.wasm.wasmPaths = "/ort/";
  // Threads need cross-origin isolation (SharedArrayBuffer): `turbovaed demo web` sends COOP/COEP headers.
  const threads = self.crossOriginIsolated ? navigator.hardwareConcurrency || 1 : 1;
  ort.env.wasm.numThreads = threads;
  let session = null, ep = null, loadMs = 0;
  const failures = [];
  for (const candidate of candidates) {
    const t0 = performance.now();
    try {
      session = await ort.InferenceSession.create(modelBytes, { executionProviders: [candidate] });
      loadMs = performance.now() - t0;
      ep = candidate;
      break;
    } catch (err) {
      failures.push(`${candidate}: ${err}`);
    }
  }
  if (!session) throw new Error(`no execution provider could load the model (${failures.join("; ")})`);
  const input = new ort.Tensor("float32", latents, bundle.latents.shape);
  const feeds = { [session.inputNames[0]]: input };
  let out = null;
  const f0 = performance.now();
  await session.run(feeds);  // the first call (shader compilation on WebGPU), also the warm-up
  const firstMs = performance.now() - f0;
  const times = [];
  for (let i = 0; i < runs; i++) {
    const s = performance.now();
    out = await session.run(feeds);
    times.push(performance.now() - s);
  }
  const frames = out[session.outputNames[0]];
  const shape = frames.dims.map(Number);
  const sorted = [...times].sort((a, b) => a - b);
  const median = quantile(sorted, 0.5), nFrames = shape[2];
  document.getElementById("stats").innerHTML =
    `<tr><td>artifact</td><td>${manifest.name} (${manifest.precision})</td></tr>` +
    `<tr><td>input</td><td>${inputLatents} latents</td></tr>` +
    `<tr><td>execution provider</td><td>${ep}${failures.length ? ` (${failures.join("; ")})` : ""}</td></tr>` +
    `<tr><td>WASM threads</td><td>${threads}${self.crossOriginIsolated ? "" : " (page not cross-origin isolated)"}</td></tr>` +
    `<tr><td>decode</td><td>${median.toFixed(1)} ms for ${nFrames} frames = ${(median / nFrames).toFixed(2)} ms/frame</td></tr>` +
    `<tr><td>model load</td><td>${loadMs.toFixed(0)} ms</td></tr>`;
  const record = device && {
    model: manifest.student.checkpoint.split("/").pop(), model_sha256: manifest.student.sha256 || "",
    artifact: manifest.name, artifact_sha256: await sha256(modelBytes), device,
    runtime: "onnxruntime-web", runtime_version: ort.env.versions.web || "", precision: manifest.precision,
    compute_unit: ep === "webgpu" ? "webgpu" : "wasm", input_shape: bundle.latents.shape, frames: nFrames,
    latency: { median_ms: median, p10_ms: quantile(sorted, 0.1), p90_ms: quantile(sorted, 0.9) },
    fps: nFrames / (median / 1000), source: "measured-device-app", status: "ok",
    precision_meaning: manifest.precision_meaning || "", runs, warmup: 1, threads: ep === "wasm" ? threads : null,
    first_load_ms: loadMs, first_inference_ms: firstMs,
    peak_memory_mb: null, memory_method: "not measured (no per-page memory API without cross-origin isolation)",
    os_version: navigator.platform || null, ops: { delegated: null, total: null },
    notes: `input: ${inputLatents} latents; execution provider ${ep}` +
           (failures.length ? ` (failed first: ${failures.join("; ")})` : "") + `; browser: ${navigator.userAgent}`,
  };
  Object.assign(state, { output: frames.data, shape, times, record, done: true });
  status(`decoded ${nFrames} frames of ${shape[3]}x${shape[4]} in ${median.toFixed(1)} ms (${ep})`);
  let t = 0;
  draw(frames.data, shape, 0);
  const play = document.getElementById("play");
  play.disabled = false;
  play.onclick = () => {
    const timer = setInterval(() => { draw(frames.data, shape, t); t = (t + 1) % nFrames; }, 1000 / (bundle.fps || 8));
    setTimeout(() => clearInterval(timer), 1000 * nFrames / (bundle.fps || 8) * 3);
  };
  const button = document.getElementById("record");
  if (!record) {
    button.title = "add ?device=<id> (an id from profiles/devices/) to the address to save a record";
    status(`decoded ${nFrames} frames in ${median.toFixed(1)} ms (${ep}); no record: the page has no ?device=<id>`);
    return;
  }
  button.disabled = false;
  button.onclick = () => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([JSON.stringify(record, null, 1)], { type: "application/json" }));
    a.download = `${manifest.name}-${device}-web.json`;
    a.click();
  };
}

main().catch((err) => { state.error = String(err); state.done = true; status(`error: ${err}`); });
