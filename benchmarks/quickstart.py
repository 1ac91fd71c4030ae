"""The main job, timed end to end: `turbovaed quickstart` in a fresh output folder, then its figures into
the repository: benchmarks/results/quickstart.json (minutes, held-out quality, every artifact's verified
PSNR), the host profile records into profiles/results/ (replacing the previous quickstart's) and the
report into profiles/report/. The README's quickstart and profiling figures are generated from these.
Then the same distillation (recipe, clips, steps) from random initialisation instead of the shipped starting
point, scored on the same held-out windows: what the starting point is worth.

    python benchmarks/quickstart.py [--out runs/quickstart-bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from results_io import write_results

from turbovaed.io import atomic_dir

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "quickstart-bench")
    args = p.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    subprocess.run([sys.executable, "-m", "turbovaed", "quickstart", "--out", str(args.out)], check=True, cwd=REPO)
    summary = json.loads((args.out / "summary.json").read_text())
    results = REPO / "profiles" / "results"
    for old in results.glob("*.json"):  # the committed records are the last quickstart's
        old.unlink()
    for f in (args.out / "profiles").glob("*.json"):
        shutil.copy2(f, results / f.name)
    with atomic_dir(REPO / "profiles" / "report") as tmp:
        shutil.copytree(args.out / "report", tmp, dirs_exist_ok=True)
    scratch = from_scratch(args.out / "from-scratch" / "student")
    write_results("quickstart", summary | {"profile_records": sorted(f.name for f in results.glob("*.json")),
                                           "from_scratch": scratch})
    mean, other = summary["metrics"]["mean"], scratch["mean"]
    print(f"held-out PSNR: started from the shipped student {mean['student_psnr']:.2f} dB, from random "
          f"initialisation {other['student_psnr']:.2f} dB ({summary['steps']} steps each); per-frame bicubic "
          f"{mean['bicubic_psnr']:.2f} dB, teacher {mean['teacher_psnr']:.2f} dB")


def from_scratch(out: Path) -> dict:
    """The quickstart's distillation without its starting point: its held-out scores and minutes."""
    from turbovaed.distill.recipe import DistillRecipe
    from turbovaed.distill.trainer import distill
    from turbovaed.recipes import load_toml

    recipe = load_toml(DistillRecipe, REPO / "distill" / "quickstart.toml")
    recipe.output, recipe.student.init = str(out), None
    t0 = time.perf_counter()
    metrics = json.loads((distill(recipe, show_progress=False) / "metrics.json").read_text())
    return {"mean": metrics["mean"], "steps": recipe.train.steps, "init": metrics["init"],
            "minutes": (time.perf_counter() - t0) / 60}


if __name__ == "__main__":
    main()
