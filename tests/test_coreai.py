"""Apple Core AI: every precision converts with coreai-torch / coreai-opt and is verified by prediction on the
Core AI runtime that coreai-core's Linux wheel carries; streaming step graphs too; bad inputs are one clear
error. Skips, saying why, where the coreai extra is absent."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("coreai_torch", reason="the coreai extra is not installed: pip install 'turbovaed[coreai]'")
pytest.importorskip("coreai_opt", reason="the coreai extra is not installed: pip install 'turbovaed[coreai]'")
pytest.importorskip("coreai", reason="the coreai extra is not installed: pip install 'turbovaed[coreai]'")

from test_export import recipe_for  # noqa: E402

from turbovaed.export.core import BACKENDS, MIN_PSNR, export  # noqa: E402
from turbovaed.io import CheckpointError, InputError  # noqa: E402


@pytest.mark.parametrize("precision", list(BACKENDS["coreai"].precisions))
def test_every_core_ai_precision_runs_on_the_core_ai_runtime(tmp_path, student_dir, precision):
    manifest = export(recipe_for("coreai", precision), student_dir, tmp_path)
    n = manifest["numerics"]
    assert n["status"] == "pass" and n["psnr_db"] >= MIN_PSNR[precision], (n["psnr_db"], n)  # a prediction
    assert n["verified_by"].startswith("prediction on coreai (Linux CPU reference runtime") and "coreai-core" in \
        n["verified_by"]
    assert manifest["artifact"] == "decoder.aimodel" and manifest["precision_meaning"].startswith("W")
    assert manifest["inputs"][0] == {"name": "latents", "shape": [1, 4, 2, 4, 4],
                                     "dtype": "float32" if precision == "fp32" else "float16"}
    storage = manifest["ops"]["storage_types"]
    if precision == "int8":
        assert any(k.startswith("Int8") for k in storage), storage
    if precision in ("int4", "palettize4"):
        assert any("4" in k and not k.startswith(("Float", "Int32", "UInt32")) for k in storage), storage
    assert manifest["tool_versions"]["coreai-core"] == "1.0.0b3"
    assert list(tmp_path.iterdir()) == [tmp_path / manifest["name"]]


def test_compressed_core_ai_artifacts_are_smaller(tmp_path, student_dir):
    sizes = {p: export(recipe_for("coreai", p), student_dir, tmp_path)["bytes"] for p in ("fp32", "fp16", "int8", "int4")}
    assert sizes["fp32"] > sizes["fp16"] > sizes["int8"] > sizes["int4"], sizes


def test_core_ai_streaming_step_matches_the_whole_clip_decode(tmp_path, student_dir):
    recipe = recipe_for("coreai", "fp16", shape={"latent_frames": 3, "height": 32, "width": 32, "stream_chunk": 1})
    manifest = export(recipe, student_dir, tmp_path)
    n = manifest["numerics"]
    assert n["status"] == "pass" and n["psnr_db"] >= MIN_PSNR["fp16"] and "streamed 1 latent frame" in n["against"], n
    names = [i["name"] for i in manifest["inputs"]]
    assert names[:2] == ["latents", "first"] and len(names) == 2 + manifest["stream"]["states"]
    assert any("explicit inputs/outputs" in note for note in manifest["notes"])


def test_core_ai_bad_inputs_are_one_clear_error(tmp_path, student_dir):
    from turbovaed.export import coreai_backend

    (tmp_path / "not.aimodel").mkdir()
    with pytest.raises(CheckpointError, match="not a Core AI .aimodel folder"):
        coreai_backend.runner(tmp_path / "not.aimodel")
    manifest = export(recipe_for("coreai", "fp32"), student_dir, tmp_path / "out")
    run = coreai_backend.runner(tmp_path / "out" / manifest["name"] / manifest["artifact"])
    with pytest.raises(InputError, match="takes 1 inputs"):
        run(torch.zeros(1, 4, 2, 4, 4), torch.zeros(1))
    with pytest.raises(InputError, match=r"input 'latents' takes shape \[1, 4, 2, 4, 4\], got \[1, 4, 3, 4, 4\]"):
        run(torch.zeros(1, 4, 3, 4, 4))
    folder = tmp_path / "out" / manifest["name"]
    described = json.loads((folder / "manifest.json").read_text())
    described["inputs"][0]["shape"] = [1, 4, 3, 4, 4]
    (folder / "manifest.json").write_text(json.dumps(described))
    with pytest.raises(InputError, match="do not belong together"):
        coreai_backend.runner(folder / manifest["artifact"])
    with pytest.raises(InputError, match="has no precision 'int2'"):
        export(recipe_for("coreai", "int2"), student_dir, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() or list((tmp_path / "bad").iterdir()) == []


def test_missing_core_ai_extra_is_one_clear_message(monkeypatch):
    import importlib.util
    import sys

    from turbovaed.export import core

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "coreai_opt" else real(name, *a))
    monkeypatch.delitem(sys.modules, "turbovaed.export.coreai_backend", raising=False)
    with pytest.raises(core.MissingDependency, match=r"pip install 'turbovaed\[coreai\]'.*coreai_opt"):
        core.backend_module("coreai")


def test_shipped_core_ai_recipes(tmp_path):
    from turbovaed.export.core import ExportRecipe
    from turbovaed.recipes import load_toml

    recipes = {p.stem: load_toml(ExportRecipe, p) for p in (Path(__file__).parents[1] / "export").glob("*coreai*.toml")}
    assert {"iphone-coreai-fp16", "iphone-coreai-stream-fp16"} <= set(recipes)
    assert any(r.precision not in ("fp16", "fp32") for r in recipes.values())  # a compressed one
    assert all(r.backend == "coreai" and r.name == name for name, r in recipes.items())


def test_host_profile_records_the_core_ai_reference_runtime_as_such(tmp_path, student_dir):
    from turbovaed.profile.host import profile

    export(recipe_for("coreai", "fp16"), student_dir, tmp_path / "exports")
    result = profile(tmp_path / "exports", runs=2, warmup=1, threads=1, results_dir=tmp_path / "profiles")
    coreai = [r for r in result["measured"] if r.artifact == "t-coreai-fp16"]
    assert len(coreai) == 1 and coreai[0].status == "ok", coreai
    assert coreai[0].runtime == "coreai (Linux CPU reference runtime)" and coreai[0].source == "measured-host"
    assert coreai[0].runtime_version == "1.0.0b3" and coreai[0].latency.median_ms > 0


def test_apple_devices_get_core_ai_estimates_labelled_as_estimates(tmp_path, student_dir):
    from turbovaed.profile import devices
    from turbovaed.profile.host import estimate_records

    manifest = export(recipe_for("coreai", "int8"), student_dir, tmp_path)
    catalog = devices.load_catalog()
    records = estimate_records([manifest], {k: v for k, v in catalog.items() if k.startswith("iphone")})
    assert {(r.device, r.compute_unit) for r in records} >= {("iphone-16-pro", "ane"), ("iphone-16-pro", "cpu")}
    assert all(r.runtime == "coreai" and r.source == "estimate" for r in records)


def test_profile_device_times_core_ai_on_a_mac_through_a_stand_in(tmp_path, student_dir, monkeypatch):
    """The macOS 27 path through a stand-in (this machine is Linux: the OS runtime and its compute units exist
    only on macOS 27). The stand-in records the specialisation asked for and loads on this machine's
    reference runtime, so the real artifact is called: two loads (first, warm), first call + warm-up + timed
    calls, a schema-valid record with the unit."""
    import json
    import platform

    import coreai.runtime as rt
    from coreai.authoring.asset import AIModelAsset

    from turbovaed.profile import device, schema
    from turbovaed.profile.devices import load_catalog

    manifest = export(recipe_for("coreai", "fp16"), student_dir, tmp_path / "exports")
    folder = tmp_path / "exports" / manifest["name"]
    asked, real = [], AIModelAsset.executable

    kind = type("ComputeUnitKind", (), {k: staticmethod(lambda k=k: k) for k in ("neural_engine", "gpu", "cpu")})

    def executable(self, specialization_options=None):
        asked.append(specialization_options)
        return real(self, None)  # the reference runtime has no compute units

    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(rt, "ComputeUnitKind", kind, raising=False)
    monkeypatch.setattr(rt.SpecializationOptions, "is_supported", staticmethod(lambda: True))
    monkeypatch.setattr(rt.SpecializationOptions, "from_preferred_compute_unit_kind", staticmethod(lambda k: f"prefer {k}"))
    monkeypatch.setattr(AIModelAsset, "executable", executable)
    monkeypatch.setattr(device, "mac_identity", lambda: {"hw_model": "Mac14,2", "soc": "Apple M2", "os_version": "macOS 27.0"})
    record = device.profile_device(folder, "mac-m2", unit="ane", runs=3, warmup=2)
    assert asked == ["prefer neural_engine"] * 2
    assert (record.runtime, record.compute_unit, record.runs, record.warmup) == ("coreai", "ane", 3, 2)
    assert record.first_load_ms > 0 and record.warm_load_ms > 0 and record.first_inference_ms > 0
    assert "macOS 27.0" in record.runtime_version
    schema.validate(json.loads(json.dumps(record.to_dict())), set(load_catalog()))
    with pytest.raises(InputError, match="Core AI compute units are ane, gpu, cpu"):
        device.profile_device(folder, "mac-m2", unit="npu")


def test_profile_device_core_ai_off_macos_27_fails_clearly(tmp_path, student_dir):
    from turbovaed.profile.device import profile_device

    manifest = export(recipe_for("coreai", "fp16"), student_dir, tmp_path / "exports")
    with pytest.raises(InputError, match="only on macOS 27 with the OS Core AI runtime; this machine runs Linux"):
        profile_device(tmp_path / "exports" / manifest["name"], "mac-m2", unit="gpu")


def test_core_ai_app_bundle_has_what_the_ios_core_ai_path_reads(tmp_path, student_dir):
    """The iOS app's Core AI path (written, not compiled here: no Xcode) reads bundle.json's backend and
    artifact, the manifest's input dtype and output shape, and calls the function named "main" with input
    "latents" and output "frames": all checked against a real exported bundle."""
    import json

    from coreai.authoring.asset import AIModelAsset

    manifest = export(recipe_for("coreai", "fp16"), student_dir, tmp_path, bundle=True)
    folder = tmp_path / manifest["name"]
    meta = json.loads((folder / "bundle.json").read_text())
    assert (meta["backend"], meta["artifact"]) == ("coreai", "decoder.aimodel")
    assert manifest["inputs"][0]["dtype"] == "float16" and len(manifest["outputs"][0]["shape"]) == 5
    asset = AIModelAsset.load(str(folder / meta["artifact"]))
    swift = (Path(__file__).parents[1] / "device_apps" / "ios" / "TurboVAEDDemo" / "CoreAIDecoder.swift").read_text()
    import asyncio

    async def names():
        async with asset.executable() as model:
            fn = model.load_function(model.function_names[0])
            return model.function_names, list(fn.desc.input_names), list(fn.desc.output_names)

    functions, inputs, outputs = asyncio.run(names())
    assert functions == ["main"] and inputs == ["latents"] and outputs == ["frames"]
    assert 'loadFunction(named: "main")' in swift and '"latents": input' in swift and 'for: "frames"' in swift
    assert '"dtype"' in swift and "outputShape" in swift
