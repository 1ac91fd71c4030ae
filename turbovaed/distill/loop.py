"""Stage 4, the training loop: generator pass, optimizer step (one host-device sync), discriminator step in the GAN
stage, bookkeeping (log, checkpoint, evaluation on their cadences)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from turbovaed.distill.cache import LatentCache, dequantize
from turbovaed.distill.feed import fill_cache, micro_batches
from turbovaed.distill.guard import NonFiniteGuard, agreed, grads_finite
from turbovaed.distill.losses import adaptive_gan_weight, hinge_d_loss, msssim_grad_loss
from turbovaed.distill.models import Models, save_checkpoint
from turbovaed.distill.publish import evaluate_ema
from turbovaed.distill.recipe import DistillRecipe
from turbovaed.distill.runlog import Logger
from turbovaed.distill.setup import Run
from turbovaed.evaluate import EvalClip


def _lr(recipe: DistillRecipe, step: int) -> float:
    t = recipe.train
    warm = min(1.0, (step + 1) / max(t.warmup, 1))
    return t.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / t.steps)))


def _latents(run: Run, batch: dict[str, torch.Tensor], step: int, micro: int) -> torch.Tensor:
    """The posterior mean, or a sample z = mean + sigma * eps with eps drawn from (seed, step, micro, rank)."""
    mean = batch["latents"]
    if run.recipe.data.posterior == "mean" or "logvar" not in batch:
        return mean
    g = torch.Generator(run.device).manual_seed(hash((run.recipe.train.seed, step, micro, run.rank)) % 2**62)
    eps = torch.randn(mean.shape, generator=g, device=run.device)
    return mean + torch.exp(0.5 * batch["logvar"]) * eps


def step_losses(run: Run, m: Models, batch: dict[str, torch.Tensor], step: int, micro: int, gan_on: bool,
            last_weight: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(total loss, its parts as device tensors, the student's frames, the ground truth) for one micro-batch."""
    r, dev = run.recipe, run.device
    z = _latents(run, batch, step, micro)
    x, xt = dequantize(batch["frames"]), dequantize(batch["teacher"])
    teacher_feats = None
    if m.align is not None:  # the only teacher pass per step: autocast at teacher.dtype (the cache is fp32)
        with torch.autocast(dev.type, dtype=run.teacher_dtype, enabled=run.teacher_dtype != torch.float32):
            teacher_feats = run.teacher.decode_with_features(z, blocks=r.loss.feature_blocks, truncate=True,
                                                              check=False)[1]
    autocast = torch.autocast(dev.type, dtype=run.amp or torch.float32, enabled=run.amp is not None)
    with autocast:
        y, feat_loss = m.model(z, teacher_feats)
    y = y.float()  # losses in fp32: SSIM's statistics go negative (then NaN) in bf16
    parts = {"l1_frames": F.l1_loss(y, x), "l1_teacher": F.l1_loss(y, xt), "feature": feat_loss.float()}
    if r.perceptual == "msssim_grad":
        parts["perceptual"] = msssim_grad_loss(y, x)
    elif m.lpips is not None:
        with autocast:  # the VGG runs at the training precision; its distance is reduced in fp32
            parts["perceptual"] = m.lpips(y, x).float()
    weights = {"l1_frames": r.loss.frames, "l1_teacher": r.loss.teacher, "perceptual": r.loss.perceptual,
               "feature": r.loss.feature}
    loss = sum(weights[k] * v for k, v in parts.items())
    if gan_on:
        m.disc.requires_grad_(False)  # the G step must not touch D's weights (nor DDP's hooks on them)
        with autocast:
            g_loss = -m.disc(y).float().mean()
        m.disc.requires_grad_(True)
        w = r.gan.weight * (adaptive_gan_weight(loss, g_loss, last_weight) if r.gan.adaptive else 1.0)
        parts["gan_g"] = g_loss
        loss = loss + w * g_loss
    return loss, parts, y, x


def _optimizers(m: Models) -> list[torch.optim.Optimizer]:
    """The generator side's optimizers (student, alignment heads)."""
    return [o for o in (m.opt, m.opt_align) if o is not None]


def _out_of_time(run: Run, m: Models, started: float) -> bool:
    """Whether the time budget is spent; rank 0's clock decides, so every rank stops at the same step."""
    t, dev = run.recipe.train, run.device
    if not t.max_minutes or (dev.type != "cpu" and m.step % 20):  # a collective + read: every 20 GPU steps
        return False
    out = torch.tensor([int(time.perf_counter() - started > t.max_minutes * 60)], device=dev)
    if run.world > 1:
        dist.broadcast(out, 0)
    return bool(out.item())


def _log_generation(run: Run, step: int, log: Logger) -> None:
    generation = run.generation(step)
    log.write({"step": step, "cache_generation": generation, **run.data_stats["generations"][str(generation)]})


@dataclass
class GeneratorPass:
    """One step's generator side: its averaged loss parts (device tensors) and the pairs the D step sees."""
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    fakes: list[torch.Tensor] = field(default_factory=list)
    reals: list[torch.Tensor] = field(default_factory=list)


