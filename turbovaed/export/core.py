"""Backend-neutral export: recipe -> mobile graph -> calibration on real latents -> backend convert ->
verify against the fp32 student on held-out latents -> artifact + manifest.json, written atomically."""

from __future__ import annotations

import hashlib
import importlib
import json
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from turbovaed import data, teachers
from turbovaed.io import InputError, TurboVAEDError, atomic_dir
from turbovaed.lowering import latent_shape, mobile_graph
from turbovaed.metrics import psnr
from turbovaed.student import StudentDecoder

BACKENDS = {  # backend -> precisions it builds
    "executorch": ("fp32", "int8", "int4"),
    "coreml": ("fp16", "int8", "int4", "palettize4"),
    "litert": ("fp32", "fp16", "int8-dynamic", "int8", "int4"),
    "onnx": ("fp32", "fp16", "int8", "int4"),
}
# Verification floor (PSNR dB against the fp32 student's frames) per precision.
MIN_PSNR = {"fp32": 60.0, "fp16": 45.0, "int8": 40.0, "int8-dynamic": 40.0, "int4": 34.0, "palettize4": 34.0}


class MissingDependency(TurboVAEDError):
    pass


@dataclass
class ShapeSection:
    latent_frames: int = 3
    height: int = 128  # output pixels
    width: int = 128


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

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}; expected one of {sorted(BACKENDS)}")
        if self.precision not in BACKENDS[self.backend]:
            raise InputError(f"backend {self.backend} has no precision {self.precision!r}; "
                             f"expected one of {BACKENDS[self.backend]}")
        if self.backend == "executorch" and self.delegate not in ("xnnpack", "coreml"):
            raise InputError(f"executorch delegate must be xnnpack or coreml, got {self.delegate!r}")
        if self.backend != "executorch" and self.delegate != "xnnpack":
            raise InputError(f"delegate applies to the executorch backend only (recipe {self.name!r} is {self.backend})")


def backend_module(name: str):
    """Import the backend lazily; a missing optional dependency gets one clear message."""
    try:
        return importlib.import_module(f"turbovaed.export.{name}_backend")
    except ImportError as err:
        raise MissingDependency(f"the {name} exporter needs the export extras: pip install 'turbovaed[export]' "
                                f"(missing: {err.name})") from err


def calibration_latents(recipe: ExportRecipe, student: StudentDecoder
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor], str, teachers.Teacher]:
    """(calibration, verification) latents: the teacher encoding real clips (synthetic only when asked
    or when no video exists on this machine). Verification clips are distinct from calibration ones."""
    teacher = teachers.load(recipe.teacher, recipe.teacher_path, tiny=recipe.teacher_tiny)
    if teacher.latent_channels != student.config.latent_channels:
        raise InputError(f"teacher {recipe.teacher} makes {teacher.latent_channels} latent channels but the "
                         f"student takes {student.config.latent_channels}")
    s = recipe.shape
    frames = teacher.spec.frames_for(s.latent_frames)
    c = recipe.calibration
    videos: list[Path] = []
    if not c.synthetic:
        videos = data.list_videos(c.videos) if c.videos else (
            data.list_videos(data.shared_videos_dir()) if data.shared_videos_dir() else data.bundled_videos())
    sampler = data.ClipSampler(videos, frames, (s.height, s.width), seed=c.seed, resize=min(s.height, s.width))
    clips = [sampler.clip(i)[0] for i in range(c.clips + c.verify_clips)]
    latents = [teacher.encode(x[None]) for x in clips]
    source = f"{teacher.spec.name} teacher latents of {'synthetic clips' if not videos else f'{len(videos)} real videos'}"
    random.Random(c.seed).shuffle(latents)
    return latents[:c.clips], latents[c.clips:], source, teacher


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def nbytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "executorch", "torchao", "coremltools", "onnx", "onnxruntime", "litert-torch",
                "ai-edge-litert", "ai-edge-quantizer", "turbovaed"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def export(recipe: ExportRecipe, checkpoint: str | Path, out_dir: str | Path) -> dict:
    """Build, verify and describe one artifact; everything lands in out_dir/<recipe.name>/ or nowhere."""
    backend = backend_module(recipe.backend)
    student = StudentDecoder.from_pretrained(checkpoint).float().eval()
    shape = latent_shape(student.config, recipe.shape.latent_frames, recipe.shape.height, recipe.shape.width)
    calib, verify, source, teacher = calibration_latents(recipe, student)
    model = mobile_graph(student, linear_pointwise=getattr(backend, "LINEAR_POINTWISE", {}).get(recipe.precision, False))
    example = torch.zeros(shape)
    t0 = time.perf_counter()
    with atomic_dir(Path(out_dir) / recipe.name) as tmp:
        info = backend.convert(model, example, recipe, calib, tmp)
        artifact = tmp / info["artifact"]
        with torch.no_grad():
            expected = [student(z) for z in verify]
        got = backend.run(artifact, verify, model=model, recipe=recipe)
        numerics = {"verified_by": info.get("verified_by", "runtime"), "clips": len(verify)}
        if got is None:
            numerics["status"] = "not run: no runtime for this artifact on this machine"
        else:
            scores = [psnr(g, e) for g, e in zip(got, expected)]
            numerics.update({
                "psnr_db": min(scores), "psnr_db_mean": sum(scores) / len(scores),
                "max_abs_error": max((g - e).abs().max().item() for g, e in zip(got, expected)),
                "min_psnr_db": MIN_PSNR[recipe.precision],
            })
            numerics["status"] = "pass" if numerics["psnr_db"] >= MIN_PSNR[recipe.precision] else "below target"
        cfg = student.config
        manifest = {
            "name": recipe.name, "backend": recipe.backend, "precision": recipe.precision, "target": recipe.target,
            "artifact": info["artifact"], "bytes": nbytes(artifact), "sha256": sha256(artifact),
            "inputs": [{"name": info.get("input_name", "latents"), "shape": list(shape), "dtype": "float32"}],
            "outputs": [{"name": info.get("output_name", "frames"),
                         "shape": [1, cfg.out_channels, cfg.frames_for(shape[2]), recipe.shape.height, recipe.shape.width],
                         "dtype": "float32", "range": "[-1, 1]"}],
            "frame_rule": {"temporal_ratio": cfg.temporal_ratio, "first_frame": cfg.first_frame,
                           "spatial_ratio": cfg.spatial_ratio},
            "latent_normalisation": {"formula": "raw = normalized * std / scale + mean (the decoder takes raw latents)",
                                     "mean": teacher.norm.mean, "std": teacher.norm.std, "scale": teacher.norm.scale,
                                     "teacher": recipe.teacher},
            "student": {"checkpoint": str(checkpoint), "params": student.num_parameters(), "config": cfg.to_dict()},
            "calibration": {"source": source, "clips": len(calib)},
            "numerics": numerics, "ops": info.get("ops", {}), "not_checked_here": info.get("not_checked_here", []),
            "notes": info.get("notes", []), "tool_versions": tool_versions(),
            "export_seconds": round(time.perf_counter() - t0, 2), "recipe": asdict(recipe),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
