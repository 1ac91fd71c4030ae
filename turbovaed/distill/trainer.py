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
import functools
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from turbovaed import data, logs, memory, presets, teachers
from turbovaed.distill import lock
from turbovaed.distill.cache import LatentCache, dequantize
from turbovaed.distill.checkpoint import (
    checkpoint_meta,
    has_checkpoint,
    load_training_state,
    nonfinite_tensors,
    save_training_state,
)
from turbovaed.distill.checks import preflight, recipe_values, resume_changes
from turbovaed.distill.guard import NonFiniteGuard, TrainingError, agreed, grads_finite, strict_json
from turbovaed.distill.losses import FeatureAlignment, PatchDiscriminator3d, adaptive_gan_weight, hinge_d_loss, msssim_grad_loss
from turbovaed.distill.recipe import DistillRecipe
from turbovaed.evaluate import EvalClip, prepare, score
from turbovaed.io import CheckpointError, InputError, atomic_file, listing
from turbovaed.recipes import to_toml
from turbovaed.student import CONFIG_NAME, StudentConfig, StudentDecoder

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
        name, size = presets.parse_preset(s.preset)
        config = presets.student_config(teachers.get_spec(name), mini=s.mini, size=size)
    else:
        config = presets.student_config(teacher, mini=s.mini, size=s.size)
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
    if s.init:
        check_init(init_dir(s.init), config)
    return config


def init_dir(init: str) -> Path:
    """student.init as a folder: "reference" is the student shipped with the reference teacher."""
    from turbovaed import reference

    return reference.STUDENT_DIR if init == "reference" else Path(init)


def init_description(init: str | None) -> str:
    if init is None:
        return "random initialisation"
    if init == "reference":
        return "the shipped reference student (distilled once by distill/reference-student.toml)"
    return f"the weights of {init}"


def check_init(folder: Path, config: StudentConfig) -> None:
    """Refuse (before any work) a starting point whose architecture differs from the recipe's student."""
    try:
        saved = StudentConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text())).to_dict()
    except (OSError, ValueError, TypeError) as err:
        raise InputError(f"student.init {folder} is not a student folder (a {CONFIG_NAME} and weights): {err}") from err
    diff = sorted(k for k in {*saved, *config.to_dict()} if saved.get(k) != config.to_dict().get(k))
    if diff:
        raise InputError(f"student.init {folder} is a different student than the recipe's: {', '.join(diff)} differ")


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
    teacher_dtype: torch.dtype  # autocast of the per-step feature pass; the cache is made in fp32
    unreadable: list[str] = field(default_factory=list)  # index errors: videos left out before training
    data_stats: dict = field(default_factory=dict)  # replaced clips and generations so far (kept in checkpoints)

    @functools.cached_property
    def sampler(self) -> data.ClipSampler:
        d = self.recipe.data
        return data.ClipSampler([i.path for i in self.train_infos], self.frames, (d.size, d.size), seed=d.seed,
                                resize=d.resize or None, infos=self.train_infos, strides=tuple(d.strides), flip=d.flip)

    def generation(self, step: int) -> int:
        """The cache generation step `step` trains on (clips g*clips .. (g+1)*clips - 1)."""
        every = self.recipe.data.refresh_every
        return step // every if every else 0

    @functools.cached_property
    def cache_identity(self) -> dict:
        """What a cached latent depends on: the videos, the data settings, the teacher's weights and dtype."""
        d = self.recipe.data
        return {"teacher": self.teacher.spec.name, "frames": self.frames, "size": [d.size, d.size],
                "videos": data.index_digest(self.train_infos) if self.train_infos else "synthetic",
                "resize": d.resize, "strides": list(d.strides), "flip": d.flip, "seed": d.seed,
                "teacher_weights": teacher_fingerprint(self.teacher), "teacher_dtype": "float32",
                "sampler": "epoch-permutation/1"}

    @property
    def frames(self) -> int:
        return self.teacher.spec.frames_for(self.recipe.data.latent_frames)

    @property
    def ckpt(self) -> Path:
        return self.work / "checkpoint"

    @property
    def log_path(self) -> Path:
        return self.work / "log.jsonl"


