import inspect

import pytest
import torch

from turbovaed import presets, teachers
from turbovaed.io import CheckpointError, InputError
from turbovaed.student import StudentDecoder


def test_every_diffusers_autoencoder_is_classified():
    """Fails when diffusers grows an autoencoder class we have not registered or explained."""
    import diffusers.models.autoencoders as A
    from diffusers import ModelMixin

    classes = {n for n in dir(A) if inspect.isclass(getattr(A, n)) and issubclass(getattr(A, n), ModelMixin)}
    registered = {s.cls for s in teachers.TEACHERS.values()}
    explained = registered | set(teachers.UNSUPPORTED) | set(teachers.NOT_VIDEO)
    assert classes - explained == set(), f"unclassified diffusers autoencoders: {sorted(classes - explained)}"
    assert not registered & set(teachers.UNSUPPORTED)
    assert all(len(reason) > 10 for reason in teachers.UNSUPPORTED.values())
    for must in ["AutoencoderKLLTXVideo", "AutoencoderKLLTX2Video", "AutoencoderKLHunyuanVideo",
                 "AutoencoderKLHunyuanVideo15", "AutoencoderKLCogVideoX", "AutoencoderKLWan",
                 "AutoencoderKLMochi", "AutoencoderKLCosmos", "AutoencoderKLMagvit"]:
        assert must in registered


