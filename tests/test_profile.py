"""Profiling: record schema, device catalog, interleaved host measurement, estimates, import and report."""

import json
import re
from pathlib import Path

import pytest

from turbovaed.export.core import export
from turbovaed.io import InputError
from turbovaed.profile import schema
from turbovaed.profile.devices import load_catalog
from turbovaed.profile.host import estimate_records, find_manifests, profile_artifacts
from turbovaed.profile.report import write_report

REQUIRED_DEVICES = {"iphone-15-pro", "iphone-16-pro", "pixel-8", "pixel-9", "galaxy-s24", "galaxy-s25", "mac-m2",
                    "raspberry-pi-5", "host"}


def test_catalog_has_the_target_devices_with_sourced_numbers():
    catalog = load_catalog()
    assert REQUIRED_DEVICES <= set(catalog)
    for device in catalog.values():
        assert device.units, device.id
        for unit in device.units.values():
            assert unit.bandwidth_gbs > 0 and len(unit.source) > 20
            assert unit.peak_gflops("fp32") > 0 and unit.peak_gflops("int8") >= unit.peak_gflops("fp32") * 0.99


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, student_dir, exported):
    """Real artifacts of the test student: ExecuTorch fp32 + int8, ONNX fp32 (copies of the session's shared
    exports), and an ONNX streaming step graph."""
    import shutil

    from test_export import recipe_for

    out = tmp_path_factory.mktemp("artifacts")
    for backend, precision in [("executorch", "fp32"), ("executorch", "int8"), ("onnx", "fp32")]:
        folder = exported(backend, precision)[1]
        shutil.copytree(folder, out / folder.name)
    export(recipe_for("onnx", "fp32", name="t-onnx-stream",
                      shape={"latent_frames": 2, "height": 32, "width": 32, "stream_chunk": 1}), student_dir, out)
    return out


def test_host_profile_measures_every_runtime_interleaved_and_records_validate(artifacts, tmp_path):
    records, skipped = profile_artifacts(artifacts, runs=5, warmup=1, threads=2)
    by_artifact = {r.artifact: r for r in records}
    assert {"t-executorch-fp32", "t-executorch-int8", "t-onnx-fp32", "t-onnx-stream", "eager"} <= set(by_artifact)
    assert len([r for r in records if r.runtime == "pytorch"]) == 2  # one eager baseline per input shape
    catalog = set(load_catalog())
    for r in records:
        again = schema.validate(json.loads(json.dumps(r.to_dict())), catalog)  # what a reader of the file gets
        assert again.source == "measured-host" and again.runs == 5 and again.threads == 2
        assert again.latency.p10_ms <= again.latency.median_ms <= again.latency.p90_ms
        assert again.fps == pytest.approx(again.frames / again.latency.median_ms * 1000)
    assert by_artifact["t-executorch-fp32"].ops.delegated > 0 and by_artifact["t-executorch-fp32"].artifact_sha256
    eager = by_artifact["eager"]
    assert eager.ops.delegated is None and eager.ops.total is None  # no op counts borrowed from an artifact
    for r in records:  # each loaded in its own process: its own load, first call and peak memory
        assert r.status == "ok" and r.first_load_ms > 0 and r.warm_load_ms > 0 and r.first_inference_ms > 0
        assert r.peak_memory_mb is not None and "own process" in r.notes and "VmHWM" in r.memory_method
        assert r.precision_meaning.startswith("W") and r.os_version and r.soc
    assert by_artifact["t-executorch-int8"].precision_meaning.startswith("W8A8")
    assert by_artifact["t-onnx-stream"].input_shape[2] == 1 and "streaming" in by_artifact["t-onnx-stream"].notes
    schema.save(records, "host", tmp_path)
    assert len(schema.load_all(tmp_path, catalog)) == len(records)


def test_a_broken_artifact_is_recorded_as_failed_and_the_others_still_measure(artifacts, tmp_path):
    """Artifacts run in their own processes: one that cannot load (here a truncated .pte) becomes a
    status = 'failed' record with the runtime's error, and does not take the others down."""
    import shutil

    folder = tmp_path / "arts"
    for name in ("t-executorch-fp32", "t-onnx-fp32"):
        shutil.copytree(artifacts / name, folder / name)
    pte = folder / "t-executorch-fp32" / "decoder.pte"
    pte.write_bytes(pte.read_bytes()[:200])
    records, _ = profile_artifacts(folder, runs=3, warmup=1, threads=1, eager=False)
    by_artifact = {r.artifact: r for r in records}
    broken, fine = by_artifact["t-executorch-fp32"], by_artifact["t-onnx-fp32"]
    assert broken.status == "failed" and broken.error and broken.latency is None
    assert fine.status == "ok" and fine.latency.median_ms > 0
    schema.validate(json.loads(json.dumps(broken.to_dict())), set(load_catalog()))


