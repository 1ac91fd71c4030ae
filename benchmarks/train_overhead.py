"""Host reads per training step (each one a host-device sync on a GPU) and step time, before and after the
one-read-per-step loop, interleaved in one run.

"Before" replays the earlier loop's reads on top of today's trainer: per micro-batch a finiteness check of
the loss, a float() of every loss part and of the loss, the feature pass's latent check, and the wall-clock
broadcast's read (about 9, as counted in issue 21). "After" is the trainer as it is. Reads are counted with
turbovaed.distill.syncs.HostReads; step times are the median s/step of each run's log, runs alternating
before/after. On a CPU the reads cost nothing, so expect a ratio near 1 there: the figure that matters is
the GPU's (`--device cuda --preset wan21`).

Writes benchmarks/results/train_overhead.json.

    python benchmarks/train_overhead.py [--device cpu] [--preset mini] [--steps 12] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from results_io import write_results

from turbovaed.distill import loop, trainer
from turbovaed.distill.recipe import DistillRecipe
from turbovaed.distill.syncs import counting
from turbovaed.recipes import build


def old_reads(losses):
    """The earlier loop's reads around one micro-batch's losses."""
    def wrapped(run, m, batch, step, micro, gan_on, last_weight):
        loss, parts, y, x = losses(run, m, batch, step, micro, gan_on, last_weight)
        bool(torch.isfinite(loss))
        for v in (*parts.values(), loss):
            float(v.detach())
        bool(torch.isfinite(batch["latents"]).all())  # the teacher feature pass validated its input
        torch.zeros(1, device=run.device).item()  # the wall-clock broadcast's flag
        return loss, parts, y, x
    return wrapped


def one_run(recipe: DistillRecipe, before: bool) -> dict:
    real_losses = loop.step_losses
    if before:
        loop.step_losses = old_reads(real_losses)
    try:
        with counting(trainer, "train_loop") as counts:
            out = trainer.distill(recipe, show_progress=False)
    finally:
        loop.step_losses = real_losses
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    times = [r["s_per_step"] for r in log if "s_per_step" in r][2:]  # after warm-up
    checkpoints = recipe.train.steps // recipe.train.checkpoint_every
    return {"reads_per_step": (counts[0] - checkpoints) / recipe.train.steps, "s_per_step": statistics.median(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="mini", help="student size on the teacher's own preset ladder (mini, nano, ...)")
    p.add_argument("--teacher", default="wan21", help="a tiny random teacher of this family (no weights needed)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for kind in ("before", "after"):
                recipe = build(DistillRecipe, {
                    "output": str(Path(tmp) / f"{kind}-{r}" / "student"),
                    "teacher": {"name": args.teacher, "tiny": True}, "student": {"size": args.preset},
                    "data": {"synthetic": True, "size": 64, "clips": 8, "eval_clips": 1, "eval_size": 64,
                             "latent_frames": 3},
                    "train": {"steps": args.steps, "batch": 2, "checkpoint_every": args.steps, "device": args.device,
                              "log_every": args.steps}})
                runs[kind].append(one_run(recipe, kind == "before"))
                print(f"{kind}: {runs[kind][-1]}", flush=True)
    summary = {k: {"reads_per_step": v[0]["reads_per_step"],
                   "s_per_step": round(statistics.median(x["s_per_step"] for x in v), 4)} for k, v in runs.items()}
    ratio = summary["before"]["s_per_step"] / summary["after"]["s_per_step"]
    print(f"host reads per step: {summary['before']['reads_per_step']:.0f} -> {summary['after']['reads_per_step']:.0f}; "
          f"step time before/after: {ratio:.2f}x on {args.device}")
    write_results("train_overhead", {"device": args.device, "teacher": f"{args.teacher} (tiny)", "student": args.preset,
                                     "steps": args.steps, "repeats": args.repeats, **summary,
                                     "step_time_ratio_before_over_after": round(ratio, 3)})


if __name__ == "__main__":
    main()
