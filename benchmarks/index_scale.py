"""The video index at folder scale: files/s over >= 10k small files, by probe threads, in one run.

A 100k-clip folder is probed once into the index a distill run reads (`turbovaed index DIR` ahead of a run,
or rank 0 at setup). This makes N real H.264 files (copies of a short clip under nested folders, so each is
a distinct file to open and parse), indexes them with 1, 8 and 32 probe threads from scratch, then times a
rerun over the finished index (what every restart and every other rank pays) and a build interrupted
half-way and resumed. Local disk here: network storage is slower per file, which is what more threads buy.

Writes benchmarks/results/index_scale.json.

    python benchmarks/index_scale.py [--files 10000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from results_io import write_results

from turbovaed import data


def make_folder(root: Path, files: int) -> list[Path]:
    """`files` copies of one short real clip, 100 per folder."""
    clip = data.write_video(root / "source.mp4", data.synthetic_clip(17, 64, 64, seed=1), fps=24)
    paths = []
    for k in range(files):
        path = root / "videos" / f"group{k // 100:04d}" / f"clip{k:06d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip, path)
        paths.append(path)
    return paths


def timed_index(videos: list[Path], index: Path, workers: int) -> float:
    t0 = time.perf_counter()
    infos, bad = data.index_videos(videos, index, workers=workers)
    assert len(infos) == len(videos) and not bad
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=10000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"making {args.files} files ...", flush=True)
        videos = data.list_videos(make_folder(root, args.files)[0].parents[1])
        rows = []
        for workers in (1, 8, 32):
            index = root / f"index-{workers}.json"
            seconds = timed_index(videos, index, workers)
            rows.append({"probe_threads": workers, "seconds": round(seconds, 2),
                         "files_per_s": round(len(videos) / seconds, 1)})
            print(f"{workers:3d} threads: {len(videos) / seconds:8.1f} files/s ({seconds:.1f} s)", flush=True)
        rerun = timed_index(videos, root / "index-32.json", 32)
        print(f"rerun over the finished index: {rerun:.2f} s", flush=True)
        half = root / "index-half.json"
        data.index_videos(videos[: len(videos) // 2], half, workers=32)  # an interrupted build's saved half
        resumed = timed_index(videos, half, 32)
        full = next(r["seconds"] for r in rows if r["probe_threads"] == 32)
        print(f"resumed after half: {resumed:.1f} s (from scratch {full:.1f} s)", flush=True)
    write_results("index_scale", {
        "files": len(videos), "file": "17-frame 64x64 H.264 mp4, 100 per folder, local disk", "builds": rows,
        "rerun_s": round(rerun, 2), "resumed_after_half_s": round(resumed, 2),
        "speedup_32_vs_1_thread": round(rows[0]["seconds"] / rows[-1]["seconds"], 2)})


if __name__ == "__main__":
    main()
