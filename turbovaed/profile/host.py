"""`turbovaed profile ARTIFACT_DIR`: time every exported artifact that has a runtime on this machine, and
the eager student, and write labelled roofline estimates for every catalog device.

Each artifact is loaded in a process of its own (so its load time, first call and peak memory are its
own), while timing stays interleaved: the parent asks each worker for one call per round, round-robin,
so every runtime sees the same machine state and the ratios are fair on a noisy machine."""

from __future__ import annotations

import gc
import importlib
import json
import multiprocessing
import os
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from turbovaed.export import backends
from turbovaed.export.core import ExportRecipe, backend_module, model_of, precision_meaning
from turbovaed.io import InputError, TurboVAEDError
from turbovaed.profile import devices as catalog_mod
from turbovaed.profile.estimate import costs_of, device_estimates
from turbovaed.profile.schema import Latency, Ops, Record, save
from turbovaed.recipes import build
from turbovaed.student import StreamingStep, StudentConfig, StudentDecoder

MEMORY_METHOD = ("peak RSS (VmHWM, reset at the load; ru_maxrss where it cannot be reset) of a process that loads "
                 "only this artifact, from the load through the first call and warm-up, minus its RSS before the load "
                 "(runtime imported)")
WORKER_START_S = 600  # a worker that has not loaded its artifact by then is recorded as failed
# Idle workers wait for their next turn; OpenMP threads that spin meanwhile would steal the cores of the
# worker being timed (measured: an eager call 11 ms alone, 790 ms beside five spinning workers).
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


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


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set so far (Linux: VmHWM, resettable; elsewhere ru_maxrss)."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2 ** 20 if sys.platform == "darwin" else 1024)


