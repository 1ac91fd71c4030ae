"""The shipped reference teacher: a real trained diffusers VAE inside the package."""

import json

import pytest
import torch

from turbovaed import data, metrics, reference, teachers

pytestmark = pytest.mark.skipif(not (reference.ASSET_DIR / "config.json").is_file(),
                                reason="the reference teacher asset is not in this checkout")


def test_asset_is_small_fp16_safetensors_with_real_latent_stats():
    files = {p.name: p.stat().st_size for p in reference.ASSET_DIR.iterdir()}
    assert sum(files.values()) <= 10 * 2**20, files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".ckpt")) for name in files)
    config = json.loads((reference.ASSET_DIR / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKLWan" and config["z_dim"] == 16
    assert any(abs(m) > 1e-3 for m in config["latents_mean"]) and any(abs(s - 1) > 1e-3 for s in config["latents_std"])
    teacher = teachers.load("reference")
    assert next(teacher.vae.parameters()).dtype == torch.float32  # loaded for CPU use
    assert (teacher.spec.spatial, teacher.spec.temporal, teacher.latent_channels) == (8, 4, 16)


def test_reconstructs_a_held_out_real_clip_far_better_than_untrained(videos_dir):
    teacher = teachers.load("reference")
    clip, _ = data.fixed_clips([videos_dir / reference.HELD_OUT[0]], 9, 128, per_video=1)[0]
    recon = teacher.decode(teacher.encode(clip[None]))
    assert recon.shape == (1, 3, 9, 128, 128)
    torch.manual_seed(0)
    untrained = teachers.Teacher(teacher.spec, teachers._diffusers_class(teacher.spec)(**reference.CONFIG))
    baseline = metrics.psnr(untrained.decode(untrained.encode(clip[None])), clip[None])
    assert metrics.psnr(recon, clip[None]) > baseline + 3.0


def test_eval_command_reports_teacher_scores(tmp_path, videos_dir):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "turbovaed", "eval", "--videos", str(videos_dir / reference.HELD_OUT[2]),
                             "--per-video", "1", "--size", "64", "--json", str(tmp_path / "r.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mean"]["teacher_psnr"] > 15.0 and "skipped" in report["lpips"]  # untrained: ~11 dB
    assert len(report["clips"]) == 1 and report["clips"][0]["video"] == reference.HELD_OUT[2]


def test_the_shipped_teacher_beats_per_frame_bicubic_by_a_db_on_held_out_clips(videos_dir):
    """The bar every quality figure rests on, measured here (not read from metrics.json): on the held-out clips
    (9x128², 3 windows each) the teacher's reconstruction beats per-frame bicubic interpolation at the same 8x
    compression by at least 1 dB, and its metrics file says what was measured when it shipped."""
    teacher = teachers.load("reference")
    clips = [c[None] for c, _ in data.fixed_clips([videos_dir / v for v in reference.HELD_OUT], 9, 128)]
    ours = sum(metrics.psnr(teacher.decode(teacher.encode(c)), c) for c in clips) / len(clips)
    interpolated = sum(metrics.psnr(metrics.bicubic(c, 8), c) for c in clips) / len(clips)
    assert ours >= interpolated + 1.0, (ours, interpolated)
    if data.shared_videos_dir() is not None:  # the clips it was measured on (a fresh clone has stand-ins)
        shipped = json.loads((reference.ASSET_DIR / "metrics.json").read_text())
        assert abs(shipped["psnr"] - ours) < 0.1 and abs(shipped["bicubic_8x_psnr"] - interpolated) < 0.01
