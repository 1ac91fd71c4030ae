"""The main job, timed end to end: `turbovaed quickstart` in a fresh output folder, then its figures into
the repository: benchmarks/results/quickstart.json (minutes, held-out quality, every artifact's verified
PSNR), the host profile records into profiles/results/ (replacing the previous quickstart's) and the
report into profiles/report/. The README's quickstart and profiling figures are generated from these.

    python benchmarks/quickstart.py [--out runs/quickstart-bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
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
    write_results("quickstart", summary | {"profile_records": sorted(f.name for f in results.glob("*.json"))})


if __name__ == "__main__":
    main()
