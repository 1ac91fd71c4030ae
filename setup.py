"""Build step only (metadata lives in pyproject.toml): copy the recipes, device catalog and web app into the
wheel as turbovaed/_data/<kind>, the package data turbovaed.resources reads through importlib.resources."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SOURCES = {"distill": "distill", "export": "export", "devices": "profiles/devices", "calibration": "profiles/calibration",
           "web": "device_apps/web"}
PATTERNS = {"distill": ("*.toml",), "export": ("*.toml",), "devices": ("*.toml",), "calibration": ("*.toml", "*.json"),
            "web": ("*.html", "*.js", "*.json", "README.md")}


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        for kind, source in SOURCES.items():
            target = Path(self.build_lib) / "turbovaed" / "_data" / kind
            target.mkdir(parents=True, exist_ok=True)
            found = [f for pattern in PATTERNS[kind] for f in sorted((ROOT / source).glob(pattern))]
            if not found:
                raise SystemExit(f"setup.py: no {kind} data in {ROOT / source}")
            for f in found:
                shutil.copy2(f, target / f.name)


setup(cmdclass={"build_py": BuildWithData})
