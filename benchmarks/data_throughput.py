"""The data path, old vs new, measured in one run on the shared real videos.

1. Clips/s: random 17-frame 256x256 windows (short side resized to 256) from the shared videos. Old:
   every file probed on each start, every window decoded from frame 0. New: the video index (probed
   once, reused) and seeking to the window.
2. A window at frame 2000 vs frame 0 of a long video (a 2300-frame H.264 file with x264's default
   250-frame keyframe interval, made from a shared clip): old and new. Target: new <= 2x. Frame 2000 can
   sit on a keyframe, so frame 2120 (mid-GOP: 120 frames to decode after the seek) is timed too.
3. Latent-cache reads of random items: old (a whole shard loaded per item, one shard kept) vs new
   (memory-mapped slices), shards of 32 items of 17x256x256.

Writes benchmarks/results/data_throughput.json.

    python benchmarks/data_throughput.py [--clips 24]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from decode_speed import median_time  # sibling script: median of timed calls after a warm-up

from turbovaed import data

OUT = Path(__file__).resolve().parent / "results" / "data_throughput.json"


def clips_per_s(videos: list[Path], count: int, seek: bool, index: Path | None) -> float:
    real = data.read_frames
    data.read_frames = lambda *a, **k: real(*a, **{**k, "seek": seek})  # old path: decode from frame 0
    try:
        t0 = time.perf_counter()
        infos = data.index_videos(videos, index)[0] if index else None
        sampler = data.ClipSampler(videos, 17, (256, 256), seed=1, resize=256, infos=infos)
        for i in range(count):
            sampler.clip(i)
        return count / (time.perf_counter() - t0)
    finally:
        data.read_frames = real


def long_video(source: Path, path: Path, frames: int = 2300) -> Path:
    clip = data.read_frames(source, seek=False)
    clip = clip[:, ::2, ::2]  # 480x270: the cost under test is decoding up to the window, not pixels
    with data.VideoWriter(path, fps=30) as w:
        for i in range(0, frames, len(clip)):
            w.write(clip[: frames - i])
    return path


def cache_reads(tmp: Path, items: int = 24) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    shards = []
    for s in range(4):
        path = tmp / f"shard{s}.safetensors"
        save_file({"frames": torch.randint(0, 255, (32, 3, 17, 256, 256), dtype=torch.uint8),
                   "teacher": torch.randint(0, 255, (32, 3, 17, 256, 256), dtype=torch.uint8)}, str(path))
        shards.append(path)
    rng = random.Random(0)
    picks = [(rng.randrange(4), rng.randrange(32)) for _ in range(items)]

    def old():
        loaded = {}
        for s, k in picks:
            if s not in loaded:
                loaded = {s: load_file(str(shards[s]))}
            _ = {n: t[k].clone() for n, t in loaded[s].items()}

    def new():
        handles = {}
        for s, k in picks:
            f = handles.setdefault(s, safe_open(str(shards[s]), framework="pt"))
            _ = {n: f.get_slice(n)[k:k + 1][0] for n in f.keys()}

    t_old, t_new = median_time(old, 3), median_time(new, 3)
    return {"items": items, "old_items_per_s": round(items / t_old, 1), "new_items_per_s": round(items / t_new, 1),
            "speedup": round(t_old / t_new, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=24)
    args = ap.parse_args()
    shared = data.shared_videos_dir()
    if shared is None:
        raise SystemExit("needs ../shared/videos (or TURBOVAED_VIDEOS)")
    videos = data.list_videos(shared)
    torch.set_num_threads(2)
    result: dict = {"videos": len(videos)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        index = tmp / "index.json"
        data.index_videos(videos, index)  # built once (a restart reuses it)
        old = clips_per_s(videos, args.clips, seek=False, index=None)
        new = clips_per_s(videos, args.clips, seek=True, index=index)
        result["clips"] = {"count": args.clips, "shape": "17x256x256", "old_clips_per_s": round(old, 2),
                           "new_clips_per_s": round(new, 2), "speedup": round(new / old, 2)}
        print(f"clips/s, 17x256^2 windows from {len(videos)} real videos: old {old:.2f}, new {new:.2f} "
              f"({new / old:.2f}x)")
        long = long_video(shared / "sam2_bedroom.mp4", tmp / "long.mp4")
        n = data.video_info(long).frames
        row = {"video_frames": n}
        for name, seek in (("old", False), ("new", True)):
            at0, at2000, at2120 = (median_time(lambda s=start, k=seek: data.read_frames(long, s, 17, seek=k), 3)
                                   for start in (0, 2000, 2120))
            row[name] = {"frame0_s": round(at0, 3), "frame2000_s": round(at2000, 3), "frame2120_s": round(at2120, 3),
                         "ratio_2000": round(at2000 / at0, 2), "ratio_2120": round(at2120 / at0, 2)}
            print(f"{name}: 17 frames at frame 2000 / 2120 (mid-GOP) vs 0 of a {n}-frame video: {at2000:.3f} / "
                  f"{at2120:.3f} s vs {at0:.3f} s = {at2000 / at0:.2f}x / {at2120 / at0:.2f}x")
        result["long_video_window"] = row
        result["cache_reads"] = cache_reads(tmp)
        c = result["cache_reads"]
        print(f"latent-cache reads of random items (17x256^2, 32 per shard): old {c['old_items_per_s']}/s "
              f"(whole shard per item), new {c['new_items_per_s']}/s (mmap slices) = {c['speedup']}x")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