def test_executorch_runner_gets_the_thread_count(artifacts):
    import torch
    from executorch.extension.pybindings import portable_lib

    from turbovaed.export import executorch_backend

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        executorch_backend.runner(artifacts / "t-executorch-fp32" / "decoder.pte")
        assert portable_lib._threadpool_get_thread_count() == 1
    finally:
        torch.set_num_threads(before)


def test_estimates_are_labelled_and_host_estimate_is_compared_with_measurement(artifacts, capsys):
    manifests = find_manifests(artifacts)
    catalog = load_catalog()
    estimates = estimate_records(manifests, catalog)
    assert {r.source for r in estimates} == {"estimate"} and all(r.estimate["macs"] > 0 for r in estimates)
    assert REQUIRED_DEVICES <= {r.device for r in estimates}
    assert any(r.compute_unit == "cpu" for r in estimates if r.device == "host")
    measured, _ = profile_artifacts(artifacts / "t-executorch-fp32", runs=5, warmup=1, threads=2, eager=False)
    est = next(r for r in estimates if r.device == "host" and r.artifact == "t-executorch-fp32")
    ratio = measured[0].latency.median_ms / est.latency.median_ms
    with capsys.disabled():
        print(f"\nhost ExecuTorch fp32: measured {measured[0].latency.median_ms:.2f} ms, calibrated estimate "
              f"{est.latency.median_ms:.2f} ms, measured/estimate = {ratio:.2f}x")
    assert 0.1 < ratio < 30  # sanity only: the figure is reported, the 3x target is checked by benchmarks


GOOD = {"model": "other-student", "model_sha256": "ab", "artifact": "android-executorch-int8", "artifact_sha256": "cd",
        "device": "pixel-8", "runtime": "executorch", "runtime_version": "1.5.1", "precision": "int8",
        "compute_unit": "cpu/xnnpack", "input_shape": [1, 16, 3, 16, 16], "frames": 9,
        "latency": {"median_ms": 20.0, "p10_ms": 18.0, "p90_ms": 25.0}, "fps": 450.0,
        "source": "measured-device-app", "runs": 20, "warmup": 3}


@pytest.mark.parametrize("change,field", [
    ({"device": "nokia-3310"}, "device"), ({"source": "guess"}, "source"), ({"fps": "fast"}, "fps"),
    ({"latency": {"median_ms": 20.0, "p10_ms": 30.0, "p90_ms": 25.0}}, "latency"), ({"colour": 1}, "colour"),
    ({"input_shape": [1, "a"]}, "input_shape[1]"), ({"runs": 0}, "runs"), ({"latency": {"median_ms": 1.0}}, "latency.p10_ms"),
])
def test_bad_records_fail_naming_the_field(change, field):
    with pytest.raises(InputError, match=re.escape(f"'{field}'" if field not in ("latency", "runs") else field)):
        schema.validate({**GOOD, **change}, set(load_catalog()))
    missing = dict(GOOD)
    del missing["precision"]
    with pytest.raises(InputError, match="'precision'"):
        schema.validate(missing)


