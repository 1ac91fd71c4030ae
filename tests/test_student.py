import json

import pytest
import torch
from conftest import randomize

from turbovaed import presets
from turbovaed.io import CheckpointError, InputError
from turbovaed.presets import SIZES
from turbovaed.student import StudentConfig, StudentDecoder, check_latents, count_macs
from turbovaed.teachers import TEACHERS

# Every family at mini and nano; base and turbo on one family per compression (8x4, 16x4, 32x8, 8x6, 8x8):
# the rungs' layouts depend only on the compression.
PRESETS = [(name, size) for name in TEACHERS for size in ("mini", "nano")] + \
    [(name, size) for name in ("reference", "wan22", "ltx", "mochi", "cosmos") for size in SIZES[2:]]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def small_latents(config: StudentConfig, frames: int = 3, seed: int = 0) -> torch.Tensor:
    side = max(1, 64 // config.spatial_ratio)
    return torch.randn(1, config.latent_channels, frames, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,size", PRESETS, ids=[f"{n}-{s}" for n, s in PRESETS])
def test_mobile_form_matches_reference_for_every_preset(name, size):
    """Every rung of every family's ladder lowers exactly to 2D (turbo's 5x5x5 depthwise and dense 3D
    shuffles included)."""
    config = presets.student_config(TEACHERS[name], size=size)
    model = randomize(StudentDecoder(config), std=0.1).eval()
    z = small_latents(config, frames=2 if size == "turbo" else 3)
    with torch.no_grad():
        ref = model(z)
        mob = model.to_mobile().eval()(z)
        lin = model.to_mobile(linear_pointwise=True).eval()(z)
    assert ref.shape == (1, 3, config.frames_for(z.shape[2]), 64 // config.spatial_ratio * config.spatial_ratio,
                         64 // config.spatial_ratio * config.spatial_ratio)
    assert torch.isfinite(ref).all() and ref.abs().max() > 0
    assert rel_err(mob, ref) <= 1e-5
    assert rel_err(lin, ref) <= 1e-5


@pytest.mark.parametrize("padding", ["causal", "replicate"])
def test_both_padding_modes_agree_across_forms(padding):
    config = StudentConfig(latent_channels=8, channels=(32, 16), blocks=(1, 1), dense=(True, False),
                           upsample=((2, 2),), patch=2, final_temporal=2, temporal_padding=padding)
    model = randomize(StudentDecoder(config), seed=1).eval()
    z = torch.randn(2, 8, 4, 6, 5)
    with torch.no_grad():
        assert rel_err(model.to_mobile()(z), model(z)) <= 1e-5


def _graph_facts(module: torch.nn.Module, z: torch.Tensor) -> tuple[set[str], int, list[int]]:
    ep = torch.export.export(module, (z,))
    targets, max_rank, conv_ranks = set(), 0, []
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        targets.add(str(node.target))
        val = node.meta.get("val")
        vals = val if isinstance(val, (tuple, list)) else [val]
        for v in vals:
            if isinstance(v, torch.Tensor):
                max_rank = max(max_rank, v.dim())
        if "conv" in str(node.target):
            conv_ranks.append(node.args[0].meta["val"].dim())
    return targets, max_rank, conv_ranks


@pytest.mark.parametrize("name", ["ltx", "wan21", "mochi"])
def test_exported_mobile_graph_has_no_conv3d_and_rank_at_most_5(name):
    config = presets.student_config(TEACHERS[name], mini=True)
    model = StudentDecoder(config).eval()
    z = small_latents(config)
    targets, max_rank, conv_ranks = _graph_facts(model.to_mobile(), z)
    assert conv_ranks and all(r == 4 for r in conv_ranks), conv_ranks
    assert not any("conv3d" in t or "pow" in t for t in targets), targets
    assert max_rank <= 5
    # The check can fail: the reference form does export Conv3d on 5-D tensors.
    _, _, ref_ranks = _graph_facts(model, z)
    assert 5 in ref_ranks


def test_frame_rule_is_honoured_exactly():
    config = presets.student_config(TEACHERS["wan21"], mini=True)
    model = StudentDecoder(config).eval()
    for t in (1, 2, 5):
        with torch.no_grad():
            assert model(small_latents(config, t)).shape[2] == 1 + 4 * (t - 1)
        assert config.latents_for(1 + 4 * (t - 1)) == t
    with pytest.raises(InputError, match="1 \\+ 4k"):
        config.latents_for(16)
    plain = StudentConfig(latent_channels=4, first_frame=False)
    assert plain.frames_for(3) == 3 * plain.temporal_ratio


def test_causal_decoder_does_not_look_ahead():
    config = presets.student_config(TEACHERS["wan21"], mini=True)
    model = randomize(StudentDecoder(config), seed=2).eval()
    z = small_latents(config, 4)
    z2 = z.clone()
    z2[:, :, 2] += 1.0  # change latent frame 2: frames from latents 0..1 must not move
    with torch.no_grad():
        a, b = model(z), model(z2)
    keep = 1 + 4 * 1
    assert torch.equal(a[:, :, :keep], b[:, :, :keep])
    assert not torch.allclose(a[:, :, keep:], b[:, :, keep:])


def test_features_one_per_stage():
    config = presets.student_config(TEACHERS["hunyuan15"], mini=True)
    out, feats = StudentDecoder(config)(small_latents(config), return_features=True)
    assert len(feats) == len(config.channels)
    assert [f.shape[1] for f in feats] == list(config.channels)


def test_presets_match_teacher_compression_and_size_budget():
    for name, spec in TEACHERS.items():
        cfg = presets.student_config(spec)
        assert (cfg.spatial_ratio, cfg.temporal_ratio, cfg.latent_channels, cfg.first_frame) == \
            (spec.spatial, spec.temporal, spec.latent_channels, spec.first_frame), name
        with torch.device("meta"):
            full = StudentDecoder(cfg).num_parameters()
            mini = StudentDecoder(presets.student_config(spec, mini=True)).num_parameters()
        assert mini * 4 < full, name


def test_count_macs_matches_hand_count():
    config = StudentConfig(latent_channels=4, channels=(8,), blocks=(0,), dense=(True,), upsample=(),
                           patch=1, final_temporal=1, kernel_t=1, kernel_s=1)
    # conv_in 4->8 (1x1x1) and conv_out 8->3 (1x1x1) over 2x3x3 positions
    assert count_macs(config, (2, 3, 3)) == 18 * (4 * 8 + 8 * 3)


def test_save_load_roundtrip(tmp_path):
    config = presets.student_config(TEACHERS["cosmos"], mini=True)
    model = randomize(StudentDecoder(config), seed=3).eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = StudentDecoder.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == config
    z = small_latents(config)
    with torch.no_grad():
        assert torch.equal(loaded(z), model(z))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp folders left


def test_bad_checkpoints_fail_clearly(tmp_path):
    config = presets.student_config(TEACHERS["cosmos"], mini=True)
    good = StudentDecoder(config).save_pretrained(tmp_path / "good")
    with pytest.raises(CheckpointError, match="does not exist"):
        StudentDecoder.from_pretrained(tmp_path / "missing")
    # truncated weights
    bad = tmp_path / "truncated"
    bad.mkdir()
    (bad / "config.json").write_text((good / "config.json").read_text())
    (bad / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        StudentDecoder.from_pretrained(bad)
    # a pickle is refused before anything is unpickled
    torch.save(StudentDecoder(config).state_dict(), bad / "model.safetensors")
    with pytest.raises(CheckpointError, match="pickle"):
        StudentDecoder.from_pretrained(bad)
    # config that does not match the weights
    other = json.loads((good / "config.json").read_text())
    other["channels"] = [c * 2 for c in other["channels"]]
    (bad / "config.json").write_text(json.dumps(other))
    (bad / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not match the config"):
        StudentDecoder.from_pretrained(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        StudentDecoder.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({"channels": [8], "blocks": [1, 2]}))
    with pytest.raises(CheckpointError, match="one entry per stage"):
        StudentDecoder.from_pretrained(bad)


def test_bad_latents_fail_clearly():
    config = presets.student_config(TEACHERS["wan21"], mini=True)
    model = StudentDecoder(config)
    z = small_latents(config)
    with pytest.raises(InputError, match="expects 16"):
        model.decode(z[:, :8])
    with pytest.raises(InputError, match="5-D"):
        model.decode(z[0])
    bad = z.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN or inf"):
        model.decode(bad)
    bad[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="NaN or inf"):
        check_latents(bad, config)
    with pytest.raises(InputError, match="floating point"):
        model.decode(z.long())
    assert model.decode(z).shape[2] == 9


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="temporal_padding"):
        StudentConfig(temporal_padding="zeros")
    with pytest.raises(ValueError, match="upsample needs"):
        StudentConfig(channels=(8, 8), blocks=(1, 1), dense=(True, True), upsample=())
