"""Export recipes: a plain dataclass per TOML file in export/ (mirroring distill/recipe.py), checked on load
against the backend descriptions."""

from __future__ import annotations

from dataclasses import dataclass, field

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
