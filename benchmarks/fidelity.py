"""Fidelity under a fixed CPU budget: distil a student from the shipped reference teacher on the
training clips, then score teacher and student on the held-out clips (9x128x128, 3 windows each).

Prints teacher PSNR, student PSNR, their ratio (target >= 0.97), SSIM, MS-SSIM, the params ratio
(target <= 0.20) and training throughput, all measured in this run.

    python benchmarks/fidelity.py [--minutes 45] [--channels 160 64] [--blocks 2 2]

Writes benchmarks/results/fidelity.json (the README's fidelity table is generated from it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from results_io import write_results

from turbovaed import data, reference
from turbovaed.distill.recipe import DistillRecipe
from turbovaed.distill.trainer import distill
from turbovaed.recipes import build


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=45.0, help="training wall-clock budget (<= 60)")
    p.add_argument("--steps", type=int, default=3000, help="schedule length (training stops at the budget)")
    p.add_argument("--channels", type=int, nargs=2, default=[160, 64])
    p.add_argument("--blocks", type=int, nargs=2, default=[2, 2])
    p.add_argument("--clips", type=int, default=256, help="training clips in the latent cache")
    p.add_argument("--out", type=Path, default=Path("runs/fidelity/student"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report-only", action="store_true", help="score an already published --out student again")
    args = p.parse_args()
    if data.shared_videos_dir() is None:
        raise SystemExit("needs the real clips in ../shared/videos (or TURBOVAED_VIDEOS)")
    torch.set_num_threads(args.threads)
    recipe = build(DistillRecipe, {
        "output": str(args.out),
        "teacher": {"name": "reference"},
        "student": {"preset": "reference", "channels": args.channels, "blocks": args.blocks},
        "data": {"held_out": list(reference.HELD_OUT), "latent_frames": 3, "size": 64, "resize": 128,
                 "clips": args.clips, "eval_size": reference.EVAL_SIZE},
        "loss": {"frames": 1.0, "teacher": 1.0, "perceptual": 0.2, "feature": 0.1},
        "train": {"steps": args.steps, "batch": 4, "lr": 2e-3, "warmup": 50, "ema_decay": 0.995,
                  "checkpoint_every": 200, "max_minutes": min(args.minutes, 60.0), "threads": args.threads},
    })
    t0 = time.perf_counter()
    if args.report_only:
        if not (args.out / "metrics.json").is_file():
            raise SystemExit(f"--report-only needs a published student in {args.out}")
        out = args.out
    else:
        out = distill(recipe, resume=(recipe.work / "checkpoint").is_dir())
    report = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    m = report["mean"]
    print(f"\nfidelity on {len(report['clips'])} held-out clips ({', '.join(reference.HELD_OUT)}), "
          f"9x128x128, 2 windows per clip; total wall time {(time.perf_counter() - t0) / 60:.1f} min")
    print(f"{'':24s}{'PSNR dB':>9s}{'SSIM':>8s}{'MS-SSIM':>9s}")
    print(f"{'teacher (reference)':24s}{m['teacher_psnr']:9.2f}{m['teacher_ssim']:8.4f}{m['teacher_msssim']:9.4f}")
    print(f"{'student (EMA)':24s}{m['student_psnr']:9.2f}{m['student_ssim']:8.4f}{m['student_msssim']:9.4f}")
    print(f"student/teacher PSNR ratio: {m['psnr_ratio']:.3f} (target >= 0.97)")
    print(f"student vs teacher PSNR: {m['student_vs_teacher_psnr']:.2f} dB")
    ratio = report["student_params"] / report["teacher_decoder_params"]
    print(f"params: student {report['student_params']:,} / teacher decoder {report['teacher_decoder_params']:,} "
          f"= {ratio:.3f} (target <= 0.20)")
    rates = [r["clips_per_s"] for r in log if "clips_per_s" in r]  # evaluation rows carry no rate
    rate = sum(rates) / len(rates)
    print(f"training: {report['steps']} steps, {rate:.2f} clips/s (batch 4 of 9x64x64 crops), "
          f"{'stopped by the time budget' if report.get('stopped_by_time_budget') else 'schedule completed'}")
    print(f"per-frame bicubic 8x on the same windows: {m['bicubic_psnr']:.2f} dB")
    write_results("fidelity", {"minutes_budget": args.minutes, "threads": args.threads, "clips_per_s": rate,
                               "steps": report["steps"], "student_params": report["student_params"],
                               "teacher_decoder_params": report["teacher_decoder_params"], "mean": m,
                               "held_out": list(reference.HELD_OUT), "windows": len(report["clips"]),
                               "stopped_by_time_budget": bool(report.get("stopped_by_time_budget"))})


if __name__ == "__main__":
    main()
