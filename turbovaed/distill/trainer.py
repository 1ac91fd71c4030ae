"""The distillation trainer (Turbo-VAED recipe): frozen teacher, student decoder + throw-away heads.

Loss = w_f L1(student, frames) + w_t L1(student, teacher) + w_p perceptual + w_a feature alignment
(+ a GAN stage from gan.start_step). EMA weights are what gets evaluated and exported. Runs single
process or under `torchrun` (DDP: gloo on CPU, nccl on GPU); only rank 0 writes."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from turbovaed import data, teachers
from turbovaed.distill.checkpoint import load_training_state, save_training_state
from turbovaed.distill.losses import FeatureAlignment, PatchDiscriminator3d, adaptive_gan_weight, hinge_d_loss, msssim_grad_loss
from turbovaed.distill.recipe import DistillRecipe
from turbovaed.evaluate import evaluate
from turbovaed.io import InputError, TurboVAEDError
from turbovaed.recipes import to_toml
from turbovaed.student import StudentConfig, StudentDecoder


class TrainingError(TurboVAEDError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


class StudentWithHeads(nn.Module):
    """One module for DDP: the student and its feature-alignment heads."""

    def __init__(self, student: StudentDecoder, align: FeatureAlignment | None) -> None:
        super().__init__()
        self.student, self.align = student, align

    def forward(self, z: torch.Tensor, teacher_feats: list[torch.Tensor] | None):
        y, feats = self.student(z, return_features=True)
        feat_loss = self.align(feats, teacher_feats) if self.align is not None and teacher_feats else y.new_zeros(())
        return y, feat_loss


def student_config(recipe: DistillRecipe, teacher: teachers.Teacher) -> StudentConfig:
    s = recipe.student
    if s.preset:
        name, mini = (s.preset[:-5], True) if s.preset.endswith("-mini") else (s.preset, s.mini)
        config = teachers.get_spec(name).student_config(mini=mini)
    else:
        config = teacher.student_config(mini=s.mini)
    overrides = {k: v for k, v in (("channels", s.channels), ("blocks", s.blocks)) if v is not None}
    if "channels" in overrides and len(overrides["channels"]) != len(config.channels):
        raise InputError(f"student.channels needs {len(config.channels)} entries for this layout")
    config = StudentConfig(**{**config.to_dict(), **overrides, "temporal_padding": s.temporal_padding})
    if config.latent_channels != teacher.latent_channels:
        raise InputError(f"student takes {config.latent_channels} latent channels but teacher {teacher.spec.name} "
                         f"makes {teacher.latent_channels}")
    if (config.spatial_ratio, config.temporal_ratio) != (teacher.spec.spatial, teacher.spec.temporal):
        raise InputError(f"student compression {config.temporal_ratio}x{config.spatial_ratio} does not match "
                         f"teacher {teacher.spec.name} ({teacher.spec.temporal}x{teacher.spec.spatial})")
    return config


def training_videos(recipe: DistillRecipe) -> tuple[list[Path], list[Path]]:
    """(train, held-out) videos; empty lists with data.synthetic. Errors before any training starts."""
    if recipe.data.synthetic:
        return [], []
    if recipe.data.videos:
        videos = data.list_videos(recipe.data.videos)
    else:
        shared = data.shared_videos_dir()
        videos = data.list_videos(shared) if shared else data.bundled_videos()
        if not videos:
            raise InputError("no videos: set data.videos, install turbovaed[video] (ships real clips), "
                             "or set data.synthetic = true")
    for v in videos:
        data.video_info(v)  # unreadable files fail here, not mid-run
    held = set(recipe.data.held_out)
    train = [v for v in videos if v.name not in held]
    test = [v for v in videos if v.name in held]
    if not train:
        raise InputError("every video is held out; nothing left to train on")
    return train, test


def _dist_setup() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _lr(recipe: DistillRecipe, step: int) -> float:
    t = recipe.train
    warm = min(1.0, (step + 1) / max(t.warmup, 1))
    return t.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / t.steps)))


def _checksum(module: nn.Module) -> str:
    h = hashlib.sha256()
    for p in module.parameters():
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _batch(cache: data.LatentCache, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    items = [cache[i] for i in indices]
    return tuple(torch.stack([it[k] for it in items]) for k in ("latents", "frames", "teacher"))


def distill(recipe: DistillRecipe, resume: bool = False, show_progress: bool = True) -> Path:
    """Run a recipe to completion; returns the output checkpoint folder."""
    rank, world = _dist_setup()
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    t = recipe.train
    teacher = teachers.load(recipe.teacher.name, recipe.teacher.path, tiny=recipe.teacher.tiny)
    config = student_config(recipe, teacher)
    train_videos, test_videos = training_videos(recipe)
    frames = teacher.spec.frames_for(recipe.data.latent_frames)
    size = recipe.data.size
    if size % teacher.spec.spatial:
        raise InputError(f"data.size {size} must be a multiple of {teacher.spec.spatial} for {teacher.spec.name}")
    out = Path(recipe.output)
    work = out.with_name(out.name + ".work")
    ckpt = work / "checkpoint"
    log_path = work / "log.jsonl"
    if not resume and rank == 0 and ckpt.exists():
        raise InputError(f"{ckpt} exists from an earlier run: pass --resume to continue it, or remove {work}")

    # 1. Latent cache: the teacher encodes (and decodes) the training clips once.
    cache = data.LatentCache(work / "cache")
    sampler = data.ClipSampler(train_videos, frames, (size, size), seed=recipe.data.seed,
                               resize=recipe.data.resize or None)
    if rank == 0 and len(cache) < recipe.data.clips:
        from rich.progress import Progress

        with Progress(disable=not show_progress, transient=True) as bar:
            task = bar.add_task("caching teacher latents", total=recipe.data.clips - len(cache))
            cache.fill(teacher, sampler, recipe.data.clips, progress=lambda: bar.advance(task))
    if world > 1:
        dist.barrier()
        cache = data.LatentCache(work / "cache")

    # 2. Models: student, EMA, alignment heads sized from one probe batch, optional discriminator.
    torch.manual_seed(t.seed)
    student = StudentDecoder(config)
    need_feats = recipe.loss.feature > 0
    align = None
    if need_feats:
        z0 = cache[0]["latents"][None]
        _, tf = teacher.decode_with_features(z0)
        with torch.no_grad():
            _, sf = student(z0, return_features=True)
        align = FeatureAlignment([f.shape for f in sf], [f.shape for f in tf])
    model = StudentWithHeads(student, align)
    ema = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(0.9, 0.99), weight_decay=t.weight_decay)
    disc = PatchDiscriminator3d(recipe.gan.channels) if recipe.gan.enabled else None
    opt_d = torch.optim.AdamW(disc.parameters(), lr=recipe.gan.lr, betas=(0.5, 0.9)) if disc else None
    modules = {"student": student, "ema": ema, **({"align": align} if align else {}), **({"disc": disc} if disc else {})}
    optimizers = {"opt": opt, **({"opt_d": opt_d} if opt_d else {})}
    step = 0
    if resume and ckpt.is_dir():
        step, _ = load_training_state(ckpt, modules, optimizers)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model)
        disc_run = DDP(disc) if disc else None
    else:
        disc_run = disc
    last_weight = [m for m in student.conv_out.modules() if isinstance(m, nn.Conv3d)][-1].weight

    # 3. Train.
    if rank == 0:
        work.mkdir(parents=True, exist_ok=True)
        if step == 0:
            log_path.unlink(missing_ok=True)
    perceptual = recipe.loss.perceptual_kind
    lpips_net = None
    if perceptual == "lpips" and recipe.loss.perceptual > 0:
        from turbovaed.lpips import LPIPS

        lpips_net = LPIPS(recipe.loss.perceptual_weights)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]distill"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                        disable=not show_progress or rank != 0)
    per_rank = t.batch
    started = time.perf_counter()
    stopped_early = None
    with progress:
        task = progress.add_task("distill", total=t.steps, completed=step, info="")
        while step < t.steps:
            out_of_time = torch.tensor([int(bool(t.max_minutes) and time.perf_counter() - started > t.max_minutes * 60)])
            if world > 1:  # rank 0's clock decides, so every rank stops at the same step
                dist.broadcast(out_of_time, 0)
            if out_of_time.item():
                stopped_early = step
                if rank == 0:
                    save_training_state(ckpt, modules, optimizers, step)
                break
            t0 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = _lr(recipe, step)
            rng = random.Random(t.seed * 1_000_003 + step)
            picks = [rng.randrange(len(cache)) for _ in range(per_rank * world * t.grad_accum)]
            gan_on = disc is not None and step >= recipe.gan.start_step
            opt.zero_grad(set_to_none=True)
            logs: dict[str, float] = {}
            fakes, reals = [], []
            for micro in range(t.grad_accum):
                chunk = picks[(micro * world + rank) * per_rank:(micro * world + rank + 1) * per_rank]
                z, x, xt = _batch(cache, chunk)
                teacher_feats = teacher.decode_with_features(z)[1] if need_feats else None
                y, feat_loss = model(z, teacher_feats)
                parts = {"l1_frames": F.l1_loss(y, x), "l1_teacher": F.l1_loss(y, xt)}
                if perceptual == "msssim_grad" and recipe.loss.perceptual > 0:
                    parts["perceptual"] = msssim_grad_loss(y, x)
                elif lpips_net is not None:
                    parts["perceptual"] = lpips_net(y, x)
                parts["feature"] = feat_loss
                weights = {"l1_frames": recipe.loss.frames, "l1_teacher": recipe.loss.teacher,
                           "perceptual": recipe.loss.perceptual, "feature": recipe.loss.feature}
                loss = sum(weights[k] * v for k, v in parts.items())
                if gan_on:
                    g_loss = -disc_run(y).mean()
                    w = recipe.gan.weight * (adaptive_gan_weight(loss, g_loss, last_weight) if recipe.gan.adaptive
                                             else 1.0)
                    parts["gan_g"] = g_loss
                    loss = loss + w * g_loss
                    fakes.append(y.detach())
                    reals.append(x)
                if not torch.isfinite(loss):
                    last = json.loads((ckpt / "state.json").read_text())["step"] if (ckpt / "state.json").exists() else 0
                    raise TrainingError(f"loss became {loss.item()} at step {step}; stopped. The last good "
                                        f"checkpoint ({ckpt}, step {last}) is kept")
                (loss / t.grad_accum).backward()
                for k, v in parts.items():
                    logs[k] = logs.get(k, 0.0) + float(v.detach()) / t.grad_accum
                logs["loss"] = logs.get("loss", 0.0) + float(loss.detach()) / t.grad_accum
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            decay = min(t.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, ps in zip(ema.parameters(), student.parameters()):
                    pe.lerp_(ps, 1 - decay)
            if gan_on:
                opt_d.zero_grad(set_to_none=True)
                d_loss = sum(hinge_d_loss(disc_run(r), disc_run(f)) for r, f in zip(reals, fakes)) / len(reals)
                d_loss.backward()
                opt_d.step()
                logs["gan_d"] = float(d_loss)
            step += 1
            if rank == 0:
                seconds = time.perf_counter() - t0
                record = {"step": step, **{k: round(v, 6) for k, v in logs.items()}, "lr": _lr(recipe, step - 1),
                          "s_per_step": round(seconds, 4),
                          "clips_per_s": round(per_rank * world * t.grad_accum / seconds, 3)}
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                progress.update(task, completed=step, info=f"loss {logs['loss']:.4f}")
                if step % t.checkpoint_every == 0 or step == t.steps:
                    save_training_state(ckpt, modules, optimizers, step)

    # 4. Evaluate the EMA student on held-out clips and write the checkpoint folder.
    sync = None
    if world > 1:
        sums = [None] * world
        dist.all_gather_object(sums, _checksum(student))
        sync = len(set(sums)) == 1
    if rank == 0:
        eval_clips = data.fixed_clips(test_videos, frames, recipe.data.eval_size, per_video=2) if test_videos else [
            (data.synthetic_clip(frames, recipe.data.eval_size, recipe.data.eval_size, seed=10_000 + i),
             {"video": "synthetic", "seed": 10_000 + i}) for i in range(recipe.data.eval_clips)]
        report = evaluate(ema, teacher, eval_clips, lpips_net)
        report.update({"ranks_in_sync": sync, "world_size": world, "steps": stopped_early or t.steps,
                       "stopped_by_time_budget": stopped_early is not None,
                       "perceptual": perceptual_description(recipe),
                       "student_params": student.num_parameters(), "teacher": teacher.spec.name,
                       "teacher_decoder_params": sum(p.numel() for p in teacher.vae.decoder.parameters())})
        _write_output(out, student, ema, recipe, report, log_path)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out


def perceptual_description(recipe: DistillRecipe) -> str:
    kind = recipe.loss.perceptual_kind
    if recipe.loss.perceptual == 0 or kind == "none":
        return "none"
    if kind == "lpips":
        return f"LPIPS (VGG16 v0.1, weights {recipe.loss.perceptual_weights})"
    return "offline fallback: (1 - MS-SSIM) + spatial/temporal gradient L1 (LPIPS weights not supplied)"


def _write_output(out: Path, student: StudentDecoder, ema: StudentDecoder, recipe: DistillRecipe, report: dict,
                  log_path: Path) -> None:
    m = report["mean"]
    card = f"""# turbovaed student for `{recipe.teacher.name}`