def start_memory_window() -> float:
    """Reset the peak to the current RSS where Linux allows it (/proc/self/clear_refs), so that the import
    transients of torch and the runtime do not hide a small model's load; returns the baseline MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mb("VmRSS") or peak_rss_mb()
    except OSError:
        return peak_rss_mb()


def example_inputs(manifest: dict, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(i["shape"], generator=g) for i in manifest["inputs"]]
    if "stream" in manifest and manifest["inputs"][1]["name"] == "first":  # a later chunk: first = 0, carried states
        xs[1] = torch.zeros(1)
    return tuple(xs)


def _load(manifest: dict):
    """A callable running one artifact (or, for `_eager`, the student in PyTorch) on this machine."""
    if manifest.get("_eager"):
        source = model_of(manifest)
        if source["kind"] == "decoder":  # with the artifact's I/O: turbovaed's layout and range
            from turbovaed import decoders

            loaded = decoders.load(source["path"], source["variant"])
            net = loaded.step() if "stream" in manifest else loaded.canonical()
            return lambda *xs: net(*xs)
        model = StudentDecoder.from_pretrained(source["path"]).float().eval()
        net = StreamingStep(model.to_mobile().eval()) if "stream" in manifest else model
        return lambda *xs: net(*xs)
    recipe = build(ExportRecipe, manifest["recipe"])
    return backend_module(manifest["backend"]).runner(manifest["_dir"] / manifest["artifact"], model=None,
                                                      options=recipe.options)


def _worker(conn, manifest: dict, threads: int, warmup: int) -> None:
    """Body of one measuring process: load, first call, warm-up, a second (warm) load; then one timed
    call per "run" message until "stop". Errors are sent back as {"error": ...}."""
    try:
        torch.set_num_threads(threads)
        if not manifest.get("_eager"):
            backend = backends.get(manifest["backend"])
            backend.module()
            importlib.import_module(backend.runtime_module)  # importing a runtime is not loading an artifact
        inputs = example_inputs(manifest)
        with torch.no_grad():
            gc.collect()
            before, t0 = start_memory_window(), time.perf_counter()
            run = _load(manifest)
            first_load = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            run(*inputs)
            first_call = (time.perf_counter() - t0) * 1000
            for _ in range(max(warmup - 1, 0)):
                run(*inputs)
            peak = peak_rss_mb() - before
            del run
            gc.collect()
            t0 = time.perf_counter()
            run = _load(manifest)
            warm_load = (time.perf_counter() - t0) * 1000
            run(*inputs)
            conn.send({"first_load_ms": first_load, "warm_load_ms": warm_load, "first_inference_ms": first_call,
                       "peak_memory_mb": max(peak, 0.0)})
            while conn.recv() == "run":
                t0 = time.perf_counter()
                run(*inputs)
                conn.send(time.perf_counter() - t0)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which records the failure
        conn.send({"error": f"{type(err).__name__}: {err}"})


class _Worker:
    def __init__(self, ctx, manifest: dict, threads: int, warmup: int) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, manifest, threads, warmup), daemon=True)
        saved = {k: os.environ.get(k) for k in WORKER_ENV}
        os.environ.update(WORKER_ENV)  # a spawned process takes the environment at start
        try:
            self.proc.start()
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        child.close()

    def receive(self, timeout: float | None = None):
        """The worker's next message; a dead or silent worker raises TurboVAEDError."""
        if not self.conn.poll(timeout):
            raise TurboVAEDError(f"no answer in {timeout:.0f} s")
        try:
            msg = self.conn.recv()
        except EOFError:
            self.proc.join(5)
            raise TurboVAEDError(f"the measuring process died (exit code {self.proc.exitcode})") from None
        if isinstance(msg, dict) and "error" in msg:
            raise TurboVAEDError(msg["error"])
        return msg

    def stop(self) -> None:
        try:
            self.conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def profile_artifacts(path: Path, runs: int = 10, warmup: int = 2, threads: int = 2, eager: bool = True,
                      device: str = "host", untimed: dict[str, str] | None = None) -> tuple[list[Record], list[str]]:
    """Measured host records (isolated loads, interleaved timing; failed runs recorded with status
    'failed') and a list of what was skipped and why (no runtime on this machine, or a backend in `untimed`:
    backend -> why)."""
    catalog_mod.get_device(device)
    manifests = find_manifests(path)
    jobs, skipped = {}, []
    for m in manifests:
        recipe = build(ExportRecipe, m["recipe"])
        if m["backend"] == "coreml" or recipe.delegate == "coreml":
            skipped.append(f"{m['name']}: Core ML runs only on Apple devices (use the iOS app's benchmark mode)")
            continue
        if m["backend"] in (untimed or {}):
            skipped.append(f"{m['name']}: {untimed[m['backend']]}")
            continue
        jobs[m["name"]] = m
    if eager:  # the PyTorch reference the ratios are taken against, one per distinct input shape
        for m in manifests:
            path = model_of(m)["path"]
            key = f"eager:{path}:{m['inputs'][0]['shape']}:{'stream' in m}"
            if key not in jobs and Path(path).exists():
                jobs[key] = {**m, "backend": "pytorch", "precision": "fp32", "name": "eager", "_eager": True}
    if not jobs:
        raise InputError(f"nothing under {path} has a runtime on this machine: " + "; ".join(skipped))
    ctx = multiprocessing.get_context("spawn")
    workers, loaded, failed = {}, {}, {}
    try:
        for k, m in jobs.items():  # one at a time, so loads do not compete for the cores
            workers[k] = _Worker(ctx, m, threads, warmup)
            try:
                loaded[k] = workers[k].receive(WORKER_START_S)
            except TurboVAEDError as err:
                failed[k] = str(err)
                workers.pop(k).stop()
        times: dict[str, list[float]] = {k: [] for k in workers}
        for _ in range(runs):  # round-robin: every runtime sees the same machine state
            for k, w in list(workers.items()):
                try:
                    w.conn.send("run")
                    times[k].append(w.receive(WORKER_START_S))
                except (TurboVAEDError, BrokenPipeError, OSError) as err:
                    failed[k] = f"failed while timing: {err}"
                    workers.pop(k).stop()
    finally:
        for w in workers.values():
            w.stop()
    ident = catalog_mod.host_identity()
    records = []
    for k, m in jobs.items():
        if k in failed:
            records.append(_record(m, device, runs, warmup, threads, ident, others=[], status="failed",
                                   error=failed[k]))
            continue
        records.append(_record(m, device, runs, warmup, threads, ident, others=sorted(x for x in workers if x != k),
                               latency=Latency.from_times_ms([t * 1000 for t in times[k]]), **loaded[k]))
    return records, skipped


