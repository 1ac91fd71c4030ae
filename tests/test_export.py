"""Export: every backend builds, runs where a runtime exists here, and is verified against fp32."""

import json
from pathlib import Path

import pytest

from turbovaed.export.core import BACKENDS, MIN_PSNR, ExportRecipe, export
from turbovaed.io import CheckpointError, InputError
from turbovaed.recipes import build, load_toml

REPO = Path(__file__).resolve().parents[1]


def recipe_for(backend: str, precision: str, **extra) -> ExportRecipe:
    return build(ExportRecipe, {"name": f"t-{backend}-{precision}", "backend": backend, "precision": precision,
                                "teacher": "wan21", "teacher_tiny": True,
                                "shape": {"latent_frames": 2, "height": 32, "width": 32},
                                "calibration": {"synthetic": True, "clips": 3, "verify_clips": 2}, **extra})


CASES = [("executorch", "fp32"), ("executorch", "int8"), ("executorch", "int4"), ("onnx", "fp32"), ("onnx", "fp16"),
         ("onnx", "int8"), ("onnx", "int4"), ("litert", "fp32"), ("litert", "fp16"), ("litert", "int8"),
         ("litert", "int8-dynamic"), ("litert", "int4"), ("coreml", "fp16"), ("coreml", "int8"), ("coreml", "int4"),
         ("coreml", "palettize4")]


@pytest.mark.parametrize("backend,precision", CASES, ids=[f"{b}-{p}" for b, p in CASES])
def test_artifact_is_built_run_and_verified(exported, backend, precision):
    manifest, folder = exported(backend, precision)
    assert json.loads((folder / "manifest.json").read_text())["sha256"] == manifest["sha256"]
    assert (folder / manifest["artifact"]).exists() and manifest["bytes"] > 1000
    n = manifest["numerics"]
    # ran and met MIN_PSNR; Core ML (not runnable here) is weight-checked and says so in its status
    assert n["status"] == ("pass-weights" if backend == "coreml" else "pass"), n
    assert n["psnr_db"] >= MIN_PSNR[precision]
    assert manifest["inputs"][0]["shape"] == [1, 4, 2, 4, 4] and manifest["outputs"][0]["shape"][2] == 5
    assert manifest["latent_normalisation"]["scale"] == 1.0 and manifest["tool_versions"]["torch"].startswith("2.13")
    ops = manifest["ops"]
    if backend == "executorch":  # every conv (and int4 linear) runs in XNNPACK
        assert ops["conv_delegated"] > 0 and ops["conv_not_delegated"] == 0 and ops["delegated_subgraphs"] == 1
        assert ops["not_delegated_ops"] == []
    if backend == "litert":
        assert ops["conv_3d"] == 0 and ops["flex_or_custom"] == 0
        # the manifest states the I/O dtypes the artifact really takes (apps quantize int8 inputs from it)
        from ai_edge_litert.interpreter import Interpreter

        tensor = Interpreter(model_path=str(folder / manifest["artifact"])).get_input_details()[0]
        stated = manifest["inputs"][0]
        assert stated["dtype"] == tensor["dtype"].__name__ == ("int8" if precision == "int8" else "float32")
        if precision == "int8":
            assert stated["quantization"] == {"scale": pytest.approx(tensor["quantization"][0]),
                                              "zero_point": tensor["quantization"][1]}
    if backend == "coreml":
        assert ops["max_rank"] <= 5 and ops["ops_off_neural_engine_path"] == []
        assert any("not run" in s for s in manifest["not_checked_here"])


def test_lower_precision_artifacts_are_smaller(exported):
    """On this 20k-parameter test student graph overhead dominates; the <= 0.2x int4 target is measured
    on the quickstart student by benchmarks/export_quality.py."""
    sizes = [exported("onnx", p)[0]["bytes"] for p in ("fp32", "fp16", "int4")]
    assert sizes[0] > sizes[1] > sizes[2]


