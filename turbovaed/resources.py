"""Where turbovaed's data lives: the quickstart and export recipes, the device catalog and the web app.

In a source checkout they are the repository's own folders (distill/, export/, profiles/devices/,
device_apps/web/); an installed wheel carries copies as package data under turbovaed/_data (setup.py's
build step puts them there), read through importlib.resources. Outputs never go here: they go under the
working directory."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from turbovaed.io import CheckpointError

REPO = Path(__file__).resolve().parents[1]
SOURCES = {"distill": "distill", "export": "export", "devices": "profiles/devices", "calibration": "profiles/calibration",
           "web": "device_apps/web"}


def data_dir(kind: str) -> Path:
    """The folder holding one kind of package data; CheckpointError if neither copy exists."""
    packaged = Path(str(files("turbovaed") / "_data" / kind))
    if packaged.is_dir():
        return packaged
    source = REPO / SOURCES[kind]
    if source.is_dir():
        return source
    raise CheckpointError(f"turbovaed's {kind} data is missing: looked in {packaged} (installed wheel) and {source} "
                          "(source checkout); reinstall turbovaed (the wheel must be built by its setup.py)")


def data_file(kind: str, name: str) -> Path:
    path = data_dir(kind) / name
    if not path.is_file():
        raise CheckpointError(f"turbovaed's {kind} data lacks {name} (in {path.parent}); reinstall turbovaed")
    return path
