"""The main job on the embedded default: the shipped reference teacher encodes real clips, a small student
is distilled (distill/quickstart.toml), exported to ExecuTorch / ONNX / LiteRT / Core ML / Core AI at fp32,
fp16, int8 and int4 (each artifact verified), profiled on this machine and reported. Returns a summary; the
CLI prints it. `progress(stage)` is told each stage as it starts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from turbovaed.io import atomic_file
from turbovaed.resources import data_file

# One artifact per backend, each what a device runs (`turbovaed export --all` builds the other precisions).
EXPORTS = ("host-executorch-fp32", "web-onnx-int8", "android-litert-int8", "iphone-coreml-fp16", "iphone-coreai-fp16")
# Core AI's Linux runtime is Apple's correctness reference (seconds per call): verified at export, not timed here.
UNTIMED = {"coreai": "Core AI's Linux runtime is a correctness reference, not what a device runs: verified at export, "
                     "timed on a Mac (`turbovaed profile device --unit ane`)"}


def run(out_dir: Path, videos: list[Path] | None = None, steps: int | None = None, export: bool = True,
        progress: Callable[[str], None] = lambda stage: None) -> dict:
    """Distil, export, profile and report into out_dir; returns the summary (also written to summary.json)."""
    from turbovaed.distill.checkpoint import has_checkpoint
    from turbovaed.distill.recipe import DistillRecipe
    from turbovaed.distill.trainer import distill
    from turbovaed.recipes import load_toml

    recipe = load_toml(DistillRecipe, data_file("distill", "quickstart.toml"))
    recipe.output = str(out_dir / "student")
    if videos:
        recipe.data.videos = [str(v) for v in videos]
    if steps:
        recipe.train.steps = steps
    t0 = time.perf_counter()
    progress("distill")
    student_dir = distill(recipe, resume=has_checkpoint(recipe.work / "checkpoint"))
    summary: dict = {"student": str(student_dir), "steps": recipe.train.steps, "threads": torch.get_num_threads(),
                     "metrics": json.loads((student_dir / "metrics.json").read_text()), "artifacts": []}
    if export:
        summary.update(export_profile_report(student_dir, out_dir, progress))
    summary["minutes"] = (time.perf_counter() - t0) / 60
    with atomic_file(out_dir / "summary.json") as tmp:  # benchmarks/quickstart.py turns it into README figures
        tmp.write_text(json.dumps({k: v for k, v in summary.items() if k not in ("measured", "paths")}, indent=1,
                                  default=str))
    return summary


def artifact_summary(manifest: dict) -> dict:
    """What the summary keeps of a manifest: what the CLI's artifact table shows and summary.json records."""
    keep = ("name", "artifact", "backend", "precision", "precision_meaning", "bytes", "numerics", "ops")
    return {k: manifest[k] for k in keep}


def export_profile_report(student_dir: Path, out_dir: Path, progress: Callable[[str], None]) -> dict:
    from turbovaed.export.core import ExportRecipe, export
    from turbovaed.profile import report
    from turbovaed.profile.host import profile
    from turbovaed.recipes import load_toml

    manifests = []
    for name in EXPORTS:
        progress(f"export {name}")
        manifests.append(export(load_toml(ExportRecipe, data_file("export", f"{name}.toml")), student_dir,
                                out_dir / "exports"))
    progress("profile host runtimes (interleaved) + device estimates")
    prof = profile(out_dir / "exports", runs=10, warmup=2, threads=torch.get_num_threads(),
                   results_dir=out_dir / "profiles", untimed=UNTIMED)
    progress("report")
    paths = report.write_report(out_dir / "exports", out_dir / "report", out_dir / "profiles")
    return {"artifacts": [artifact_summary(m) for m in manifests], "measured": prof["measured"],
            "paths": paths, "exports": str(out_dir / "exports"), "profiles": str(out_dir / "profiles")}