def test_cli_import_report_and_bad_inputs(artifacts, tmp_path):
    from test_cli import run

    results = tmp_path / "results"
    good = tmp_path / "pixel.json"
    good.write_text(json.dumps(GOOD))
    r = run("profile", "import", str(good), "--results", str(results))
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**GOOD, "device": "nokia-3310"}))
    r = run("profile", "import", str(bad), "--results", str(results))
    assert r.returncode == 2 and "'device'" in r.stderr and "Traceback" not in r.stderr
    r = run("profile", str(tmp_path / "results"), "--results", str(results))  # a folder without manifests
    assert r.returncode == 2 and "manifest.json" in r.stderr
    r = run("profile", str(artifacts), "--runs", "3", "--results", str(results))
    assert r.returncode == 0, r.stderr
    assert "t-executorch-int8" in r.stdout and "vs eager" in r.stdout
    host_estimates = [x for x in schema.load_all(results) if x.source == "estimate" and x.device == "host"]
    assert host_estimates and all("by `turbovaed profile` on this machine" in x.estimate["unit_source"]
                                  for x in host_estimates)  # measured where the profile runs, not copied
    report = write_report(artifacts, tmp_path / "report", results)
    for name in ("report.md", "report.html", "latency.png", "quality_vs_size.png", "frames.png"):
        assert (tmp_path / "report" / name).stat().st_size > 500, name
    md = (tmp_path / "report" / "report.md").read_text()
    assert "(est.)" in md and "| host | measured-host |" in md
    assert re.search(r"\(est\.\) \S+ \S+ on (cpu|gpu|ane|npu)", report["table"])  # each cell names its compute unit
    assert "the student trained on synthetic clips only" in md  # the frames say which clip, and why
    deploy = md.split("## Students at deployment sizes (estimated)", 1)[1].split("\n## ", 1)[0]
    for size in ("512x512 x", "480p x", "720p x"):  # the selected student at deployment sizes, per device
        assert size in deploy, deploy
    assert "galaxy-s24 FPS" in deploy  # calibrated estimates, each with its unit and leave-one-out error
    assert re.search(r"\d \S+ \S+ on (cpu|gpu|ane|npu) \(est\., LOO \d\.\dx\)", deploy), deploy
    assert "## Calibration (leave-one-out)" in md and "ai-hub-models" in md
    assert "| pixel-8 | measured-device-app |" not in md  # the imported record is another model's
    assert "<table>" in (tmp_path / "report" / "report.html").read_text() and report["table"].startswith("| student")


def test_records_belong_to_a_student_by_weights_not_folder_name():
    """A new student in a folder of the same name must not inherit the old student's records."""
    from turbovaed.profile import report, schema

    old = schema.load_all(Path(__file__).resolve().parents[1] / "profiles" / "results")
    assert old and all(r.model_sha256 for r in old) and {r.model for r in old} == {"student"}
    base = {"checkpoint": "/elsewhere/student", "params": 110_000, "config": {"latent_channels": 16}}
    frame_rule = {"spatial_ratio": 8, "temporal_ratio": 4}
    host_cell = lambda table: table.splitlines()[-1].split("|")[6].strip()  # noqa: E731
    same = report.headline([{"student": {**base, "sha256": old[0].model_sha256}, "frame_rule": frame_rule}], old,
                           ["host"])
    other = report.headline([{"student": {**base, "sha256": "0" * 64}, "frame_rule": frame_rule}], old, ["host"])
    assert host_cell(same) != "-"  # the same weights find their host record
    assert host_cell(other) == "-"  # same folder name, other weights: nothing merged in


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    """`adb` on PATH is a stand-in replaying the tools' documented output (no phone is attached here)."""
    import os
    import shutil
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).parent / 'fixtures' / 'fake_adb.py'} \"$@\"\n")
    adb.chmod(0o755)
    log = tmp_path / "adb.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    assert shutil.which("adb") == str(adb)
    return log


