"""Decoders people already use, loaded from local files. No real weight file is on this machine: every file
here has exactly the published tensor names and shapes (tests/fixtures/taehv_state_dicts.json, from
madebyollin/taehv's model definition) with random values, which is what the loader reads."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from turbovaed.decoders import load
from turbovaed.decoders.taehv import VARIANTS, MemBlock, TAEHVDecoder, TGrow
from turbovaed.io import CheckpointError, InputError

LAYOUTS = Path(__file__).resolve().parent / "fixtures" / "taehv_state_dicts.json"  # a copy of shared/decoders'


def layouts() -> dict:
    return json.loads(LAYOUTS.read_text())


def random_file(name: str, folder: Path, fmt: str = "safetensors", stem: str | None = None, **override) -> Path:
    """A weight file with the published names and shapes of `name` (encoder included), random values."""
    entry = layouts()[name]
    gen = torch.Generator().manual_seed(0)
    # variance-preserving scale (1/sqrt(fan-in)), so activations stay in a trained net's range
    sd = {k: torch.randn(s, generator=gen) * (0.01 if len(s) == 1 else (s[1] * s[2] * s[3]) ** -0.5)
          for part in ("decoder_keys", "encoder_keys") for k, s in entry[part].items()}
    sd.update(override)
    path = folder / f"{stem or name}.{fmt}"
    if fmt == "safetensors":
        save_file(sd, path)
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("name", [n for n in VARIANTS if not n.startswith("lighttae")])
def test_every_published_variant_builds_the_published_layout_and_loads_strictly(tmp_path, name):
    entry = layouts()[name]
    model = TAEHVDecoder(VARIANTS[name])
    assert {k: list(t.shape) for k, t in model.state_dict().items()} == entry["decoder_keys"]
    assert model.num_parameters() == entry["decoder_params"]
    v = VARIANTS[name]
    assert (v.latent_channels, v.patch_size, v.t_upscale, v.frames_to_trim) == (
        entry["latent_channels"], entry["patch_size"], entry["t_upscale"], entry["frames_to_trim"])
    for fmt in ("safetensors", "pth"):
        path = random_file(name, tmp_path, fmt)
        loaded = load(path)
        assert loaded.variant.name == name and loaded.family == "taehv"
        sd = torch.load(path, weights_only=True) if fmt == "pth" else load_file(path)
        got = loaded.module.state_dict()
        assert all(torch.equal(got[k], sd[k]) for k in got)  # every parameter filled from the file
        assert len(loaded.skipped) == len(entry["encoder_keys"])  # the encoder is recognised, not used


@pytest.mark.parametrize("name", ["taew2_2_super", "taehv1_5_super"])
def test_super_decoders_load_strictly_and_stream_like_their_whole_clip(tmp_path, name):
    """The Super decoder (madebyollin/taehv 1f14a56: SuperMemBlocks, pixel-shuffle stages). Checked against
    taehv.py itself on the same weights, whole clip and its sequential decode: exact; here, the published layout
    fills every parameter, and the step graph streams the whole clip's frames."""
    loaded = load(random_file(name, tmp_path))
    assert loaded.variant.name == name and loaded.module.num_parameters() == layouts()[name]["decoder_params"]
    z = torch.randn(1, loaded.variant.latent_channels, 3, 4, 4)
    with torch.no_grad():
        whole = loaded.canonical()(z)
        streamed = loaded.step().stream(z)
    assert whole.shape == (1, 3, loaded.variant.output_frames(3), 64, 64)  # 16x: 8x and a 2x patch
    assert (streamed - whole).abs().max() < 1e-4  # float reassociation only (the frames reach +-1)


def test_layouts_shared_by_several_variants_need_the_file_name_or_variant(tmp_path):
    path = random_file("taehv", tmp_path, stem="weights")
    with pytest.raises(InputError, match="fits taehv, taew2_1, taecvx, taeos1_3, lighttaew2_1 .* --variant"):
        load(path)
    assert load(path, variant="taew2_1").variant.name == "taew2_1"
    assert load(random_file("taew2_1", tmp_path)).variant.name == "taew2_1"  # the published name breaks the tie
    with pytest.raises(InputError, match="variant taew2_2 takes 48"):
        load(path, variant="taew2_2")


