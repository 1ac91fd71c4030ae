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
one clear error, and nothing is recorded.

Core ML (.mlpackage) artifacts are measured on the Mac that runs the command (`profile_coreml_mac`):
coremltools loads the package for the chosen compute units (first load includes the on-device compilation,
then a warm load), times `predict` alone, and records op placement from MLComputePlan. Core ML predicts
only on macOS: anywhere else this is one clear error. Core AI (.aimodel) artifacts likewise
(`profile_coreai_mac`): the OS Core AI runtime of macOS 27 loads the asset specialised for the chosen compute
unit (first load, then a warm load) and only the function call is timed; the Linux wheel's reference runtime
has no compute units, so off macOS 27 it is one clear error.

`calibrate_device` (`turbovaed profile calibrate`) times the calibration nets the same ways — LiteRT on a phone,
or Core ML on a Mac — and writes them as calibration points for that device and unit."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from turbovaed.export import backends
from turbovaed.export.core import precision_meaning
from turbovaed.io import InputError
from turbovaed.profile.schema import Latency, Ops, Record

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
    return {"first_load_ms": load, "first_inference_ms": iters[0], "runs": len(timed),
            "latency": Latency.from_times_ms(timed), "peak_memory_mb": None,
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


def one_manifest(artifact_dir: Path) -> dict:
    from turbovaed.profile.host import find_manifests

    manifests = find_manifests(artifact_dir)
    if len(manifests) != 1:
        raise InputError(f"{artifact_dir} holds {len(manifests)} artifacts: give one artifact folder")
    return manifests[0]


COREML_UNITS = {"ane": "CPU_AND_NE", "gpu": "CPU_AND_GPU", "cpu": "CPU_ONLY"}


def op_placement(plan, unit: str) -> Ops:
    """(ops whose preferred device is `unit`, all non-constant ops) of the program's main function."""
    from coremltools.models.compute_device import MLCPUComputeDevice, MLGPUComputeDevice, MLNeuralEngineComputeDevice

    wanted = {"ane": MLNeuralEngineComputeDevice, "gpu": MLGPUComputeDevice, "cpu": MLCPUComputeDevice}[unit]
    ops = [op for op in plan.model_structure.program.functions["main"].block.operations if op.operator_name != "const"]
    on_unit = 0
    for op in ops:
        usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
        on_unit += usage is not None and isinstance(usage.preferred_compute_device, wanted)
    return Ops(on_unit, len(ops))


def mac_identity() -> dict:
    import platform

    def sysctl(name: str) -> str:
        done = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"hw_model": sysctl("hw.model") or platform.node(), "soc": sysctl("machdep.cpu.brand_string"),
            "os_version": f"macOS {platform.mac_ver()[0]}"}


def _require_mac(unit: str, runs: int, warmup: int) -> None:
    import platform

    if platform.system() != "Darwin":
        raise InputError(f"Core ML predicts only on macOS; this machine runs {platform.system()}: run "
                         "`turbovaed profile device` on a Mac (or measure on iPhone with device_apps/ios)")
    if unit not in COREML_UNITS:
        raise InputError(f"Core ML units are {', '.join(COREML_UNITS)}, not {unit}")
    if runs < 2 or warmup < 0:
        raise InputError("--runs must be >= 2 and --warmup >= 0")


def time_coreml(path: Path, unit: str, feed: dict, runs: int, warmup: int) -> dict:
    """Load a Core ML package for `unit` (first load, compiling; then a warm load) and time `predict` alone:
    the first call, warm-up, then `runs` calls. Returns the model and the times (ms)."""
    import time

    import coremltools as ct

    units = getattr(ct.ComputeUnit, COREML_UNITS[unit])
    t0 = time.perf_counter()
    model = ct.models.MLModel(str(path), compute_units=units)  # compiles the package on this Mac
    first_load = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    ct.models.MLModel(str(path), compute_units=units)
    warm_load = (time.perf_counter() - t0) * 1000
    timed = time_calls(lambda: model.predict(feed), runs, warmup)
    return {"model": model, "units": units, "first_load_ms": first_load, "warm_load_ms": warm_load,
            "first_inference_ms": timed["first_ms"], "times": timed["times"]}