def litert_stand_in(artifacts, tmp_path):
    """The ExecuTorch test artifact relabelled as a LiteRT one: the phone runner's plumbing is under test
    here, not the converter (which test_export covers)."""
    import shutil

    folder = tmp_path / "t-litert-fp32"
    shutil.copytree(artifacts / "t-executorch-fp32", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / manifest["artifact"]).rename(folder / "decoder.tflite")
    manifest.update(name="t-litert-fp32", backend="litert", artifact="decoder.tflite")
    manifest["recipe"].update(backend="litert", name="t-litert-fp32")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_profile_device_runs_the_runtime_benchmark_tools_over_adb(artifacts, tmp_path, fake_adb):
    from test_cli import run

    from turbovaed.profile.device import profile_device

    lite = litert_stand_in(artifacts, tmp_path)
    record = profile_device(lite, "galaxy-s24", runs=20, warmup=5, threads=4)
    assert record.source == "measured-device-app" and record.hw_model == "samsung SM-S921B"
    assert record.soc == "SM8650" and record.os_version == "Android 15 (API 35)"
    assert record.latency.median_ms == pytest.approx(3.004) and record.latency.p10_ms == pytest.approx(2.951)
    assert record.first_load_ms == pytest.approx(21.4) and record.first_inference_ms == pytest.approx(5.123)
    assert record.peak_memory_mb == pytest.approx(24.9) and record.runs == 20 and record.compute_unit == "cpu/xnnpack"
    calls = fake_adb.read_text()
    assert "--num_runs=20" in calls and "--warmup_runs=5" in calls and "--num_threads=4" in calls
    assert "push" in calls and "--use_xnnpack=true" in calls
    gpu = profile_device(lite, "galaxy-s24", unit="gpu", runs=20, warmup=5, threads=4)
    assert gpu.compute_unit == "gpu" and "--use_gpu=true" in fake_adb.read_text()

    et = profile_device(artifacts / "t-executorch-fp32", "pixel-8", runs=10, warmup=3, threads=2)
    assert et.runs == 10 and et.first_load_ms == pytest.approx(18.25) and et.first_inference_ms == pytest.approx(9.5)
    assert 4.0 <= et.latency.p10_ms <= et.latency.median_ms <= et.latency.p90_ms <= 4.4  # warm-up iterations dropped
    assert "--num_executions=13" in fake_adb.read_text() and "--cpu_threads=2" in fake_adb.read_text()
    schema.validate(json.loads(json.dumps(et.to_dict())), set(load_catalog()))

    results = tmp_path / "results"
    r = run("profile", "device", str(lite), "--device", "galaxy-s24", "--runs", "20", "--results", str(results))
    assert r.returncode == 0, r.stderr
    (saved,) = schema.load_all(results, set(load_catalog()))
    assert saved.device == "galaxy-s24" and saved.soc == "SM8650"


@pytest.mark.parametrize("mode,message", [
    ("none", "no Android device attached"), ("unauthorized", "unauthorized"),
    ("no-runner", "benchmark_model is not on the phone"), ("garbage", "could not parse benchmark_model output"),
])
def test_profile_device_bad_situations_fail_clearly_and_record_nothing(artifacts, tmp_path, fake_adb, monkeypatch,
                                                                        mode, message):
    from test_cli import run

    monkeypatch.setenv("FAKE_ADB_MODE", mode)
    results = tmp_path / "results"
    r = run("profile", "device", str(litert_stand_in(artifacts, tmp_path)), "--device", "galaxy-s24",
            "--results", str(results))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not results.exists() or not list(results.glob("*.json"))


def test_profile_device_without_adb_fails_clearly(artifacts, tmp_path, monkeypatch):
    from test_cli import run

    monkeypatch.setenv("PATH", str(tmp_path))  # no adb anywhere
    r = run("profile", "device", str(artifacts / "t-executorch-fp32"), "--device", "pixel-8")
    assert r.returncode == 2 and "adb is not on PATH" in r.stderr, r.stderr


def test_estimates_move_activations_at_the_compute_dtype():
    """W4A16 / W8A16 weight-only artifacts and GPU/ANE units move 2-byte activations; only W8A8 CPU artifacts
    move 1-byte ones (the old estimate gave every int4/int8 artifact 1-byte activations)."""
    from turbovaed.presets import family_preset
    from turbovaed.profile.estimate import costs_of, device_estimates

    costs = costs_of(family_preset(16, 8, 4, mini=True), (3, 16, 16))
    catalog = load_catalog()
    for precision in ("int4", "int8", "palettize4"):
        for unit, est in device_estimates(catalog["iphone-16-pro"], costs, "coreml", precision, {}).items():
            assert est["activation_bits"] == 16 and est["compute"] == "fp16", (precision, unit)
    s24 = device_estimates(catalog["galaxy-s24"], costs, "litert", "int8", {})
    assert s24["cpu"]["activation_bits"] == 8 and s24["gpu"]["activation_bits"] == 16
    assert device_estimates(catalog["galaxy-s24"], costs, "litert", "int4", {})["cpu"]["activation_bits"] == 32


def test_catalog_is_consistent_with_its_own_derivations():
    """Newer SoCs are not listed slower than older ones, CPU peaks equal the derivation in their source,
    and the NPU rows are used (W8A8 LiteRT/ONNX artifacts on phones with an NPU)."""
    from turbovaed.presets import family_preset
    from turbovaed.profile.estimate import costs_of, device_estimates

    c = load_catalog()
    assert c["galaxy-s25"].units["gpu"].peak_gflops("fp32") > c["galaxy-s24"].units["gpu"].peak_gflops("fp32")
    assert c["galaxy-s25"].units["cpu"].peak_gflops("fp32") == pytest.approx((2 * 4.32 + 6 * 3.53) * 32, rel=0.01)
    assert c["mac-m2"].units["cpu"].peak_gflops("fp32") == pytest.approx(4 * 3.49 * 32 + 4 * 2.42 * 16, rel=0.01)
    costs = costs_of(family_preset(16, 8, 4, mini=True), (3, 16, 16))
    assert "npu" in device_estimates(c["galaxy-s24"], costs, "litert", "int8", {})
    assert "npu" not in device_estimates(c["galaxy-s24"], costs, "litert", "int4", {})  # weight-only: not an NPU graph


