"""Flash-VAED's LTX-Video student, loaded from a local file. No released weight file is on this machine: every
file here has exactly the names and shapes of the published student (Aoko955/Flash-VAED
models/ltx/ltx_prune_1_4.py as infer.py builds it, read upstream) with random values. The blocks it shares
with LTX-Video's decoder (dense resnet block with shortcut, upsampler, head and unpatchify) are checked against
diffusers' own LTX-Video classes with the same weights."""

import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_exports_2d
from diffusers.models.autoencoders import autoencoder_kl_ltx as ltx

from turbovaed.decoders import load
from turbovaed.decoders.flash_vaed_ltx import VARIANTS, DepthwiseCausalConv, FlashVAEDLTX, LTXUpsampler
from turbovaed.decoders.turbo_vaed import ResnetBlock, TimeConv
from turbovaed.io import InputError

V = VARIANTS["flash-vaed-ltx"]

# read from the published definition: LTX-Video 0.9.0's decoder widths, the last two up blocks at a quarter
PUBLISHED = {
    "conv_in.conv.weight": (512, 128, 3, 3, 3),
    "mid_block.resnets.3.conv2.depthwise.weight": (512, 1, 3, 3, 3),  # 4 depthwise blocks in the middle
    "mid_block.resnets.0.conv1.pointwise.weight": (512, 512, 1, 1, 1),
    "up_blocks.0.resnets.2.conv1.depthwise.bias": (512,),
    "up_blocks.1.upsamplers.0.conv.conv.weight": (4096, 512, 3, 3, 3),  # C * 2 * 2 * 2, not pruned
    "up_blocks.2.conv_in.conv1.conv.weight": (64, 512, 3, 3, 3),  # pruned to 256 / 4
    "up_blocks.2.conv_in.norm3.weight": (512,),
    "up_blocks.2.resnets.2.conv_shortcut.conv.weight": (64, 64, 1, 1, 1),  # force_shortcut in pruned blocks
    "up_blocks.2.upsamplers.0.conv.conv.weight": (512, 64, 3, 3, 3),
    "up_blocks.3.conv_in.conv2.conv.weight": (32, 32, 3, 3, 3),  # conv_in stays 3D in the per-frame block
    "up_blocks.3.resnets.3.conv1.weight": (32, 32, 3, 3),  # per-frame Conv2d, 4 of them
    "up_blocks.3.resnets.0.conv_shortcut.weight": (32, 32, 1, 1),
    "conv_out.conv.weight": (48, 32, 3, 3, 3),  # 3 * 4 * 4, then unpatchify
}


def random_state() -> dict[str, torch.Tensor]:
    """The student's tensors with variance-preserving random values, LayerNorm weights near 1 (a new dict each
    call, the tensors made once: 67M values)."""
    return dict(_random_state())


@functools.cache
def _random_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for k, t in FlashVAEDLTX(V).state_dict().items():
        if t.ndim == 1:
            sd[k] = torch.randn(t.shape, generator=gen) * 0.1 + (1.0 if "norm3.weight" in k else 0.0)
        else:
            sd[k] = torch.randn(t.shape, generator=gen) * t[0].numel() ** -0.5
    return sd


@pytest.fixture(scope="module")
def model() -> FlashVAEDLTX:
    m = FlashVAEDLTX(V).eval()
    m.load_state_dict(random_state())
    return m


def test_the_module_has_the_published_tensor_names_and_shapes():
    m = FlashVAEDLTX(V)
    shapes = {k: tuple(t.shape) for k, t in m.state_dict().items()}
    for k, shape in PUBLISHED.items():
        assert shapes.get(k) == shape, (k, shapes.get(k))
    assert not any(k.startswith(("up_blocks.0.conv_in", "up_blocks.1.conv_in", "norm_out")) for k in shapes)
    assert not any("norm1" in k or "norm2" in k or "time_embedder" in k for k in shapes)  # no affine, no timestep
    # no parameter count is published (README, paper abstract); this is what the published definition builds
    assert m.num_parameters() == 66_955_024


