"""Export recipes: a plain dataclass per TOML file in export/ (mirroring distill/recipe.py), checked on load
against the backend descriptions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from turbovaed.export import backends
from turbovaed.io import InputError


@dataclass
class ShapeSection:
    latent_frames: int = 3  # of the calibration / verification clips (and of the graph, unless streaming)
    height: int = 128  # output pixels
    width: int = 128
    stream_chunk: int = 0  # > 0: export the streaming step graph taking this many latent frames per call


@dataclass
class CalibrationSection:
    videos: list[str] = field(default_factory=list)  # default: ../shared/videos, else the bundled clips
    synthetic: bool = False
    clips: int = 8  # calibration clips (teacher latents of real video)
    verify_clips: int = 3  # held-out clips the artifact is checked on
    seed: int = 0


@dataclass(frozen=True)
class ConvertOptions:
    """What a backend's convert (and its runner) reads: the precision and how it is applied, nothing else."""
    precision: str = "fp32"
    delegate: str = "xnnpack"  # executorch: xnnpack | coreml
    keep_float: tuple[str, ...] = ()  # module-name prefixes kept unquantized
    group_size: int = 32  # int4 block size where the backend takes one


@dataclass
class ExportRecipe:
    name: str
    backend: str
    precision: str
    target: str = ""  # the device class this recipe is for (documentation)
    delegate: str = "xnnpack"  # executorch: xnnpack | coreml
    teacher: str = "reference"  # produces the calibration latents
    teacher_path: str | None = None
    teacher_tiny: bool = False
    keep_float: list[str] = field(default_factory=list)  # module-name prefixes kept unquantized (mixed precision)
    group_size: int = 32  # int4 block size where the backend takes one
    shape: ShapeSection = field(default_factory=ShapeSection)
    calibration: CalibrationSection = field(default_factory=CalibrationSection)
    # "raw": the graph takes the raw latents a VAE decoder takes; "normalized": de-normalisation is folded into
    # the graph, so an app feeds a diffusion pipeline's (normalised) output directly
    input_latents: str = "raw"

    def __post_init__(self) -> None:
        if self.input_latents not in ("raw", "normalized"):
            raise InputError(f"input_latents must be 'raw' or 'normalized', got {self.input_latents!r}")
        precisions = tuple(backends.get(self.backend).precisions)
        if self.precision not in precisions:
            raise InputError(f"backend {self.backend} has no precision {self.precision!r}; expected one of {precisions}")
        if self.backend == "executorch" and self.delegate not in ("xnnpack", "coreml"):
            raise InputError(f"executorch delegate must be xnnpack or coreml, got {self.delegate!r}")
        if self.backend != "executorch" and self.delegate != "xnnpack":
            raise InputError(f"delegate applies to the executorch backend only (recipe {self.name!r} is {self.backend})")

    @property
    def options(self) -> ConvertOptions:
        return ConvertOptions(self.precision, self.delegate, tuple(self.keep_float), self.group_size)


def load_recipes(names: list[Path] | None, every: bool = False, teacher: str | None = None, tiny: bool = False,
                 synthetic: bool = False, height: int | None = None, width: int | None = None) -> list[ExportRecipe]:
    """The recipes to build, all loaded and checked before any work, with the command line's overrides. A bare
    name (android-executorch-int8) is one of the shipped recipes, wherever turbovaed is installed."""
    from turbovaed.recipes import load_toml
    from turbovaed.resources import data_dir, data_file

    paths = [p if p.exists() or p.suffix or len(p.parts) > 1 else data_file("export", f"{p}.toml") for p in names or []]
    if every:
        paths += sorted(data_dir("export").glob("*.toml"))
    if not paths:
        raise InputError("name export recipes (e.g. export/android-executorch-int8.toml) or pass --all")
    loaded = [load_toml(ExportRecipe, p) for p in paths]
    for recipe in loaded:
        recipe.teacher = teacher or recipe.teacher
        recipe.teacher_tiny = recipe.teacher_tiny or tiny
        recipe.calibration.synthetic = recipe.calibration.synthetic or synthetic
        recipe.shape.height = height or recipe.shape.height
        recipe.shape.width = width or recipe.shape.width
    return loaded
