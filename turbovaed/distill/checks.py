"""Recipe checks, all before any work: every number finite and in range, every cadence positive (at load), and
every path readable or writable (preflight, on rank 0 before the hours of indexing and caching)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

from turbovaed import logs
from turbovaed.distill.checkpoint import has_checkpoint, recover
from turbovaed.io import InputError

# The recipe module calls these on itself (DistillRecipe.__post_init__): they take it without importing it.

PERCEPTUAL = ("auto", "msssim_grad", "lpips", "none")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
TEACHER_DTYPES = ("auto", "fp32", "bf16", "fp16")
POSTERIOR = ("mean", "sample")

AT_LEAST_ONE = ("train.steps", "train.batch", "train.grad_accum", "train.checkpoint_every", "train.log_every",
                "data.latent_frames", "data.size", "data.clips", "data.eval_per_video", "data.eval_max_clips",
                "data.eval_clips", "gan.channels")
POSITIVE = ("train.lr", "gan.lr", "train.dist_timeout_minutes")
NOT_NEGATIVE = ("train.warmup", "train.weight_decay", "train.max_minutes", "train.eval_every", "train.max_nonfinite",
                "train.threads", "data.workers", "data.refresh_every", "data.probe_workers", "data.resize",
                "gan.start_step", "gan.weight", "loss.frames", "loss.teacher", "loss.perceptual", "loss.feature")


def _numbers(recipe: DistillRecipe) -> dict[str, float]:  # noqa: F821 (see above)
    """Every number of the recipe by its dotted key (lists of numbers as key[i])."""
    found = {}
    for section in dataclasses.fields(recipe):
        value = getattr(recipe, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        for f in dataclasses.fields(value):
            v, key = getattr(value, f.name), f"{section.name}.{f.name}"
            items = enumerate(v) if isinstance(v, list) else [(None, v)]
            for i, x in items:
                if isinstance(x, (int, float)) and not isinstance(x, bool):
                    found[key if i is None else f"{key}[{i}]"] = x
    return found


def check_values(recipe: DistillRecipe) -> None:  # noqa: F821 (see above)
    """One InputError listing every bad value: choices, finiteness, ranges, cadences."""
    r, problems = recipe, []
    for key, value, allowed in [("loss.perceptual_kind", r.loss.perceptual_kind, PERCEPTUAL),
                                ("train.device", r.train.device, DEVICES),
                                ("train.precision", r.train.precision, PRECISIONS),
                                ("teacher.dtype", r.teacher.dtype, TEACHER_DTYPES),
                                ("data.posterior", r.data.posterior, POSTERIOR)]:
        if value not in allowed:
            problems.append(f"{key} must be one of {allowed}, got {value!r}")
    numbers = _numbers(r)
    problems += [f"{k} must be a finite number, got {v}" for k, v in numbers.items() if not math.isfinite(v)]
    finite = {k: v for k, v in numbers.items() if math.isfinite(v)}
    problems += [f"{k} must be >= 1, got {finite[k]}" for k in AT_LEAST_ONE if k in finite and finite[k] < 1]
    problems += [f"{k} must be > 0, got {finite[k]}" for k in POSITIVE if k in finite and finite[k] <= 0]
    problems += [f"{k} must be >= 0, got {finite[k]}" for k in NOT_NEGATIVE if k in finite and finite[k] < 0]
    if r.loss.perceptual_kind == "lpips" and not r.loss.perceptual_weights:
        problems.append("loss.perceptual_kind = 'lpips' needs loss.perceptual_weights (a .safetensors file)")
    if r.data.eval_size <= 32:
        problems.append(f"data.eval_size must be above 32 px (MS-SSIM's five scales), got {r.data.eval_size}")
    if not r.data.strides or min(r.data.strides) < 1:
        problems.append(f"data.strides must be a non-empty list of strides >= 1, got {r.data.strides}")
    if len(r.train.betas) != 2 or not all(0 <= b < 1 for b in r.train.betas):
        problems.append(f"train.betas must be two numbers in [0, 1), got {r.train.betas}")
    if not r.loss.feature_blocks and r.loss.feature > 0:
        problems.append("loss.feature > 0 needs at least one entry in loss.feature_blocks")
    if not 0.0 <= r.train.ema_decay < 1.0:
        problems.append(f"train.ema_decay must be in [0, 1), got {r.train.ema_decay}")
    if problems:
        raise InputError("invalid recipe: " + "; ".join(problems))


def preflight(recipe: DistillRecipe, resume: bool) -> None:  # noqa: F821 (see above)
    """Refusals that would otherwise come after hours of indexing and caching: a missing TensorBoard, an input
    that cannot be read, an output that cannot be written, an earlier run's checkpoint without --resume."""
    work = recipe.work
    if recipe.train.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError as err:
            raise InputError("train.tensorboard = true needs TensorBoard: pip install 'turbovaed[tensorboard]'") \
                from err
    readable = [("teacher.path", recipe.teacher.path), ("loss.perceptual_weights", recipe.loss.perceptual_weights),
                *((f"data.videos[{i}]", v) for i, v in enumerate(recipe.data.videos)),
                *((f"data.eval_videos[{i}]", v) for i, v in enumerate(recipe.data.eval_videos))]
    for key, path in readable:
        if path and not os.access(path, os.R_OK):
            raise InputError(f"{key} = {path!r} {'is not readable' if Path(path).exists() else 'does not exist'}")
    writable = [work, Path(recipe.output).parent, *([Path(recipe.data.index).parent] if recipe.data.index else [])]
    for folder in writable:
        existing = next(p for p in (folder, *folder.parents) if p.exists())  # creates nothing on refusal
        try:
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is a file")
            probe = existing / f".turbovaed-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise InputError(f"cannot write the run's output to {folder}: {err}") from err
    recovered = recover(work / "checkpoint")
    if recovered:
        logs.say(recovered)
    if not resume and has_checkpoint(work / "checkpoint"):
        raise InputError(f"{work / 'checkpoint'} exists from an earlier run: pass --resume to continue it, "
                         f"or remove {work}")


def recipe_values(recipe: DistillRecipe) -> dict:  # noqa: F821 (see above)
    """The recipe as dotted key -> value (what a checkpoint keeps, to say what a resume changed)."""
    flat = {}
    for section, values in dataclasses.asdict(recipe).items():
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            flat[section] = values
    return json.loads(json.dumps(flat))  # as the checkpoint stores it (tuples become lists)


def resume_changes(saved: dict | None, recipe: DistillRecipe) -> dict[str, list]:  # noqa: F821 (see above)
    """key -> [at the checkpoint, now] for every recipe value a --resume changes. Those that would make the resume
    wrong (the student, the teacher, the cached data) are refused elsewhere; these are allowed and reported, since
    the resumed run is then no longer the uninterrupted one."""
    if saved is None:
        return {}
    now = recipe_values(recipe)
    return {k: [saved.get(k), now.get(k)] for k in sorted({*saved, *now}) if saved.get(k) != now.get(k)}
