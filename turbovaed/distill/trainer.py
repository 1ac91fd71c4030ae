"""The distillation trainer (Turbo-VAED recipe): frozen teacher, student decoder + throw-away heads.

Loss = w_f L1(student, frames) + w_t L1(student, teacher) + w_p perceptual + w_a feature alignment
(+ a GAN stage from gan.start_step). EMA weights are what gets evaluated and exported. Runs single
process or under `torchrun` (DDP: NCCL with one GPU per LOCAL_RANK, gloo on CPU); only rank 0 writes.

`distill` runs six named stages, each a module of its own: setup (device, precision, processes, lock, teacher,
videos), feed (each rank encodes its own clips; the batches), models (with resume and checkpoints), loop (with
the non-finite guard of guard.py), and publish (evaluation on held-out clips, a diffusers-like folder). Recipe
checks live in checks.py, the one-writer lock in lock.py."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist
from torch import nn

from turbovaed.distill import lock
from turbovaed.distill.feed import fill_cache
from turbovaed.distill.loop import train_loop
from turbovaed.distill.models import build_models
from turbovaed.distill.publish import eval_clips, final_report, publish, resume_step, trim_log, weights_checksum
from turbovaed.distill.recipe import DistillRecipe
from turbovaed.distill.runlog import Logger
from turbovaed.distill.setup import setup
from turbovaed.evaluate import prepare


def distill(recipe: DistillRecipe, resume: bool = False, show_progress: bool = True,
            make_student: Callable[[], nn.Module] | None = None, rebuild_cache: bool = False) -> Path:
    """Run a recipe to completion; returns the output checkpoint folder."""
    try:
        run = setup(recipe, resume, show_progress, rebuild_cache)
        start = resume_step(run) if resume else 0
        cache = fill_cache(run, run.generation(start))
        m = build_models(run, cache, resume, make_student)
        if run.rank == 0:
            run.work.mkdir(parents=True, exist_ok=True)
            if m.step == 0:
                run.log_path.unlink(missing_ok=True)
                shutil.rmtree(run.work / "samples", ignore_errors=True)
            else:
                trim_log(run, m.step)
        evalset = prepare(run.teacher, eval_clips(run), m.lpips) if run.rank == 0 else None
        with Logger(run, m.step) as log:
            stopped_early = train_loop(run, m, cache, evalset, log)
            sync = None
            if run.world > 1:
                sums = [None] * run.world
                dist.all_gather_object(sums, weights_checksum(m.student))
                sync = len(set(sums)) == 1
            out = Path(recipe.output)
            if run.rank == 0:
                out = publish(run, m, final_report(run, m, evalset, log, stopped_early, sync))
        if run.world > 1:
            dist.barrier()
        return out
    finally:
        lock.release(recipe.work)
        if dist.is_initialized():
            dist.destroy_process_group()
