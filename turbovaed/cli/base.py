"""What every command shares: the app, the two consoles, log capture and the options several commands take."""

from __future__ import annotations

import functools
import shutil
import time
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from turbovaed import logs
from turbovaed.io import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distill video VAE decoders into tiny students and ship them to phones.")
console = logs.console()  # stages and progress: stderr
out = logs.console(stderr=False, width=max(160, shutil.get_terminal_size().columns))  # results: stdout
VERBOSE = {"on": False}


@app.callback()
def options(verbose: Annotated[bool, typer.Option("-v", "--verbose", help="show third-party warnings and native "
                                                  "logs live instead of writing them to turbovaed.log")] = False
            ) -> None:
    VERBOSE["on"] = verbose


def logged(folder):
    """Run the command with third-party output captured (`folder` maps the command's arguments to its output
    folder, where the log lands as turbovaed.log); the log is named at the end when anything was written to it.
    After a failure the log also holds its traceback, and the terminal says at which stage the command stopped
    and which of its outputs are complete."""
    def wrap(command):
        @functools.wraps(command)
        def run(**kwargs):
            captured = logs.Captured()
            where, start = Path(folder(kwargs)), time.time() - 1  # file times are coarser than time.time()
            logs.reset_stage()
            try:
                with logs.capture(where / "turbovaed.log", VERBOSE["on"]) as captured:
                    try:
                        return command(**kwargs)
                    except Exception:  # the whole story goes to the log; the terminal gets one line
                        traceback.print_exc()
                        raise
            except Exception:
                failed_outputs(where, start)
                raise
            finally:
                if captured.path is not None:
                    logs.say(f"third-party output: {captured.path}")
        return run
    return wrap


def failed_outputs(folder: Path, since: float) -> None:
    """After a failure: where the command stopped, and what it left (each output is written whole or not at all)."""
    stage = logs.current_stage()
    if stage:
        logs.say(f"stopped in stage '{stage}': its partial output was removed")
    done = logs.complete_outputs(folder, since)
    if done:
        logs.say(f"complete in {folder}: {', '.join(done)}")


def parse_size(size: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise InputError(f"size must look like HEIGHTxWIDTH (e.g. 256x256), got {size!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"size must be positive, got {size!r}")
    return h, w


# options several commands take
TeacherPath = Annotated[Optional[Path], typer.Option(help="local diffusers folder of the teacher")]
TinyTeacher = Annotated[bool, typer.Option(help="use a tiny random teacher of the class (tests)")]
DecoderFile = Annotated[Optional[Path], typer.Option(
    help="a decoder file people already use (TAEHV/TAEW, LightTAE, Turbo-VAED, Flash-VAED: .safetensors or .pth)")]
Variant = Annotated[Optional[str], typer.Option(help="with --decoder: the variant, where a layout fits several "
                                                     "(e.g. taehv vs taew2_1)")]
StudentDir = Annotated[Optional[str], typer.Option(help="student checkpoint folder")]
Results = Annotated[Optional[Path], typer.Option(help="records folder (default profiles/results)")]