def test_tgrow_quirk_keeps_the_last_rows_like_the_published_loader(tmp_path):
    wide = torch.randn(512, 256, 1, 1)  # a TGrow trained with time upscaling; taehv's first stage has none
    loaded = load(random_file("taehv", tmp_path, **{"decoder.7.conv.weight": wide}))
    assert torch.equal(loaded.module.state_dict()["decoder.7.conv.weight"], wide[-256:])
    assert any("decoder.7.conv.weight" in n for n in loaded.notes)


def sequential(model: TAEHVDecoder, z: torch.Tensor) -> torch.Tensor:
    """The published causal order, written independently: one latent frame at a time through every layer,
    each MemBlock remembering its previous input, a TGrow splitting into frames taken in order."""
    layers, memory, out = model.decoder, {}, []

    def run(x: torch.Tensor, i: int) -> None:
        while i < len(layers):
            b = layers[i]
            if isinstance(b, MemBlock):
                past = memory.get(i, torch.zeros_like(x))
                memory[i] = x
                x = b(x, past)
            elif isinstance(b, TGrow):
                for chunk in b.conv(x).chunk(b.stride, 1):
                    run(chunk, i + 1)
                return
            else:
                x = b(x)
            i += 1
        out.append(x)

    for t in range(z.shape[1]):
        run(z[:, t], 0)
    frames = torch.stack(out, 1)
    p = model.variant.patch_size
    frames = torch.stack([F.pixel_shuffle(f, p) if p > 1 else f for f in frames.unbind(1)], 1).clamp(0, 1)
    keep_all = model.variant.name == "taecvx" and z.shape[1] % 2 == 0
    return frames if keep_all else frames[:, model.variant.frames_to_trim:]


@pytest.mark.parametrize("name,t", [("taehv", 3), ("taecvx", 2), ("taecvx", 3), ("taew2_2", 2), ("taeltx_2", 2)])
def test_forward_follows_the_published_frame_rule_memory_and_range(tmp_path, name, t):
    model = load(random_file(name, tmp_path)).module
    v = model.variant
    z = torch.randn(1, t, v.latent_channels, 3, 4) * 4  # large values: the input Clamp matters
    with torch.no_grad():  # float64: random weights make large activations, and the two orders sum differently
        y, ref = model.double()(z.double()), sequential(model, z.double())
    assert y.shape == (1, v.output_frames(t), 3, 3 * 8 * v.patch_size, 4 * 8 * v.patch_size)
    assert y.shape[1] == (t * v.t_upscale if name == "taecvx" and t % 2 == 0 else t * v.t_upscale - v.frames_to_trim)
    assert torch.allclose(y, ref, atol=1e-9) and y.min() >= 0 and y.max() <= 1
    with pytest.raises(ValueError, match=f"{v.latent_channels} channels"):
        model(torch.randn(1, t, v.latent_channels + 1, 3, 4, dtype=torch.float64))


class Arbitrary:
    """Loading this needs arbitrary code: weights_only refuses it."""


