"""Stages 5 and 6: evaluation on held-out clips (every `eval_every` steps and at the end) and the published
diffusers-like folder with its model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from turbovaed import data, logs
from turbovaed.distill.checkpoint import (
    checkpoint_meta,
)
from turbovaed.distill.recipe import DistillRecipe
from turbovaed.distill.setup import Run, init_description

if TYPE_CHECKING:
    from turbovaed.distill.models import Models
    from turbovaed.distill.runlog import Logger
from turbovaed.evaluate import EvalClip, score
from turbovaed.io import atomic_file
from turbovaed.recipes import to_toml


def eval_clips(run: Run) -> list[tuple[torch.Tensor, dict]]:
    """Held-out windows of real videos; synthetic clips only for tiny test teachers (and labelled so)."""
    d = run.recipe.data
    if run.eval_videos:
        bad = run.data_stats.setdefault("eval_failed", [])
        videos, keep = run.eval_videos, max(1, d.eval_max_clips // d.eval_per_video)
        # evenly spaced (a folder sorted by source is sampled across sources); a video that fails to decode is
        # replaced by the next unused one
        picks = [videos[round(i * (len(videos) - 1) / max(keep - 1, 1))] for i in range(min(keep, len(videos)))]
        picks = list(dict.fromkeys(picks))
        clips, used = [], 0
        for v in picks + [v for v in videos if v not in picks]:
            if used == keep:
                break
            got = data.fixed_clips([v], run.frames, d.eval_size, per_video=d.eval_per_video, bad=bad)
            clips += got
            used += bool(got)
        if not clips:
            raise data.VideoError(f"none of the {len(videos)} held-out videos decodes; first error: {bad[0]}")
        if bad:
            logs.say(f"evaluation replaced {len(bad)} held-out video(s) that fail to decode; first: {bad[0]}")
        return clips
    return [(data.synthetic_clip(run.frames, d.eval_size, d.eval_size, seed=10_000 + i),
             {"video": "synthetic", "seed": 10_000 + i}) for i in range(d.eval_clips)]


def evaluate_ema(run: Run, m: Models, evalset: list[EvalClip], log: Logger) -> dict:
    """Score the EMA student on the prepared held-out clips, log it, and write a side-by-side sample video
    (ground truth | teacher | student) to <work>/samples/step-NNNNNNN.mp4."""
    report = score(m.ema, evalset, m.lpips, keep_outputs=1)
    student = report.pop("outputs")[0]
    clip = evalset[0]
    path = run.work / "samples" / f"step-{m.step:07d}.mp4"
    data.write_video(path, torch.cat([clip.frames, clip.teacher, student], dim=-1), fps=8)
    report["sample"] = str(path)
    log.write({"step": m.step, **{f"eval_{k}": round(v, 4) for k, v in report["mean"].items()}, "sample": str(path)})
    return report


def weights_checksum(module: nn.Module) -> str:
    h = hashlib.sha256()
    for p in module.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def perceptual_description(recipe: DistillRecipe) -> str:
    kind = recipe.perceptual
    if kind == "none":
        return "none"
    if kind == "lpips":
        return f"LPIPS (VGG16 v0.1, weights {recipe.loss.perceptual_weights})"
    return "offline fallback: (1 - MS-SSIM) + spatial/temporal gradient L1 (LPIPS weights not supplied)"


def changed_at_resume(changes: dict[str, dict]) -> str:
    """The model card's line on recipe values changed at a resume (empty when none were)."""
    said = [f"at step {step}: " + ", ".join(f"`{k}` {a!r} -> {b!r}" for k, (a, b) in diff.items())
            for step, diff in changes.items()]
    return f"Recipe changed at resume ({'; '.join(said)}): not the uninterrupted run.\n" if said else ""


