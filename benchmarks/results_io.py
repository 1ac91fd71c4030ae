"""Where benchmarks put their figures: benchmarks/results/NAME.json, written atomically, stamped with the
machine it was measured on (scripts/readme_tables.py renders the README's tables from these files)."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import torch

from turbovaed.io import atomic_file

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "measured": datetime.now(UTC).strftime("%Y-%m-%d")}


def write_results(name: str, data: dict) -> Path:
    """benchmarks/results/NAME.json with `data` plus the machine stamp; returns the path."""
    path = RESULTS / f"{name}.json"
    RESULTS.mkdir(exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps({**data, "machine": machine()}, indent=1, default=str) + "\n")
    print(f"wrote {path}")
    return path