def test_executorch_coreml_delegate_lowers(tmp_path, student_dir):
    manifest = export(recipe_for("executorch", "fp32", delegate="coreml"), student_dir, tmp_path)
    assert manifest["ops"]["delegated"] > manifest["ops"]["not_delegated"]
    assert manifest["numerics"]["status"].startswith("not run")


def test_every_shipped_recipe_parses():
    names = set()
    for path in sorted((REPO / "export").glob("*.toml")):
        recipe = load_toml(ExportRecipe, path)
        assert recipe.precision in BACKENDS[recipe.backend].precisions and recipe.name == path.stem
        names.add(path.stem)
    assert {"iphone-coreml-fp16", "iphone-coreml-int4", "android-executorch-int8", "android-executorch-int4",
            "android-litert-int8", "web-onnx-fp16"} <= names


@pytest.mark.parametrize("fields,message", [
    ({"backend": "tensorrt"}, "unknown backend 'tensorrt'"),
    ({"precision": "int3"}, "has no precision 'int3'"),
    ({"backend": "executorch", "delegate": "qnn"}, "delegate must be xnnpack or coreml"),
    ({"delegate": "coreml"}, "delegate applies to the executorch backend only"),
    ({"shape": {"height": 30}}, "multiple of the 8x spatial"),
    ({"shape": {"latent_frames": 0}}, "latent_frames must be >= 1"),
])
def test_bad_export_requests_fail_clearly_and_leave_nothing(tmp_path, student_dir, fields, message):
    base = {"name": "bad", "backend": "onnx", "precision": "fp32", "teacher": "wan21", "teacher_tiny": True,
            "calibration": {"synthetic": True, "clips": 1, "verify_clips": 1}}
    for k, v in fields.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    with pytest.raises(InputError, match=message):
        export(build(ExportRecipe, base), student_dir, tmp_path / "out")
    assert not (tmp_path / "out" / "bad").exists()