def test_calibration_nets_are_the_published_architectures():
    """The nets the estimates are calibrated on have AI Hub's stated parameter counts (QuickSRNet-S 33.3K,
    -L 436K, Real-ESRGAN-General-x4v3 1.21M) and MobileNet-v2's 3.5M params / 300M MACs at 224x224."""
    from turbovaed.profile import calibration

    params = {name: sum(p.numel() for p in make().parameters()) for name, make in calibration.NETS.items()}
    assert round(params["quicksrnet-small"], -2) == 33_300
    assert round(params["quicksrnet-large"], -3) == 436_000
    assert round(params["real-esrgan-general-x4v3"], -4) == 1_210_000
    assert round(params["mobilenet-v2"], -5) == 3_500_000
    macs = sum(c["macs"] for c in calibration.net_costs("mobilenet-v2", (3, 224, 224)))
    assert macs == pytest.approx(300e6, rel=0.01)


def test_relative_nnls_recovers_coefficients_and_stays_non_negative():
    import numpy as np

    from turbovaed.profile.calibration import fit_points, nnls_relative

    rows = [(n, r, 2e-4 + 5e-6 * n + 1.5 * r) for n, r in [(5, 1e-4), (16, 8e-4), (70, 4e-3), (64, 5e-4), (30, 2e-3)]]
    fit = fit_points("test", rows)
    assert (fit.per_call_s, fit.per_op_s, fit.k) == pytest.approx((2e-4, 5e-6, 1.5), rel=1e-6)
    x = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    b = nnls_relative(x, np.array([3.0, 2.0, 1.0]))  # the unconstrained slope is negative
    assert (b >= 0).all() and b[1] == 0


def test_calibration_meets_its_target_on_the_committed_points():
    """Every committed calibration point, predicted by the fit made without it, lands within 2x of its
    measurement (the issue's target), and the NPU classes rest on published AI Hub points with sources."""
    from turbovaed.profile import calibration

    table = calibration.leave_one_out()
    assert {"npu-int8", "npu-fp16", "cpu-fp32-xnnpack", "cpu-int8-xnnpack", "cpu-fp32-onnxruntime",
            "cpu-int8-onnxruntime"} <= {r["class"] for r in table}
    bad = [(r["point"], round(r["loo_ratio"], 2)) for r in table if not 0.5 <= r["loo_ratio"] <= 2.0]
    assert not bad, bad
    assert all("ai-hub-models" in r["source"] for r in table if r["unit"] == "npu")


def test_estimates_are_calibrated_where_a_class_has_points_and_labelled_bounds_elsewhere():
    from turbovaed.presets import family_preset
    from turbovaed.profile import calibration
    from turbovaed.profile.estimate import costs_of, device_estimates

    fits = calibration.fits()
    costs = costs_of(family_preset(16, 8, 4, mini=True), (5, 64, 64))
    s24 = device_estimates(load_catalog()["galaxy-s24"], costs, "litert", "int8", fits)
    npu, gpu = s24["npu"], s24["gpu"]
    fit = fits["npu-int8"]
    assert npu["calibration"]["class"] == "npu-int8" and npu["calibration"]["worst_leave_one_out_ratio"] <= 2
    assert npu["seconds"] == pytest.approx(fit.predict(npu["ops"], npu["roofline_seconds"]))
    assert npu["seconds"] >= fit.per_call_s > 0  # a per-call cost: tiny inputs no longer get absurd FPS
    assert gpu["calibration"] is None and gpu["seconds"] == gpu["roofline_seconds"]  # no GPU points: a bound


