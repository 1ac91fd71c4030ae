"""Flash-VAED's Wan 2.1 student, loaded from a local file. No released weight file is on this machine: every
file here has exactly the names and shapes of the published `WanVAE_` (Aoko955/Flash-VAED
models/wan/model_hybrid_aggressive.py, read upstream) with random values. The published per-frame cached decode
is written out below independently of our module (its cache rules, the 'Rep' first-frame marker and the
wrapper's de-normalisation), and our whole-clip, 2D and streaming forms are checked against it."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_exports_2d

from turbovaed.decoders import decode_file, load
from turbovaed.decoders.flash_vaed import VARIANTS, FlashVAED, FlashVAEDStep, Resample, ResidualBlockFast, SeparableConv3d
from turbovaed.io import InputError

V = VARIANTS["flash-vaed-wan2_1"]
MEAN, STD = torch.tensor(V.mean).view(1, -1, 1, 1, 1), torch.tensor(V.std).view(1, -1, 1, 1, 1)


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The published WanVAE_ state dict (its encoder is empty; `conv1` is the encoder-side 1x1 conv) with
    variance-preserving random values and gammas near 1."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, t in FlashVAED(V).state_dict().items():
        if "gamma" in k:
            sd[k] = 1 + 0.1 * torch.randn(t.shape, generator=gen)
        elif t.ndim == 1:
            sd[k] = 0.1 * torch.randn(t.shape, generator=gen)
        else:
            sd[k] = torch.randn(t.shape, generator=gen) * t[0].numel() ** -0.5
    return sd | {"conv1.weight": torch.randn(32, 32, 1, 1, 1, generator=gen), "conv1.bias": torch.zeros(32)}


@pytest.fixture(scope="module")
def model() -> FlashVAED:
    m = FlashVAED(V).eval()
    m.load_state_dict({k: t for k, t in random_state().items() if not k.startswith("conv1.")})
    return m


def published_decode(model: FlashVAED, z_norm: torch.Tensor) -> torch.Tensor:
    """WanVAE.decode: normalised latents de-normalised, then one latent frame per call through the decoder with
    feat_cache (each causal conv keeps its last two input frames; a time upsampler marks its first call 'Rep' and
    passes that frame through)."""
    feat = [None] * 64
    outs = []

    def conv_cache(conv, x, cache):
        pad_t = conv.kernel_size[0] - 1
        if cache is not None and pad_t > 0:
            x = torch.cat([cache, x], 2)
            pad_t -= cache.shape[2]
        kh, kw = conv.kernel_size[1] // 2, conv.kernel_size[2] // 2
        x = F.pad(x, (kw, kw, kh, kh, pad_t, 0))
        return F.conv3d(x, conv.weight, conv.bias, groups=conv.groups)

    def cached(fn, x, idx):
        cache_x = x[:, :, -2:].clone()
        if cache_x.shape[2] < 2 and feat[idx[0]] is not None and feat[idx[0]] != "Rep":
            cache_x = torch.cat([feat[idx[0]][:, :, -1:], cache_x], 2)
        out = fn(x, feat[idx[0]] if feat[idx[0]] != "Rep" else None)
        feat[idx[0]] = cache_x if feat[idx[0]] != "Rep" else "Rep"
        idx[0] += 1
        return out

    def sep(m: SeparableConv3d, x, cache):
        return F.conv3d(conv_cache(m.depthwise_conv, x, cache), m.pointwise_conv.weight, m.pointwise_conv.bias)

    def rbf(m: ResidualBlockFast, x, idx):
        h = m.shortcut(x)
        res = x
        for layer in m.residual:
            if isinstance(layer, SeparableConv3d):
                res = cached(lambda a, c, layer=layer: sep(layer, a, c), res, idx)
            else:
                res = layer(res)
        return h + res

    def resample(m: Resample, x, idx):
        b, c, t, h, w = x.shape
        if m.time_conv is not None:
            if feat[idx[0]] is None:
                feat[idx[0]] = "Rep"
                idx[0] += 1
            else:
                cache_x = x[:, :, -2:].clone()
                if cache_x.shape[2] < 2 and feat[idx[0]] != "Rep":
                    cache_x = torch.cat([feat[idx[0]][:, :, -1:], cache_x], 2)
                xt = conv_cache(m.time_conv, x, feat[idx[0]] if feat[idx[0]] != "Rep" else None)
                feat[idx[0]] = cache_x
                idx[0] += 1
                xt = xt.reshape(b, 2, c, t, h, w)
                x = torch.stack((xt[:, 0], xt[:, 1]), dim=3).reshape(b, c, t * 2, h, w)
        t2 = x.shape[2]
        y = m.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t2, c, h, w))
        return y.reshape(b, t2, *y.shape[1:]).permute(0, 2, 1, 3, 4)

    z = z_norm * STD + MEAN  # z / scale[1] + scale[0], scale = [mean, 1 / std]
    x_all = F.conv3d(z, model.conv2.weight, model.conv2.bias)
    d = model.decoder
    for i in range(z.shape[2]):
        idx = [0]
        x = x_all[:, :, i:i + 1]
        b = x.shape[0]
        x = cached(lambda a, c: conv_cache(d.conv1, a, c), x, idx)
        x = rbf(d.middle[0], x, idx)
        t = x.shape[2]
        x2 = d.middle[1](x.permute(0, 2, 1, 3, 4).reshape(b * t, *x.shape[1:2], *x.shape[3:]))
        x = x2.reshape(b, t, *x2.shape[1:]).permute(0, 2, 1, 3, 4)
        x = rbf(d.middle[2], x, idx)
        two_d = False
        for j, layer in enumerate(d.upsamples):
            if j == 8:
                tb = x.shape[2]
                x = x.permute(0, 2, 1, 3, 4).reshape(b * tb, *x.shape[1:2], *x.shape[3:])
                two_d = True
            if two_d:
                x = layer.resample(x) if isinstance(layer, Resample) else layer(x)
            elif isinstance(layer, ResidualBlockFast):
                x = rbf(layer, x, idx)
            else:
                x = resample(layer, x, idx)
        x = x.reshape(b, tb, *x.shape[1:]).permute(0, 2, 1, 3, 4)
        x = F.silu(d.head[0](x))
        x = cached(lambda a, c: conv_cache(d.head[2], a, c), x, idx)
        outs.append(x)
    return torch.cat(outs, 2)


PUBLISHED = {  # names and shapes read from the published definition
    "conv2.weight": (16, 16, 1, 1, 1), "decoder.conv1.weight": (384, 16, 3, 3, 3),
    "decoder.middle.0.residual.0.gamma": (384, 1, 1, 1), "decoder.middle.0.residual.2.depthwise_conv.weight":
        (384, 1, 3, 3, 3), "decoder.middle.0.residual.6.pointwise_conv.weight": (384, 384, 1, 1, 1),
    "decoder.middle.1.norm.gamma": (384, 1, 1), "decoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
    "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1), "decoder.upsamples.3.resample.1.weight":
        (192, 384, 3, 3), "decoder.upsamples.4.shortcut.depthwise_conv.weight": (192, 1, 1, 1, 1),
    "decoder.upsamples.4.shortcut.pointwise_conv.weight": (384, 192, 1, 1, 1),
    "decoder.upsamples.8.shortcut.weight": (24, 24, 1, 1), "decoder.upsamples.11.resample.1.weight": (12, 24, 3, 3),
    "decoder.head.0.gamma": (12, 1, 1, 1), "decoder.head.2.weight": (3, 12, 3, 3, 3)}


def test_the_module_has_the_published_tensor_names_and_shapes():
    shapes = {k: tuple(t.shape) for k, t in FlashVAED(V).state_dict().items()}
    for k, shape in PUBLISHED.items():
        assert shapes.get(k) == shape, (k, shapes.get(k))
    assert "decoder.upsamples.5.shortcut.depthwise_conv.weight" not in shapes  # same width: an identity shortcut
    # no parameter count is published (README, paper abstract); this is what the published definition builds
    assert FlashVAED(V).num_parameters() == 5_859_995


@pytest.mark.parametrize("t", [1, 2, 4])
def test_whole_clip_2d_and_streamed_forms_equal_the_published_per_frame_decode(model, t):
    z = torch.randn(1, 16, t, 3, 5)
    with torch.no_grad():
        published = published_decode(model, (z - MEAN) / STD)
        whole = model(z)
        mobile = model.to_mobile().eval()
        flat = mobile(z)
        streamed = FlashVAEDStep(mobile).eval().stream(z)
    assert published.shape == (1, 3, 4 * t - 3, 24, 40) and V.output_frames(t) == 4 * t - 3
    scale = published.abs().max()
    for got in (whole, flat, streamed):
        assert (got - published).abs().max() <= 1e-5 * scale


def test_the_2d_form_is_2d(model):
    assert_exports_2d(model.to_mobile(), torch.randn(1, 16, 3, 2, 2))


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_files_load_strictly_and_decode_normalised_latents_as_the_wrapper_does(tmp_path, fmt):
    from safetensors.torch import save_file

    from turbovaed.io import LatentFile

    sd = random_state()
    path = tmp_path / f"Flash_VAED_Wan.{fmt}"
    torch.save(sd, path) if fmt == "pth" else save_file(sd, path)
    loaded = load(path)
    assert loaded.family == "flash-vaed" and loaded.variant.name == "flash-vaed-wan2_1" and loaded.causal
    assert loaded.skipped == ["conv1.bias", "conv1.weight"]
    got = loaded.module.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in got)
    d = loaded.describe()
    assert d["frame_rule"] == "T latent frames -> 4T - 3 frames" and "normalised" in d["latents"]
    z_norm = torch.randn(1, 16, 2, 3, 4)
    save_file({"latents": z_norm}, tmp_path / "z.safetensors")
    frames = decode_file(loaded, LatentFile(tmp_path / "z.safetensors"), normalized=True)
    with torch.no_grad():
        want = published_decode(loaded.module, z_norm)[0].clamp(-1, 1)
    assert frames.shape == (3, 5, 24, 32) and (frames - want).abs().max() <= 1e-4  # float sums in another order


def test_cli_streams_a_causal_decoder_file_and_refuses_a_non_causal_one(tmp_path):
    """`decode --decoder FILE --stream` decodes one latent frame at a time through the step graph: the same
    frames as the whole-clip decode (mp4-encoded, so compared after decoding both videos)."""
    import subprocess
    import sys

    from safetensors.torch import save_file
    from test_turbo_vaed import random_state as turbo_state
    from test_turbo_vaed import save

    from turbovaed.data import read_frames

    torch.save(random_state(), tmp_path / "Flash_VAED_Wan.pth")
    save_file({"latents": torch.randn(1, 16, 3, 4, 4)}, tmp_path / "z.safetensors")
    runs = {}
    for mode in ("whole", "stream"):
        cmd = [sys.executable, "-m", "turbovaed", "decode", "--decoder", str(tmp_path / "Flash_VAED_Wan.pth"),
               "--latents", str(tmp_path / "z.safetensors"), "--out", str(tmp_path / f"{mode}.mp4"), "--normalized"]
        result = subprocess.run(cmd + (["--stream"] if mode == "stream" else []), capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[mode] = torch.from_numpy(read_frames(tmp_path / f"{mode}.mp4")).float()
    assert runs["stream"].shape == runs["whole"].shape and runs["whole"].shape[0] == 9
    assert (runs["stream"] - runs["whole"]).abs().mean() < 2  # the same frames, through the codec
    save(turbo_state("turbo-vaed-ltx"), tmp_path / "turbo_vaed_ltx.safetensors")
    save_file({"latents": torch.randn(1, 128, 2, 2, 2)}, tmp_path / "w.safetensors")
    result = subprocess.run([sys.executable, "-m", "turbovaed", "decode", "--decoder",
                             str(tmp_path / "turbo_vaed_ltx.safetensors"), "--latents", str(tmp_path / "w.safetensors"),
                             "--out", str(tmp_path / "t.mp4"), "--stream"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "is not causal" in result.stderr and not (tmp_path / "t.mp4").exists()


def test_bad_flash_vaed_files_get_one_clear_error(tmp_path):
    sd = random_state()
    sd["decoder.head.2.weight"] = torch.zeros(3, 12, 1, 3, 3)
    torch.save(sd, tmp_path / "a.pth")
    with pytest.raises(InputError, match="does not fit flash-vaed-wan2_1: decoder.head.2.weight has shape"):
        load(tmp_path / "a.pth")
    sd = random_state()
    del sd["decoder.middle.1.proj.bias"]
    torch.save(sd, tmp_path / "b.pth")
    with pytest.raises(InputError, match="'decoder.middle.1.proj.bias' is missing"):
        load(tmp_path / "b.pth")
    ltx = {"decoder.up_blocks.0.resnets.0.conv1.depthwise.weight": torch.zeros(4, 1, 3, 3, 3),
           "decoder.up_blocks.0.resnets.0.conv1.pointwise.weight": torch.zeros(4, 4, 1, 1, 1)}
    torch.save(ltx, tmp_path / "Flash_VAED_LTX.pth")
    with pytest.raises(InputError, match="does not fit flash-vaed-ltx: 'conv_in.conv.weight' is missing"):
        load(tmp_path / "Flash_VAED_LTX.pth")


# ExecuTorch as the step graph only (its whole-clip graph holds the same blocks; ~40 s each on this CPU)
BACKENDS = [("onnx", "fp32", 0), ("litert", "fp32", 0), ("coreml", "fp16", 0), ("coreai", "fp16", 0),
            ("onnx", "fp32", 1), ("executorch", "fp32", 1)]


@pytest.mark.parametrize("backend,precision,chunk", BACKENDS)
def test_a_flash_vaed_file_exports_and_verifies(tmp_path, backend, precision, chunk):
    """Whole clips on every backend; the streaming step graph (one latent frame per call, the caches as state,
    `first` flag) where a runtime here runs it. Verified against the eager published-equivalent forward."""
    from test_export import recipe_for

    from turbovaed.export.core import export

    if backend == "coreai":
        pytest.importorskip("coreai_opt", reason="the coreai extra is not installed")
    torch.save(random_state(), tmp_path / "Flash_VAED_Wan.pth")
    recipe = recipe_for(backend, precision, shape={"latent_frames": 3, "height": 32, "width": 32, "stream_chunk": chunk},
                        calibration={"synthetic": True, "clips": 1, "verify_clips": 1})  # float precisions: one clip verifies
    manifest = export(recipe, tmp_path / "Flash_VAED_Wan.pth", tmp_path / "out")
    n = manifest["numerics"]
    assert n["status"] in ("pass", "pass-weights") and n["psnr_db"] >= n["min_psnr_db"], n
    assert manifest["decoder"]["family"] == "flash-vaed"
    if chunk:
        assert manifest["inputs"][1]["name"] == "first" and manifest["stream"]["first_chunk_drop_frames"] == 3
    else:
        assert manifest["outputs"][0]["shape"] == [1, 3, 9, 32, 32]
    if backend == "executorch":  # every compute op delegated (a step graph's state outputs change memory layout)
        assert set(manifest["ops"]["not_delegated_ops"]) <= ({"dim_order_ops__to_dim_order_copy_default"} if chunk
                                                             else set())


def test_normalised_input_folds_into_the_graph(tmp_path):
    """input_latents = "normalized": Wan 2.1's published statistics are folded into conv2, so the artifact
    takes what a Wan pipeline outputs; its step graph streams them too."""
    import onnxruntime as ort
    from test_export import recipe_for

    from turbovaed.export.core import export

    torch.save(random_state(), tmp_path / "Flash_VAED_Wan.pth")
    recipe = recipe_for("onnx", "fp32", shape={"latent_frames": 3, "height": 32, "width": 32, "stream_chunk": 1},
                        input_latents="normalized")
    manifest = export(recipe, tmp_path / "Flash_VAED_Wan.pth", tmp_path / "out")
    assert manifest["numerics"]["status"] == "pass" and manifest["latent_normalisation"]["mean"][0] == V.mean[0]
    z = torch.randn(1, 16, 3, 4, 4)
    with torch.no_grad():
        want = published_decode(load(tmp_path / "Flash_VAED_Wan.pth").module, z)
    session = ort.InferenceSession(str(tmp_path / "out" / manifest["name"] / manifest["artifact"]))
    names = [i.name for i in session.get_inputs()]
    states = [torch.zeros(i["shape"]).numpy() for i in manifest["inputs"][2:]]
    frames = []
    for t in range(3):
        out = session.run(None, dict(zip(names, [z[:, :, t:t + 1].numpy(), torch.full((1,), float(t == 0)).numpy(),
                                                  *states])))
        frames.append(torch.from_numpy(out[0]))
        states = out[1:]
    got = torch.cat(frames, 2)[:, :, 3:]  # the stream drops its first 3 frames
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_8bit_activations_are_refused_before_any_work(tmp_path):
    from test_export import recipe_for

    from turbovaed.export.core import export

    torch.save(random_state(), tmp_path / "Flash_VAED_Wan.pth")
    with pytest.raises(InputError, match="does not export with 8-bit activations yet \\(executorch int8 = W8A8\\)"):
        export(recipe_for("executorch", "int8"), tmp_path / "Flash_VAED_Wan.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()