def profile_coreml_mac(artifact_dir: Path, device_id: str, unit: str = "ane", runs: int = 20, warmup: int = 5) -> Record:
    """Measure one Core ML artifact on this Mac: load / warm load / first prediction / timed predictions and
    op placement; returns its record (not yet saved)."""
    import resource

    import numpy as np

    manifest = one_manifest(artifact_dir)
    if manifest["backend"] != "coreml":
        raise InputError(f"{manifest['name']} is a {manifest['backend']} artifact, not Core ML")
    _require_mac(unit, runs, warmup)
    import coremltools as ct
    from coremltools.models.compute_plan import MLComputePlan

    path = manifest["_dir"] / manifest["artifact"]
    shape = manifest["inputs"][0]["shape"]
    feed = {manifest["inputs"][0]["name"]: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    timed = time_coreml(path, unit, feed, runs, warmup)
    latency = Latency.from_times_ms(timed["times"])
    try:
        plan = MLComputePlan.load_from_path(path=timed["model"].get_compiled_model_path(), compute_units=timed["units"])
        ops = op_placement(plan, unit)
        placement = f"ops: {ops.delegated} of {ops.total} non-constant ops prefer {unit} (MLComputePlan)"
    except Exception as err:  # MLComputePlan needs macOS 14.4+: the timing stands without it
        ops, placement = Ops.from_manifest(manifest.get("ops", {})), f"no MLComputePlan ({err})"
    frames = manifest["outputs"][0]["shape"][2]
    return Record(
        model=Path(manifest["student"]["checkpoint"]).name, model_sha256=manifest["student"].get("sha256", ""),
        artifact=manifest["name"], artifact_sha256=manifest["sha256"], device=device_id, runtime="coreml",
        runtime_version=f"coremltools {ct.__version__}", precision=manifest["precision"],
        precision_meaning=precision_meaning("coreml", manifest["precision"]), compute_unit=unit, input_shape=shape,
        frames=frames, latency=latency, fps=frames / latency.median_ms * 1000,
        source="measured-device-app", runs=runs, warmup=warmup, threads=None, first_load_ms=timed["first_load_ms"],
        warm_load_ms=timed["warm_load_ms"], first_inference_ms=timed["first_inference_ms"],
        peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        memory_method="ru_maxrss of the profiling process (bytes on macOS; includes Python and coremltools)",
        **mac_identity(), ops=ops,
        notes=f"coremltools predict on this Mac, compute units {COREML_UNITS[unit]}; only predict is timed; {placement}")


def profile_coreai_mac(artifact_dir: Path, device_id: str, unit: str = "ane", runs: int = 20,
                       warmup: int = 5) -> Record:
    """Measure one Core AI artifact on this Mac (macOS 27, OS runtime): load specialised for `unit` (first,
    then warm), first call, warm-up, timed calls; returns its record (not yet saved)."""
    import resource
    from importlib.metadata import version

    import torch

    from turbovaed.export.core import backend_module

    manifest = one_manifest(artifact_dir)
    if manifest["backend"] != "coreai":
        raise InputError(f"{manifest['name']} is a {manifest['backend']} artifact, not Core AI")
    if runs < 2 or warmup < 0:
        raise InputError("--runs must be >= 2 and --warmup >= 0")
    coreai = backend_module("coreai")
    path = manifest["_dir"] / manifest["artifact"]
    first_load_ms = coreai.Loaded(path, unit).load_ms  # specialises for the unit on this Mac
    loaded = coreai.Loaded(path, unit)
    gen = torch.Generator().manual_seed(0)
    # latents are random; a streaming graph's `first` flag and states start as on a first chunk
    xs = [torch.randn(i["shape"], generator=gen) if i["name"] == "latents" else
          torch.ones(i["shape"]) if i["name"] == "first" else torch.zeros(i["shape"]) for i in manifest["inputs"]]
    feed = loaded.feed(*xs)
    timed = time_calls(lambda: loaded.call(feed), runs, warmup)
    latency = Latency.from_times_ms(timed["times"])
    frames = manifest["outputs"][0]["shape"][2]
    return Record(
        model=Path(manifest["student"]["checkpoint"]).name, model_sha256=manifest["student"].get("sha256", ""),
        artifact=manifest["name"], artifact_sha256=manifest["sha256"], device=device_id, runtime="coreai",
        runtime_version=f"Core AI OS runtime ({mac_identity()['os_version']}; coreai-core {version('coreai-core')})",
        precision=manifest["precision"], precision_meaning=precision_meaning("coreai", manifest["precision"]),
        compute_unit=unit, input_shape=manifest["inputs"][0]["shape"], frames=frames, latency=latency,
        fps=frames / latency.median_ms * 1000, source="measured-device-app", runs=runs, warmup=warmup, threads=None,
        first_load_ms=first_load_ms, warm_load_ms=loaded.load_ms, first_inference_ms=timed["first_ms"],
        peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        memory_method="ru_maxrss of the profiling process (bytes on macOS; includes Python and coreai)",
        **mac_identity(), ops=Ops.from_manifest(manifest.get("ops", {})),
        notes=f"Core AI OS runtime on this Mac, specialised with {unit} as the preferred compute unit; only the "
              "function call is timed; op placement is not reported by Core AI's Python API (ops: the exported graph)")


def time_calls(call, runs: int, warmup: int) -> dict:
    """The first call, warm-up (the first call counts as one), then `runs` timed calls (ms)."""
    import time

    t0 = time.perf_counter()
    call()
    first = (time.perf_counter() - t0) * 1000
    for _ in range(max(0, warmup - 1)):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return {"first_ms": first, "times": times}


def require_runner(phone: Phone, backend: str, runner_dir: str) -> str:
    """The runner's path on the phone; one clear error if it is not there."""
    tool = backends.get(backend).phone_runner
    runner = f"{runner_dir.rstrip('/')}/{tool}"
    if adb(["shell", f"ls {runner} >/dev/null 2>&1 && echo found || echo missing"], phone.serial).strip() != "found":
        source = "LiteRT (tensorflow/lite/tools/benchmark)" if backend == "litert" else \
            "ExecuTorch (examples/portable/executor_runner, XNNPACK on)"
        raise InputError(f"{tool} is not on the phone at {runner}: build it for android-arm64 from "
                         f"{source} and `adb push` it there (or pass --runner-dir)")
    return runner


def run_on_phone(phone: Phone, backend: str, unit: str, runner: str, local: Path, remote: str, runs: int, warmup: int,
                 threads: int) -> tuple[list[str], dict]:
    """Push one artifact and time it with the runtime's own tool; (the command, its parsed output)."""
    adb(["push", str(local), remote], phone.serial)
    cmd = command(backend, unit, runner, remote, runs, warmup, threads)
    out = adb(["shell", " ".join(cmd)], phone.serial)
    return cmd, parse_benchmark_model(out) if backend == "litert" else parse_executor_runner(out, warmup)


def calibrate_device(device_id: str, unit: str = "cpu", serial: str | None = None, runs: int = 20, warmup: int = 5,
                     threads: int = 4, runner_dir: str = "/data/local/tmp", nets: list[str] | None = None,
                     out_dir: Path | None = None, coreml: bool = False) -> Path:
    """Calibration points for one device and unit: the calibration nets (calibration.NETS, at AI Hub's input
    sizes and smaller) exported by our own exporter and timed on the device — on an Android phone over adb by
    LiteRT's benchmark_model (XNNPACK CPU in fp32, or the GPU delegate, which computes in fp16); with `coreml`,
    on this Mac by coremltools (Core ML fp16 packages on ane / gpu / cpu). Written atomically to
    OUT_DIR/DEVICE-UNIT-RUNTIME.json; the estimates use them from then on (a device with enough points gets a
    fit of its own). Returns the file."""
    import json
    import tempfile
    import time

    import numpy as np

    from turbovaed.io import atomic_file
    from turbovaed.profile import calibration

    backend = "coreml" if coreml else "litert"
    if coreml:
        _require_mac(unit, runs, warmup)
    elif unit not in backends.get("litert").phone_units:
        raise InputError(f"phones are calibrated here on LiteRT's cpu or gpu, not {unit}")
    unknown = sorted(set(nets or []) - set(calibration.NETS))
    if unknown:
        raise InputError(f"unknown calibration nets {unknown}; known: {', '.join(calibration.NETS)}")
    if coreml:
        where = " ".join(mac_identity().values())
    else:
        phone = connect(serial)
        runner = require_runner(phone, "litert", runner_dir)
        where = f"{phone.model} ({phone.soc}, {phone.os_version}), adb serial {phone.serial}"
    when = time.strftime("%Y-%m-%d", time.gmtime())
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in nets or list(calibration.NETS):
            for size in calibration.sizes(name, smallest=64):
                chw = (3, size, size)
                local = calibration.export_net(name, chw, backend, "fp16" if coreml else "fp32",
                                               Path(tmp) / f"{name}-{size}")
                if coreml:
                    feed = {"x": np.random.default_rng(0).random((1, *chw), dtype=np.float32)}
                    ms = statistics.median(time_coreml(local, unit, feed, runs, warmup)["times"])
                    how = f"coremltools predict, compute units {COREML_UNITS[unit]}"
                else:
                    remote = f"{runner_dir.rstrip('/')}/turbovaed-calibration-{name}-{size}.tflite"
                    cmd, parsed = run_on_phone(phone, "litert", unit, runner, local, remote, runs, warmup, threads)
                    ms, how = parsed["latency"].median_ms, " ".join(cmd)
                points.append({"net": name, "input": list(chw), "device": device_id, "unit": unit,
                               "compute": "fp32" if unit == "cpu" and not coreml else "fp16", "runtime": backend,
                               "ms": ms, "source": f"measured {when} by `turbovaed profile calibrate` on {where}: {how}"})
    out = Path(out_dir or calibration.LOCAL_DIR) / f"{device_id}-{unit}-{backend}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp_file:
        tmp_file.write_text(json.dumps({"points": points}, indent=1) + "\n")
    return out


def profile_device(artifact_dir: Path, device_id: str, serial: str | None = None, unit: str = "cpu", runs: int = 20,
                   warmup: int = 5, threads: int = 4, runner_dir: str = "/data/local/tmp") -> Record:
    """Measure one exported artifact on the attached phone (or, for Core ML, on this Mac); returns its record
    (not yet saved)."""
    manifest = one_manifest(artifact_dir)
    backend = manifest["backend"]
    if backend == "coreml":
        return profile_coreml_mac(artifact_dir, device_id, unit, runs, warmup)
    if backend == "coreai":
        return profile_coreai_mac(artifact_dir, device_id, unit, runs, warmup)
    spec = backends.get(backend)
    if spec.phone_runner is None or manifest["recipe"].get("delegate", "xnnpack") != "xnnpack":
        raise InputError(f"{manifest['name']} is a {backend} artifact; phones are measured here with LiteRT "
                         "(.tflite) and ExecuTorch XNNPACK (.pte) artifacts")
    if unit not in spec.phone_units:
        raise InputError(f"{backend} artifacts run on {', '.join(spec.phone_units)} here, not {unit}")
    if runs < 2 or warmup < 0 or threads < 1:
        raise InputError("--runs must be >= 2, --warmup >= 0 and --threads >= 1")
    phone = connect(serial)
    runner = require_runner(phone, backend, runner_dir)
    remote = f"{runner_dir.rstrip('/')}/turbovaed-{manifest['sha256'][:12]}{Path(manifest['artifact']).suffix}"
    cmd, parsed = run_on_phone(phone, backend, unit, runner, manifest["_dir"] / manifest["artifact"], remote, runs,
                               warmup, threads)
    frames = manifest["outputs"][0]["shape"][2]
    lat = parsed["latency"]
    return Record(
        model=Path(manifest["student"]["checkpoint"]).name, model_sha256=manifest["student"].get("sha256", ""),
        artifact=manifest["name"], artifact_sha256=manifest["sha256"], device=device_id,
        runtime="litert" if backend == "litert" else "executorch",
        runtime_version=f"{spec.phone_runner} on the phone (converter: " + manifest["tool_versions"].get(
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