def test_bad_calibration_point_fails_clearly(tmp_path):
    from turbovaed.profile import calibration

    (tmp_path / "points.toml").write_text('[[points]]\nnet = "quicksrnet-small"\ninput = [3, 128, 128]\n'
                                          'device = "galaxy-s24"\nunit = "npu"\ncompute = "int4"\n'
                                          'runtime = "litert"\nms = 0.2\nsource = "x"\n')
    with pytest.raises(InputError, match="compute 'int4'"):
        calibration.load_points(tmp_path)
    (tmp_path / "points.toml").write_text('[[points]]\nnet = "quicksrnet-small"\n')
    with pytest.raises(InputError, match="calibration point .* is invalid"):
        calibration.load_points(tmp_path)
    (tmp_path / "points.toml").write_text('[[points]\n')
    with pytest.raises(InputError, match="does not parse"):
        calibration.load_points(tmp_path)


@pytest.fixture
def coreml_stand_in(artifacts, tmp_path, monkeypatch):
    """A Core ML artifact folder (manifest only) and stand-ins for what only macOS has: coremltools' MLModel
    prediction, MLComputePlan and sysctl. Returns (folder, calls)."""
    import platform

    import coremltools as ct
    from coremltools.models import compute_plan
    from coremltools.models.compute_device import MLGPUComputeDevice, MLNeuralEngineComputeDevice

    from turbovaed.profile import device

    folder = tmp_path / "t-coreml-fp16"
    folder.mkdir()
    manifest = json.loads((artifacts / "t-executorch-fp32" / "manifest.json").read_text())
    manifest.update(name="t-coreml-fp16", backend="coreml", precision="fp16", artifact="decoder.mlpackage",
                    recipe={**manifest["recipe"], "delegate": "coreml"})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    calls = {"loads": [], "predicts": 0}
    real = ct.models.MLModel

    class Model:
        def __new__(cls, path, compute_units=None, **kwargs):
            if kwargs:  # the converter building its result (Linux can convert, not predict): the real class
                return real(path, compute_units=compute_units, **kwargs)
            return super().__new__(cls)

        def __init__(self, path, compute_units=None, **kwargs):
            calls["loads"].append((path, compute_units))

        def predict(self, feed):
            calls["predicts"] += 1
            calls.setdefault("feeds", []).append({k: list(v.shape) for k, v in feed.items()})

        def get_compiled_model_path(self):
            return "/compiled.mlmodelc"

    def op(name, dev):
        return type("Op", (), {"operator_name": name, "dev": dev})()

    class Plan:
        ops = [op("const", None), op("conv", MLNeuralEngineComputeDevice), op("conv", MLNeuralEngineComputeDevice),
               op("silu", MLGPUComputeDevice)]
        model_structure = type("S", (), {"program": type("P", (), {"functions": {
            "main": type("F", (), {"block": type("B", (), {"operations": ops})()})()}})()})()

        def get_compute_device_usage_for_mlprogram_operation(self, o):
            usage = compute_plan.MLComputePlanDeviceUsage.__new__(compute_plan.MLComputePlanDeviceUsage)
            object.__setattr__(usage, "preferred_compute_device", o.dev.__new__(o.dev))
            return usage

    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(ct.models, "MLModel", Model)
    monkeypatch.setattr(compute_plan.MLComputePlan, "load_from_path", staticmethod(lambda path, compute_units: Plan()))
    monkeypatch.setattr(device, "mac_identity", lambda: {"hw_model": "Mac14,2", "soc": "Apple M2", "os_version": "macOS 15.1"})
    return folder, calls


def test_profile_device_times_core_ml_prediction_on_a_mac(coreml_stand_in):
    """The macOS path through stand-ins (this machine is Linux, Core ML cannot predict here): two loads (first,
    warm), the first call + warm-up + timed predictions only, op placement from MLComputePlan (constants
    not counted), a schema-valid record."""
    import coremltools as ct

    from turbovaed.profile.device import profile_device

    folder, calls = coreml_stand_in
    record = profile_device(folder, "mac-m2", unit="ane", runs=7, warmup=3)
    assert [u for _, u in calls["loads"]] == [ct.ComputeUnit.CPU_AND_NE] * 2
    assert calls["predicts"] == 3 + 7 and record.runs == 7 and record.warmup == 3
    assert calls["feeds"][0] == {"latents": json.loads((folder / "manifest.json").read_text())["inputs"][0]["shape"]}
    assert (record.ops.delegated, record.ops.total) == (2, 3)
    assert record.first_load_ms is not None and record.warm_load_ms is not None and record.first_inference_ms is not None
    assert (record.runtime, record.compute_unit, record.soc) == ("coreml", "ane", "Apple M2")
    again = schema.validate(json.loads(json.dumps(record.to_dict())), set(load_catalog()))
    assert again.source == "measured-device-app"