def test_mismatched_checkpoint_fails_clearly(tmp_path, student_dir):
    recipe = recipe_for("onnx", "fp32")
    recipe.teacher = "hunyuan15"  # its tiny config makes 8 latent channels; the student takes 4
    with pytest.raises(InputError, match="latent channels"):
        export(recipe, student_dir, tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        export(recipe_for("onnx", "fp32"), tmp_path / "missing", tmp_path)
    assert list(tmp_path.iterdir()) == []


STREAM_CASES = [("executorch", "fp32"), ("executorch", "int8"), ("onnx", "fp32"), ("litert", "fp32"), ("coreml", "fp16")]


@pytest.mark.parametrize("backend,precision", STREAM_CASES, ids=[f"{b}-{p}" for b, p in STREAM_CASES])
def test_streaming_step_artifact_matches_whole_clip_decode(tmp_path, student_dir, backend, precision):
    """The step graph, streamed one latent frame per call through the runtime (state fed back as explicit
    inputs), reproduces the eager whole-clip decode."""
    recipe = recipe_for(backend, precision, shape={"latent_frames": 3, "height": 32, "width": 32, "stream_chunk": 1})
    manifest = export(recipe, student_dir, tmp_path)
    n = manifest["numerics"]
    assert n["status"] == ("pass-weights" if backend == "coreml" else "pass") and n["psnr_db"] >= MIN_PSNR[precision], n
    names = [i["name"] for i in manifest["inputs"]]
    assert names[:2] == ["latents", "first"] and len(names) == 2 + manifest["stream"]["states"] > 4
    assert manifest["inputs"][0]["shape"] == [1, 4, 1, 4, 4] and manifest["outputs"][0]["shape"][2] == 4
    assert [o["shape"] for o in manifest["outputs"][1:]] == [i["shape"] for i in manifest["inputs"][2:]]
    assert manifest["stream"]["first_chunk_drop_frames"] == 3


def test_folded_denormalisation_lets_apps_feed_generator_latents(tmp_path, student_dir, monkeypatch):
    """input_latents = "normalized": the graph de-normalises, the manifest and bundle say so, the bundle's
    sample latents are normalised, and a streamed step graph takes normalised chunks at their offsets."""
    import onnxruntime as ort
    import torch

    from turbovaed import teachers
    from turbovaed.export import core
    from turbovaed.metrics import psnr
    from turbovaed.stream import ArtifactStreamer
    from turbovaed.student import StudentDecoder

    norm = teachers.LatentNorm([0.5, -0.2, 0.1, 0.0], [2.0, 0.5, 1.5, 1.0], 1.0)  # a teacher with real statistics
    real_load = core.teachers.load

    def load(*args, **kwargs):
        teacher = real_load(*args, **kwargs)
        teacher.norm = norm
        return teacher
    monkeypatch.setattr(core.teachers, "load", load)
    whole = export(recipe_for("onnx", "fp32", name="gen-whole", input_latents="normalized"), student_dir, tmp_path,
                   bundle=True)
    stream = export(recipe_for("onnx", "fp32", name="gen-stream", input_latents="normalized",
                               shape={"latent_frames": 2, "height": 32, "width": 32, "stream_chunk": 1}),
                    student_dir, tmp_path)
    for m in (whole, stream):
        assert m["input_latents"] == "normalized" and m["numerics"]["status"] == "pass", m["numerics"]
    bundle = json.loads((tmp_path / "gen-whole" / "bundle.json").read_text())
    assert bundle["latents"]["normalized"] is True
    student = StudentDecoder.from_pretrained(student_dir).eval()
    z = torch.randn(1, 4, 2, 4, 4) * 1.5
    with torch.no_grad():
        want = student(z)
    session = ort.InferenceSession(str(tmp_path / "gen-whole" / whole["artifact"]))
    got = torch.from_numpy(session.run(None, {"latents": norm.normalize(z).numpy()})[0])
    assert psnr(got, want) > 60  # normalised in, the raw decode out
    assert psnr(torch.from_numpy(session.run(None, {"latents": z.numpy()})[0]), want) < 40  # raw in: wrong
    streamer = ArtifactStreamer(tmp_path / "gen-stream")  # takes raw chunks, normalises them at their offset
    streamed = torch.cat([streamer(z[:, :, i:i + 1]) for i in range(2)], dim=2)
    assert psnr(streamed, want) > 60
    with pytest.raises(InputError, match="input_latents must be"):
        recipe_for("onnx", "fp32", input_latents="bf16")


def test_verification_uses_clips_the_student_never_trained_on(tmp_path, reference_student_dir, videos_dir):
    from turbovaed.reference import HELD_OUT

    recipe = build(ExportRecipe, {"name": "v", "backend": "onnx", "precision": "fp32", "teacher": "reference",
                                  "shape": {"latent_frames": 2, "height": 64, "width": 64},
                                  "calibration": {"videos": [str(videos_dir)], "clips": 2, "verify_clips": 2}})
    numerics = export(recipe, reference_student_dir, tmp_path)["numerics"]
    assert numerics["status"] == "pass", numerics
    assert all(name in numerics["verified_on"] for name in HELD_OUT), numerics["verified_on"]
    assert "held out by the student's recipe" in numerics["verified_on"]


def _float_convs_under(gm, prefix: str) -> tuple[int, int]:
    """(convs under `prefix` with a float weight, convs under it whose weight is dequantized) in a PT2E graph."""
    plain = quantized = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or "conv" not in str(node.target):
            continue
        stack = [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
        if not any(p == prefix or p.startswith(prefix + ".") for p in stack):
            continue
        w = node.args[1]
        if getattr(w, "op", None) == "call_function" and "dequantize" in str(w.target):
            quantized += 1
        else:
            plain += 1
    return plain, quantized


@pytest.mark.parametrize("backend", ["executorch", "litert"])
def test_keep_float_by_module_name_in_pt2e_backends(student_dir, backend):
    """ExecuTorch (XNNPACK) and LiteRT int8: the named module's convs keep float weights, the rest are int8."""
    import torch

    from turbovaed.export import executorch_backend, litert_backend
    from turbovaed.lowering import mobile_graph
    from turbovaed.student import StudentDecoder

    mobile = mobile_graph(StudentDecoder.from_pretrained(student_dir))
    z = torch.randn(1, 4, 2, 4, 4)
    calib = [(torch.randn(1, 4, 2, 4, 4),) for _ in range(2)]
    if backend == "executorch":
        gm = executorch_backend._quantize_int8(mobile, (z,), calib, ["conv_out"])
    else:
        gm = litert_backend._pt2e(mobile, (z,), calib, dynamic=False, keep=["conv_out"])[0]
    assert _float_convs_under(gm, "conv_out")[0] > 0 and _float_convs_under(gm, "conv_out")[1] == 0
    assert _float_convs_under(gm, "stages")[1] > 0  # everything else is quantized


def test_keep_float_by_module_name_in_onnx_and_coreml(tmp_path, student_dir):
    import onnx

    manifest = export(recipe_for("onnx", "int8", keep_float=["conv_out"]), student_dir, tmp_path)
    model = onnx.load(str(tmp_path / manifest["name"] / manifest["artifact"]))
    produced_by = {o: n for n in model.graph.node for o in n.output}
    initializers = {i.name for i in model.graph.initializer}
    names = set(manifest["ops"]["kept_float_nodes"])  # found by module name in the exporter's scope metadata
    kept = [n for n in model.graph.node if n.op_type == "Conv" and n.name in names]
    others = [n for n in model.graph.node if n.op_type == "Conv" and n not in kept]
    assert kept and all(n.input[1] in initializers for n in kept)  # float weights straight from the file
    assert all(produced_by[n.input[1]].op_type == "DequantizeLinear" for n in others)
    coreml = export(recipe_for("coreml", "int8", keep_float=["conv_out"]), student_dir, tmp_path)
    assert coreml["numerics"]["status"] == "pass-weights" and coreml["ops"]["kept_float_weights"] > 0


@pytest.mark.parametrize("backend,precision", [("onnx", "int8"), ("executorch", "int8"), ("litert", "int8"),
                                               ("coreml", "int8")])
def test_unknown_keep_float_module_is_one_clear_error(tmp_path, student_dir, backend, precision):
    with pytest.raises(InputError, match="keep_float names an unknown module 'decoder.up'"):
        export(recipe_for(backend, precision, keep_float=["decoder.up"]), student_dir, tmp_path)
    assert not any(tmp_path.iterdir())


def test_student_without_the_first_frame_rule_streams_every_frame(tmp_path):
    """Teachers without the 1 + r_t*k rule (r_t*k frames): the step graph's first chunk keeps all its frames
    (first_chunk_drop_frames = 0) and the runtime's stream equals the whole-clip decode."""
    import torch
    from conftest import randomize

    from turbovaed.presets import family_preset
    from turbovaed.stream import ArtifactStreamer
    from turbovaed.student import StudentDecoder

    model = randomize(StudentDecoder(family_preset(4, 8, 4, first_frame=False, mini=True)), std=0.1).eval()
    model.save_pretrained(tmp_path / "student")
    manifest = export(recipe_for("onnx", "fp32", shape={"latent_frames": 3, "height": 32, "width": 32,
                                                         "stream_chunk": 1}), tmp_path / "student", tmp_path)
    assert manifest["stream"]["first_chunk_drop_frames"] == 0 and manifest["numerics"]["status"] == "pass"
    z = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    streamer = ArtifactStreamer(tmp_path / manifest["name"])
    chunks = [streamer(z[:, :, i:i + 1]) for i in range(3)]
    assert [c.shape[2] for c in chunks] == [4, 4, 4]
    with torch.no_grad():
        whole = model(z)
    assert (torch.cat(chunks, dim=2) - whole).abs().max() <= 1e-5 * whole.abs().max()
