"""The distillation recipe (distill/*.toml): what to distil, from which clips, with which losses, on
which device and at which precision."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TeacherSection:
    name: str = "reference"
    path: str | None = None  # local diffusers folder; None for the shipped reference teacher
    tiny: bool = False  # a tiny random teacher of the class (tests only)
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU (the teacher only runs inference)


@dataclass
class StudentSection:
    preset: str | None = None  # teacher family preset, e.g. "wan21" or "wan21-base"; None: the teacher's own
    size: str = "nano"  # ladder rung of the teacher's own preset: mini, nano, base or turbo (presets.SIZES)
    mini: bool = False  # same as size = "mini"
    temporal_padding: str = "causal"
    channels: list[int] | None = None  # overrides of the preset's layout
    blocks: list[int] | None = None
    init: str | None = None  # a student folder whose weights start the run (its config must match); "reference":
    # the student shipped with the reference teacher (the quickstart's starting point)


@dataclass
class DataSection:
    videos: list[str] = field(default_factory=list)  # folders (searched recursively) or files; empty: real clips
    synthetic: bool = False  # use generated clips instead of videos
    held_out: list[str] = field(default_factory=list)  # file names in `videos` never trained on (evaluation)
    eval_videos: list[str] = field(default_factory=list)  # extra folders/files used only for evaluation
    index: str = ""  # video index file (probed once, reused); "" = <output>.work/videos.index.json
    latent_frames: int = 3  # clip length in latent frames (frames follow the teacher's rule)
    size: int = 64  # square crop, pixels
    resize: int = 128  # short side before cropping; 0 = native resolution
    strides: list[int] = field(default_factory=lambda: [1])  # frame strides drawn per clip
    flip: bool = False  # random horizontal flips
    clips: int = 64  # clips in the latent cache (one generation), each a fresh random window/crop/stride/flip
    refresh_every: int = 0  # steps per cache generation: then the next `clips` clips replace it (0: never)
    posterior: str = "mean"  # train on the posterior "mean" or on a fresh "sample" every step (Turbo-VAED)
    workers: int = 0  # DataLoader processes decoding videos (cache fill) and reading the cache (training)
    probe_workers: int = 16  # threads probing video headers into the index (I/O bound: more for network storage)
    eval_clips: int = 6  # synthetic evaluation clips (tiny test teachers only)
    eval_size: int = 128  # evaluation crop (short side resized to it, centre crop)
    eval_per_video: int = 2  # evaluation windows per held-out video
    eval_max_clips: int = 32  # cap: evenly spaced held-out videos beyond it are left out (RAM, eval time)
    seed: int = 0


@dataclass
class LossSection:
    frames: float = 1.0  # L1 to the ground-truth frames
    teacher: float = 1.0  # L1 to the teacher's decode
    perceptual: float = 0.2
    perceptual_kind: str = "auto"  # auto: LPIPS when perceptual_weights is given, else the offline fallback
    perceptual_weights: str | None = None  # LPIPS VGG weights (.safetensors, from `turbovaed lpips-weights`)
    feature: float = 0.1  # feature alignment: sum of normalised MSE(proj(student stage), teacher block)
    feature_blocks: list[int] = field(default_factory=lambda: [0, 1])  # teacher blocks: 0 mid, 1 first up block


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
    batch: int = 4  # clips per rank per micro-batch
    grad_accum: int = 1
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup: int = 20
    weight_decay: float = 1e-4
    ema_decay: float = 0.999
    device: str = "auto"  # auto: CUDA when present (LOCAL_RANK picks the GPU), else CPU
    precision: str = "fp32"  # autocast dtype of the student: fp32, bf16, or fp16 (with a GradScaler)
    compile: bool = False  # torch.compile the student (with its heads)
    checkpoint_every: int = 50
    eval_every: int = 0  # 0: only at the end; else evaluate the EMA student and write a sample video
    log_every: int = 50  # a plain progress line every N steps when the output is not a terminal
    tensorboard: bool = False  # also log to TensorBoard (pip install 'turbovaed[tensorboard]')
    threads: int = 0  # 0: leave torch's default
    max_minutes: float = 0.0  # wall-clock budget; stop (and evaluate) when spent. 0: no budget
    dist_timeout_minutes: float = 60.0  # collective timeout (ranks fill their caches before the first one)
    max_nonfinite: int = 20  # consecutive skipped non-finite steps before the run stops
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
        from turbovaed.distill.checks import check_values

        check_values(self)

    @property
    def work(self) -> Path:
        """OUTPUT.work: the run's cache, checkpoints, log and lock (the output folder is published at the end)."""
        out = Path(self.output)
        return out.with_name(out.name + ".work")

    @property
    def perceptual(self) -> str:
        """The perceptual loss that runs: 'lpips', 'msssim_grad' (offline fallback) or 'none'."""
        kind = self.loss.perceptual_kind
        if self.loss.perceptual == 0 or kind == "none":
            return "none"
        if kind == "auto":
            return "lpips" if self.loss.perceptual_weights else "msssim_grad"
        return kind