def test_profile_device_core_ml_off_macos_fails_clearly(coreml_stand_in, monkeypatch):
    import platform

    from turbovaed.profile.device import profile_device

    folder, calls = coreml_stand_in
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    with pytest.raises(InputError, match="Core ML predicts only on macOS"):
        profile_device(folder, "mac-m2", unit="ane")
    assert calls["loads"] == []


def test_dispatched_op_count_matches_the_exported_graph(artifacts):
    """The per-op term of the calibration multiplies the operators a runtime dispatches: counted on the
    meta device, the student's count is within 10% of its exported ONNX graph's node count."""
    from turbovaed.profile.estimate import costs_of
    from turbovaed.student import StudentConfig

    manifest = json.loads((artifacts / "t-onnx-fp32" / "manifest.json").read_text())
    costs = costs_of(StudentConfig.from_dict(manifest["student"]["config"]), tuple(manifest["inputs"][0]["shape"][2:]))
    onnx_nodes = manifest["ops"]["total"]
    assert abs(costs.ops - onnx_nodes) <= 0.1 * onnx_nodes, (costs.ops, manifest["ops"]["op_types"])


def test_profile_calibrate_times_the_calibration_nets_on_a_phone(tmp_path, fake_adb):
    """`turbovaed profile calibrate` through the stand-in adb (no phone here): the nets are exported by our LiteRT
    exporter, pushed, timed by benchmark_model on the chosen unit, and written as points the fits then use."""
    from turbovaed.profile import calibration
    from turbovaed.profile.device import calibrate_device

    path = calibrate_device("galaxy-s24", unit="gpu", runs=20, warmup=5, nets=["quicksrnet-small"], out_dir=tmp_path)
    points = json.loads(path.read_text())["points"]
    assert path.name == "galaxy-s24-gpu-litert.json" and [p["input"] for p in points] == [[3, 128, 128], [3, 64, 64]]
    assert all(p["unit"] == "gpu" and p["compute"] == "fp16" and p["ms"] == pytest.approx(3.004) for p in points)
    assert "samsung SM-S921B" in points[0]["source"] and "--use_gpu=true" in fake_adb.read_text()
    assert fake_adb.read_text().count("push ") == 2
    loaded = calibration.load_points(calibration.POINTS_DIR, tmp_path)
    fits = calibration.fits(loaded)
    assert "gpu-fp16-litert" in fits  # the phone's GPU now has a calibration class
    from turbovaed.presets import family_preset
    from turbovaed.profile.estimate import costs_of, device_estimates
    from turbovaed.profile.host import estimate_note

    costs = costs_of(family_preset(16, 8, 4, mini=True), (3, 16, 16))
    gpu = device_estimates(load_catalog()["galaxy-s24"], costs, "litert", "fp32", fits)["gpu"]
    assert "2 points, worst leave-one-out not computable" in estimate_note(gpu)  # too few to leave one out
    with pytest.raises(InputError, match="unknown calibration nets"):
        calibrate_device("galaxy-s24", nets=["resnet-9000"], out_dir=tmp_path)


def test_profile_calibrate_times_core_ml_packages_on_a_mac(coreml_stand_in, tmp_path):
    """The Mac path through stand-ins of coremltools (Core ML cannot predict here): the nets are converted by our
    Core ML exporter and only `predict` is timed, on the Neural Engine here; the points give the ANE a class."""
    from turbovaed.profile import calibration
    from turbovaed.profile.device import calibrate_device

    _, calls = coreml_stand_in
    path = calibrate_device("mac-m2", unit="ane", runs=4, warmup=2, nets=["quicksrnet-small"], out_dir=tmp_path,
                            coreml=True)
    points = json.loads(path.read_text())["points"]
    assert path.name == "mac-m2-ane-coreml.json" and len(points) == 2 and calls["predicts"] == 2 * (2 + 4)
    assert all(p["unit"] == "ane" and p["compute"] == "fp16" and p["runtime"] == "coreml" and p["ms"] >= 0
               for p in points)
    assert all(path_.endswith(".mlpackage") for path_, _ in calls["loads"])
    assert "ane-fp16" in calibration.fits(calibration.load_points(calibration.POINTS_DIR, tmp_path))
