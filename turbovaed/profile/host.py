"""`turbovaed profile ARTIFACT_DIR`: time every exported artifact that has a runtime on this machine, and
the eager student, interleaved in one process (round-robin, one call each per round) so that the ratios
are fair on a noisy machine; and write labelled roofline estimates for every catalog device."""

from __future__ import annotations

import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from turbovaed.export.core import ExportRecipe, backend_module
from turbovaed.io import InputError, TurboVAEDError
from turbovaed.profile import devices as catalog_mod
from turbovaed.profile.estimate import device_estimates, layer_costs
from turbovaed.profile.schema import Latency, Ops, Record, save
from turbovaed.recipes import build
from turbovaed.student import StreamingStep, StudentConfig, StudentDecoder

RUNTIME = {"executorch": "executorch", "onnx": "onnxruntime", "litert": "litert", "coreml": "coreml"}
UNIT = {"executorch": "cpu/xnnpack", "onnx": "cpu", "litert": "cpu/xnnpack", "coreml": "ane"}


def find_manifests(path: Path) -> list[dict]:
    """Manifests of one artifact folder or of every artifact folder directly under `path`."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path} is not a folder of exported artifacts")
    files = [path / "manifest.json"] if (path / "manifest.json").is_file() else sorted(path.glob("*/manifest.json"))
    if not files:
        raise InputError(f"{path} has no manifest.json (nor sub-folders with one): export with `turbovaed export` first")
    out = []
    for f in files:
        try:
            m = json.loads(f.read_text())
            m["_dir"] = f.parent
            m["artifact"], m["backend"], m["inputs"]  # noqa: B018 - required fields
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise InputError(f"{f} is not an export manifest (missing or bad field: {err})") from err
        out.append(m)
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0



def example_inputs(manifest: dict, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(i["shape"], generator=g) for i in manifest["inputs"]]
    if "stream" in manifest:  # a later chunk of a stream: first = 0, carried states
        xs[1] = torch.zeros(1)
    return tuple(xs)


def profile_artifacts(path: Path, runs: int = 10, warmup: int = 2, threads: int = 2, eager: bool = True,
                      device: str = "host") -> tuple[list[Record], list[str]]:
    """Measured host records (interleaved timing) and a list of what was skipped and why."""
    torch.set_num_threads(threads)
    catalog_mod.get_device(device)
    manifests = find_manifests(path)
    runners, skipped = {}, []
    for m in manifests:
        recipe = build(ExportRecipe, m["recipe"])
        if m["backend"] == "coreml" or recipe.delegate == "coreml":
            skipped.append(f"{m['name']}: Core ML runs only on Apple devices (use the iOS app's benchmark mode)")
            continue
        before, t0 = rss_mb(), time.perf_counter()
        try:
            run = backend_module(m["backend"]).runner(m["_dir"] / m["artifact"], model=None, recipe=recipe)
        except (TurboVAEDError, ImportError) as err:
            skipped.append(f"{m['name']}: {err}")
            continue
        runners[m["name"]] = (m, run, (time.perf_counter() - t0) * 1000, before)
    if eager:  # the PyTorch reference the ratios are taken against, one per distinct input shape
        for m in manifests:
            key = f"eager:{m['student']['checkpoint']}:{m['inputs'][0]['shape']}:{'stream' in m}"
            if key in runners or not Path(m["student"]["checkpoint"]).is_dir():
                continue
            before, t0 = rss_mb(), time.perf_counter()
            model = StudentDecoder.from_pretrained(m["student"]["checkpoint"]).float().eval()
            net = StreamingStep(model.to_mobile().eval()) if "stream" in m else model
            runners[key] = ({**m, "backend": "pytorch", "precision": "fp32", "name": "eager", "_eager": True},
                            lambda *xs, net=net: net(*xs), (time.perf_counter() - t0) * 1000, before)
    if not runners:
        raise InputError(f"nothing under {path} has a runtime on this machine: " + "; ".join(skipped))
    inputs = {k: example_inputs(m) for k, (m, *_) in runners.items()}
    memory = {}
    with torch.no_grad():
        for k, (_, run, _, before) in runners.items():
            for _ in range(warmup):
                run(*inputs[k])
            memory[k] = max(rss_mb() - before, 0.0)
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(runs):  # round-robin: every runner sees the same machine state
            for k, (_, run, _, _) in runners.items():
                t0 = time.perf_counter()
                run(*inputs[k])
                times[k].append(time.perf_counter() - t0)
    records = []
    for k, (m, _, load_ms, _) in runners.items():
        ts = sorted(times[k])
        q = statistics.quantiles(ts, n=10, method="inclusive") if len(ts) > 1 else [ts[0]] * 9
        frames = m["outputs"][0]["shape"][2]
        med = statistics.median(ts)
        eager_run = m.get("_eager", False)
        ops = m.get("ops", {})
        records.append(Record(
            model=Path(m["student"]["checkpoint"]).name, model_sha256=m["student"].get("sha256", ""),
            artifact="eager" if eager_run else m["name"],
            artifact_sha256="" if eager_run else m["sha256"], device=device,
            runtime="pytorch" if eager_run else RUNTIME[m["backend"]],
            runtime_version=torch.__version__ if eager_run else m["tool_versions"].get(
                {"onnx": "onnxruntime", "litert": "ai-edge-litert"}.get(m["backend"], m["backend"]), ""),
            precision=m["precision"], compute_unit="cpu" if eager_run else UNIT[m["backend"]],
            input_shape=m["inputs"][0]["shape"], frames=frames,
            latency=Latency(med * 1000, min(q[0], med) * 1000, max(q[-1], med) * 1000), fps=frames / med,
            source="measured-host", runs=runs, warmup=warmup, threads=threads, load_ms=load_ms,
            peak_memory_mb=memory[k],
            ops=Ops(delegated=ops.get("delegated"), total=(ops.get("delegated", 0) + ops.get("not_delegated", 0))
                    if "delegated" in ops else ops.get("total")),
            notes=("streaming step graph; " if "stream" in m else "") + "interleaved with " + ", ".join(
                sorted(x for x in runners if x != k)) + "; peak_memory_mb = RSS growth from load + warm-up"))
    return records, skipped


def estimate_records(manifests: list[dict], devices: dict) -> list[Record]:
    """Roofline estimates for every artifact on every catalog device (and compute unit) its runtime can use."""
    out = []
    for m in manifests:
        cfg = StudentConfig.from_dict(m["student"]["config"])  # the manifest carries it: no weights to load
        costs = layer_costs(cfg, tuple(m["inputs"][0]["shape"][2:]))
        frames = m["outputs"][0]["shape"][2]
        for dev in devices.values():
            for unit, est in device_estimates(dev, costs, m["backend"], m["precision"]).items():
                s = est.pop("seconds")
                out.append(Record(
                    model=Path(m["student"]["checkpoint"]).name, model_sha256=m["student"].get("sha256", ""),
                    artifact=m["name"], artifact_sha256=m["sha256"], device=dev.id, runtime=RUNTIME[m["backend"]],
                    runtime_version="", precision=m["precision"], compute_unit=unit,
                    input_shape=m["inputs"][0]["shape"], frames=frames, latency=Latency(s * 1000, s * 1000, s * 1000),
                    fps=frames / s, source="estimate", estimate=est,
                    notes="roofline lower bound: sum over layers of max(2*MACs/peak, bytes/bandwidth)"))
    return out


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def profile(path: Path, runs: int = 10, warmup: int = 2, threads: int = 2, results_dir: Path | None = None) -> dict:
    """Measure the host, estimate every device; write both record files. Returns paths and records."""
    from turbovaed.profile.schema import RESULTS_DIR

    results_dir = results_dir or RESULTS_DIR
    devices = catalog_mod.load_catalog()
    measured, skipped = profile_artifacts(path, runs, warmup, threads)
    estimates = estimate_records(find_manifests(path), devices)
    s = stamp()
    return {"measured": measured, "estimates": estimates, "skipped": skipped,
            "files": [save(measured, f"{s}-host", results_dir), save(estimates, f"{s}-estimates", results_dir)]}
