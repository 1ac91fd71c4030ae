"""`info`, `decode` and `latents convert`: what a student or decoder file is, and decoding with it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from turbovaed import logs, teachers
from turbovaed.cli.base import DecoderFile, StudentDir, TeacherPath, TinyTeacher, Variant, app, console, logged, out, parse_size
from turbovaed.cli.tables import decoder_table, ladder_table, student_table

Layout = Annotated[Optional[str], typer.Option(
    help="axis order of the latents: 'bcthw' = (B, C, T, H, W) as diffusers pipelines return; 'btchw' = "
         "(N, T, C, H, W) as TAEHV and ComfyUI use. Default: the file's metadata, else bcthw; a file that fits "
         "both must say")]
Normalized = Annotated[Optional[bool], typer.Option(
    "--normalized/--raw", help="--normalized: the latents are a diffusion pipeline's output (output_type='latent'), "
    "normalised by the VAE's latents_mean/std; --raw: the raw latents a VAE decoder takes. Default: what the file's "
    "metadata states, else --raw (what turbovaed's encode writes)")]


@app.command()
def info(target: Annotated[Optional[str], typer.Argument(
            help="preset name (family, optionally -mini/-base/-turbo: ltx, wan21-base) or checkpoint folder; "
                 "none: the whole preset ladder")] = None,
         size: Annotated[Optional[str], typer.Option(
             help="output HEIGHTxWIDTH (default: 256x256; a decoder file: 512x512 and 720p)")] = None,
         frames: Annotated[int, typer.Option(help="output frames")] = 17,
         decoder: DecoderFile = None, variant: Variant = None) -> None:
    """Parameters, MACs per frame, compression and frame rule of a student (or of every preset), or of a
    decoder file (--decoder)."""
    if decoder is not None:
        out.print(decoder_table(decoder, variant, {size: parse_size(size)} if size else None))
    elif target is None:
        out.print(ladder_table())
    else:
        out.print(student_table(target, parse_size(size or "256x256"), frames))


@app.command()
@logged(lambda a: a["out_path"].parent)
def decode(out_path: Annotated[Path, typer.Option("--out", help="output .mp4 (whole-clip decodes by a student or "
                                                  "teacher also write a .png comparison beside it)")],
           latents: Annotated[Optional[Path], typer.Option(
               help="latents: .safetensors ('latents' tensor) or torch.save .pt/.pth (a tensor, or a dict with "
                    "'latents'/'latent'/'z'; loaded weights-only)")] = None,
           video: Annotated[Optional[Path], typer.Option(help="a video to encode with the teacher first")] = None,
           teacher: Annotated[Optional[str], typer.Option(help=f"teacher: {', '.join(teachers.TEACHERS)}")] = None,
           teacher_path: TeacherPath = None, tiny_teacher: TinyTeacher = False, student: StudentDir = None,
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
           layout: Layout = None, decoder: DecoderFile = None, variant: Variant = None, normalized: Normalized = None,
           ) -> None:
    """Decode latents (or a video's teacher latents) with the teacher, a student or a decoder file to an mp4 (whole-clip
    decodes with a teacher add a PNG comparison)."""
    from turbovaed.decode import DecodeRequest, run

    request = DecodeRequest(out_path, latents, video, teacher, teacher_path, tiny_teacher, student, mobile, frames,
                            parse_size(size), fps, stream, chunk, artifact, tile, overlap, layout, normalized,
                            decoder, variant)
    with logs.progress(TextColumn("[bold]stream"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       disable=not stream) as bar:
        task = bar.add_task("streaming decode (latent frames)", total=None)
        out.print(run(request, say=console.print,
                      progress=lambda done, total: bar.update(task, completed=done, total=total)))


latents_app = typer.Typer(no_args_is_help=True, help="Latent files: convert to a self-describing safetensors file.")
app.add_typer(latents_app, name="latents")


@latents_app.command("convert")
def latents_convert(source: Annotated[Path, typer.Argument(help="latents: .safetensors, or .pt/.pth (weights-only)")],
                    target: Annotated[Path, typer.Argument(help="output .safetensors")],
                    layout: Layout = None, normalized: Normalized = None) -> None:
    """Write SOURCE as (B, C, T, h, w) safetensors whose metadata states layout and normalisation, so later
    runs need no flags."""
    from turbovaed.io import convert_latents

    out.print(convert_latents(source, target, layout, normalized))
