"""`turbovaed` command line. It parses and prints; every pipeline lives in its own module. One module per
stage registers its commands on the shared app."""

from __future__ import annotations

import sys

from rich.text import Text

from turbovaed import logs
from turbovaed.cli import decode, distill, export, profile  # noqa: F401  (each registers its commands)
from turbovaed.cli.base import app, console
from turbovaed.io import TurboVAEDError


def main() -> None:
    try:
        app()
    except TurboVAEDError as err:
        console.print(Text.assemble(("error:", "red"), " " + logs.plain(str(err))), soft_wrap=True)
        sys.exit(2)
