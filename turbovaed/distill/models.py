"""Stage 3, models: the student with its alignment heads, EMA, discriminator and optimizers, restored on resume
(what a resume may not change is refused; what it changes is said), checkpointed only when finite."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from turbovaed import logs
from turbovaed.distill.cache import LatentCache
from turbovaed.distill.checkpoint import (
    checkpoint_meta,
    has_checkpoint,
    load_training_state,
    nonfinite_tensors,
    save_training_state,
)
from turbovaed.distill.checks import recipe_values, resume_changes
from turbovaed.distill.guard import TrainingError
from turbovaed.distill.losses import FeatureAlignment, PatchDiscriminator3d
from turbovaed.distill.setup import Run, init_dir
from turbovaed.io import CheckpointError, listing
from turbovaed.student import StudentDecoder


class StudentWithHeads(nn.Module):
    """One module for DDP: the student and its feature-alignment heads."""

    def __init__(self, student: StudentDecoder, align: FeatureAlignment | None) -> None:
        super().__init__()
        self.student, self.align = student, align

    def forward(self, z: torch.Tensor, teacher_feats: list[torch.Tensor] | None):
        y, feats = self.student(z, return_features=True)
        feat_loss = self.align(feats, teacher_feats) if self.align is not None and teacher_feats else y.new_zeros(())
        return y, feat_loss


@dataclass
class Models:
    student: StudentDecoder
    ema: StudentDecoder
    align: FeatureAlignment | None
    disc: PatchDiscriminator3d | None
    opt: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    opt_align: torch.optim.Optimizer | None  # the alignment heads: their own, so alignment can start on resume
    model: nn.Module  # what the loop calls: student + heads, DDP-wrapped and/or compiled
    disc_run: nn.Module | None  # the discriminator as the D step calls it (DDP-wrapped under torchrun)
    scaler: torch.amp.GradScaler
    lpips: nn.Module | None
    step: int = 0
    modules: dict = field(default_factory=dict)
    optimizers: dict = field(default_factory=dict)


def build_models(run: Run, cache: LatentCache, resume: bool,
                 make_student: Callable[[], nn.Module] | None = None) -> Models:
    """Student, EMA, alignment heads sized from one probe item, optional discriminator, optimizers;
    restored from the checkpoint on resume; wrapped for DDP and torch.compile. `make_student` swaps in
    another decoder with the StudentDecoder interface (forward(z, return_features), save_pretrained,
    num_parameters): how benchmarks/pareto.py trains peer architectures with this very trainer."""
    r, t, dev = run.recipe, run.recipe.train, run.device
    torch.manual_seed(t.seed)
    student = make_student() if make_student else StudentDecoder(run.config)
    if r.student.init and not (resume and has_checkpoint(run.ckpt)):
        student.load_state_dict(StudentDecoder.from_pretrained(init_dir(r.student.init)).state_dict())
    student = student.to(dev)
    align = None
    if r.loss.feature > 0:
        # any clip of the loaded generation (every clip has the same shape): on resume that generation starts
        # at g * clips, not at clip 0
        z0 = cache.read(cache.items(run.rank, run.world)[0])["latents"][None].to(dev)
        _, tf = run.teacher.decode_with_features(z0, blocks=r.loss.feature_blocks, truncate=True)
        with torch.no_grad():
            _, sf = student(z0, return_features=True)
        align = FeatureAlignment([f.shape for f in sf], [f.shape for f in tf], z0.shape[2],
                                 run.teacher.spec.first_frame).to(dev)
    model = StudentWithHeads(student, align)
    ema = copy.deepcopy(student).requires_grad_(False)
    # fused on CUDA: one kernel for all parameters, no per-parameter host loop
    adamw = dict(lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay, fused=dev.type == "cuda")
    opt = torch.optim.AdamW(student.parameters(), **adamw)
    opt_align = torch.optim.AdamW(align.parameters(), **adamw) if align is not None else None
    disc = PatchDiscriminator3d(r.gan.channels).to(dev) if r.gan.enabled else None
    opt_d = torch.optim.AdamW(disc.parameters(), lr=r.gan.lr, betas=(0.5, 0.9)) if disc else None
    modules = {"student": student, "ema": ema, **({"align": align} if align else {}), **({"disc": disc} if disc else {})}
    optimizers = {"opt": opt, **({"opt_align": opt_align} if opt_align else {}), **({"opt_d": opt_d} if opt_d else {})}
    scaler = torch.amp.GradScaler(dev.type, enabled=run.amp == torch.float16)
    step = 0
    if resume and has_checkpoint(run.ckpt):
        step = _resume(run, modules, optimizers, scaler)
    run_model, disc_run = model, disc
    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [dev.index] if dev.type == "cuda" else None
        run_model = DDP(model, device_ids=ids)
        disc_run = DDP(disc, device_ids=ids) if disc else None
    if t.compile:
        if disc is not None and r.gan.adaptive:
            # The adaptive GAN weight takes autograd.grad(retain_graph=True) through the compiled graph, which
            # AOTAutograd's donated buffers forbid (the run would crash at gan.start_step).
            from torch._functorch import config as functorch_config

            functorch_config.donated_buffer = False
        run_model = torch.compile(run_model)
    lpips_net = None
    if r.perceptual == "lpips":
        from turbovaed.lpips import LPIPS

        lpips_net = LPIPS(r.loss.perceptual_weights).to(dev)
    return Models(student, ema, align, disc, opt, opt_d, opt_align, run_model, disc_run, scaler, lpips_net, step,
                  modules, optimizers)


def _identity(run: Run) -> dict:
    """What a resume must not change: the student architecture and the teacher."""
    identity = {"student_config": run.config.to_dict(), "teacher": run.recipe.teacher.name,
                "teacher_weights": run.cache_identity["teacher_weights"]}
    return json.loads(json.dumps(identity))  # as the checkpoint stores it (tuples become lists)


def _resume(run: Run, modules: dict, optimizers: dict, scaler: torch.amp.GradScaler) -> int:
    """Restore the newest whole checkpoint. Stages switched on since (GAN, feature alignment) start fresh
    and are logged; a changed student architecture or teacher is one clear error."""
    fresh: list[str] = []
    saved = (checkpoint_meta(run.ckpt) or {}).get("extra", {}).get("identity")
    if saved is not None:
        now = _identity(run)
        changed = [k for k in now if saved.get(k) != now[k]]
        if changed:
            raise CheckpointError(f"--resume of {run.ckpt} with a recipe that changes {', '.join(changed)}: the "
                                  "checkpoint cannot continue under it; start a new output, or restore the recipe")
    step, extra = load_training_state(run.ckpt, modules, optimizers, fresh=fresh)
    changes = resume_changes(extra.get("recipe"), run.recipe)
    if changes and run.rank == 0:
        logs.say(f"resume at step {step} with a changed recipe (no longer the uninterrupted run): "
                 + "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    if fresh and run.rank == 0:
        logs.say(f"resume at step {step}: {', '.join(fresh)} not in the checkpoint (a stage switched on): "
                 "starting fresh")
    if extra.get("fallback") and run.rank == 0:
        logs.say(extra["fallback"])
    if scaler.is_enabled() and extra.get("scaler"):
        scaler.load_state_dict(extra["scaler"])
    run.data_stats.update(extra.get("data_stats", {}))
    run.data_stats["fresh_at_resume"] = {**run.data_stats.get("fresh_at_resume", {}), **({str(step): fresh} if fresh else {})}
    if changes:
        run.data_stats["changed_at_resume"] = {**run.data_stats.get("changed_at_resume", {}), str(step): changes}
    return step


def save_checkpoint(run: Run, m: Models) -> None:
    """Rank 0 writes both slots' next state; a state with any non-finite tensor (weights of any module, optimizer
    moments) is never written."""
    if run.rank != 0:
        return
    bad = nonfinite_tensors(m.modules, m.optimizers)
    if bad:
        raise TrainingError(f"non-finite values at step {m.step} in {listing(bad)}; the checkpoints in {run.ckpt} "
                            "(newest and previous) are kept")
    save_training_state(run.ckpt, m.modules, m.optimizers, m.step,
                        {"scaler": m.scaler.state_dict(), "identity": _identity(run), "data_stats": run.data_stats,
                         "recipe": recipe_values(run.recipe)})