def test_bad_files_get_one_clear_error(tmp_path):
    torch.save({"decoder.1.weight": Arbitrary()}, tmp_path / "pickle.pth")  # a class weights_only refuses
    with pytest.raises(CheckpointError, match="not a weights-only pickle"):
        load(tmp_path / "pickle.pth")
    save_file({"blocks.0.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(InputError, match="matches no known decoder layout \\(closest family: TAEHV"):
        load(tmp_path / "other.safetensors")
    missing = random_file("taehv", tmp_path)
    sd = load_file(missing)
    del sd["decoder.20.weight"]
    save_file(sd, tmp_path / "taehv_missing.safetensors")
    with pytest.raises(InputError, match="'decoder.20.weight' is missing"):
        load(tmp_path / "taehv_missing.safetensors")
    sd = load_file(missing)
    sd["decoder.8.weight"] = torch.zeros(128, 256, 1, 1)
    save_file(sd, tmp_path / "taehv_bad.safetensors")
    with pytest.raises(InputError, match="does not fit taehv: decoder.8.weight has shape \\[128, 256, 1, 1\\], the "
                                         "layout takes \\[128, 256, 3, 3\\]"):
        load(tmp_path / "taehv_bad.safetensors")
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="expected a .safetensors, .pth or .pt"):
        load(tmp_path / "x.bin")


def test_info_describes_a_decoder_file(tmp_path):
    import subprocess
    import sys

    path = random_file("taew2_2", tmp_path)
    result = subprocess.run([sys.executable, "-m", "turbovaed", "info", "--decoder", str(path)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for needed in ("taew2_2", "Wan 2.2 5B", "9,923,532", "4T - 3", "the diffusion model's latents", "512x512", "720p"):
        assert needed in result.stdout, (needed, result.stdout)
    from turbovaed.decoders import load as load_decoder

    sized = subprocess.run([sys.executable, "-m", "turbovaed", "info", "--decoder", str(path), "--size", "256x448"],
                           capture_output=True, text=True, timeout=300)
    assert "GMACs per output frame, 256x448" in sized.stdout and "720p" not in sized.stdout
    published = load_decoder(random_file("taehv", tmp_path)).describe()["gmacs_per_frame"]["512x512"]
    assert abs(published - 52.5) < 0.1  # TAEHV's published cost per frame at 512x512


BACKENDS = [("onnx", "fp32"), ("executorch", "fp32"), ("litert", "fp32"), ("coreml", "fp16"), ("coreai", "fp16"),
            ("onnx", "int8")]


@pytest.mark.parametrize("backend,precision", BACKENDS)
def test_a_decoder_file_exports_and_verifies_on_every_backend(tmp_path, backend, precision):
    """TAEHV is 2D already: its published forward is the graph. Each backend's artifact is run (Core ML: weight
    level) on held-out latents against the eager decoder."""
    from test_export import recipe_for

    from turbovaed.export.core import export

    if backend == "coreai":
        pytest.importorskip("coreai_opt", reason="the coreai extra is not installed")
    manifest = export(recipe_for(backend, precision), random_file("taew2_1", tmp_path), tmp_path / "out")
    n = manifest["numerics"]
    assert n["status"] in ("pass", "pass-weights") and n["psnr_db"] >= n["min_psnr_db"], n
    assert manifest["decoder"]["variant"] == "taew2_1" and manifest["layout"] == "bcthw"  # turbovaed's I/O
    assert manifest["inputs"][0]["shape"] == [1, 16, 2, 4, 4] and manifest["outputs"][0]["range"] == "[-1, 1]"
    assert manifest["outputs"][0]["shape"] == [1, 3, 5, 32, 32]  # 2 latent frames -> 4*2 - 3
    assert "eager taew2_1" in n["against"] and "student" not in manifest


SUPER_BACKENDS = [("onnx", "fp32"), ("executorch", "fp32"), ("litert", "fp32"), ("coreml", "fp16"), ("coreai", "fp16")]


@pytest.mark.parametrize("backend,precision", SUPER_BACKENDS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "step"])
def test_a_super_decoder_file_exports_and_verifies_on_every_backend(tmp_path, backend, precision, stream):
    """taehv1_5_super (SuperMemBlocks: 7x7 depthwise over cat(x, past), the patch-2 output) converts and verifies
    on every backend like TAEHV, as the whole-clip graph and as the step graph (one latent frame per call, the
    memory as explicit state, verified streamed against the whole clip); every conv is delegated to XNNPACK."""
    from test_export import recipe_for

    from turbovaed.export.core import export

    shape = {"shape": {"latent_frames": 3, "height": 32, "width": 32, "stream_chunk": 1}} if stream else {}
    manifest = export(recipe_for(backend, precision, **shape), random_file("taehv1_5_super", tmp_path),
                      tmp_path / "out")
    n = manifest["numerics"]
    assert n["status"] in ("pass", "pass-weights") and n["psnr_db"] >= n["min_psnr_db"], n
    assert manifest["decoder"]["variant"] == "taehv1_5_super"
    if stream:
        assert "streamed 1 latent frame per call" in n["against"] and manifest["stream"]["states"] == 9
    if backend == "executorch":
        assert manifest["ops"]["conv_not_delegated"] == 0, manifest["ops"]


def test_a_decoder_file_calibrates_on_real_clips_through_a_teacher_of_its_geometry(tmp_path):
    """taew2_1 takes Wan 2.1-geometry latents (16 channels, 8x, 4x): the shipped reference teacher makes such
    latents of real clips, which calibrate and verify the int8 artifact."""
    from test_export import recipe_for

    from turbovaed.export.core import export

    recipe = recipe_for("onnx", "int8", teacher="reference", teacher_tiny=False,
                        calibration={"synthetic": False, "clips": 2, "verify_clips": 1})
    manifest = export(recipe, random_file("taew2_1", tmp_path), tmp_path / "out")
    assert manifest["calibration"]["source"].startswith("reference teacher latents of") and \
        "real videos" in manifest["calibration"]["source"]
    assert manifest["numerics"]["status"] == "pass"


def test_decoder_export_and_decode_refuse_what_does_not_apply(tmp_path):
    from test_export import recipe_for

    from turbovaed.export.core import export

    path = random_file("taehv", tmp_path)
    light = random_file("taew2_1", tmp_path, stem="lighttaew2_1")  # de-normalised latents, no statistics shipped
    for file, extra, message in ((light, {"input_latents": "normalized"}, "ships no latent statistics"),
                                 (path, {"shape": {"latent_frames": 2, "height": 32, "width": 32, "stream_chunk": 2}},
                                  "streams one latent frame per call")):
        with pytest.raises(InputError, match=message):
            export(recipe_for("onnx", "fp32", **extra), file, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_decoder_files_bundle_is_what_the_apps_load(tmp_path):
    """The graph takes turbovaed's (B, C, T, h, w) latents and gives [-1, 1] frames, so --bundle writes the
    same bundle a student's export does: sample latents and the eager decoder's frames for them."""
    import numpy as np
    import onnxruntime as ort
    from test_export import recipe_for

    from turbovaed.export.core import export

    manifest = export(recipe_for("onnx", "fp32"), random_file("taehv", tmp_path), tmp_path / "out", bundle=True)
    folder = tmp_path / "out" / manifest["name"]
    meta = json.loads((folder / "bundle.json").read_text())
    z = np.fromfile(folder / meta["latents"]["file"], "<f4").reshape(meta["latents"]["shape"])
    ref = np.fromfile(folder / meta["reference_frames"]["file"], "<f4").reshape(meta["reference_frames"]["shape"])
    got = ort.InferenceSession(str(folder / manifest["artifact"])).run(None, {"latents": z})[0]
    assert meta["reference_frames"]["range"] == "[-1, 1]" and ref.shape == got.shape == (1, 3, 5, 32, 32)
    assert np.abs(got - ref).max() < 1e-4 and ref.min() >= -1 and ref.max() <= 1


def test_cli_decodes_taehv_layout_latents_with_a_decoder_file(tmp_path):
    import subprocess
    import sys

    path = random_file("taehv", tmp_path)
    z = torch.randn(1, 3, 16, 4, 5)  # (N, T, C, h, w), as TAEHV users save them
    save_file({"latents": z}, tmp_path / "z.safetensors", metadata={"layout": "btchw"})

    def run(*args):
        return subprocess.run([sys.executable, "-m", "turbovaed", "decode", "--decoder", str(path), "--latents",
                               str(tmp_path / "z.safetensors"), *args], capture_output=True, text=True, timeout=300)

    ok = run("--out", str(tmp_path / "v.mp4"))
    assert ok.returncode == 0, ok.stderr
    assert "9 frames 32x40" in ok.stdout and (tmp_path / "v.mp4").stat().st_size > 0
    # TAEHV decodes the diffusion model's latents as they are (madebyollin/taehv): --normalized is its convention,
    # raw latents cannot be normalised without the VAE's statistics
    assert run("--out", str(tmp_path / "n.mp4"), "--normalized").returncode == 0
    assert (tmp_path / "n.mp4").read_bytes() == (tmp_path / "v.mp4").read_bytes()
    bad = run("--out", str(tmp_path / "w.mp4"), "--raw")
    assert bad.returncode == 2 and "raw latents would need" in bad.stderr and not (tmp_path / "w.mp4").exists()
    wrong = subprocess.run([sys.executable, "-m", "turbovaed", "decode", "--decoder", str(random_file("taew2_2", tmp_path)),
                            "--latents", str(tmp_path / "z.safetensors"), "--out", str(tmp_path / "x.mp4")],
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "48" in wrong.stderr and "16" in wrong.stderr


def test_decoder_artifacts_are_profiled_like_students_keyed_by_the_files_sha256(tmp_path):
    """`turbovaed profile` measures a decoder file's artifacts beside its eager published forward, records keyed
    by the weight file's sha256; device estimates (a student cost model) are skipped, saying so."""
    import hashlib

    from test_export import recipe_for

    from turbovaed.export.core import export
    from turbovaed.profile.host import profile

    path = random_file("taehv", tmp_path)
    export(recipe_for("onnx", "fp32"), path, tmp_path / "exports")
    result = profile(tmp_path / "exports", runs=2, warmup=0, threads=1, results_dir=tmp_path / "profiles")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert {r.artifact for r in result["measured"]} == {"t-onnx-fp32", "eager"}
    assert all(r.model_sha256 == sha and r.model == path.name and r.status == "ok" for r in result["measured"])
    assert result["estimates"] == [] and any("decoder files" in s for s in result["skipped"])


@pytest.mark.parametrize("name", ["taehv", "taew2_2", "taeltx_2"])
def test_streaming_step_equals_the_whole_clip_forward(tmp_path, name):
    """TAEHV's memory as explicit state: one latent frame per call from zero states, trimmed like the published
    stream, gives the whole-clip frames (float64: exact up to summation order)."""
    from turbovaed.decoders.taehv import Canonical, TAEHVStep

    model = load(random_file(name, tmp_path)).module.double()
    z = torch.randn(1, model.variant.latent_channels, 3, 3, 4, dtype=torch.float64)  # (B, C, T, h, w)
    step = TAEHVStep(model)
    with torch.no_grad():
        assert torch.allclose(Canonical(step).stream(z), Canonical(model)(z), atol=1e-12)
    assert len(step.initial_states(z.transpose(1, 2))) == 9


@pytest.mark.parametrize("backend,precision", [("onnx", "fp32"), ("executorch", "fp32"), ("litert", "fp32"),
                                               ("coreml", "fp16"), ("coreai", "fp16")])
def test_a_decoder_files_step_graph_exports_and_streams_on_the_runtime(tmp_path, backend, precision):
    from test_export import recipe_for

    from turbovaed.export.core import export

    recipe = recipe_for(backend, precision, shape={"latent_frames": 3, "height": 32, "width": 32, "stream_chunk": 1})
    manifest = export(recipe, random_file("taew2_1", tmp_path), tmp_path / "out")
    n, stream = manifest["numerics"], manifest["stream"]
    assert n["status"] in ("pass", "pass-weights") and "streamed 1 latent frame per call" in n["against"], n
    assert stream["states"] == 9 and stream["first_chunk_drop_frames"] == 3
    assert [i["name"] for i in manifest["inputs"]][:2] == ["latents", "state_0"]
    assert manifest["inputs"][0]["shape"] == [1, 16, 1, 4, 4] and manifest["outputs"][0]["shape"] == [1, 3, 4, 32, 32]


def test_a_decoder_files_step_graph_is_profiled_too(tmp_path):
    from test_export import recipe_for

    from turbovaed.export.core import export
    from turbovaed.profile.host import profile

    recipe = recipe_for("onnx", "fp32", shape={"latent_frames": 2, "height": 32, "width": 32, "stream_chunk": 1})
    export(recipe, random_file("taehv", tmp_path), tmp_path / "exports")
    result = profile(tmp_path / "exports", runs=2, warmup=0, threads=1, results_dir=tmp_path / "profiles")
    assert {r.artifact for r in result["measured"]} == {"t-onnx-fp32", "eager"}
    assert all(r.status == "ok" for r in result["measured"]), [r.error for r in result["measured"]]


def test_lighttae_files_are_told_by_name_and_state_their_convention(tmp_path):
    """LightX2V's LightTAE reuses TAEHV's names and shapes: its published file name (lighttaew2_1,
    lighttae_hy1_5) picks it over the TAEHV variant it contains, and it states the latents LightX2V feeds it."""
    import shutil

    wan = load(shutil.copy(random_file("taew2_1", tmp_path), tmp_path / "lighttaew2_1.safetensors"))
    hy = load(random_file("taehv1_5", tmp_path, "pth", stem="lighttae_hy1_5"))
    assert (wan.family, wan.variant.name) == ("lighttae", "lighttaew2_1") and "de-normalised" in wan.variant.convention
    assert (hy.family, hy.variant.name) == ("lighttae", "lighttae_hy1_5") and "1.03682" in hy.variant.convention


def test_lighttae_hy1_5_is_built_as_lightx2v_builds_it(tmp_path):
    """LightX2V's LightTaeHy15 (model_type hy15): LeakyReLU(0.2) wherever TAEHV has ReLU, and frames clamped to
    [-1, 1], the canonical range already (no [0, 1] -> [-1, 1] map). Checked against LightX2V's own code on the
    same random weights: exact (max error 0); here, the structure and the range that check found."""
    hy = load(random_file("taehv1_5", tmp_path, "pth", stem="lighttae_hy1_5"))
    taehv = load(random_file("taehv1_5", tmp_path))
    acts = [type(m) for m in hy.module.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU))]
    assert acts and set(acts) == {torch.nn.LeakyReLU} and all(m.negative_slope == 0.2 for m in hy.module.modules()
                                                              if isinstance(m, torch.nn.LeakyReLU))
    assert {type(m) for m in taehv.module.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU))} == {
        torch.nn.ReLU}
    z = torch.randn(1, 32, 2, 4, 4) * 3
    with torch.no_grad():
        frames = hy.module.frames(z.transpose(1, 2), lambda f: torch.nn.functional.pad(f, (0,) * 6 + (1, 0))[:, :-1])
        canonical = hy.canonical()(z)
    assert frames.min() < -0.1 and frames.min() >= -1 and frames.max() <= 1
    assert torch.allclose(canonical, frames[:, hy.variant.frames_to_trim:].transpose(1, 2))
    assert "[-1, 1]" in hy.describe()["output"] and "[0, 1]" in taehv.describe()["output"]


@pytest.mark.parametrize("latent_frames,frames", [(1, 5), (5, 5), (7, 22), (11, 39)])
def test_taeh3_follows_minimax_h3s_chunked_frame_rule(tmp_path, latent_frames, frames):
    """madebyollin/taehv decodes taeh3 in chunks of 5 latents (20 frames, zeros padding the last), drops each
    chunk's first 3 frames and the clip's last 12. Checked against taehv.py itself (commit 1f14a56) on the same
    weights for T = 1, 3, 5, 7, 10, 11: exact; here, the frame counts and which frames survive."""
    loaded = load(random_file("taeh3", tmp_path))
    z = torch.randn(1, 24, latent_frames, 4, 4)
    with torch.no_grad():
        out = loaded.canonical()(z)
        plain = (loaded.module.frames(z.transpose(1, 2), lambda f: torch.nn.functional.pad(
            f, (0,) * 6 + (1, 0))[:, :-1]) * 2 - 1).transpose(1, 2)
    assert out.shape[2] == frames == loaded.variant.output_frames(latent_frames)
    real = min(17, plain.shape[2] - 3, frames)  # chunk 1 keeps frames 3..19; past the decoded ones: zero padding
    assert torch.equal(out[:, :, :real], plain[:, :, 3:3 + real]) and bool((out[:, :, real:17] == -1).all())
    if latent_frames > 5:
        assert torch.equal(out[:, :, 17:22], plain[:, :, 23:28])  # chunk 2 starts at frame 20, its first 3 dropped
    assert "per started chunk of 5 latents" in loaded.variant.frame_rule
    with pytest.raises(InputError, match="no streaming step graph"):
        loaded.step()


def reference_super_decode(sd: dict[str, torch.Tensor], z: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """The Super decoder written out with functional ops from madebyollin/taehv's definition (1f14a56), on the file's
    tensors by name, independent of turbovaed's module: NTCHW latents -> NTCHW frames in [0, 1], trimmed."""
    import torch.nn.functional as F

    n, t = z.shape[:2]
    x = F.conv2d(z.reshape(n * t, *z.shape[2:]), sd["decoder.0.weight"])
    i = 1
    for grow in (1, 2, 2):  # decoder_time_upscale (False, True, True)
        for _ in range(3):  # SuperMemBlock: dw 7x7 over cat(x, past), 1x1 up, ReLU, 1x1 down, plus x
            frames = x.reshape(n, -1, *x.shape[1:])
            past = F.pad(frames, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1].reshape(x.shape)
            y = torch.cat([x, past], 1)
            y = F.conv2d(y, sd[f"decoder.{i}.conv.0.weight"], padding=3, groups=y.shape[1])
            y = F.relu(F.conv2d(y, sd[f"decoder.{i}.conv.1.weight"], sd[f"decoder.{i}.conv.1.bias"]))
            x = F.conv2d(y, sd[f"decoder.{i}.conv.3.weight"]) + x
            i += 1
        x = F.pixel_shuffle(F.relu(F.conv2d(x, sd[f"decoder.{i}.weight"], sd[f"decoder.{i}.bias"], padding=1)), 2)
        w = sd[f"decoder.{i + 3}.conv.weight"][-x.shape[1] * grow:]  # TGrow (a file may hold more rows)
        x = F.conv2d(x, w).reshape(-1, x.shape[1], *x.shape[2:])
        i += 4
    x = F.conv2d(x, sd[f"decoder.{i}.weight"], sd[f"decoder.{i}.bias"], padding=1)
    x = F.pixel_shuffle(x, patch).clamp(0, 1)
    return x.reshape(n, -1, *x.shape[1:])[:, 3:]


def test_super_decoder_matches_a_reference_written_from_the_published_definition(tmp_path):
    path = random_file("taehv1_5_super", tmp_path)
    sd = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path)
    z = torch.randn(1, 3, 32, 4, 4)  # NTCHW
    with torch.no_grad():
        ours = (load(path).canonical()(z.transpose(1, 2)).transpose(1, 2) + 1) / 2
        ref = reference_super_decode(sd, z)
    assert ours.shape == ref.shape == (1, 9, 3, 64, 64) and (ours - ref).abs().max() < 1e-5


def reference_taehv_decode(sd: dict[str, torch.Tensor], z: torch.Tensor, patch: int, leaky: bool = False,
                           signed: bool = False, h3: bool = False) -> torch.Tensor:
    """TAEHV's decoder written out with functional ops from madebyollin/taehv's definition (and LightX2V's hy15
    variant: LeakyReLU 0.2, clamp to [-1, 1]; and taeh3's chunk rule), on the file's tensors by name, independent
    of turbovaed's module: NTCHW latents -> NTCHW frames."""
    import torch.nn.functional as F

    act = (lambda x: F.leaky_relu(x, 0.2)) if leaky else F.relu  # noqa: E731
    n, t = z.shape[:2]
    x = torch.tanh(z.reshape(n * t, *z.shape[2:]) / 3) * 3
    x = act(F.conv2d(x, sd["decoder.1.weight"], sd["decoder.1.bias"], padding=1))
    i = 3
    for grow in (1, 2, 2):
        for _ in range(3):  # MemBlock: conv(cat(x, past)) -> act -> conv -> act -> conv, plus x, then act
            frames = x.reshape(n, -1, *x.shape[1:])
            past = F.pad(frames, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1].reshape(x.shape)
            y = torch.cat([x, past], 1)
            for k in (0, 2, 4):
                y = F.conv2d(y, sd[f"decoder.{i}.conv.{k}.weight"], sd[f"decoder.{i}.conv.{k}.bias"], padding=1)
                y = act(y) if k < 4 else y
            x = act(y + x)
            i += 1
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        w = sd[f"decoder.{i + 1}.conv.weight"][-x.shape[1] * grow:]
        x = F.conv2d(x, w).reshape(-1, x.shape[1], *x.shape[2:])
        x = F.conv2d(x, sd[f"decoder.{i + 2}.weight"], padding=1)
        i += 3
    x = F.conv2d(act(x), sd["decoder.22.weight"], sd["decoder.22.bias"], padding=1)
    x = F.pixel_shuffle(x, patch).clamp(-1 if signed else 0, 1)
    x = x.reshape(n, -1, *x.shape[1:])
    if not h3:
        return x[:, 3:]
    x = torch.cat([x, x.new_zeros(n, -x.shape[1] % 20, *x.shape[2:])], 1)  # chunks of 5 latents, zero-filled
    return torch.cat([c[:, 3:] for c in x.split(20, 1)], 1)[:, :-12]


@pytest.mark.parametrize("name,stem,leaky,signed,h3", [("taew2_1", "taew2_1", False, False, False),
                                                       ("taehv1_5", "lighttae_hy1_5", True, True, False),
                                                       ("taeh3", "taeh3", False, False, True)])
def test_taehv_family_matches_a_reference_written_from_the_published_definitions(tmp_path, name, stem, leaky,
                                                                                   signed, h3):
    path = random_file(name, tmp_path, stem=stem)
    loaded, sd = load(path), load_file(str(path))
    for t in (2, 7):
        z = torch.randn(1, t, loaded.variant.latent_channels, 4, 4)
        with torch.no_grad():
            ours = loaded.canonical()(z.transpose(1, 2)).transpose(1, 2)
            ref = reference_taehv_decode(sd, z, loaded.variant.patch_size, leaky, signed, h3)
        ref = ref if signed else ref * 2 - 1
        assert ours.shape == ref.shape and (ours - ref).abs().max() < 1e-5, (name, t)
