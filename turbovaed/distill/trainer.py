"""The distillation trainer (Turbo-VAED recipe): frozen teacher, student decoder + throw-away heads.

Loss = w_f L1(student, frames) + w_t L1(student, teacher) + w_p perceptual + w_a feature alignment
(+ a GAN stage from gan.start_step). EMA weights are what gets evaluated and exported. Runs single
process or under `torchrun` (DDP: NCCL with one GPU per LOCAL_RANK, gloo on CPU); only rank 0 writes.

`distill` runs six named stages: setup (device, precision, processes, teacher, videos), cache (each rank
encodes its own clips), models, loop, eval (held-out clips, every `eval_every` steps and at the end) and
publish (a diffusers-like folder)."""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from turbovaed import data, teachers
from turbovaed.distill.checkpoint import load_training_state, save_training_state
from turbovaed.distill.losses import FeatureAlignment, PatchDiscriminator3d, adaptive_gan_weight, hinge_d_loss, msssim_grad_loss
from turbovaed.distill.recipe import DistillRecipe
from turbovaed.evaluate import EvalClip, prepare, score
from turbovaed.io import InputError, TurboVAEDError
from turbovaed.recipes import to_toml
from turbovaed.student import StudentConfig, StudentDecoder

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
        name, size = teachers.parse_preset(s.preset)
        config = teachers.get_spec(name).student_config(mini=s.mini, size=size)
    else:
        config = teacher.student_config(mini=s.mini, size=s.size)
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


# ----------------------------------------------------------------------------- 1. setup
def resolve_device(want: str, local_rank: int = 0) -> torch.device:
    """'auto' | 'cpu' | 'cuda' -> the device this process trains on (cuda:LOCAL_RANK under torchrun)."""
    if want == "cuda" and not torch.cuda.is_available():
        raise InputError(f"the recipe asks for train.device = 'cuda' but this machine has no usable CUDA device "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); install a CUDA "
                         "build of torch (README: GPU install) or set train.device = 'cpu'")
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise InputError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
    return torch.device("cuda", local_rank)


