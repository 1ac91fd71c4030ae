"""The preset ladder (mini/nano/base/turbo, and the phone-first rung) and the peers in benchmarks/peers: sizes,
exactness, export, training."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import randomize

from turbovaed import presets
from turbovaed.export.core import ExportRecipe, export
from turbovaed.presets import SIZES, family_preset, parse_preset
from turbovaed.recipes import build
from turbovaed.student import StudentDecoder, module_macs
from turbovaed.teachers import TEACHERS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from peers.flash_vaed import FlashVAEDDecoder  # noqa: E402
from peers.taehv import TAEHVDecoder  # noqa: E402
from peers.turbo_vaed import TurboVAEDDecoder  # noqa: E402


def params(make) -> int:
    with torch.device("meta"):
        return make().num_parameters()


def test_every_rung_keeps_the_teacher_compression_and_grows():
    for name, spec in TEACHERS.items():
        sizes = []
        for size in SIZES:
            cfg = presets.student_config(spec, size=size)
            assert (cfg.spatial_ratio, cfg.temporal_ratio, cfg.latent_channels) == \
                (spec.spatial, spec.temporal, spec.latent_channels), (name, size)
            if size != "phone":  # the phone rung is a design of its own, not a step on the ladder
                sizes.append(params(lambda c=cfg: StudentDecoder(c)))
        assert sizes == sorted(sizes) and sizes[0] * 4 < sizes[1], (name, sizes)
        assert 38e6 <= sizes[-1] <= 45e6, (name, "turbo should be about Turbo-VAED's 40M parameters", sizes[-1])


def test_turbo_rung_has_turbo_vaed_layout():
    cfg = presets.student_config(TEACHERS["wan21"], size="turbo")
    assert cfg.kernel_dw == 5 and not cfg.dense[0] and all(cfg.dense[1:]) and all(cfg.dense_upsample)
    assert cfg.patch == 1  # the last stages run at 1/2 and full resolution
    assert [s for _, s in cfg.upsample] == [2, 2, 2]


@pytest.mark.parametrize("family", ["wan21", "wan22", "ltx"])
def test_phone_rung_lowers_and_streams_exactly_with_plain_2d_convs(family):
    """The phone rung (MemBlocks: the neighbour frame by channel concat, no norm): its mobile form and a
    chunked stream (eager and the exported step graph's module) equal the reference decode; every conv is a
    plain dense 2D conv (no temporal taps, no depthwise) and the graph exports 2D-only."""
    from conftest import assert_exports_2d

    from turbovaed.student import StreamingStep

    cfg = presets.student_config(TEACHERS[family], size="phone")
    assert cfg.block == "mem" and cfg.kernel_t == 1 and all(cfg.dense)
    model = randomize(StudentDecoder(cfg), std=0.01).eval()
    z = torch.randn(1, cfg.latent_channels, 3, 3, 4)
    mobile = model.to_mobile().eval()
    with torch.no_grad():
        ref = model(z)
        scale = ref.abs().max()
        assert ((mobile(z) - ref).abs().max() / scale).item() <= 1e-5
        state, chunks = None, []
        for i in range(3):
            frames, state = model.step(z[:, :, i:i + 1], state)
            chunks.append(frames)
        assert ((torch.cat(chunks, 2) - ref).abs().max() / scale).item() <= 1e-5
        assert ((StreamingStep(mobile).stream(z, 1) - ref).abs().max() / scale).item() <= 1e-5
    convs = [m for m in mobile.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.groups == 1 for m in convs)
    assert all(len(m.taps) == 1 for m in mobile.modules() if type(m).__name__ == "TapConv2d")
    assert not any(type(m).__name__ == "MobileRMSNorm" for m in mobile.modules())
    assert_exports_2d(mobile, z)


def test_phone_rung_estimates_beat_taehv_on_both_phones_at_720p():
    """The rung's purpose, by the project's estimator: at 720p on Wan latents, at least 2x TAEHV's FPS on the
    iPhone 16 Pro and the Galaxy S24 (each decoder's fastest cell, calibrated estimate or labelled bound)."""
    from turbovaed.decoders import taehv
    from turbovaed.profile import calibration
    from turbovaed.profile.devices import load_catalog
    from turbovaed.profile.estimate import best_cell, costs_of

    catalog, fits = load_catalog(), calibration.fits()
    cfg, variant, shape = presets.student_config(TEACHERS["wan21"], size="phone"), taehv.VARIANTS["taew2_1"], (5, 90, 160)
    ours, theirs = costs_of(cfg, shape), costs_of(variant, shape)
    from turbovaed.export.backends import BACKENDS
    from turbovaed.profile.estimate import for_backend

    fused, passes = for_backend(ours, BACKENDS["litert"]), for_backend(ours, BACKENDS["coreml"])
    relus = sum(cfg.blocks)  # one ReLU per MemBlock: no pass where the runtime fuses it, 2 passes where not
    assert passes.ops == fused.ops + relus and len(passes) == len(fused) + relus
    for device in ("iphone-16-pro", "galaxy-s24"):
        for kind in ("estimate", "roofline_bound"):
            a = best_cell(catalog[device], ours, cfg.frames_for(5), fits)[kind]
            b = best_cell(catalog[device], theirs, variant.output_frames(5), fits)[kind]
            if a and b:
                assert a["fps"] >= 2 * b["fps"], (device, kind, a, b)


def test_preset_names_parse_and_fail_clearly():
    assert parse_preset("wan21") == ("wan21", "nano")
    assert parse_preset("wan21-turbo") == ("wan21", "turbo")
    assert parse_preset("reference-mini") == ("reference", "mini")
    with pytest.raises(Exception, match="size suffix"):
        parse_preset("wan21-huge")


@pytest.mark.parametrize("make,published", [(lambda: TAEHVDecoder(16), 9.8e6),
                                            (lambda: TurboVAEDDecoder("turbo-vaed-hunyuan"), 40.7e6),
                                            (lambda: TurboVAEDDecoder("turbo-vaed-ltx"), 41.9e6)],
                         ids=["taehv", "turbo-vaed-hunyuan", "turbo-vaed-ltx"])
def test_peer_parameter_counts_match_published(make, published):
    assert abs(params(make) / published - 1) <= 0.05


@pytest.mark.parametrize("spatial,temporal,channels,taehv", [(8, 4, 16, TAEHVDecoder(16)),
                                                             (16, 4, 48, TAEHVDecoder(48, patch_size=2)),
                                                             (32, 8, 128, TAEHVDecoder(128, patch_size=4))],
                         ids=["8x", "16x", "32x"])
def test_base_rung_costs_about_taehvs_macs_per_frame(spatial, temporal, channels, taehv):
    base = family_preset(channels, spatial, temporal, size="base")
    side = 512 // spatial
    ours = module_macs(StudentDecoder(base), (1, channels, 5, side, side)) / base.frames_for(5)
    frames = taehv.net.variant.output_frames(5)  # 17 (4x in time), or 33 for the LTX variant (8x)
    theirs = module_macs(taehv, (1, channels, 5, side, side)) / frames
    assert 0.7 <= ours / theirs <= 1.3, (ours / 1e9, theirs / 1e9)


def test_peers_follow_the_frame_rule_and_turbo_vaed_lowers_exactly():
    small = dict(block_out_channels=(8, 8, 16, 32), layers_per_block=(1, 1, 1, 1, 1))
    model = randomize(TurboVAEDDecoder(**small), std=0.1).eval()
    z = torch.randn(2, 16, 3, 4, 3)
    with torch.no_grad():
        ref, mob = model(z), model.to_mobile()(z)
        taehv = TAEHVDecoder(16)(z)
    assert ref.shape == taehv.shape == (2, 3, 9, 32, 24)
    assert ((mob - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_peers_train_with_the_trainer(tmp_path):
    """The make_student hook: a peer goes through the very trainer (loss, EMA, evaluation, publish)."""
    from turbovaed.distill.recipe import DistillRecipe
    from turbovaed.distill.trainer import distill

    small = dict(latent_channels=4, block_out_channels=(8, 8, 16, 32), layers_per_block=(1, 1, 1, 1, 1))
    recipe = build(DistillRecipe, {
        "output": str(tmp_path / "peer"), "teacher": {"name": "wan21", "tiny": True}, "student": {"mini": True},
        "data": {"synthetic": True, "size": 32, "clips": 2, "eval_clips": 1, "eval_size": 64, "latent_frames": 2},
        "train": {"steps": 3, "batch": 2, "checkpoint_every": 3, "threads": 2}})
    out = distill(recipe, show_progress=False, make_student=lambda: TurboVAEDDecoder(**small))
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "config.json").read_text())["_class_name"] == "TurboVAEDDecoder"
    assert metrics["student_params"] == TurboVAEDDecoder(**small).num_parameters()
    assert metrics["mean"]["student_psnr"] > 0


def test_flash_vaed_trains_with_the_trainer_from_released_weights(tmp_path):
    """The real Flash-VAED architecture through the very trainer, started from a weight file with the released
    names and shapes (random values): what `pareto.py --weights flash-vaed=...` does."""
    from test_flash_vaed import random_state

    from turbovaed.distill.recipe import DistillRecipe
    from turbovaed.distill.trainer import distill

    torch.save(random_state(), tmp_path / "Flash_VAED_Wan.pth")
    start = FlashVAEDDecoder(tmp_path / "Flash_VAED_Wan.pth")
    recipe = build(DistillRecipe, {
        "output": str(tmp_path / "peer"), "teacher": {"name": "reference", "tiny": True}, "student": {"preset": "reference"},
        "data": {"synthetic": True, "size": 32, "clips": 2, "eval_clips": 1, "eval_size": 64, "latent_frames": 2},
        "loss": {"feature": 0.1}, "train": {"steps": 2, "batch": 1, "checkpoint_every": 2, "threads": 2}})
    out = distill(recipe, show_progress=False, make_student=lambda: FlashVAEDDecoder(tmp_path / "Flash_VAED_Wan.pth"))
    assert json.loads((out / "config.json").read_text())["_class_name"] == "FlashVAEDDecoder"
    from turbovaed.io import load_safetensors

    trained = load_safetensors(next(out.glob("*.safetensors")))
    assert set(trained) == {f"net.{k}" for k in start.net.state_dict()}
    assert any(not torch.equal(trained[f"net.{k}"], v) for k, v in start.net.state_dict().items())


def test_the_turbo_rung_exports_and_delegates_fully(tmp_path):
    """turbo (random weights, the tiny wan21 teacher's 4 latent channels) converts, delegates every op to XNNPACK
    and verifies, like the nano students: its 5x5x5 depthwise blocks, dense stages and dense shuffles cover every
    block base uses too (base and turbo passed on all four backends in the suites up to 2026-12-05). ONNX, LiteRT
    and Core ML take the same blocks (TapConv2d taps of 5x5x5 depthwise and dense 3D convs, pixel shuffles) in
    test_turbo_vaed.py's exports of Turbo-VAED's released layout."""
    cfg = family_preset(4, 8, 4, size="turbo")
    cfg.channels = tuple(max(c // 8, 4) for c in cfg.channels)  # the layout and blocks at 1/64 of the weights
    folder = randomize(StudentDecoder(cfg), std=0.02).save_pretrained(tmp_path / "s")
    recipe = build(ExportRecipe, {"name": "turbo-executorch", "backend": "executorch", "precision": "fp32",
                                  "teacher": "wan21", "teacher_tiny": True,
                                  "shape": {"latent_frames": 2, "height": 16, "width": 16},
                                  "calibration": {"synthetic": True, "clips": 1, "verify_clips": 1}})
    manifest = export(recipe, folder, tmp_path / "out")
    assert manifest["numerics"]["status"] == "pass", manifest["numerics"]
    assert manifest["ops"]["conv_not_delegated"] == 0 and manifest["ops"]["not_delegated_ops"] == []


def test_taehv_peer_is_the_real_architecture_and_takes_published_weights(tmp_path):
    """benchmarks/peers/taehv.py wraps turbovaed.decoders.taehv: a published file (random values, the published
    names and shapes) loads into it, and it decodes (B, C, T, h, w) to what the loaded decoder gives, in [-1, 1]."""
    from test_decoders import random_file

    from turbovaed.decoders import load

    path = random_file("taew2_1", tmp_path)
    peer, published = TAEHVDecoder(16, weights=path).eval(), load(path).module
    assert peer.num_parameters() == published.num_parameters() == 9_844_611
    z = torch.randn(1, 16, 3, 4, 4)
    with torch.no_grad():
        frames, features = peer(z, return_features=True)
        assert torch.equal(frames, published(z.transpose(1, 2)).transpose(1, 2) * 2 - 1)
    assert frames.shape == (1, 3, 9, 32, 32) and len(features) == 3 and features[0].shape[:3] == (1, 256, 3)


def test_phone_rung_exports_on_every_backend_and_each_backends_fusion_statement_matches_its_graph(tmp_path):
    """The phone rung (random weights, the tiny wan21 teacher's 4 latent channels) converts and verifies on every
    backend, fully delegated to XNNPACK, with int8 where the phone NPUs run it. Each Backend's ReLU statement (what
    the estimator's passes follow) is checked against the converted graph: no ReLU op where it says "fused"
    (the XNNPACK delegate's payload, LiteRT's ops, ONNX Runtime's optimised graph), ReLU ops where it says "pass"
    (Core ML's MIL, Core AI); every runtime's graph holds the concats (copies)."""
    import onnx
    import onnxruntime as ort

    from turbovaed.export.backends import BACKENDS

    cfg = family_preset(4, 8, 4, size="phone")
    cfg.channels = (32, 16)
    folder = randomize(StudentDecoder(cfg), std=0.02).save_pretrained(tmp_path / "s")
    blocks = sum(cfg.blocks)
    relu_ops = {}
    for backend, precision in (("executorch", "int8"), ("litert", "int8"), ("onnx", "fp32"), ("coreml", "fp16"),
                               ("coreai", "fp16")):
        recipe = build(ExportRecipe, {"name": f"p-{backend}", "backend": backend, "precision": precision,
                                      "teacher": "wan21", "teacher_tiny": True,
                                      "shape": {"latent_frames": 2, "height": 16, "width": 16},
                                      "calibration": {"synthetic": True, "clips": 2, "verify_clips": 1}})
        manifest = export(recipe, folder, tmp_path / "out")
        assert manifest["numerics"]["status"] in ("pass", "pass-weights"), (backend, manifest["numerics"])
        ops = manifest["ops"]
        if backend == "executorch":  # what XNNPACK runs: the delegate's payload, a ReLU as a conv's output clamp
            assert ops["conv_not_delegated"] == 0 and ops["not_delegated_ops"] == []
            xnn = ops["xnnpack"]
            assert xnn["fused_output_clamps"] == blocks, xnn
            nodes = xnn["nodes"]  # a ReLU not fused would be a Clamp node of its own
            ops = {"op_types": {"relu": nodes.get("XNNClamp", 0),
                                "concat": sum(v for k, v in nodes.items() if k.startswith("XNNConcatenate"))}}
        if backend == "onnx":  # what ONNX Runtime runs: its optimised graph
            options = ort.SessionOptions()
            options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
            ort.InferenceSession(str(tmp_path / "out" / "p-onnx" / manifest["artifact"]), options,
                                 providers=["CPUExecutionProvider"])
            types = [n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]
            ops = {"op_types": {t: types.count(t) for t in set(types)}}
        counts = {k.lower(): v for k, v in ops["op_types"].items()}
        relu_ops[backend] = counts.get("relu", 0)
        assert counts.get("concat", counts.get("concatenation", 0)) >= blocks, (backend, counts)  # concat: a copy
    for backend, n in relu_ops.items():
        assert (n == 0) == (BACKENDS[backend].fusion.relu == "fused"), (backend, n, BACKENDS[backend].fusion)
    assert relu_ops["coreml"] == blocks