def _record(m: dict, device: str, runs: int, warmup: int, threads: int, ident: dict, others: list[str],
            latency: Latency | None = None, status: str = "ok", error: str = "", **measured) -> Record:
    eager_run = m.get("_eager", False)
    frames = m["outputs"][0]["shape"][2]
    ops = {} if eager_run else m.get("ops", {})  # the eager student has no exported graph to count
    source = model_of(m)
    return Record(
        model=source["name"], model_sha256=source["sha256"],
        artifact="eager" if eager_run else m["name"], artifact_sha256="" if eager_run else m["sha256"],
        device=device, runtime="pytorch" if eager_run else backends.get(m["backend"]).host_runtime,
        runtime_version=torch.__version__ if eager_run else m["tool_versions"].get(
            backends.get(m["backend"]).version_package, ""),
        precision=m["precision"], compute_unit="cpu" if eager_run else backends.get(m["backend"]).host_unit,
        precision_meaning="W32A32 (PyTorch eager)" if eager_run else
        precision_meaning(m["backend"], m["precision"], m["recipe"].get("delegate", "xnnpack")),
        input_shape=m["inputs"][0]["shape"], frames=frames, latency=latency,
        fps=frames / latency.median_ms * 1000 if latency else None, source="measured-host", status=status,
        error=error, runs=runs, warmup=warmup, threads=threads, memory_method=MEMORY_METHOD if latency else "",
        **ident, **measured,
        ops=Ops.from_manifest(ops),
        notes=("streaming step graph; " if "stream" in m else "") + "own process; timing interleaved with "
        + (", ".join(others) or "nothing"))


def estimate_records(manifests: list[dict], devices: dict, fits: dict | None = None) -> list[Record]:
    """Estimates for every artifact on every catalog device (and compute unit) its runtime can use: calibrated
    where the unit's class has a fit (calibration.py), else the bare roofline, labelled so."""
    from turbovaed.profile.calibration import fits as calibration_fits

    fits = calibration_fits() if fits is None else fits
    out = []
    for m in manifests:
        if model_of(m)["kind"] != "student":
            continue  # the per-layer cost model covers students; decoder files are measured, not estimated
        cfg = StudentConfig.from_dict(m["student"]["config"])  # the manifest carries it: no weights to load
        costs = costs_of(cfg, tuple(m["inputs"][0]["shape"][2:]))
        frames = m["outputs"][0]["shape"][2]
        for dev in devices.values():
            for unit, est in device_estimates(dev, costs, m["backend"], m["precision"], fits).items():
                s = est.pop("seconds")
                out.append(Record(
                    model=Path(m["student"]["checkpoint"]).name, model_sha256=m["student"].get("sha256", ""),
                    artifact=m["name"], artifact_sha256=m["sha256"], device=dev.id, runtime=backends.get(m["backend"]).runtime,
                    runtime_version="", precision=m["precision"], compute_unit=unit,
                    precision_meaning=precision_meaning(m["backend"], m["precision"],
                                                        m["recipe"].get("delegate", "xnnpack")),
                    input_shape=m["inputs"][0]["shape"], frames=frames, latency=Latency(s * 1000, s * 1000, s * 1000),
                    fps=frames / s, source="estimate", estimate=est, notes=estimate_note(est)))
    return out


def estimate_note(est: dict) -> str:
    cal = est["calibration"]
    if cal is None:
        return "uncalibrated roofline lower bound: sum over layers of max(2*MACs/peak, bytes/bandwidth)"
    loo = cal["worst_leave_one_out_ratio"]  # None: too few points to leave one out
    return (f"calibrated ({cal['class']}, {cal['points']} points, worst leave-one-out "
            f"{f'{loo:.2f}x' if loo else 'not computable'}): per-call + per-op * ops + k * roofline")


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def profile(path: Path, runs: int = 10, warmup: int = 2, threads: int = 2, results_dir: Path | None = None,
            untimed: dict[str, str] | None = None) -> dict:
    """Measure the host, estimate every device; write both record files. Returns paths and records."""
    from turbovaed.profile.schema import RESULTS_DIR

    results_dir = results_dir or RESULTS_DIR
    devices = catalog_mod.load_catalog()
    measured, skipped = profile_artifacts(path, runs, warmup, threads, untimed=untimed)
    devices["host"] = catalog_mod.measured_host(threads, devices)  # the host estimate is for this machine
    manifests = find_manifests(path)
    estimates = estimate_records(manifests, devices)
    files = [m["name"] for m in manifests if model_of(m)["kind"] != "student"]
    if files:
        skipped.append(f"device estimates: not made for decoder files yet (measured only): {', '.join(files)}")
    s = stamp()
    return {"measured": measured, "estimates": estimates, "skipped": skipped,
            "files": [save(measured, f"{s}-host", results_dir), save(estimates, f"{s}-estimates", results_dir)]}
