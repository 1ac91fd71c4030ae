"""The distillation recipe (distill/*.toml): what to distil, from which clips, with which losses."""

from __future__ import annotations

from dataclasses import dataclass, field

from turbovaed.io import InputError

PERCEPTUAL = ("msssim_grad", "lpips", "none")


@dataclass
class TeacherSection:
    name: str = "reference"
    path: str | None = None  # local diffusers folder; None for the shipped reference teacher
    tiny: bool = False  # a tiny random teacher of the class (tests only)


@dataclass
class StudentSection:
    preset: str | None = None  # teacher family preset, e.g. "wan21" or "wan21-mini"; None: the teacher's own
    mini: bool = False
    temporal_padding: str = "causal"
    channels: list[int] | None = None  # overrides of the preset's layout
    blocks: list[int] | None = None


@dataclass
class DataSection:
    videos: list[str] = field(default_factory=list)  # folders or files; empty: real shared/bundled clips
    synthetic: bool = False  # use generated clips instead of videos
    held_out: list[str] = field(default_factory=list)  # file names never trained on (evaluation clips)
    latent_frames: int = 3  # clip length in latent frames (frames follow the teacher's rule)
    size: int = 64  # square crop, pixels
    resize: int = 128  # short side before cropping; 0 = native resolution
    clips: int = 64  # clips in the latent cache
    eval_clips: int = 6  # synthetic evaluation clips when there are no held-out videos
    eval_size: int = 128  # evaluation crop (short side resized to it, centre crop)
    seed: int = 0


@dataclass
class LossSection:
    frames: float = 1.0  # L1 to the ground-truth frames
    teacher: float = 1.0  # L1 to the teacher's decode
    perceptual: float = 0.2
    perceptual_kind: str = "msssim_grad"  # offline: (1 - MS-SSIM) + image-gradient L1; or "lpips"
    perceptual_weights: str | None = None  # LPIPS weights (.safetensors) when perceptual_kind = "lpips"
    feature: float = 0.1  # feature alignment: sum of MSE(proj(student stage), teacher block)


@dataclass
class GanSection:
    enabled: bool = False
    start_step: int = 0  # the GAN stage starts here (Turbo-VAED: a second stage)
    weight: float = 0.1
    lr: float = 2e-4
    channels: int = 32
    adaptive: bool = True  # scale by the ratio of reconstruction/GAN gradient norms (VQGAN)


@dataclass
class TrainSection:
    steps: int = 200
    batch: int = 4
    grad_accum: int = 1
    lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 1e-4
    ema_decay: float = 0.99
    checkpoint_every: int = 50
    eval_every: int = 0  # 0: only at the end
    threads: int = 0  # 0: leave torch's default
    max_minutes: float = 0.0  # wall-clock budget; stop (and evaluate) when spent. 0: no budget
    seed: int = 0


@dataclass
class DistillRecipe:
    output: str = "runs/student"
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    gan: GanSection = field(default_factory=GanSection)
    train: TrainSection = field(default_factory=TrainSection)

    def __post_init__(self) -> None:
        problems = []
        if self.loss.perceptual_kind not in PERCEPTUAL:
            problems.append(f"loss.perceptual_kind must be one of {PERCEPTUAL}, got {self.loss.perceptual_kind!r}")
        if self.loss.perceptual_kind == "lpips" and not self.loss.perceptual_weights:
            problems.append("loss.perceptual_kind = 'lpips' needs loss.perceptual_weights (a .safetensors file)")
        for key, v in [("train.steps", self.train.steps), ("train.batch", self.train.batch),
                       ("train.grad_accum", self.train.grad_accum), ("data.latent_frames", self.data.latent_frames),
                       ("data.size", self.data.size), ("data.clips", self.data.clips)]:
            if v < 1:
                problems.append(f"{key} must be >= 1, got {v}")
        if not 0.0 <= self.train.ema_decay < 1.0:
            problems.append(f"train.ema_decay must be in [0, 1), got {self.train.ema_decay}")
        if problems:
            raise InputError("invalid recipe: " + "; ".join(problems))
