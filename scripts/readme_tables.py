"""Regenerate the README's measured tables from the committed results files.

Each generated block sits between `<!-- results:NAME -->` and `<!-- /results:NAME -->` in README.md and is
rendered from benchmarks/results/*.json (never typed by hand). `--check` exits 1 when a block differs from
what its files say (tests/test_readme.py runs it), and every block names the file it comes from.

    python scripts/readme_tables.py          # rewrite README.md in place (atomically)
    python scripts/readme_tables.py --check  # compare only
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


class MissingResults(Exception):
    pass


def load(name: str) -> dict:
    path = RESULTS / name
    if not path.is_file():
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        raise MissingResults(f"the README points at {shown}, which does not exist: run the benchmark that writes it, "
                             "or remove the block")
    return json.loads(path.read_text())


def pareto() -> str:
    r = load("pareto.json")
    rows = ["| decoder | params | GMACs/frame 256² | ONNX Runtime ms | ExecuTorch XNNPACK ms | PSNR dB | SSIM | LPIPS "
            "| PSNR vs teacher | steps in budget |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, d in r["decoders"].items():
        g, t, lat = d["quality"]["vs_ground_truth"], d["quality"]["vs_teacher"], d["latency"]
        lp = f"{g['lpips']:.3f}" if "lpips" in g else "—"
        rows.append(f"| {name}{'' if d['kind'] == 'turbovaed' else ' (peer)'} | {d['params'] / 1e6:.2f}M | "
                    f"{d['gmacs_per_frame_256']:.2f} | {lat['onnxruntime']['median_ms']:.0f} | "
                    f"{lat['executorch-xnnpack']['median_ms']:.0f} | {g['psnr']:.2f} | {g['ssim']:.3f} | {lp} | "
                    f"{t['psnr']:.2f} | {d['distillation']['steps']} |")
    teacher = r["teacher"]
    rows.append("")
    rows.append(f"Teacher {teacher['teacher_psnr']:.2f} dB, per-frame bicubic 8× {r['bicubic_8x_psnr']:.2f} dB on the "
                f"same windows ({r['eval']}). Latency: {r['latency_setup']}. Budget: "
                f"{r['distillation_setup']['minutes_each']:g} min of distillation each on this 2-core CPU. "
                "Source: `benchmarks/results/pareto.json` (plot: `pareto.png`).")
    return "\n".join(rows)


def teacher_runs() -> str:
    overfit, ltx = load("reference_teacher_overfit.json"), load("reference_teacher_ltx_run.json")
    residual = load("reference_teacher_residual_run.json")
    shipped, res, lt = residual["shipped_teacher"], residual["eval"][-1], ltx["evals"][-1]
    best = max(overfit["evals"], key=lambda e: e["step"])
    return "\n".join([
        "| teacher run (held-out 9×128², 3 windows per clip) | PSNR dB | at step | source |", "|---|---|---|---|",
        f"| per-frame bicubic 8× (the bar is +3 dB over it, and ≥ 27) | {residual['bicubic_8x_psnr']:.2f} | — | "
        "`reference_teacher_residual_run.json` |",
        f"| shipped: AutoencoderKLWan base 16 | {shipped['heldout_psnr']:.2f} | {shipped['steps']} | same |",
        f"| Wan base 16 + Wan 2.2 residual shortcuts (stopped) | {res['heldout_psnr']:.2f} | {res['step']} | same |",
        f"| AutoencoderKLLTXVideo at Wan geometry, lr 3e-4 (stopped) | {lt['psnr']:.2f} | {lt['step']} | "
        "`reference_teacher_ltx_run.json` |",
        f"| overfit check: one clip's crops, LTX config (target {overfit['target_db']}) | {best['psnr']:.2f} | "
        f"{best['step']} | `reference_teacher_overfit.json` |"])


def ladder() -> str:
    """Computed from the code (turbovaed.cli.ladder_rows), for the families with distinct layouts."""
    sys.path.insert(0, str(REPO))
    from turbovaed.cli import ladder_rows

    rows = ["| preset | params | GMACs/frame 512² | GMACs/frame 720p |", "|---|---|---|---|"]
    for r in ladder_rows(["wan21", "wan22", "ltx"]):
        if not r["preset"].endswith("-mini"):
            rows.append(f"| {r['preset']} | {r['params'] / 1e6:.2f}M | {r['gmacs_512']:.2f} | {r['gmacs_720p']:.2f} |")
    return "\n".join(rows)


BLOCKS: dict[str, Callable[[], str]] = {"pareto": pareto, "teacher-runs": teacher_runs, "ladder": ladder}
PATTERN = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(\n<!-- /results:(?P=name) -->)", re.S)


def render(text: str) -> tuple[str, list[str]]:
    """README text with every block regenerated, and the names of blocks that changed."""
    changed = []

    def fill(m: re.Match) -> str:
        name = m["name"]
        if name not in BLOCKS:
            raise MissingResults(f"README block {name!r} has no generator; known: {', '.join(BLOCKS)}")
        body = BLOCKS[name]()
        if body != m["body"]:
            changed.append(name)
        return m.group(1) + body + m.group(4)

    return PATTERN.sub(fill, text), changed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    p.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = p.parse_args()
    try:
        new, changed = render(args.readme.read_text())
    except MissingResults as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.check:
        if changed:
            print(f"README blocks out of date with their results files: {', '.join(changed)} "
                  "(run python scripts/readme_tables.py)", file=sys.stderr)
            return 1
        print("README tables match their results files")
        return 0
    tmp = args.readme.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(args.readme)
    print(f"regenerated: {', '.join(changed) or 'nothing changed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