@pytest.mark.parametrize("name", list(teachers.TEACHERS))
def test_tiny_teacher_roundtrip_obeys_its_spec(name):
    teacher = teachers.build_tiny(name)
    spec = teacher.spec
    assert type(teacher.vae).__name__ == spec.cls
    frames = spec.frames_for(3)
    clip = torch.rand(1, 3, frames, 64, 64) * 2 - 1
    z = teacher.encode(clip)
    assert z.shape == (1, teacher.latent_channels, 3, 64 // spec.spatial, 64 // spec.spatial)
    out, feats = teacher.decode_with_features(z)
    assert out.shape == clip.shape
    assert len(feats) >= 3 and all(f.dim() == 5 for f in feats)
    student = StudentDecoder(presets.student_config(teacher, mini=True)).eval()
    with torch.no_grad():
        assert student(z).shape == out.shape


@pytest.mark.parametrize("name", [n for n in teachers.TEACHERS if n != "reference"])
def test_truncated_decode_gives_the_same_features_for_a_fraction_of_the_flops(name):
    """Feature alignment stops the teacher after the last aligned block; chunked decoders (Wan, tiled
    Hunyuan) still yield every chunk's features, bit for bit."""
    from torch.utils.flop_counter import FlopCounterMode

    teacher = teachers.build_tiny(name)
    z = torch.randn(1, teacher.latent_channels, 5, 4, 4)  # 17 frames for 4x-temporal teachers: several chunks
    with FlopCounterMode(display=False) as full_count:
        frames, full = teacher.decode_with_features(z, blocks=[0, 1])
    teacher.decode_with_features(z, blocks=[0, 1], truncate=True)  # first call records the decoder's shapes
    with FlopCounterMode(display=False) as cut_count:
        none, cut = teacher.decode_with_features(z, blocks=[0, 1], truncate=True)
    assert none is None and frames is not None and len(cut) == len(full) == 2
    assert all(torch.equal(a, b) for a, b in zip(full, cut))
    if name == "cogvideox":  # returns its conv_cache from every chunk: cannot be cut, decodes in full
        assert cut_count.get_total_flops() == full_count.get_total_flops()
    else:
        assert cut_count.get_total_flops() * 4 < full_count.get_total_flops()
    assert full[0].shape[-1] == z.shape[-1]  # block 0 is the mid block, at latent resolution
    with pytest.raises(InputError, match="out of range"):
        teacher.decode_with_features(z, blocks=[0, 99])


def test_teacher_tensors_follow_the_latents_device_and_dtype():
    teacher = teachers.load("ltx", tiny=True, dtype=torch.bfloat16)
    assert teacher.vae.config.get("timestep_conditioning") is not None
    z = torch.randn(1, teacher.latent_channels, 2, 4, 4)
    frames, feats = teacher.decode_with_features(z, blocks=[0])
    assert frames.dtype == torch.float32 and feats[0].dtype == torch.float32  # returned in fp32 for the losses
    mean, logvar = teacher.encode_posterior(torch.zeros(1, 3, 9, 64, 64))
    assert mean.dtype == logvar.dtype == torch.float32 and mean.shape == logvar.shape


def test_encode_rejects_frames_that_break_the_rule():
    teacher = teachers.build_tiny("wan21")
    with pytest.raises(InputError, match="1 \\+ 4k"):
        teacher.encode(torch.zeros(1, 3, 8, 64, 64))
    with pytest.raises(InputError, match="multiple of 8"):
        teacher.encode(torch.zeros(1, 3, 9, 60, 64))
    with pytest.raises(InputError, match="expects 4"):
        teacher.decode(torch.zeros(1, 5, 3, 8, 8))


def test_load_from_local_folder_and_pipeline_folder(tmp_path):
    tiny = teachers.build_tiny("cogvideox")
    tiny.vae.save_pretrained(tmp_path / "vae_only")
    tiny.vae.save_pretrained(tmp_path / "pipeline" / "vae")
    z = torch.randn(1, 4, 2 + 1, 8, 8)
    expected = tiny.decode(z)
    for folder in ("vae_only", "pipeline"):
        loaded = teachers.load("cogvideox", tmp_path / folder)
        assert torch.allclose(loaded.decode(z), expected, atol=1e-6)
        assert loaded.norm.scale == pytest.approx(1.15258426)


def test_bad_teacher_requests_fail_clearly(tmp_path):
    with pytest.raises(InputError, match="unknown teacher 'sora'"):
        teachers.load("sora", tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        teachers.load("wan21", tmp_path / "nope")
    with pytest.raises(InputError, match="local weights folder"):
        teachers.load("wan21")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="cannot load AutoencoderKLWan"):
        teachers.load("wan21", tmp_path / "broken")


def test_latent_normalisation_roundtrip_per_channel_and_per_frame():
    z = torch.randn(2, 4, 3, 5, 5)
    norm = teachers.LatentNorm(mean=[0.1, -0.2, 0.3, 0.0], std=[2.0, 1.0, 0.5, 1.5], scale=0.7)
    assert torch.allclose(norm.to_raw(norm.normalize(z)), z, atol=1e-6)
    per_frame = teachers.LatentNorm(mean=list(range(4 * 8)), std=None, scale=1.0)  # Cosmos: (C, frames)
    n = per_frame.normalize(z)
    assert torch.allclose(n[:, 1, 2], z[:, 1, 2] - 10)
    teacher = teachers.build_tiny("mochi")
    assert teacher.norm.mean == [0.0] * 4 and teacher.norm.std == [1.0] * 4


def test_a_class_that_breaks_on_batches_runs_in_slices():
    """HunyuanVideo 1.5's causal attention fails for batch > 1 in diffusers 0.42.1: the adapter slices."""
    teacher = teachers.build_tiny("hunyuan15")
    assert teacher.spec.max_batch == 1
    x = torch.rand(2, 3, 17, 64, 64) * 2 - 1
    with pytest.raises(RuntimeError):  # the class itself, unsliced
        teacher.vae.encode(x)
    mean, logvar = teacher.encode_posterior(x)
    assert torch.allclose(mean[1:], teacher.encode_posterior(x[1:])[0], atol=1e-5)
    frames, feats = teacher.decode_with_features(mean, blocks=[0, 1])
    assert frames.shape == x.shape and feats[1].shape[0] == 2
    assert teacher.encode(x, sample=True).shape == mean.shape