def generator_pass(run: Run, m: Models, batches, gan_on: bool, last_weight: torch.Tensor) -> GeneratorPass:
    """Zero the grads, then losses and backward over train.grad_accum micro-batches."""
    accum = run.recipe.train.grad_accum
    for opt in _optimizers(m):
        for g in opt.param_groups:
            g["lr"] = _lr(run.recipe, m.step)
        opt.zero_grad(set_to_none=True)
    out = GeneratorPass()
    for micro in range(accum):
        batch = {k: v.to(run.device, non_blocking=True) for k, v in next(batches).items()}
        loss, parts, y, x = step_losses(run, m, batch, m.step, micro, gan_on, last_weight)
        if gan_on:
            out.fakes.append(y.detach())
            out.reals.append(x)
        m.scaler.scale(loss / accum).backward()
        for k, v in {**parts, "loss": loss}.items():
            out.parts[k] = out.parts.get(k, 0.0) + v.detach() / accum
    return out


def optimizer_step(run: Run, m: Models, parts: dict[str, torch.Tensor]) -> tuple[bool, dict[str, float]]:
    """Clip, then the step's one host-device sync (gradient norm finiteness + the logged losses); step and
    EMA only when the norm is finite. Returns (finite, losses as floats)."""
    for opt in _optimizers(m):
        m.scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(m.model.parameters(), 1.0)  # after DDP's reduction: alike on every rank
    finite, *values = torch.stack([agreed(torch.isfinite(norm), run.world), *parts.values()]).tolist()
    if finite:
        for opt in _optimizers(m):
            m.scaler.step(opt)
        decay = min(run.recipe.train.ema_decay, (1 + m.step) / (10 + m.step))
        with torch.no_grad():
            torch._foreach_lerp_(list(m.ema.parameters()), list(m.student.parameters()), 1 - decay)
    m.scaler.update()
    return bool(finite), {k: round(v, 6) for k, v in zip(parts, values)}


def discriminator_step(run: Run, m: Models, g: GeneratorPass) -> tuple[bool, float]:
    """Hinge loss on this step's real/fake pairs; stepped only when its loss and its (DDP-reduced) gradients are
    finite on every rank: a second sync. Returns (stepped, loss)."""
    m.opt_d.zero_grad(set_to_none=True)
    with torch.autocast(run.device.type, dtype=run.amp or torch.float32, enabled=run.amp is not None):
        d_loss = sum(hinge_d_loss(m.disc_run(a).float(), m.disc_run(b).float())
                     for a, b in zip(g.reals, g.fakes)) / len(g.reals)
    d_loss.backward()
    finite = agreed(torch.isfinite(d_loss) & grads_finite(m.disc.parameters()), run.world)
    stepped, loss = torch.stack([finite, d_loss.detach()]).tolist()
    if stepped:
        m.opt_d.step()
    return bool(stepped), round(loss, 6)


def bookkeeping(run: Run, m: Models, record: dict, seconds: float, evalset: list[EvalClip] | None,
                log: Logger) -> None:
    """Log the step, then checkpoint and evaluate on their cadences."""
    t, dev = run.recipe.train, run.device
    record.update({"lr": _lr(run.recipe, m.step - 1), "s_per_step": round(seconds, 4),
                   "clips_per_s": round(t.batch * run.world * t.grad_accum / seconds, 3)})
    if dev.type == "cuda":
        record["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    log.write(record)
    if m.step % t.checkpoint_every == 0 or m.step == t.steps:
        save_checkpoint(run, m)
    if evalset is not None and t.eval_every and m.step % t.eval_every == 0 and m.step < t.steps:
        evaluate_ema(run, m, evalset, log)


def train_loop(run: Run, m: Models, cache: LatentCache, evalset: list[EvalClip] | None,
               log: Logger) -> int | None:
    """Train to recipe.train.steps (or the time budget); returns the step it stopped at early, if any.

    Each step: generator pass, optimizer step (one host-device sync), discriminator step in the GAN
    stage, bookkeeping. A step whose gradient norm is not finite (on any rank: DDP has averaged the
    gradients, so every rank sees the same norm) is skipped by all ranks, counted and never checkpointed."""
    r, dev = run.recipe, run.device
    batches = micro_batches(run, cache, m.step)
    last_weight = [x for x in m.student.modules() if isinstance(x, (nn.Conv2d, nn.Conv3d))][-1].weight
    started = time.perf_counter()
    guard = NonFiniteGuard(run.data_stats, r.train.max_nonfinite, str(run.ckpt))
    changes = run.data_stats.get("changed_at_resume", {}).get(str(m.step))
    if changes:
        log.write({"step": m.step, "changed_at_resume": changes})
    _log_generation(run, m.step, log)
    while m.step < r.train.steps:
        if _out_of_time(run, m, started):
            save_checkpoint(run, m)
            return m.step
        if m.step and run.generation(m.step) != run.generation(m.step - 1):  # a fresh cache generation
            cache = fill_cache(run, run.generation(m.step))
            batches = micro_batches(run, cache, m.step)
            _log_generation(run, m.step, log)
        t0 = time.perf_counter()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        gan_on = m.disc is not None and m.step >= r.gan.start_step
        g = generator_pass(run, m, batches, gan_on, last_weight)
        finite, losses = optimizer_step(run, m, g.parts)
        record = {"step": m.step + 1, **losses, **({} if finite else {"skipped": "non-finite"})}
        d_finite = True
        if gan_on and finite:
            d_finite, record["gan_d"] = discriminator_step(run, m, g)
            if not d_finite:
                record["gan_d_skipped"] = "non-finite"
        m.step += 1
        guard(finite and d_finite, m.step)
        bookkeeping(run, m, record, time.perf_counter() - t0, evalset, log)
    return None