def _copy(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    dst.load_state_dict(src.state_dict(), strict=True)


def test_the_blocks_shared_with_ltx_video_equal_diffusers(model):
    """A pruned dense block with its shortcut, the upsampler and the head + unpatchify, each against diffusers'
    LTX-Video class with the same weights (the published student copies those classes)."""
    torch.manual_seed(0)
    x = torch.randn(1, 16, 3, 5, 6)
    ours, ref = ResnetBlock(16, 8, TimeConv, 3), ltx.LTXVideoResnetBlock3d(16, 8, is_causal=False)
    up, ref_up = LTXUpsampler(8), ltx.LTXVideoUpsampler3d(8, stride=(2, 2, 2), is_causal=False)
    with torch.no_grad():
        for p in [*ours.parameters(), *up.parameters()]:  # LayerNorm's affine away from identity too
            p.add_(0.1 * torch.randn_like(p))
        _copy(ours, ref)  # strict: the same tensor names
        _copy(up, ref_up)
        assert torch.allclose(ours(x), ref(x), atol=1e-5)
        assert torch.allclose(up(x[:, :8]), ref_up(x[:, :8]), atol=1e-6)
    # the head: diffusers' decoder (patch 4, no blocks of note) run to its end, and ours on its conv_out input
    dec = ltx.LTXVideoDecoder3d(in_channels=8, out_channels=3, block_out_channels=(32,), spatio_temporal_scaling=(False,),
                                layers_per_block=(1, 1), patch_size=4, is_causal=False).eval()
    seen = {}
    dec.conv_out.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    z = torch.randn(1, 8, 2, 3, 4)
    with torch.no_grad():
        want = dec(z)
        mine = FlashVAEDLTX(V).eval()
        mine.conv_out.conv.load_state_dict(dec.conv_out.conv.state_dict())
        got = mine.unpatchify(mine.conv_out(seen["x"]))  # diffusers' norm_out and SiLU ran before the hook
    assert want.shape == (1, 3, 2, 12, 16) and torch.allclose(got, want, atol=1e-6)


def test_the_depthwise_convs_are_causal_and_the_rest_are_not():
    """Upstream's depthwise conv pads time with two first-frame copies in front whatever the decoder's
    `is_causal`: its frame t sees frames <= t. The dense convs see one frame ahead."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 5, 3, 3)
    later = x.clone()
    later[:, :, 3:] += 1
    dw, dense = DepthwiseCausalConv(4, 4, 3), TimeConv(4, 4, 3)
    with torch.no_grad():
        assert torch.equal(dw(x)[:, :, :3], dw(later)[:, :, :3])
        assert not torch.equal(dense(x)[:, :, 2], dense(later)[:, :, 2])


def _reference_decode(sd: dict[str, torch.Tensor], z: torch.Tensor) -> tuple[torch.Tensor, set[str]]:
    """Upstream's whole decoder forward in plain torch ops, its structure written from `ltx_prune_1_4.py` (not read
    from `sd`): returns the frames and the tensor names it used."""
    used = set()

    def p(k):
        used.add(k)
        return sd[k]

    def pad_t(x, front, back):  # edge frames repeated, as upstream's convs pad time
        return torch.cat([x[:, :, :1]] * front + [x] + [x[:, :, -1:]] * back, dim=2)

    def dense(x, k):  # LTXVideoCausalConv3d(is_causal=False): (k - 1) // 2 edge copies each side, zero-padded H, W
        w = p(k + ".conv.weight")
        n = (w.shape[2] - 1) // 2
        return F.conv3d(pad_t(x, n, n), w, p(k + ".conv.bias"), padding=(0, w.shape[3] // 2, w.shape[4] // 2))

    def depthwise(x, k):  # LTXVideoDepthwiseCausalConv3d: k - 1 first-frame copies in front, always; then 1x1x1
        w = p(k + ".depthwise.weight")
        x = F.conv3d(pad_t(x, w.shape[2] - 1, 0), w, p(k + ".depthwise.bias"), padding=(0, w.shape[3] // 2,
                     w.shape[4] // 2), groups=x.shape[1])
        return F.conv3d(x, p(k + ".pointwise.weight"), p(k + ".pointwise.bias"))

    def frame(x, k):  # LTXVideoSpatialResnetBlock3d's nn.Conv2d(padding=k // 2) on (B * T, C, H, W)
        b, c, t, h, w = x.shape
        wt = p(k + ".weight")
        y = F.conv2d(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), wt, p(k + ".bias"), padding=wt.shape[-1] // 2)
        return y.view(b, t, -1, h, w).permute(0, 2, 1, 3, 4)

    def rms(x):  # upstream RMSNorm(eps=1e-8, no affine) over channels, in fp32
        x = x.movedim(1, -1).float()
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-8)).movedim(-1, 1)

    def resnet(x, k, conv, shortcut):  # norm1, SiLU, conv1, norm2, SiLU, conv2 + (LayerNorm(eps=1e-6), 1x1 conv)(x)
        h = conv(F.silu(rms(conv(F.silu(rms(x)), k + ".conv1"))), k + ".conv2")
        if shortcut:
            x = F.layer_norm(x.movedim(1, -1), x.shape[1:2], p(k + ".norm3.weight"), p(k + ".norm3.bias"), 1e-6)
            x = conv(x.movedim(-1, 1), k + ".conv_shortcut")
        return h + x

    def upsample(x, k):  # LTXVideoUpsampler3d(stride 2, no residual): (C, t, y, x) sub-positions, first frame dropped
        b, _, t, h, w = x.shape
        x = dense(x, k).reshape(b, -1, 2, 2, 2, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)[:, :, 1:]

    # infer.py: block_out_channels (128, 256, 512, 512), layers (4, 3, 3, 3, 4), scaling (True, True, True, False),
    # decoder_causal False, no timestep conditioning / noise; the decoder reverses them and keeps 1/4 from i >= 2
    widths, layers, scaling = (512, 512, 256 // 4, 128 // 4), (3, 3, 3, 4), (False, True, True, True)
    x = dense(z, "conv_in")
    for j in range(4):
        x = resnet(x, f"mid_block.resnets.{j}", depthwise, False)
    cin = 512
    for i, cout in enumerate(widths):  # use_depthwise = i < 2, use_spatial = i == 3, force_shortcut = i >= 2
        k, conv = f"up_blocks.{i}", depthwise if i < 2 else frame if i == 3 else dense
        if cin != cout or i >= 2:  # conv_in: depthwise if use_depthwise else the dense LTXVideoResnetBlock3d
            x = resnet(x, k + ".conv_in", depthwise if i < 2 else dense, True)
        if scaling[i]:
            x = upsample(x, k + ".upsamplers.0.conv")
        for j in range(layers[i]):
            x = resnet(x, f"{k}.resnets.{j}", conv, i >= 2)
        cin = cout
    x = dense(F.silu(rms(x)), "conv_out")  # norm_out, conv_act, conv_out, then unpatchify (p = 4, p_t = 1)
    b, _, t, h, w = x.shape
    x = x.reshape(b, -1, 1, 4, 4, t, h, w).permute(0, 1, 5, 2, 6, 4, 7, 3)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3), used


def test_the_whole_decoder_equals_an_independent_reference_of_the_published_forward(tmp_path):
    """The loaded file's forward (raw latents, BCTHW, unclamped: infer.py divides by scaling_factor 1.0, passes a
    temb the decoder ignores without timestep conditioning, and clamps after) against `_reference_decode`, written
    from Aoko955/Flash-VAED models/ltx/ltx_prune_1_4.py as infer.py builds it, commit 54a27aaa2d11db5e9c52a0be075ec0500f8e13b3:
    every block, shortcut, norm eps, upsampler, the head, unpatchify and the 8T - 7 frame rule, same tensors."""
    sd = random_state()
    torch.save(sd, tmp_path / "Flash_VAED_LTX.pth")
    ours = load(tmp_path / "Flash_VAED_LTX.pth").canonical()
    torch.manual_seed(0)
    for t in (1, 3):
        z = torch.randn(1, 128, t, 2, 3)
        with torch.no_grad():
            got = ours(z)
            want, used = _reference_decode(sd, z / 1.0)
        assert used == set(sd)  # the reference's structure uses every tensor of ours, and ours has no other
        assert got.shape == want.shape == (1, 3, 8 * t - 7, 64, 96) and V.output_frames(t) == 8 * t - 7
        err = (got - want).abs().max().item()
        # 0.0 here (the same ops); a wrong LayerNorm eps (1e-5) or RMSNorm eps (1e-6) moves it by 4e-6 to 7e-6 x max
        assert err <= 1e-6 * want.abs().max().item(), (t, err, want.abs().max().item())


@pytest.mark.parametrize("t", [1, 2])
def test_frame_rule_and_the_exact_2d_form(model, t):
    z = torch.randn(1, 128, t, 2, 3)
    with torch.no_grad():
        whole = model(z)
        flat = model.to_mobile().eval()(z)
    assert whole.shape == (1, 3, 8 * t - 7, 64, 96) and V.output_frames(t) == 8 * t - 7
    assert (flat - whole).abs().max() <= 1e-5 * whole.abs().max()


def test_the_2d_form_is_2d(model):
    assert_exports_2d(model.to_mobile(), torch.randn(1, 128, 2, 2, 2))


def test_files_load_strictly_and_are_told_by_their_tensors(tmp_path):
    """The whole AutoencoderKLLTXVideo dict infer.py loads (encoder, statistics buffers, its two extras) as a
    weights-only .pth and a bare decoder dict as safetensors both load strictly, told apart from Turbo-VAED-LTX
    (which shares conv_in) by the tensors."""
    from safetensors.torch import save_file

    sd = random_state()
    whole = {f"decoder.{k}": t for k, t in sd.items()} | {
        "encoder.conv_in.conv.weight": torch.zeros(128, 48, 3, 3, 3), "latents_mean": torch.zeros(128),
        "latents_std": torch.ones(128), "mean_of_means": torch.zeros(1), "std_of_means": torch.ones(1)}
    torch.save(whole, tmp_path / "Flash_VAED_LTX.pth")
    save_file(sd, tmp_path / "decoder_only.safetensors")
    for path, skipped in ((tmp_path / "Flash_VAED_LTX.pth", 5), (tmp_path / "decoder_only.safetensors", 0)):
        loaded = load(path)
        assert loaded.family == "flash-vaed" and loaded.variant.name == "flash-vaed-ltx" and not loaded.causal
        got = loaded.module.state_dict()
        assert all(torch.equal(got[k], sd[k]) for k in got) and len(loaded.skipped) == skipped
    d = loaded.describe({"512x512": (512, 512)})
    assert d["frame_rule"] == "T latent frames -> 8T - 7 frames" and d["spatial_ratio"] == 32
    assert d["latents"].startswith("raw LTX-Video") and d["gmacs_per_frame"]["512x512"] > 0


def test_bad_flash_vaed_ltx_files_get_one_clear_error(tmp_path):
    sd = random_state()
    del sd["up_blocks.3.resnets.3.conv_shortcut.bias"]
    torch.save(sd, tmp_path / "a.pth")
    with pytest.raises(InputError, match="does not fit flash-vaed-ltx: 'up_blocks.3.resnets.3.conv_shortcut.bias' is "
                                         "missing"):
        load(tmp_path / "a.pth")
    whole = {f"decoder.{k}": t for k, t in random_state().items()} | {"decoder.time_embedder.linear_1.weight":
                                                                         torch.zeros(4, 4)}
    torch.save(whole, tmp_path / "c.pth")
    with pytest.raises(InputError, match="'time_embedder.linear_1.weight' is not part of it"):
        load(tmp_path / "c.pth")
    torch.save(random_state(), tmp_path / "ok.pth")
    with pytest.raises(InputError, match="not causal.*no streaming step graph"):
        load(tmp_path / "ok.pth").step()


def test_a_flash_vaed_ltx_file_exports_and_verifies(tmp_path):
    """Whole clips through ONNX (the family's other backends are covered by the Wan student's exports; this
    student's graph is the same MobileDecoder kind as Turbo-VAED's, exported on every backend)."""
    from test_export import recipe_for

    from turbovaed.export.core import export

    torch.save(random_state(), tmp_path / "Flash_VAED_LTX.pth")
    recipe = recipe_for("onnx", "fp32", shape={"latent_frames": 2, "height": 64, "width": 64},
                        calibration={"synthetic": True, "clips": 1, "verify_clips": 1})
    manifest = export(recipe, tmp_path / "Flash_VAED_LTX.pth", tmp_path / "out")
    n = manifest["numerics"]
    assert n["status"] == "pass" and n["psnr_db"] >= n["min_psnr_db"], n
    assert manifest["decoder"]["variant"] == "flash-vaed-ltx" and manifest["outputs"][0]["shape"] == [1, 3, 9, 64, 64]
