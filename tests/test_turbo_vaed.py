"""Turbo-VAED's released students, loaded from local files. No released weight file is on this machine: every
file here has exactly the names and shapes of the published decoder (hustvl/Turbo-VAED
`autoencoder_kl_turbo_vaed.py` with configs/Turbo-VAED-*.json, read upstream) with random values."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_exports_2d
from safetensors.torch import save_file

from turbovaed.decoders import load
from turbovaed.decoders.turbo_vaed import VARIANTS, TurboVAED, Upsampler
from turbovaed.io import InputError


def random_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The published decoder's tensors with trained-like random values (variance-preserving convs, norms near
    identity)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, t in TurboVAED(VARIANTS[name]).state_dict().items():
        if t.ndim == 1:
            sd[k] = torch.randn(t.shape, generator=gen) * 0.1 + (1.0 if "norm3.weight" in k else 0.0)
        else:
            sd[k] = torch.randn(t.shape, generator=gen) * t[0].numel() ** -0.5
    return sd


def save(sd: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(sd, path)
    else:
        torch.save(sd, path)
    return path


# facts read from the published definition: names and shapes the released decoders must have
PUBLISHED = {
    "turbo-vaed-hunyuan": {
        "conv_in.conv.weight": (512, 16, 3, 3, 3),
        "mid_block.resnets.4.conv1.depthwise_conv.weight": (512, 1, 5, 5, 5),  # 5 dw blocks at latent resolution
        "mid_block.resnets.0.conv2.pointwise_conv.weight": (512, 512, 1, 1, 1),
        "up_blocks.0.resnets.3.conv2.depthwise_conv.bias": (512,),
        "up_blocks.1.conv_in.norm3.weight": (512,),  # LayerNorm where the width changes
        "up_blocks.1.conv_in.conv_shortcut.conv.weight": (256, 512, 1, 1, 1),
        "up_blocks.1.upsamplers.0.conv.conv.weight": (256 * 8, 256, 3, 3, 3),  # C * s_t * s * s
        "up_blocks.3.upsamplers.0.conv.conv.weight": (16 * 4, 16, 3, 3, 3),  # spatial only
        "up_blocks.3.resnets.4.conv1.conv.weight": (16, 16, 3, 3, 3),
        "conv_out.conv.weight": (3, 16, 3, 3, 3),
    },
    "turbo-vaed-ltx": {
        "conv_in.conv.weight": (512, 128, 3, 3, 3),
        "up_blocks.3.upsamplers.0.conv.conv.weight": (64 * 8, 64, 3, 3, 3),
        "upsampler2d_1.conv.weight": (64, 64, 3, 3),
        "upsampler2d_2.conv.weight": (16, 16, 3, 3),
        "conv_out.conv.weight": (3, 4, 3, 3, 3),
    },
}


@pytest.mark.parametrize("name", ["turbo-vaed-hunyuan", "turbo-vaed-ltx"])
def test_released_configs_have_the_published_size_and_tensor_names(name):
    model = TurboVAED(VARIANTS[name])
    v = VARIANTS[name]
    assert abs(model.num_parameters() / 1e6 - v.params_published) / v.params_published < 0.001, model.num_parameters()
    shapes = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    for k, shape in PUBLISHED[name].items():
        assert shapes.get(k) == shape, (k, shapes.get(k))
    assert not any("norm1" in k or "norm2" in k for k in shapes)  # RMSNorms without weights, as published


@pytest.mark.parametrize("name,t,frames,ratio", [("turbo-vaed-hunyuan", 3, 9, 8), ("turbo-vaed-ltx", 2, 9, 32),
                                                 ("turbo-vaed-dc", 2, 8, 32)])
def test_frame_rule_and_the_exact_2d_form(name, t, frames, ratio):
    """T latent frames -> 4T-3 (Hunyuan), 8T-7 (LTX), 4T (Video DC-AE keeps every frame); the 2D-only form
    equals the published forward to 1e-5 relative and has no Conv3d and no tensor above rank 5."""
    torch.manual_seed(0)
    model = TurboVAED(VARIANTS[name]).eval()
    model.load_state_dict(random_state(name))
    z = torch.randn(1, VARIANTS[name].latent_channels, t, 2, 2)
    with torch.no_grad():
        ref = model(z)
        mobile = model.to_mobile().eval()
        got = mobile(z)
    assert ref.shape == (1, 3, frames, 2 * ratio, 2 * ratio) and VARIANTS[name].output_frames(t) == frames
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()
    if name != "turbo-vaed-ltx":  # the rank / 2D check runs on the LTX graph (2D stages, time upsamplers)
        return
    assert_exports_2d(mobile, z)


def test_upsampler_follows_the_published_op_sequence():
    """Conv, then (B, C*s*s, s_t, T, H, W) -> frames i*s_t + j, per-frame 2D pixel shuffle, first s_t - 1 frames
    dropped: the published steps, written out here independently of our module."""
    torch.manual_seed(0)
    up = Upsampler(4, 2, trim=True).eval()
    x = torch.randn(1, 4, 3, 5, 5)
    with torch.no_grad():
        y = up.conv(x)
        b, _, t, h, w = x.shape
        y = y.reshape(b, -1, 2, t, h, w).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, t * 2, h, w)
        y = y.permute(0, 2, 1, 3, 4).reshape(b * t * 2, -1, h, w)
        y = F.pixel_shuffle(y, 2)
        y = y.reshape(b, t * 2, *y.shape[1:]).permute(0, 2, 1, 3, 4)[:, :, 1:]
        assert torch.equal(up(x), y)


# --- an independent reference of the published forward (facts from upstream, code written here) -----------------
# hustvl/Turbo-VAED @ 9268488 (HEAD; the decoder file last changed in 32be94c "fix norm"): configs/Turbo-VAED-*.json,
# the decoder's fields (lists highest resolution first; LTX has no decoder_spatio_only: the default, all False)
UPSTREAM_CONFIGS = {
    "turbo-vaed-hunyuan": dict(block_out_channels=[16, 32, 256, 512], layers_per_block=[5, 4, 4, 4, 5],
                               spatio_temporal_scaling=[True, True, True, False], spatio_only=[True, False, False, False],
                               is_dw_conv=[False, False, False, True, True], dw_kernel_size=5, patch_size=1),
    "turbo-vaed-ltx": dict(block_out_channels=[64, 128, 256, 512], layers_per_block=[3, 2, 3, 1, 1],
                           spatio_temporal_scaling=[True, True, True, False], spatio_only=[False, False, False, False],
                           is_dw_conv=[False, False, False, True, True], dw_kernel_size=5, patch_size=4),
}


def upstream_decode(sd: dict[str, torch.Tensor], cfg: dict, z: torch.Tensor) -> tuple[torch.Tensor, set[str]]:
    """TurboVAEDDecoder3d.forward of autoencoder_kl_turbo_vaed.py (decoder_causal false, is_video_dc_ae false) in
    plain torch ops, reading the decoder's tensors from `sd`; returns the frames and the tensor names it read."""
    used = set()

    def p(name):
        used.add(name)
        return sd[name]

    def rms(x):  # diffusers RMSNorm(eps=1e-8, elementwise_affine=False) over channels; norm_out's inline one alike
        return x * torch.rsqrt(x.float().pow(2).mean(1, keepdim=True) + 1e-8)

    def conv3d(x, name, k, groups=1):  # non-causal: (k - 1) // 2 copies of the edge frames each side, zeros in space
        n = (k - 1) // 2
        x = torch.cat([x[:, :, :1]] * n + [x] + [x[:, :, -1:]] * n, dim=2)
        return F.conv3d(x, p(f"{name}.weight"), p(f"{name}.bias"), padding=(0, k // 2, k // 2), groups=groups)

    def op(x, name, k, dw):  # TurboVAEDCausalConv3d, or TurboVAEDCausalDepthwiseSeperableConv3d (dw, then 1x1x1)
        if not dw:
            return conv3d(x, f"{name}.conv", k)
        return conv3d(conv3d(x, f"{name}.depthwise_conv", k, groups=x.shape[1]), f"{name}.pointwise_conv", 1)

    def resnet(x, name, cin, cout, dw, relu_first):  # TurboVAEDResnetBlock3d (is_upsampler_modified: ReLU first)
        k = cfg["dw_kernel_size"] if dw else 3
        h = F.relu(rms(x)) if relu_first else F.silu(rms(x))
        h = op(F.silu(rms(op(h, f"{name}.conv1", k, dw))), f"{name}.conv2", k, dw)
        if cin != cout:  # norm3: LayerNorm(eps=resnet_norm_eps 1e-6, affine), conv_shortcut: kernel 1
            x = F.layer_norm(x.movedim(1, -1), (cin,), p(f"{name}.norm3.weight"), p(f"{name}.norm3.bias"), 1e-6)
            x = op(x.movedim(-1, 1), f"{name}.conv_shortcut", 1, dw)
        return h + x

    def upsample3d(x, name, st):  # TurboVAEDUpsampler3d: conv, temporal split, 2D pixel shuffle, slice
        b, _, t, h, w = x.shape
        x = conv3d(x, f"{name}.conv.conv", 3)  # a TurboVAEDCausalConv3d: C -> C * st * 2 * 2
        x = x.reshape(b, -1, st, t, h, w).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, t * st, h, w)
        x = F.pixel_shuffle(x.permute(0, 2, 1, 3, 4).reshape(b * t * st, -1, h, w), 2)
        return x.reshape(b, t * st, *x.shape[1:]).permute(0, 2, 1, 3, 4)[:, :, st - 1:]

    def upsample2d(x, name):  # norm_up_i -> SiLU -> per-frame Conv2d(3x3, pad 1) -> pixel_shuffle(2)
        x = F.silu(rms(x))
        return torch.stack([F.pixel_shuffle(F.conv2d(x[:, :, i], p(f"{name}.conv.weight"), p(f"{name}.conv.bias"),
                                                     padding=1), 2) for i in range(x.shape[2])], dim=2)

    widths, layers = cfg["block_out_channels"][::-1], cfg["layers_per_block"][::-1]
    scaling, only, dw = cfg["spatio_temporal_scaling"][::-1], cfg["spatio_only"][::-1], cfg["is_dw_conv"][::-1]
    x = conv3d(z, "conv_in.conv", 3)
    for j in range(layers[0]):
        x = resnet(x, f"mid_block.resnets.{j}", widths[0], widths[0], dw[0], False)
    cin = widths[0]
    for i, cout in enumerate(widths):
        if cin != cout:
            x = resnet(x, f"up_blocks.{i}.conv_in", cin, cout, dw[i + 1], False)
        if scaling[i]:
            x = upsample3d(x, f"up_blocks.{i}.upsamplers.0", 1 if only[i] else 2)
        for j in range(layers[i + 1]):
            x = resnet(x, f"up_blocks.{i}.resnets.{j}", cout, cout, dw[i + 1], scaling[i])
        cin = cout
    if cfg["patch_size"] >= 2:
        x = upsample2d(x, "upsampler2d_1")
    if cfg["patch_size"] >= 4:
        x = upsample2d(x, "upsampler2d_2")
    return conv3d(F.silu(rms(x)), "conv_out.conv", 3), used  # norm_out (RMS for every patch size since 32be94c)


@pytest.mark.parametrize("name,frames,ratio", [("turbo-vaed-hunyuan", 5, 8), ("turbo-vaed-ltx", 9, 32)])
def test_loaded_decoder_equals_an_independent_reference_of_the_published_forward(tmp_path, name, frames, ratio):
    """The loaded module (raw latents BCTHW in, frames BCTHW out) against `upstream_decode` above, written from
    hustvl/Turbo-VAED @ 9268488 `autoencoder_kl_turbo_vaed.py` (TurboVAEDDecoder3d.forward, current since 32be94c)
    and configs/Turbo-VAED-{Hunyuan,LTX}.json, sharing no code with turbovaed: whole clip, every tensor read, same
    numbers to float32 summation order; 2 latent frames -> 2T-1 per temporal upsampler (Hunyuan 5, LTX 9)."""
    sd = random_state(name)
    loaded = load(save(sd, tmp_path / f"{name.replace('-', '_')}.safetensors"), name)
    z = torch.randn(2, sd["conv_in.conv.weight"].shape[1], 2, 2, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = loaded.canonical()(z)
        ref, used = upstream_decode(sd, UPSTREAM_CONFIGS[name], z)
    assert used == set(sd)
    assert ref.shape == got.shape == (2, 3, frames, 2 * ratio, 3 * ratio) and loaded.variant.output_frames(2) == frames
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max(), ((got - ref).abs().max(), ref.abs().max())


def test_non_causal_padding_repeats_edge_frames_on_both_sides():
    """decoder_causal is false in every released config: a frame's output sees the frame after it."""
    model = TurboVAED(VARIANTS["turbo-vaed-hunyuan"]).eval()
    z = torch.randn(1, 16, 3, 2, 2)
    later = z.clone()
    later[:, :, 2] += 1
    with torch.no_grad():
        assert not torch.equal(model(z)[:, :, :1], model(later)[:, :, :1])


@pytest.mark.parametrize("form", ["bare.pth", "bare.safetensors", "whole.safetensors"])
def test_files_load_strictly_and_are_told_by_their_tensors(tmp_path, form):
    """The released .pth is the decoder's state dict (`model.decoder.load_state_dict`); a whole
    AutoencoderKLTurboVAED state dict carries `decoder.` names, the latent statistics buffers and the
    training-only alignment heads, which are recognised and not used."""
    sd = random_state("turbo-vaed-ltx")
    kind, suffix = form.split(".")
    if kind == "whole":
        sd = {f"decoder.{k}": t for k, t in sd.items()} | {
            "latents_mean": torch.zeros(128), "latents_std": torch.ones(128),
            "aligned_feature_projection_heads.0.0.conv.weight": torch.zeros(512, 256, 1, 1, 1)}
    path = save(sd, tmp_path / f"student.{suffix}")
    loaded = load(path)
    assert loaded.family == "turbo-vaed" and loaded.variant.name == "turbo-vaed-ltx"
    assert len(loaded.skipped) == (3 if kind == "whole" else 0)
    got = loaded.module.state_dict()
    assert all(torch.equal(got[k], sd[k if kind == "bare" else f"decoder.{k}"].to(got[k].dtype)) for k in got)
    d = loaded.describe()
    assert d["frame_rule"] == "T latent frames -> 8T - 7 frames" and d["spatial_ratio"] == 32 and not d["causal"]
    assert "raw LTX-Video VAE latents" in d["latents"]


def test_the_hunyuan_and_cogvideox_layouts_are_one_and_need_a_name(tmp_path):
    sd = random_state("turbo-vaed-hunyuan")
    with pytest.raises(InputError, match="fits turbo-vaed-hunyuan, turbo-vaed-cog .*--variant"):
        load(save(sd, tmp_path / "student.pth"))
    assert load(save(sd, tmp_path / "turbo_vaed_cog.pth")).variant.name == "turbo-vaed-cog"
    assert load(save(sd, tmp_path / "student.pth"), "turbo-vaed-hunyuan").variant.vae == "HunyuanVideo"


def test_bad_turbo_vaed_files_get_one_clear_error(tmp_path):
    sd = random_state("turbo-vaed-ltx")
    sd["up_blocks.1.resnets.0.conv1.conv.weight"] = torch.zeros(256, 256, 1, 1, 1)
    with pytest.raises(InputError, match="closest: turbo-vaed-ltx: up_blocks.1.resnets.0.conv1.conv.weight has shape"):
        load(save(sd, tmp_path / "a.safetensors"))
    sd = random_state("turbo-vaed-ltx") | {"decoder_extra.weight": torch.zeros(1)}
    with pytest.raises(InputError, match="'decoder_extra.weight' is not part of it"):
        load(save(sd, tmp_path / "b.safetensors"))
    # the released files hold the statistics of the BatchNorm3d norm_out that upstream replaced by a parameter-free
    # RMS norm (commit 32be94c): they load, and those tensors go unused, as upstream's strict=False load leaves them
    sd = random_state("turbo-vaed-ltx") | {"norm_out.running_mean": torch.zeros(4), "norm_out.running_var":
                                           torch.ones(4), "norm_out.num_batches_tracked": torch.tensor(7)}
    loaded = load(save(sd, tmp_path / "c.safetensors"))
    assert [k for k in loaded.skipped if k.startswith("norm_out.")] == [
        "norm_out.num_batches_tracked", "norm_out.running_mean", "norm_out.running_var"]
    with pytest.raises(InputError, match="does not fit turbo-vaed-dc"):
        load(save(random_state("turbo-vaed-ltx"), tmp_path / "d.safetensors"), "turbo-vaed-dc")


def test_decode_refuses_normalised_latents_and_wrong_channels(tmp_path):
    from turbovaed.decoders import decode_file
    from turbovaed.io import LatentFile

    loaded = load(save(random_state("turbo-vaed-hunyuan"), tmp_path / "turbo_vaed_hunyuan.pth"))
    save_file({"latents": torch.randn(1, 16, 2, 2, 2)}, tmp_path / "z.safetensors")
    with pytest.raises(InputError, match="ships no latent statistics"):
        decode_file(loaded, LatentFile(tmp_path / "z.safetensors"), normalized=True)
    frames = decode_file(loaded, LatentFile(tmp_path / "z.safetensors"))
    assert frames.shape == (3, 5, 16, 16) and frames.abs().max() <= 1
    save_file({"latents": torch.randn(1, 128, 2, 2, 2)}, tmp_path / "w.safetensors")
    with pytest.raises(InputError, match="channels"):
        decode_file(loaded, LatentFile(tmp_path / "w.safetensors"))


BACKENDS = [("onnx", "fp32"), ("executorch", "fp32"), ("litert", "fp32"), ("coreml", "fp16"), ("coreai", "fp16")]


@pytest.mark.parametrize("backend,precision", BACKENDS)
def test_a_turbo_vaed_file_exports_through_its_lowering_and_verifies(tmp_path, backend, precision):
    """The 2D lowering is the graph; each artifact is run (Core ML: weight level) on held-out latents against the
    eager published (Conv3d) forward."""
    from test_export import recipe_for

    from turbovaed.export.core import export

    if backend == "coreai":
        pytest.importorskip("coreai_opt", reason="the coreai extra is not installed")
    path = save(random_state("turbo-vaed-ltx"), tmp_path / "turbo_vaed_ltx.safetensors")
    recipe = recipe_for(backend, precision, shape={"latent_frames": 2, "height": 64, "width": 64},  # float: one clip
                        calibration={"synthetic": True, "clips": 1, "verify_clips": 1})
    manifest = export(recipe, path, tmp_path / "out")
    n = manifest["numerics"]
    assert n["status"] in ("pass", "pass-weights") and n["psnr_db"] >= n["min_psnr_db"], n
    assert manifest["decoder"]["family"] == "turbo-vaed" and manifest["outputs"][0]["shape"] == [1, 3, 9, 64, 64]
    assert "eager turbo-vaed-ltx" in n["against"]
    if "conv_3d" in manifest["ops"]:
        assert manifest["ops"]["conv_3d"] == 0


def test_non_causal_decoders_have_no_streaming_graph(tmp_path):
    from test_export import recipe_for

    from turbovaed.export.core import export

    path = save(random_state("turbo-vaed-ltx"), tmp_path / "turbo_vaed_ltx.safetensors")
    recipe = recipe_for("onnx", "fp32", shape={"latent_frames": 2, "height": 64, "width": 64, "stream_chunk": 1})
    with pytest.raises(InputError, match="not causal"):
        export(recipe, path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
