"""`export`, `demo` and `report`: building verified artifacts, serving them to a browser, reporting on them."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from turbovaed import logs
from turbovaed.cli.base import DecoderFile, Results, TinyTeacher, Variant, app, logged, out
from turbovaed.cli.tables import artifacts_table
from turbovaed.io import InputError


@app.command("export")
@logged(lambda a: a["out_dir"])
def export_cmd(recipes: Annotated[Optional[list[Path]], typer.Argument(
                   help="export recipes: TOML files, or names of the shipped ones (e.g. host-onnx-fp32)")] = None,
               checkpoint: Annotated[Path, typer.Option(help="student checkpoint folder")] = Path("runs/quickstart/student"),
               out_dir: Annotated[Path, typer.Option("--out", help="artifacts folder")] = Path("exports"),
               all_recipes: Annotated[bool, typer.Option("--all", help="every recipe in export/")] = False,
               teacher: Annotated[Optional[str], typer.Option(help="override the recipes' calibration teacher")] = None,
               tiny_teacher: TinyTeacher = False,
               synthetic: Annotated[bool, typer.Option(help="calibrate on synthetic clips")] = False,
               height: Annotated[Optional[int], typer.Option(help="override output height")] = None,
               width: Annotated[Optional[int], typer.Option(help="override output width")] = None,
               bundle: Annotated[bool, typer.Option(help="also write sample latents + reference frames: an app "
                                                         "bundle the device apps load")] = False,
               decoder: DecoderFile = None, variant: Variant = None) -> None:
    """Build verified mobile artifacts (ExecuTorch, Core ML, Core AI, LiteRT, ONNX) with manifests; --decoder
    exports a decoder file people already use instead of a student."""
    from turbovaed.export.core import export
    from turbovaed.export.recipe import load_recipes

    if decoder is not None and not decoder.is_file():
        raise InputError(f"--decoder {decoder} is not a file (a .safetensors, .pth or .pt of a decoder)")
    manifests = []
    for recipe in load_recipes(recipes, all_recipes, teacher, tiny_teacher, synthetic, height, width):
        logs.stage(recipe.name, f"({recipe.backend} {recipe.precision})")
        manifests.append(export(recipe, decoder or checkpoint, out_dir, bundle=bundle, variant=variant))
    out.print(artifacts_table(manifests, f"export of {decoder or checkpoint}"))


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
               results: Results = None,
               video: Annotated[Optional[Path], typer.Option(help="held-out video for the side-by-side frames")] = None
               ) -> None:
    """Markdown + HTML report: Turbo-VAED-style table, latency and quality plots, side-by-side frames."""
    from turbovaed.profile import report

    paths = report.write_report(exports, out_dir, results, video)
    out.print(f"wrote {paths['markdown']} and {paths['html']}")
    out.print(paths["table"])
