"""Stage 1 of a distillation run, setup: device, precision, process group, lock, teacher, student config, videos.
Every refusal happens here, before any work."""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from turbovaed import data, logs, presets, teachers
from turbovaed.distill import lock
from turbovaed.distill.checks import preflight
from turbovaed.distill.recipe import DistillRecipe
from turbovaed.io import InputError
from turbovaed.student import CONFIG_NAME, StudentConfig, check_fits

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    check_fits(config, (d.latent_frames, d.size // teacher.spec.spatial, d.size // teacher.spec.spatial),
               recipe.train.batch, f"training this student on batches of {recipe.train.batch} x {d.size}x{d.size} crops",
               "lower train.batch (raise train.grad_accum to keep the batch), data.size or data.latent_frames, or the "
               "student's channels", training=True, device=device)
    if recipe.data.size % teacher.spec.spatial:
        raise InputError(f"data.size {recipe.data.size} must be a multiple of {teacher.spec.spatial} "
                         f"for {teacher.spec.name}")
    if rebuild_cache and rank == 0:
        shutil.rmtree(work / "cache", ignore_errors=True)
    train_infos, eval_videos, unreadable = videos_of(recipe, work, rank, show_progress)
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


def videos_of(recipe: DistillRecipe, work: Path, rank: int, show_progress: bool
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