def check_dtype(device: torch.device, dtype: torch.dtype, what: str) -> None:
    """Refuse a dtype the device cannot compute in (bf16 needs an Ampere or newer GPU)."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise InputError(f"{what} = 'bf16' but {torch.cuda.get_device_name(device)} has no bf16 support; "
                         "use 'fp16' (with a GradScaler) or 'fp32'")


@dataclass
class Run:
    """What every stage shares."""

    recipe: DistillRecipe
    rank: int
    world: int
    device: torch.device
    amp: torch.dtype | None  # autocast dtype, None for fp32
    teacher: teachers.Teacher
    config: StudentConfig
    train_infos: list[data.VideoInfo]  # empty: synthetic clips
    eval_videos: list[Path]  # held-out videos; empty only for tiny test teachers (synthetic, said so)
    work: Path
    show_progress: bool

    @property
    def frames(self) -> int:
        return self.teacher.spec.frames_for(self.recipe.data.latent_frames)

    @property
    def ckpt(self) -> Path:
        return self.work / "checkpoint"

    @property
    def log_path(self) -> Path:
        return self.work / "log.jsonl"


def setup(recipe: DistillRecipe, resume: bool, show_progress: bool) -> Run:
    """Device, precision, process group, teacher and videos: every refusal happens here, before work."""
    t = recipe.train
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(t.device, local_rank)
    amp = None if t.precision == "fp32" else DTYPES[t.precision]
    teacher_dtype = DTYPES[recipe.teacher.dtype] if recipe.teacher.dtype != "auto" else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    check_dtype(device, teacher_dtype, "teacher.dtype")
    if amp is not None:
        check_dtype(device, amp, "train.precision")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=t.dist_timeout_minutes),
                                device_id=device if device.type == "cuda" else None)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if t.threads:
        torch.set_num_threads(t.threads)
    out = Path(recipe.output)
    work = out.with_name(out.name + ".work")
    if not resume and rank == 0 and (work / "checkpoint").exists():
        raise InputError(f"{work / 'checkpoint'} exists from an earlier run: pass --resume to continue it, "
                         f"or remove {work}")
    teacher = teachers.load(recipe.teacher.name, recipe.teacher.path, tiny=recipe.teacher.tiny,
                            dtype=teacher_dtype).to(device)
    config = student_config(recipe, teacher)
    if recipe.data.size % teacher.spec.spatial:
        raise InputError(f"data.size {recipe.data.size} must be a multiple of {teacher.spec.spatial} "
                         f"for {teacher.spec.name}")
    train_infos, eval_videos = _videos(recipe, work, rank, show_progress)
    return Run(recipe, rank, world, device, amp, teacher, config, train_infos, eval_videos, work, show_progress)


def _videos(recipe: DistillRecipe, work: Path, rank: int, show_progress: bool
            ) -> tuple[list[data.VideoInfo], list[Path]]:
    """(indexed training videos, held-out videos). Rank 0 probes the files into the index; other ranks
    read it (a file poll, not a collective). A real teacher is never scored on synthetic clips."""
    d = recipe.data
    if d.synthetic:
        videos = []
    elif d.videos:
        videos = data.list_videos(d.videos)
    else:
        shared = data.shared_videos_dir()
        videos = data.list_videos(shared) if shared else data.bundled_videos()
        if not videos:
            raise InputError("no videos: set data.videos, install turbovaed[video] (ships real clips), "
                             "or set data.synthetic = true")
    held = set(d.held_out)
    extra = data.list_videos(d.eval_videos) if d.eval_videos else []
    evaluation_only = {v.resolve() for v in extra}  # an eval folder inside the training folder is still held out
    train = [v for v in videos if v.name not in held and v.resolve() not in evaluation_only]
    held_out = [v for v in videos if v.name in held] + extra
    if videos and not train:
        raise InputError("every video is held out; nothing left to train on")
    if not held_out and not recipe.teacher.tiny:
        raise InputError(f"the recipe names no held-out videos (data.held_out matched none of {sorted(held)} and "
                         "data.eval_videos is empty): a real teacher's student must be scored on real clips it never "
                         "trained on, never on synthetic clips; add a folder to data.eval_videos")
    listed = train + held_out
    if not listed:
        return [], []
    index = Path(d.index) if d.index else work / "videos.index.json"
    if rank == 0:
        infos, bad = data.index_videos(listed, index, workers=max(8, d.workers), show_progress=show_progress)
        if bad:
            print(f"skipping {len(bad)} unreadable video(s); first: {bad[0]}", file=sys.stderr)
    else:
        infos, _ = data.wait_for_index(listed, index, timeout_s=recipe.train.dist_timeout_minutes * 60)
    readable, training = {i.path for i in infos}, set(train)
    train_infos = [i for i in infos if i.path in training]
    if train and not train_infos:
        raise data.VideoError(f"none of the {len(train)} training videos is readable")
    return train_infos, [v for v in held_out if v in readable]


# ----------------------------------------------------------------------------- 2. cache
def fill_cache(run: Run) -> data.LatentCache:
    """Each rank encodes its own clips (i % world == rank) in parallel, decoding in DataLoader workers."""
    d = run.recipe.data
    cache = data.LatentCache(run.work / "cache")
    sampler = data.ClipSampler([i.path for i in run.train_infos], run.frames, (d.size, d.size), seed=d.seed,
                               resize=d.resize or None, infos=run.train_infos, strides=tuple(d.strides), flip=d.flip)
    if d.clips < run.world:
        raise InputError(f"data.clips = {d.clips} leaves some of the {run.world} ranks without clips")
    todo = len(range(run.rank, d.clips, run.world)) - len(cache.items(run.rank, run.world, d.clips))
    if todo:
        from rich.progress import Progress

        with Progress(disable=not run.show_progress or run.rank != 0, transient=True) as bar:
            task = bar.add_task(f"caching teacher latents (rank {run.rank})", total=todo)
            cache.fill(run.teacher, sampler, d.clips, rank=run.rank, world=run.world, batch=run.recipe.train.batch,
                       workers=d.workers, progress=lambda: bar.advance(task))
    return cache


class _Items(torch.utils.data.Dataset):
    def __init__(self, cache: data.LatentCache) -> None:
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


def _batches(run: Run, cache: data.LatentCache, start: int):
    items = cache.items(run.rank, run.world, run.recipe.data.clips)
    t, d = run.recipe.train, run.recipe.data
    return iter(torch.utils.data.DataLoader(
        _Items(cache), batch_sampler=_StepBatches(items, t.seed, run.rank, start, t.steps, t.batch, t.grad_accum),
        num_workers=d.workers, pin_memory=run.device.type == "cuda", persistent_workers=False))


# ----------------------------------------------------------------------------- 3. models
@dataclass
class Models:
    student: StudentDecoder
    ema: StudentDecoder
    align: FeatureAlignment | None
    disc: PatchDiscriminator3d | None
    opt: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    model: nn.Module  # what the loop calls: student + heads, DDP-wrapped and/or compiled
    disc_run: nn.Module | None  # the discriminator as the D step calls it (DDP-wrapped under torchrun)
    scaler: torch.amp.GradScaler
    lpips: nn.Module | None
    step: int = 0
    modules: dict = field(default_factory=dict)
    optimizers: dict = field(default_factory=dict)


def build_models(run: Run, cache: data.LatentCache, resume: bool,
                 make_student: Callable[[], nn.Module] | None = None) -> Models:
    """Student, EMA, alignment heads sized from one probe item, optional discriminator, optimizers;
    restored from the checkpoint on resume; wrapped for DDP and torch.compile. `make_student` swaps in
    another decoder with the StudentDecoder interface (forward(z, return_features), save_pretrained,
    num_parameters): how benchmarks/pareto.py trains peer architectures with this very trainer."""
    r, t, dev = run.recipe, run.recipe.train, run.device
    torch.manual_seed(t.seed)
    student = (make_student() if make_student else StudentDecoder(run.config)).to(dev)
    align = None
    if r.loss.feature > 0:
        z0 = cache.read(cache.items(run.rank, run.world, r.data.clips)[0])["latents"][None].to(dev)
        _, tf = run.teacher.decode_with_features(z0, blocks=r.loss.feature_blocks, truncate=True)
        with torch.no_grad():
            _, sf = student(z0, return_features=True)
        align = FeatureAlignment([f.shape for f in sf], [f.shape for f in tf]).to(dev)
    model = StudentWithHeads(student, align)
    ema = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    disc = PatchDiscriminator3d(r.gan.channels).to(dev) if r.gan.enabled else None
    opt_d = torch.optim.AdamW(disc.parameters(), lr=r.gan.lr, betas=(0.5, 0.9)) if disc else None
    modules = {"student": student, "ema": ema, **({"align": align} if align else {}), **({"disc": disc} if disc else {})}
    optimizers = {"opt": opt, **({"opt_d": opt_d} if opt_d else {})}
    scaler = torch.amp.GradScaler(dev.type, enabled=run.amp == torch.float16)
    step = 0
    if resume and run.ckpt.is_dir():
        step, extra = load_training_state(run.ckpt, modules, optimizers)
        if scaler.is_enabled() and extra.get("scaler"):
            scaler.load_state_dict(extra["scaler"])
    run_model, disc_run = model, disc
    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [dev.index] if dev.type == "cuda" else None
        run_model = DDP(model, device_ids=ids)
        disc_run = DDP(disc, device_ids=ids) if disc else None
    if t.compile:
        run_model = torch.compile(run_model)
    lpips_net = None
    if r.perceptual == "lpips":
        from turbovaed.lpips import LPIPS

        lpips_net = LPIPS(r.loss.perceptual_weights).to(dev)
    return Models(student, ema, align, disc, opt, opt_d, run_model, disc_run, scaler, lpips_net, step,
                  modules, optimizers)


# ----------------------------------------------------------------------------- 4. loop
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


class Logger:
    """log.jsonl always; TensorBoard when asked; a rich bar on a terminal, else a plain line every N steps."""

    def __init__(self, run: Run, start: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.run, self.active = run, run.rank == 0
        t = run.recipe.train
        terminal = Console(stderr=True).is_terminal
        self.bar = Progress(TextColumn("[bold]distill"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                            disable=not (self.active and run.show_progress and terminal))
        self.plain = self.active and run.show_progress and not terminal
        self.task = self.bar.add_task("distill", total=t.steps, completed=start, info="")
        self.tb = None
        if self.active and t.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise InputError("train.tensorboard = true needs TensorBoard: pip install 'turbovaed[tensorboard]'") \
                    from err
            self.tb = SummaryWriter(str(run.work / "tensorboard"))
        self.started, self.start = time.perf_counter(), start

    def __enter__(self) -> Logger:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)
        if self.tb:
            self.tb.close()

    def write(self, record: dict) -> None:
        if not self.active:
            return
        with self.run.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        if self.tb:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k.replace("eval_", "eval/"), v, step)
        if "loss" not in record:
            return
        self.bar.update(self.task, completed=step, info=f"loss {record['loss']:.4f}")
        if self.plain and (step % self.run.recipe.train.log_every == 0 or step == self.run.recipe.train.steps):
            done = step - self.start
            eta = (time.perf_counter() - self.started) / max(done, 1) * (self.run.recipe.train.steps - step)
            mem = f" peak {record['peak_mem_mib']:.0f} MiB" if "peak_mem_mib" in record else ""
            print(f"step {step}/{self.run.recipe.train.steps} loss {record['loss']:.4f} "
                  f"{record['clips_per_s']:.2f} clips/s{mem} eta {eta / 60:.1f} min", flush=True)


def train_loop(run: Run, m: Models, cache: data.LatentCache, evalset: list[EvalClip] | None,
               log: Logger) -> int | None:
    """Train to recipe.train.steps (or the time budget); returns the step it stopped at early, if any."""
    r, t, dev = run.recipe, run.recipe.train, run.device
    batches = _batches(run, cache, m.step)
    last_weight = [x for x in m.student.modules() if isinstance(x, (nn.Conv2d, nn.Conv3d))][-1].weight
    weights = {"l1_frames": r.loss.frames, "l1_teacher": r.loss.teacher, "perceptual": r.loss.perceptual,
               "feature": r.loss.feature}
    per_step = t.batch * run.world * t.grad_accum
    autocast = torch.autocast(dev.type, dtype=run.amp or torch.float32, enabled=run.amp is not None)
    started = time.perf_counter()
    while m.step < t.steps:
        out_of_time = torch.tensor([int(bool(t.max_minutes) and time.perf_counter() - started > t.max_minutes * 60)],
                                   device=dev)
        if run.world > 1:  # rank 0's clock decides, so every rank stops at the same step
            dist.broadcast(out_of_time, 0)
        if out_of_time.item():
            if run.rank == 0:
                save_training_state(run.ckpt, m.modules, m.optimizers, m.step, {"scaler": m.scaler.state_dict()})
            return m.step
        t0 = time.perf_counter()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        for g in m.opt.param_groups:
            g["lr"] = _lr(r, m.step)
        gan_on = m.disc is not None and m.step >= r.gan.start_step
        m.opt.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        fakes, reals = [], []
        for micro in range(t.grad_accum):
            batch = {k: v.to(dev, non_blocking=True) for k, v in next(batches).items()}
            z = _latents(run, batch, m.step, micro)
            x, xt = data.dequantize(batch["frames"]), data.dequantize(batch["teacher"])
            teacher_feats = run.teacher.decode_with_features(z, blocks=r.loss.feature_blocks, truncate=True)[1] \
                if m.align is not None else None
            with autocast:
                y, feat_loss = m.model(z, teacher_feats)
            y = y.float()  # losses in fp32: SSIM's statistics go negative (then NaN) in bf16
            parts = {"l1_frames": F.l1_loss(y, x), "l1_teacher": F.l1_loss(y, xt), "feature": feat_loss.float()}
            if r.perceptual == "msssim_grad":
                parts["perceptual"] = msssim_grad_loss(y, x)
            elif m.lpips is not None:
                with autocast:  # the VGG runs at the training precision; its distance is reduced in fp32
                    parts["perceptual"] = m.lpips(y, x).float()
            loss = sum(weights[k] * v for k, v in parts.items())
            if gan_on:
                m.disc.requires_grad_(False)  # the G step must not touch D's weights (nor DDP's hooks on them)
                with autocast:
                    g_loss = -m.disc(y).float().mean()
                m.disc.requires_grad_(True)
                w = r.gan.weight * (adaptive_gan_weight(loss, g_loss, last_weight) if r.gan.adaptive else 1.0)
                parts["gan_g"] = g_loss
                loss = loss + w * g_loss
                fakes.append(y.detach())
                reals.append(x)
            if not torch.isfinite(loss):
                last = json.loads((run.ckpt / "state.json").read_text())["step"] \
                    if (run.ckpt / "state.json").exists() else 0
                raise TrainingError(f"loss became {loss.item()} at step {m.step}; stopped. The last good "
                                    f"checkpoint ({run.ckpt}, step {last}) is kept")
            m.scaler.scale(loss / t.grad_accum).backward()
            for k, v in parts.items():
                logs[k] = logs.get(k, 0.0) + float(v.detach()) / t.grad_accum
            logs["loss"] = logs.get("loss", 0.0) + float(loss.detach()) / t.grad_accum
        m.scaler.unscale_(m.opt)
        torch.nn.utils.clip_grad_norm_(m.model.parameters(), 1.0)
        m.scaler.step(m.opt)
        m.scaler.update()
        decay = min(t.ema_decay, (1 + m.step) / (10 + m.step))
        with torch.no_grad():
            torch._foreach_lerp_(list(m.ema.parameters()), list(m.student.parameters()), 1 - decay)
        if gan_on:
            m.opt_d.zero_grad(set_to_none=True)
            with autocast:
                d_loss = sum(hinge_d_loss(m.disc_run(a).float(), m.disc_run(b).float())
                             for a, b in zip(reals, fakes)) / len(reals)
            d_loss.backward()
            m.opt_d.step()
            logs["gan_d"] = float(d_loss.detach())
        m.step += 1
        seconds = time.perf_counter() - t0
        record = {"step": m.step, **{k: round(v, 6) for k, v in logs.items()}, "lr": _lr(r, m.step - 1),
                  "s_per_step": round(seconds, 4), "clips_per_s": round(per_step / seconds, 3)}
        if dev.type == "cuda":
            record["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
        log.write(record)
        if run.rank == 0 and (m.step % t.checkpoint_every == 0 or m.step == t.steps):
            save_training_state(run.ckpt, m.modules, m.optimizers, m.step, {"scaler": m.scaler.state_dict()})
        if evalset is not None and t.eval_every and m.step % t.eval_every == 0 and m.step < t.steps:
            evaluate_ema(run, m, evalset, log)
    return None


# ----------------------------------------------------------------------------- 5. eval
def eval_clips(run: Run) -> list[tuple[torch.Tensor, dict]]:
    """Held-out windows of real videos; synthetic clips only for tiny test teachers (and labelled so)."""
    d = run.recipe.data
    if run.eval_videos:
        return data.fixed_clips(run.eval_videos, run.frames, d.eval_size, per_video=d.eval_per_video)
    return [(data.synthetic_clip(run.frames, d.eval_size, d.eval_size, seed=10_000 + i),
             {"video": "synthetic", "seed": 10_000 + i}) for i in range(d.eval_clips)]


def evaluate_ema(run: Run, m: Models, evalset: list[EvalClip], log: Logger) -> dict:
    """Score the EMA student on the prepared held-out clips, log it, and write a side-by-side sample video
    (ground truth | teacher | student) to <work>/samples/step-NNNNNNN.mp4."""
    report = score(m.ema, evalset, m.lpips, keep_outputs=1)
    student = report.pop("outputs")[0]
    clip = evalset[0]
    path = run.work / "samples" / f"step-{m.step:07d}.mp4"
    data.write_video(path, torch.cat([clip.frames, clip.teacher, student], dim=-1), fps=8)
    report["sample"] = str(path)
    log.write({"step": m.step, **{f"eval_{k}": round(v, 4) for k, v in report["mean"].items()}, "sample": str(path)})
    return report


# ----------------------------------------------------------------------------- 6. publish
def _checksum(module: nn.Module) -> str:
    h = hashlib.sha256()
    for p in module.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def perceptual_description(recipe: DistillRecipe) -> str:
    kind = recipe.perceptual
    if kind == "none":
        return "none"
    if kind == "lpips":
        return f"LPIPS (VGG16 v0.1, weights {recipe.loss.perceptual_weights})"
    return "offline fallback: (1 - MS-SSIM) + spatial/temporal gradient L1 (LPIPS weights not supplied)"


def publish(run: Run, m: Models, report: dict) -> Path:
    """The output folder, diffusers-like: config + EMA weights, raw weights, recipe, card, metrics, log,
    and the last side-by-side sample video."""
    r = run.recipe
    out = Path(r.output)
    mean = report["mean"]
    card = f"""# turbovaed student for `{r.teacher.name}`

