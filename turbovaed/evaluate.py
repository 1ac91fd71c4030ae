"""Score students (and the teacher) on clips they never saw: against ground truth and the teacher.

The teacher's share (encode, decode, its scores) is computed once by `prepare`; `score` then rates a
student on the prepared clips, cheaply enough to run every `eval_every` steps of a training run."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from turbovaed import metrics


def never_trained_on(checkpoint: str | Path, videos: list[Path]) -> tuple[list[Path], str]:
    """The videos among `videos` a student never trained on, and why: its recipe's data.held_out
    (recipe.toml in the checkpoint folder, written by the trainer), else the reference teacher's HELD_OUT."""
    recipe = Path(checkpoint) / "recipe.toml"
    if recipe.is_file():
        section = tomllib.loads(recipe.read_text()).get("data", {})
        if section.get("synthetic"):
            return list(videos), "the student trained on synthetic clips only"
        held = set(section.get("held_out", []))
        why = f"held out by the student's recipe ({recipe.name})"
    else:
        from turbovaed.reference import HELD_OUT

        held, why = set(HELD_OUT), "the reference teacher's held-out clips (the checkpoint carries no recipe)"
    return [v for v in videos if v.name in held], why


@dataclass
class EvalClip:
    frames: torch.Tensor  # (1, 3, T, H, W) ground truth in [-1, 1], CPU
    latents: torch.Tensor  # (1, C, t, h, w) raw teacher latents (posterior mean), CPU fp32
    teacher: torch.Tensor  # (1, 3, T, H, W) the teacher's decode, CPU fp32
    row: dict  # source and teacher scores


def _lpips(net: nn.Module, a: torch.Tensor, b: torch.Tensor) -> float:
    device = next(net.parameters()).device
    return net(a.to(device), b.to(device)).item()


@torch.no_grad()
def prepare(teacher, clips: list[tuple[torch.Tensor, dict]], lpips: nn.Module | None = None) -> list[EvalClip]:
    """Encode and decode every clip with the teacher once and score the teacher."""
    out = []
    for clip, source in clips:
        x = clip[None]
        z = teacher.encode(x)
        t = teacher.decode(z).cpu()
        row = {**source, "teacher_psnr": metrics.psnr(t, x), "teacher_ssim": metrics.ssim(t, x),
               "teacher_msssim": metrics.ms_ssim(t, x),
               "bicubic_psnr": metrics.psnr(metrics.bicubic(x, teacher.spec.spatial), x)}
        if lpips is not None:
            row["teacher_lpips"] = _lpips(lpips, t, x)
        out.append(EvalClip(x, z.cpu(), t, row))
    return out


@torch.no_grad()
def score(student: nn.Module | None, prepared: list[EvalClip], lpips: nn.Module | None = None,
          keep_outputs: int = 0) -> dict:
    """Per clip and averaged PSNR / SSIM / MS-SSIM (and LPIPS when its network is given) of teacher vs GT,
    student vs GT, student vs teacher. The first `keep_outputs` student decodes are returned too."""
    rows, outputs = [], []
    was_training = student.training if student is not None else False
    if student is not None:
        student.eval()
        param = next(student.parameters())
    for i, c in enumerate(prepared):
        row = dict(c.row)
        if student is not None:  # metrics on the student's device: no copy of its decode to the host
            s = student(c.latents.to(param.device, param.dtype)).float()
            x, t = c.frames.to(s.device), c.teacher.to(s.device)
            row.update({"student_psnr": metrics.psnr(s, x), "student_ssim": metrics.ssim(s, x),
                        "student_msssim": metrics.ms_ssim(s, x), "student_vs_teacher_psnr": metrics.psnr(s, t)})
            if lpips is not None:
                row["student_lpips"] = _lpips(lpips, s, x)
            if i < keep_outputs:
                outputs.append(s.cpu())
        rows.append(row)
    if was_training:
        student.train()
    keys = [k for k in rows[0] if k.endswith(("psnr", "ssim", "msssim", "lpips"))]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    if student is not None:
        mean["psnr_ratio"] = mean["student_psnr"] / mean["teacher_psnr"]
    note = "LPIPS VGG16 v0.1" if lpips is not None else \
        "skipped (no LPIPS weights given; see `turbovaed lpips-weights`)"
    report = {"mean": mean, "clips": rows, "lpips": note}
    return {**report, "outputs": outputs} if keep_outputs else report


def evaluate(student: nn.Module | None, teacher, clips: list[tuple[torch.Tensor, dict]],
             lpips: nn.Module | None = None) -> dict:
    """`prepare` then `score`, for one-off evaluations (the `eval` command, benchmarks)."""
    return score(student, prepare(teacher, clips, lpips), lpips)


def evaluate_videos(student: str | Path | None, teacher: str, teacher_path: Path | None, videos: list[Path] | None,
                    frames: int, size: int, per_video: int, lpips: Path | None = None) -> dict:
    """The `eval` command: fixed windows of `videos` (default: the real clips the student never trained on, or
    the reference teacher's held-out clips) scored for the teacher and, when given, a student checkpoint."""
    from turbovaed import data, teachers
    from turbovaed.io import InputError
    from turbovaed.reference import HELD_OUT
    from turbovaed.student import StudentDecoder

    te = teachers.load(teacher, teacher_path)
    if not videos:
        pool = data.real_clips()
        videos = never_trained_on(student, pool)[0] if student else [v for v in pool if v.name in HELD_OUT]
        if not videos:
            raise InputError("no --videos given and none of this machine's real clips is held out from the student")
    clips = data.fixed_clips(data.list_videos(videos), frames, size, per_video)
    model = StudentDecoder.from_pretrained(student) if student else None
    lpips_net = None
    if lpips is not None:
        from turbovaed.lpips import LPIPS

        lpips_net = LPIPS(lpips)
    return evaluate(model, te, clips, lpips_net)
