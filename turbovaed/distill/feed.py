"""Stage 2, the data position: each rank fills its cache generation, then reads micro-batches drawn from
(seed, step, micro, rank) alone, so a resumed run reads exactly the batches the uninterrupted one would."""

from __future__ import annotations

import random
import shutil

import torch
import torch.distributed as dist

from turbovaed import data, logs
from turbovaed.distill.cache import LatentCache
from turbovaed.distill.setup import Run
from turbovaed.io import InputError


def fill_cache(run: Run, generation: int = 0) -> LatentCache:
    """Each rank encodes its own clips of this generation (i % world == rank) in parallel, decoding in
    DataLoader workers; the teacher runs in fp32. A video that fails is replaced (ClipSampler) and counted.
    Generation g holds clips g*clips .. (g+1)*clips - 1: with data.refresh_every each generation brings new
    windows, crops, flips and strides, from the next videos of the epoch's order; older ones are removed."""
    d = run.recipe.data
    if d.clips < run.world:
        raise InputError(f"data.clips = {d.clips} leaves some of the {run.world} ranks without clips")
    folder = run.work / "cache" / f"gen-{generation:05d}"
    cache = LatentCache(folder)
    videos = data.video_stats(run.train_infos)
    cache.check_identity(run.cache_identity, videos)
    if run.rank == 0 and run.train_infos:
        cache.record_videos(videos)
    first = generation * d.clips
    todo = len(range(run.rank, d.clips, run.world)) - len(cache.items(run.rank, run.world, d.clips, first))
    if todo:

        with logs.progress(disable=not run.show_progress or run.rank != 0) as bar:
            task = bar.add_task(f"caching teacher latents, generation {generation} (rank {run.rank})", total=todo)
            cache.fill(run.teacher, run.sampler, d.clips, rank=run.rank, world=run.world,
                       batch=run.recipe.train.batch, workers=d.workers, progress=lambda: bar.advance(task),
                       first=first, identity=run.cache_identity)
    if run.world > 1:
        dist.barrier()  # every rank's part is written
    for old in sorted((run.work / "cache").glob("gen-*")):
        if old != folder and run.rank == 0:
            shutil.rmtree(old, ignore_errors=True)
    cache = LatentCache(folder)  # every rank's parts
    replaced, bad = cache.replacements()
    stats = run.data_stats.setdefault("generations", {})
    stats[str(generation)] = {"clips": d.clips, "replaced_clips": replaced, "bad_videos": bad[:20],
                              "bad_video_count": len(bad)}
    return cache


class _Items(torch.utils.data.Dataset):
    def __init__(self, cache: LatentCache) -> None:
        self.cache = cache

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.cache.read(i)


class _StepBatches:
    """Micro-batches of cache indices, drawn from (seed, step, micro, rank) alone: a resumed run reads
    exactly the batches the uninterrupted one would have."""

    def __init__(self, items: list[int], seed: int, rank: int, start: int, steps: int, batch: int, accum: int):
        self.items, self.seed, self.rank = items, seed, rank
        self.start, self.steps, self.batch, self.accum = start, steps, batch, accum

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accum

    def __iter__(self):
        for step in range(self.start, self.steps):
            for micro in range(self.accum):
                rng = random.Random(f"{self.seed}/{step}/{micro}/{self.rank}")
                yield [rng.choice(self.items) for _ in range(self.batch)]


def micro_batches(run: Run, cache: LatentCache, start: int):
    """Micro-batches from `start` to the end of start's cache generation (or of training)."""
    t, d = run.recipe.train, run.recipe.data
    generation = run.generation(start)
    items = cache.items(run.rank, run.world, d.clips, first=generation * d.clips)
    end = min(t.steps, (generation + 1) * d.refresh_every) if d.refresh_every else t.steps
    return iter(torch.utils.data.DataLoader(
        _Items(cache), batch_sampler=_StepBatches(items, t.seed, run.rank, start, end, t.batch, t.grad_accum),
        num_workers=d.workers, pin_memory=run.device.type == "cuda", persistent_workers=False))