Distilled with turbovaed from the frozen `{report['teacher']}` teacher ({report['teacher_decoder_params']:,} decoder
parameters) into a {report['student_params']:,}-parameter student
({report['student_params'] / report['teacher_decoder_params']:.1%} of the teacher decoder).
`model.safetensors` holds the EMA weights (what is evaluated and exported); `raw.safetensors` the last raw weights;
`sample.mp4` shows ground truth | teacher | student on the first evaluation clip; `latent_norm.json` holds the
teacher's latent statistics, so `turbovaed decode --normalized` can decode a diffusion pipeline's output.

| on {report['eval_set']} ({len(report['clips'])} clips) | PSNR dB | SSIM | MS-SSIM |
|---|---|---|---|
| teacher vs ground truth | {mean['teacher_psnr']:.2f} | {mean['teacher_ssim']:.4f} | {mean['teacher_msssim']:.4f} |
| student vs ground truth | {mean['student_psnr']:.2f} | {mean['student_ssim']:.4f} | {mean['student_msssim']:.4f} |
| student vs teacher | {mean['student_vs_teacher_psnr']:.2f} | | |

Student/teacher PSNR ratio: {mean['psnr_ratio']:.3f}. Perceptual loss: {report['perceptual']}. LPIPS: {report['lpips']}.
Steps: {report['steps']}, processes: {report['world_size']}, device: {report['device']}, precision: {report['precision']}.
"""
    from safetensors.torch import save

    raw = save({k: v.detach().cpu().contiguous() for k, v in m.student.state_dict().items()})
    sample = Path(report["sample"])
    m.ema.to("cpu").save_pretrained(out, extra_files={
        "raw.safetensors": raw, "recipe.toml": to_toml(r), "README.md": card,
        "metrics.json": json.dumps(report, indent=1, default=str),
        "log.jsonl": run.log_path.read_text() if run.log_path.is_file() else "",
        "latent_norm.json": json.dumps({**run.teacher.norm.to_dict(), "teacher": r.teacher.name}, indent=1),
        "sample.mp4": sample.read_bytes()})
    return out


def distill(recipe: DistillRecipe, resume: bool = False, show_progress: bool = True,
            make_student: Callable[[], nn.Module] | None = None) -> Path:
    """Run a recipe to completion; returns the output checkpoint folder."""
    try:
        run = setup(recipe, resume, show_progress)
        cache = fill_cache(run)
        m = build_models(run, cache, resume, make_student)
        if run.rank == 0:
            run.work.mkdir(parents=True, exist_ok=True)
            if m.step == 0:
                run.log_path.unlink(missing_ok=True)
                shutil.rmtree(run.work / "samples", ignore_errors=True)
        evalset = prepare(run.teacher, eval_clips(run), m.lpips) if run.rank == 0 else None
        with Logger(run, m.step) as log:
            stopped_early = train_loop(run, m, cache, evalset, log)
            sync = None
            if run.world > 1:
                sums = [None] * run.world
                dist.all_gather_object(sums, _checksum(m.student))
                sync = len(set(sums)) == 1
            out = Path(recipe.output)
            if run.rank == 0:
                report = evaluate_ema(run, m, evalset, log)
                report.update({
                    "ranks_in_sync": sync, "world_size": run.world, "steps": stopped_early or recipe.train.steps,
                    "stopped_by_time_budget": stopped_early is not None, "device": str(run.device),
                    "precision": recipe.train.precision, "teacher_dtype": str(run.teacher._dtype).replace("torch.", ""),
                    "eval_set": ("held-out videos: " + ", ".join(sorted({v.name for v in run.eval_videos})))
                    if run.eval_videos else "synthetic clips (tiny test teacher; not held-out videos)",
                    "perceptual": perceptual_description(recipe), "student_params": m.student.num_parameters(),
                    "teacher": run.teacher.spec.name,
                    "teacher_decoder_params": sum(p.numel() for p in run.teacher.vae.decoder.parameters())})
                out = publish(run, m, report)
        if run.world > 1:
            dist.barrier()
        return out
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