def setup(recipe: DistillRecipe, resume: bool, show_progress: bool, rebuild_cache: bool = False) -> Run:
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
        torch.set_float32_matmul_precision("high")  # TF32, through the API third-party code reads back
        torch.backends.cudnn.benchmark = True  # fixed crop shapes: pick the fastest conv kernels once
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=t.dist_timeout_minutes),
                                device_id=device if device.type == "cuda" else None)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if t.threads:
        torch.set_num_threads(t.threads)
    work = recipe.work
    if rank == 0:
        preflight(recipe, resume)
    lock.acquire(work, rank)  # one run per work folder: refused here while another one lives
    # The cache is made once and reused for days: its latents and decodes are made in fp32 weights and
    # compute; teacher.dtype is the autocast dtype of the per-step feature pass only.
    teacher = teachers.load(recipe.teacher.name, recipe.teacher.path, tiny=recipe.teacher.tiny,
                            dtype=torch.float32).to(device)
    config = student_config(recipe, teacher)
    d = recipe.data
    memory.check(memory.student_bytes(config, (d.latent_frames, d.size // teacher.spec.spatial,
                                               d.size // teacher.spec.spatial), recipe.train.batch, training=True),
                 f"training this student on batches of {recipe.train.batch} x {d.size}x{d.size} crops",
                 "lower train.batch (raise train.grad_accum to keep the batch), data.size or data.latent_frames, or "
                 "the student's channels", device)
    if recipe.data.size % teacher.spec.spatial:
        raise InputError(f"data.size {recipe.data.size} must be a multiple of {teacher.spec.spatial} "
                         f"for {teacher.spec.name}")
    if rebuild_cache and rank == 0:
        shutil.rmtree(work / "cache", ignore_errors=True)
    train_infos, eval_videos, unreadable = _videos(recipe, work, rank, show_progress)
    run = Run(recipe, rank, world, device, amp, teacher, config, train_infos, eval_videos, work, show_progress,
              teacher_dtype, unreadable)
    if rank == 0:
        check_disk(run)
    if world > 1:
        dist.barrier()  # a rebuilt cache is gone before any rank writes into it
    return run


def cache_bytes_per_clip(run: Run) -> int:
    """Bytes one cached clip takes: source frames and teacher decode (uint8), posterior mean and
    log-variance (fp32)."""
    d, spec = run.recipe.data, run.teacher.spec
    pixels = 3 * run.frames * d.size * d.size
    latent = run.teacher.latent_channels * d.latent_frames * (d.size // spec.spatial) ** 2
    return 2 * pixels + 2 * 4 * latent


def check_disk(run: Run) -> None:
    """Refuse a cache that cannot fit (one generation, plus the next while it is written) before filling it."""
    d = run.recipe.data
    need = cache_bytes_per_clip(run) * d.clips * (2 if d.refresh_every else 1)
    cache = run.work / "cache"
    have = sum(f.stat().st_size for f in cache.rglob("*.safetensors")) if cache.is_dir() else 0
    free = shutil.disk_usage(next(p for p in (run.work, *run.work.parents) if p.exists())).free
    if need - have > free * 0.95:
        raise InputError(f"the latent cache needs about {need / 1e9:.1f} GB ({d.clips} clips x "
                         f"{cache_bytes_per_clip(run) / 1e6:.2f} MB{' x 2 generations' if d.refresh_every else ''}) "
                         f"but {run.work} has {free / 1e9:.1f} GB free: lower data.clips or move output")


def teacher_fingerprint(teacher: teachers.Teacher) -> str:
    """A short digest of the teacher's weights (every tensor's name, shape and first 4096 values): a cache
    made with other weights is refused."""
    h = hashlib.sha256(teacher.spec.name.encode())
    for name, v in teacher.vae.state_dict().items():
        h.update(f"{name}{tuple(v.shape)}".encode())
        h.update(v.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _videos(recipe: DistillRecipe, work: Path, rank: int, show_progress: bool
            ) -> tuple[list[data.VideoInfo], list[Path], list[str]]:
    """(indexed training videos, held-out videos, errors of unreadable ones). Rank 0 probes the files into
    the index; other ranks read it (a file poll, not a collective). A real teacher is never scored on
    synthetic clips."""
    d = recipe.data
    if d.synthetic:
        videos = []
    elif d.videos:
        videos = data.list_videos(d.videos)
    else:
        videos = data.real_clips()
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
        return [], [], []
    index = Path(d.index) if d.index else work / "videos.index.json"
    if rank == 0:
        infos, bad = data.index_videos(listed, index, workers=d.probe_workers, show_progress=show_progress)
        if bad:
            logs.say(f"skipping {len(bad)} unreadable video(s); first: {bad[0]}")
    else:
        infos, bad = data.wait_for_index(listed, index, timeout_s=recipe.train.dist_timeout_minutes * 60)
    readable, training = {i.path for i in infos}, set(train)
    train_infos = [i for i in infos if i.path in training]
    if train and not train_infos:
        raise data.VideoError(f"none of the {len(train)} training videos is readable")
    return train_infos, [v for v in held_out if v in readable], bad


# ----------------------------------------------------------------------------- 2. cache
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
        from rich.progress import Progress

        with Progress(disable=not run.show_progress or run.rank != 0, transient=True, console=logs.console()) as bar:
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


def _batches(run: Run, cache: LatentCache, start: int):
    """Micro-batches from `start` to the end of start's cache generation (or of training)."""
    t, d = run.recipe.train, run.recipe.data
    generation = run.generation(start)
    items = cache.items(run.rank, run.world, d.clips, first=generation * d.clips)
    end = min(t.steps, (generation + 1) * d.refresh_every) if d.refresh_every else t.steps
    return iter(torch.utils.data.DataLoader(
        _Items(cache), batch_sampler=_StepBatches(items, t.seed, run.rank, start, end, t.batch, t.grad_accum),
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
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.run, self.active = run, run.rank == 0
        t = run.recipe.train
        terminal = logs.console().is_terminal
        self.bar = Progress(TextColumn("[bold]distill"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=logs.console(),
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
            f.write(strict_json(record) + "\n")
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
            logs.say(f"step {step}/{self.run.recipe.train.steps} loss {record['loss']:.4f} "
                     f"{record['clips_per_s']:.2f} clips/s{mem} eta {eta / 60:.1f} min")


def _losses(run: Run, m: Models, batch: dict[str, torch.Tensor], step: int, micro: int, gan_on: bool,
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
        loss, parts, y, x = _losses(run, m, batch, m.step, micro, gan_on, last_weight)
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
    batches = _batches(run, cache, m.step)
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
            batches = _batches(run, cache, m.step)
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


# ----------------------------------------------------------------------------- 5. eval
def eval_clips(run: Run) -> list[tuple[torch.Tensor, dict]]:
    """Held-out windows of real videos; synthetic clips only for tiny test teachers (and labelled so)."""
    d = run.recipe.data
    if run.eval_videos:
        bad = run.data_stats.setdefault("eval_failed", [])
        videos, keep = run.eval_videos, max(1, d.eval_max_clips // d.eval_per_video)
        # evenly spaced (a folder sorted by source is sampled across sources); a video that fails to decode is
        # replaced by the next unused one
        picks = [videos[round(i * (len(videos) - 1) / max(keep - 1, 1))] for i in range(min(keep, len(videos)))]
        picks = list(dict.fromkeys(picks))
        clips, used = [], 0
        for v in picks + [v for v in videos if v not in picks]:
            if used == keep:
                break
            got = data.fixed_clips([v], run.frames, d.eval_size, per_video=d.eval_per_video, bad=bad)
            clips += got
            used += bool(got)
        if not clips:
            raise data.VideoError(f"none of the {len(videos)} held-out videos decodes; first error: {bad[0]}")
        if bad:
            logs.say(f"evaluation replaced {len(bad)} held-out video(s) that fail to decode; first: {bad[0]}")
        return clips
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


def changed_at_resume(changes: dict[str, dict]) -> str:
    """The model card's line on recipe values changed at a resume (empty when none were)."""
    said = [f"at step {step}: " + ", ".join(f"`{k}` {a!r} -> {b!r}" for k, (a, b) in diff.items())
            for step, diff in changes.items()]
    return f"Recipe changed at resume ({'; '.join(said)}): not the uninterrupted run.\n" if said else ""


def publish(run: Run, m: Models, report: dict) -> Path:
    """The output folder, diffusers-like: config + EMA weights, raw weights, recipe, card, metrics, log,
    and the last side-by-side sample video."""
    r = run.recipe
    out = Path(r.output)
    mean, dr = report["mean"], report["data"]
    card = f"""# turbovaed student for `{r.teacher.name}`

Distilled with turbovaed from the frozen `{report['teacher']}` teacher ({report['teacher_decoder_params']:,} decoder
parameters) into a {report['student_params']:,}-parameter student
({report['student_params'] / report['teacher_decoder_params']:.1%} of the teacher decoder).
`model.safetensors` holds the EMA weights (what is evaluated and exported); `raw.safetensors` the last raw weights;
`config.json` records both files' sha256, checked on every load;
`sample.mp4` shows ground truth | teacher | student on the first evaluation clip; `latent_norm.json` holds the
teacher's latent statistics, so `turbovaed decode --normalized` can decode a diffusion pipeline's output.

| on {report['eval_set']} ({len(report['clips'])} clips) | PSNR dB | SSIM | MS-SSIM |
|---|---|---|---|
| teacher vs ground truth | {mean['teacher_psnr']:.2f} | {mean['teacher_ssim']:.4f} | {mean['teacher_msssim']:.4f} |
| student vs ground truth | {mean['student_psnr']:.2f} | {mean['student_ssim']:.4f} | {mean['student_msssim']:.4f} |
| student vs teacher | {mean['student_vs_teacher_psnr']:.2f} | | |
| per-frame bicubic vs ground truth (baseline) | {mean['bicubic_psnr']:.2f} | | |

Student/teacher PSNR ratio: {mean['psnr_ratio']:.3f}. Perceptual loss: {report['perceptual']}. LPIPS: {report['lpips']}.
Started from {report['init']}.
Steps: {report['steps']}, processes: {report['world_size']}, device: {report['device']}, precision: {report['precision']}.
Data: {dr['distinct_videos']:,} distinct videos of {dr['videos_indexed']:,} indexed ({dr['videos_unreadable']} unreadable, left
out), {dr['distinct_clips']:,} distinct clips in {dr['cache_generations']} cache generation(s); {dr['replaced_clips']} clips
replaced after their video failed to decode, {dr['eval_videos_failed']} held-out videos replaced in evaluation,
{dr['nonfinite_steps_skipped']} non-finite steps skipped.
{changed_at_resume(dr['changed_at_resume'])}"""
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


def _resume_step(run: Run) -> int:
    """The step a --resume continues from (the newest slot), without loading it."""
    return (checkpoint_meta(run.ckpt) or {"step": 0})["step"]


def _trim_log(run: Run, step: int) -> None:
    """Drop log records past the checkpoint a resume continues from (they will be written again)."""
    if run.log_path.is_file():
        kept = [x for x in run.log_path.read_text().splitlines() if x and json.loads(x).get("step", 0) <= step]
        with atomic_file(run.log_path) as tmp:
            tmp.write_text("".join(x + "\n" for x in kept))


def data_report(run: Run, steps: int) -> dict:
    """What the run learned from: distinct videos and clips, and what bad data cost (for the model card)."""
    d = run.recipe.data
    generations = run.generation(max(steps - 1, 0)) + 1
    clips = generations * d.clips
    stats = run.data_stats.get("generations", {})
    return {"videos_indexed": len(run.train_infos), "videos_unreadable": len(run.unreadable),
            "distinct_videos": len({run.sampler.video_of(i) for i in range(clips)}) if run.train_infos else 0,
            "distinct_clips": clips, "cache_generations": generations,
            "replaced_clips": sum(g["replaced_clips"] for g in stats.values()),
            "eval_videos_failed": len(run.data_stats.get("eval_failed", [])),
            "nonfinite_steps_skipped": run.data_stats.get("nonfinite_skipped", 0),
            "changed_at_resume": run.data_stats.get("changed_at_resume", {})}


def distill(recipe: DistillRecipe, resume: bool = False, show_progress: bool = True,
            make_student: Callable[[], nn.Module] | None = None, rebuild_cache: bool = False) -> Path:
    """Run a recipe to completion; returns the output checkpoint folder."""
    try:
        run = setup(recipe, resume, show_progress, rebuild_cache)
        start = _resume_step(run) if resume else 0
        cache = fill_cache(run, run.generation(start))
        m = build_models(run, cache, resume, make_student)
        if run.rank == 0:
            run.work.mkdir(parents=True, exist_ok=True)
            if m.step == 0:
                run.log_path.unlink(missing_ok=True)
                shutil.rmtree(run.work / "samples", ignore_errors=True)
            else:
                _trim_log(run, m.step)
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
                    "precision": recipe.train.precision,
                    "teacher_dtype": f"cache fp32, feature pass {str(run.teacher_dtype).replace('torch.', '')}",
                    "data": data_report(run, stopped_early or recipe.train.steps),
                    "eval_set": ("held-out videos: " + ", ".join(sorted({c.row["video"] for c in evalset})))
                    if run.eval_videos else "synthetic clips (tiny test teacher; not held-out videos)",
                    "perceptual": perceptual_description(recipe), "student_params": m.student.num_parameters(),
                    "init": init_description(recipe.student.init),
                    "teacher": run.teacher.spec.name,
                    "teacher_decoder_params": sum(p.numel() for p in run.teacher.vae.decoder.parameters())})
                out = publish(run, m, report)
        if run.world > 1:
            dist.barrier()
        return out
    finally:
        lock.release(recipe.work)
        if dist.is_initialized():
            dist.destroy_process_group()
