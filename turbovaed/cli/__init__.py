"""`turbovaed` command line. It parses and prints; every pipeline lives in its own module. One module per
stage registers its commands on the shared app."""

from __future__ import annotations

import sys

from rich.text import Text

from turbovaed import logs
from turbovaed.cli import decode, distill, export, profile  # noqa: F401  (each registers its commands)
from turbovaed.cli.base import app, console
from turbovaed.io import TurboVAEDError


def list_options(args: list[str]) -> list[str]:
    """`--videos a.mp4 b.mp4` -> `--videos a.mp4 --videos b.mp4`: a list option takes several values after one
    flag (click takes one per flag), up to the next flag. Only in commands without positional arguments, where no
    value can be mistaken for one."""
    import typer.main

    command, i = typer.main.get_command(app), 0
    while i < len(args) and hasattr(command, "commands"):  # down the groups to the subcommand
        if args[i] in command.commands:
            command = command.commands[args[i]]
        elif not args[i].startswith("-"):
            return args
        i += 1
    params = getattr(command, "params", [])
    if any(p.param_type_name == "argument" for p in params):
        return args
    multi = {o for p in params if getattr(p, "multiple", False) for o in p.opts}
    out, flag = args[:i], None
    for a in args[i:]:
        if a.startswith("-"):
            flag = a if a in multi else None
        elif flag and out[-1] != flag:
            out.append(flag)
        out.append(a)
    return out


def main() -> None:
    try:
        app(args=list_options(sys.argv[1:]))
    except TurboVAEDError as err:
        console.print(Text.assemble(("error:", "red"), " " + logs.plain(str(err))), soft_wrap=True)
        sys.exit(2)
