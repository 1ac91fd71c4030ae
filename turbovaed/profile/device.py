"""`turbovaed profile device ARTIFACT`: measure an exported artifact on an Android phone over adb.

Pushes the artifact, runs the runtime's own benchmark tool on the phone with explicit runs, warm-up and
threads, and parses its output into `measured-device-app` records (device model, SoC and OS from
`getprop`):
- LiteRT (.tflite): `benchmark_model` (XNNPACK on CPU, or the GPU delegate), which prints init, first
  inference, warm-up and steady-state statistics (count/first/min/max/avg/std and, in recent builds,
  p5/median/p95) and the peak memory footprint;
- ExecuTorch (.pte): `executor_runner` (built with XNNPACK), which prints the load time and every
  iteration; the first `warmup` iterations are the warm-up, the rest are timed.

The runner binaries are the runtimes' own (built for android-arm64 and pushed once to --runner-dir);
missing adb, no device, an unauthorized device, a missing runner or output that does not parse are each
one clear error, and nothing is recorded."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from turbovaed.export.core import precision_meaning
from turbovaed.io import InputError
from turbovaed.profile.schema import Latency, Ops, Record

RUNNERS = {"litert": "benchmark_model", "executorch": "executor_runner"}
UNITS = {"litert": ("cpu", "gpu"), "executorch": ("cpu",)}
ADB_TIMEOUT_S = 900


@dataclass
class Phone:
    serial: str
    model: str
    soc: str
    os_version: str


def adb(args: list[str], serial: str | None = None, timeout: float = ADB_TIMEOUT_S) -> str:
    """Run adb (with -s SERIAL); stdout, or one InputError with adb's own words."""
    exe = shutil.which("adb")
    if exe is None:
        raise InputError("adb is not on PATH: install Android platform-tools and connect a phone with USB debugging on")
    cmd = [exe, *(["-s", serial] if serial else []), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise InputError(f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s") from err
    if done.returncode != 0:
        raise InputError(f"`{' '.join(cmd)}` failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def connect(serial: str | None) -> Phone:
    """The one attached, authorised phone (or the one named by --serial), described by getprop."""
    rows = [line.split() for line in adb(["devices"]).splitlines()[1:] if line.strip()]
    states = {r[0]: r[1] for r in rows if len(r) >= 2}
    if serial is None:
        if not states:
            raise InputError("no Android device attached (`adb devices` lists none): connect one with USB debugging on")
        if len(states) > 1:
            raise InputError(f"{len(states)} devices attached ({', '.join(states)}): choose one with --serial")
        serial = next(iter(states))
    if serial not in states:
        raise InputError(f"device {serial} is not attached (`adb devices`: {', '.join(states) or 'none'})")
    if states[serial] == "unauthorized":
        raise InputError(f"device {serial} is unauthorized: unlock it and accept the USB debugging prompt")
    if states[serial] != "device":
        raise InputError(f"device {serial} is {states[serial]}, not ready")
    prop = lambda name: adb(["shell", "getprop", name], serial).strip()  # noqa: E731
    soc = prop("ro.soc.model") or prop("ro.board.platform") or prop("ro.hardware")
    manufacturer = prop("ro.product.manufacturer")
    return Phone(serial, f"{manufacturer} {prop('ro.product.model')}".strip(), soc,
                 f"Android {prop('ro.build.version.release')} (API {prop('ro.build.version.sdk')})")


def _num(text: str, pattern: str, what: str, tool: str) -> float:
    m = re.search(pattern, text)
    if m is None:
        raise InputError(f"could not parse {tool} output: no {what} (is this the runtime's own {tool}?)")
    return float(m.group(1))


def parse_benchmark_model(text: str) -> dict:
    """LiteRT benchmark_model output -> init/first/warm-up/steady statistics (ms) and peak memory (MB)."""
    tool = "benchmark_model"
    init_us = _num(text, r"Inference timings in us: Init: ([\d.e+]+)", "'Inference timings in us' line", tool)
    first_us = _num(text, r"First inference: ([\d.e+]+)", "first inference", tool)
    warm_us = _num(text, r"Warmup \(avg\): ([\d.e+]+)", "warm-up average", tool)
    steady = [line for line in text.splitlines() if re.search(r"count=\d+ first=", line)]
    if not steady:
        raise InputError(f"could not parse {tool} output: no steady-state 'count=... first=...' statistics line")
    stats = dict(re.findall(r"(\w+)=([\d.e+]+)", steady[-1]))
    median = float(stats.get("median", stats["avg"])) / 1000
    p10 = float(stats.get("p5", stats["min"])) / 1000
    p90 = float(stats.get("p95", stats["max"])) / 1000
    peak = re.search(r"peak memory footprint \(MB\)[^:]*: ([\d.]+)", text) or \
        re.search(r"Memory footprint delta from the start of the tool \(MB\): init=[\d.]+ overall=([\d.]+)", text) or \
        re.search(r"Peak memory footprint \(MB\): init=[\d.]+ overall=([\d.]+)", text)
    return {"first_load_ms": init_us / 1000, "first_inference_ms": first_us / 1000, "warmup_ms": warm_us / 1000,
            "runs": int(float(stats["count"])), "latency": Latency(median, min(p10, median), max(p90, median)),
            "peak_memory_mb": float(peak.group(1)) if peak else None,
            "quantiles": "p5/median/p95" if "median" in stats else "min/avg/max (this benchmark_model prints no percentiles)"}


def parse_executor_runner(text: str, warmup: int) -> dict:
    """ExecuTorch executor_runner output -> load time, first call, and the timed iterations after warm-up."""
    tool = "executor_runner"
    load = _num(text, r"Model loaded in ([\d.]+) ms", "'Model loaded in' line", tool)
    iters = [float(x) for x in re.findall(r"Iteration \d+ of \d+: ([\d.]+) ms", text)]
    if not re.search(r"Model executed successfully", text):
        raise InputError(f"could not parse {tool} output: the model did not report a successful run")
    timed = iters[warmup:]
    if len(timed) < 2:
        raise InputError(f"could not parse {tool} output: {len(iters)} iteration lines for {warmup} warm-up + "
                         "timed runs (an executor_runner older than per-iteration timing?)")
    q = statistics.quantiles(timed, n=10, method="inclusive")
    med = statistics.median(timed)
    return {"first_load_ms": load, "first_inference_ms": iters[0], "runs": len(timed),
            "latency": Latency(med, min(q[0], med), max(q[-1], med)), "peak_memory_mb": None,
            "quantiles": "p10/median/p90 of the per-iteration times"}


def command(runtime: str, unit: str, runner: str, model: str, runs: int, warmup: int, threads: int) -> list[str]:
    """The on-phone command line with explicit runs, warm-up and threads."""
    if runtime == "litert":
        return [runner, f"--graph={model}", f"--num_threads={threads}", f"--num_runs={runs}",
                f"--warmup_runs={warmup}", "--min_secs=0", "--warmup_min_secs=0",
                f"--use_gpu={'true' if unit == 'gpu' else 'false'}",
                f"--use_xnnpack={'true' if unit == 'cpu' else 'false'}", "--report_peak_memory_footprint=true"]
    return [runner, f"--model_path={model}", f"--num_executions={warmup + runs}", f"--cpu_threads={threads}",
            "--print_output=none"]


def profile_device(artifact_dir: Path, device_id: str, serial: str | None = None, unit: str = "cpu", runs: int = 20,
                   warmup: int = 5, threads: int = 4, runner_dir: str = "/data/local/tmp") -> Record:
    """Measure one exported artifact on the attached phone; returns its record (not yet saved)."""
    from turbovaed.profile.host import find_manifests

    manifests = find_manifests(artifact_dir)
    if len(manifests) != 1:
        raise InputError(f"{artifact_dir} holds {len(manifests)} artifacts: give one artifact folder")
    manifest = manifests[0]
    backend = manifest["backend"]
    if backend not in RUNNERS or manifest["recipe"].get("delegate", "xnnpack") != "xnnpack":
        raise InputError(f"{manifest['name']} is a {backend} artifact; phones are measured here with LiteRT "
                         "(.tflite) and ExecuTorch XNNPACK (.pte) artifacts")
    if unit not in UNITS[backend]:
        raise InputError(f"{backend} artifacts run on {', '.join(UNITS[backend])} here, not {unit}")
    if runs < 2 or warmup < 0 or threads < 1:
        raise InputError("--runs must be >= 2, --warmup >= 0 and --threads >= 1")
    phone = connect(serial)
    runner = f"{runner_dir.rstrip('/')}/{RUNNERS[backend]}"
    if adb(["shell", f"ls {runner} >/dev/null 2>&1 && echo found || echo missing"], phone.serial).strip() != "found":
        source = "LiteRT (tensorflow/lite/tools/benchmark)" if backend == "litert" else \
            "ExecuTorch (examples/portable/executor_runner, XNNPACK on)"
        raise InputError(f"{RUNNERS[backend]} is not on the phone at {runner}: build it for android-arm64 from "
                         f"{source} and `adb push` it there (or pass --runner-dir)")
    remote = f"{runner_dir.rstrip('/')}/turbovaed-{manifest['sha256'][:12]}{Path(manifest['artifact']).suffix}"
    adb(["push", str(manifest["_dir"] / manifest["artifact"]), remote], phone.serial)
    cmd = command(backend, unit, runner, remote, runs, warmup, threads)
    out = adb(["shell", " ".join(cmd)], phone.serial)
    parsed = parse_benchmark_model(out) if backend == "litert" else parse_executor_runner(out, warmup)
    frames = manifest["outputs"][0]["shape"][2]
    lat = parsed["latency"]
    return Record(
        model=Path(manifest["student"]["checkpoint"]).name, model_sha256=manifest["student"].get("sha256", ""),
        artifact=manifest["name"], artifact_sha256=manifest["sha256"], device=device_id,
        runtime="litert" if backend == "litert" else "executorch",
        runtime_version=f"{RUNNERS[backend]} on the phone (converter: " + manifest["tool_versions"].get(
            "ai-edge-litert" if backend == "litert" else "executorch", "?") + ")",
        precision=manifest["precision"], precision_meaning=precision_meaning(backend, manifest["precision"]),
        compute_unit="gpu" if unit == "gpu" else "cpu/xnnpack", input_shape=manifest["inputs"][0]["shape"],
        frames=frames, latency=lat, fps=frames / lat.median_ms * 1000, source="measured-device-app",
        runs=parsed["runs"], warmup=warmup, threads=threads, first_load_ms=parsed["first_load_ms"],
        first_inference_ms=parsed["first_inference_ms"], peak_memory_mb=parsed["peak_memory_mb"],
        memory_method="benchmark_model's peak memory footprint (its own, approximate)" if backend == "litert"
        else "not reported by executor_runner", hw_model=phone.model, soc=phone.soc, os_version=phone.os_version,
        ops=Ops.from_manifest(manifest.get("ops", {})),
        notes=f"adb serial {phone.serial}; {' '.join(cmd)}; latency band: {parsed['quantiles']}")