def publish(run: Run, m: Models, report: dict) -> Path:
    """The output folder, diffusers-like: config + EMA weights, raw weights, recipe, card, metrics, log,
    and the last side-by-side sample video."""
    r = run.recipe
    out = Path(r.output)
    mean, dr = report["mean"], report["data"]
    card = f"""# turbovaed student for `{r.teacher.name}`

Distilled with turbovaed from the frozen `{report['teacher']}` teacher ({report['teacher_decoder_params']:,} decoder
parameters) into a {report['student_params']:,}-parameter student
({report['student_params'] / report['teacher_decoder_params']:.1%} of the teacher decoder).
`model.safetensors` holds the EMA weights (what is evaluated and exported); `raw.safetensors` the last raw weights;
`config.json` records both files' sha256, checked on every load;
`sample.mp4` shows ground truth | teacher | student on the first evaluation clip; `latent_norm.json` holds the
teacher's latent statistics, so `turbovaed decode --normalized` can decode a diffusion pipeline's output.

| on {report['eval_set']} ({len(report['clips'])} clips) | PSNR dB | SSIM | MS-SSIM |
|---|---|---|---|
| teacher vs ground truth | {mean['teacher_psnr']:.2f} | {mean['teacher_ssim']:.4f} | {mean['teacher_msssim']:.4f} |
| student vs ground truth | {mean['student_psnr']:.2f} | {mean['student_ssim']:.4f} | {mean['student_msssim']:.4f} |
| student vs teacher | {mean['student_vs_teacher_psnr']:.2f} | | |
| per-frame bicubic vs ground truth (baseline) | {mean['bicubic_psnr']:.2f} | | |

Student/teacher PSNR ratio: {mean['psnr_ratio']:.3f}. Perceptual loss: {report['perceptual']}. LPIPS: {report['lpips']}.
Started from {report['init']}.
Steps: {report['steps']}, processes: {report['world_size']}, device: {report['device']}, precision: {report['precision']}.
Data: {dr['distinct_videos']:,} distinct videos of {dr['videos_indexed']:,} indexed ({dr['videos_unreadable']} unreadable, left
out), {dr['distinct_clips']:,} distinct clips in {dr['cache_generations']} cache generation(s); {dr['replaced_clips']} clips
replaced after their video failed to decode, {dr['eval_videos_failed']} held-out videos replaced in evaluation,
{dr['nonfinite_steps_skipped']} non-finite steps skipped.
{changed_at_resume(dr['changed_at_resume'])}"""
    from safetensors.torch import save

    raw = save({k: v.detach().cpu().contiguous() for k, v in m.student.state_dict().items()})
    sample = Path(report["sample"])
    m.ema.to("cpu").save_pretrained(out, extra_files={
        "raw.safetensors": raw, "recipe.toml": to_toml(r), "README.md": card,
        "metrics.json": json.dumps(report, indent=1, default=str),
        "log.jsonl": run.log_path.read_text() if run.log_path.is_file() else "",
        "latent_norm.json": json.dumps({**run.teacher.norm.to_dict(), "teacher": r.teacher.name}, indent=1),
        "sample.mp4": sample.read_bytes()})
    return out


def resume_step(run: Run) -> int:
    """The step a --resume continues from (the newest slot), without loading it."""
    return (checkpoint_meta(run.ckpt) or {"step": 0})["step"]


def trim_log(run: Run, step: int) -> None:
    """Drop log records past the checkpoint a resume continues from (they will be written again)."""
    if run.log_path.is_file():
        kept = [x for x in run.log_path.read_text().splitlines() if x and json.loads(x).get("step", 0) <= step]
        with atomic_file(run.log_path) as tmp:
            tmp.write_text("".join(x + "\n" for x in kept))


def data_report(run: Run, steps: int) -> dict:
    """What the run learned from: distinct videos and clips, and what bad data cost (for the model card)."""
    d = run.recipe.data
    generations = run.generation(max(steps - 1, 0)) + 1
    clips = generations * d.clips
    stats = run.data_stats.get("generations", {})
    return {"videos_indexed": len(run.train_infos), "videos_unreadable": len(run.unreadable),
            "distinct_videos": len({run.sampler.video_of(i) for i in range(clips)}) if run.train_infos else 0,
            "distinct_clips": clips, "cache_generations": generations,
            "replaced_clips": sum(g["replaced_clips"] for g in stats.values()),
            "eval_videos_failed": len(run.data_stats.get("eval_failed", [])),
            "nonfinite_steps_skipped": run.data_stats.get("nonfinite_skipped", 0),
            "changed_at_resume": run.data_stats.get("changed_at_resume", {})}


def final_report(run: Run, m: Models, evalset: list[EvalClip], log: Logger, stopped_early: int | None,
                 sync: bool | None) -> dict:
    """The EMA student's scores at the end, with what the run was: what metrics.json and the model card say."""
    recipe = run.recipe
    report = evaluate_ema(run, m, evalset, log)
    report.update({
        "ranks_in_sync": sync, "world_size": run.world, "steps": stopped_early or recipe.train.steps,
        "stopped_by_time_budget": stopped_early is not None, "device": str(run.device),
        "precision": recipe.train.precision,
        "teacher_dtype": f"cache fp32, feature pass {str(run.teacher_dtype).replace('torch.', '')}",
        "data": data_report(run, stopped_early or recipe.train.steps),
        "eval_set": ("held-out videos: " + ", ".join(sorted({c.row["video"] for c in evalset})))
        if run.eval_videos else "synthetic clips (tiny test teacher; not held-out videos)",
        "perceptual": perceptual_description(recipe), "student_params": m.student.num_parameters(),
        "init": init_description(recipe.student.init), "teacher": run.teacher.spec.name,
        "teacher_decoder_params": sum(p.numel() for p in run.teacher.vae.decoder.parameters())})
    return report