Distilled with turbovaed from the frozen `{report['teacher']}` teacher ({report['teacher_decoder_params']:,} decoder
parameters) into a {report['student_params']:,}-parameter student
({report['student_params'] / report['teacher_decoder_params']:.1%} of the teacher decoder).
`model.safetensors` holds the EMA weights (what is evaluated and exported); `raw.safetensors` the last raw weights.

| on held-out clips ({len(report['clips'])}) | PSNR dB | SSIM | MS-SSIM |
|---|---|---|---|
| teacher vs ground truth | {m['teacher_psnr']:.2f} | {m['teacher_ssim']:.4f} | {m['teacher_msssim']:.4f} |
| student vs ground truth | {m['student_psnr']:.2f} | {m['student_ssim']:.4f} | {m['student_msssim']:.4f} |
| student vs teacher | {m['student_vs_teacher_psnr']:.2f} | | |

Student/teacher PSNR ratio: {m['psnr_ratio']:.3f}. Perceptual loss: {report['perceptual']}. LPIPS: {report['lpips']}.
Steps: {report['steps']}, processes: {report['world_size']}.
"""
    from safetensors.torch import save

    raw = save({k: v.detach().contiguous() for k, v in student.state_dict().items()})
    ema.save_pretrained(out, extra_files={
        "raw.safetensors": raw, "recipe.toml": to_toml(recipe), "README.md": card,
        "metrics.json": json.dumps(report, indent=1, default=str),
        "log.jsonl": log_path.read_text() if log_path.is_file() else ""})
