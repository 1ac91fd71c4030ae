"""Score students (and the teacher) on clips they never saw: against ground truth and the teacher."""

from __future__ import annotations

import torch
from torch import nn

from turbovaed import metrics


@torch.no_grad()
def evaluate(student: nn.Module | None, teacher, clips: list[tuple[torch.Tensor, dict]],
             lpips: nn.Module | None = None) -> dict:
    """Per clip and averaged PSNR / SSIM / MS-SSIM (and LPIPS when its network is given) of teacher vs
    GT, student vs GT, student vs teacher."""
    rows = []
    if student is not None:
        student.eval()
    for clip, source in clips:
        x = clip[None]
        z = teacher.encode(x)
        t = teacher.decode(z)
        row = {**source, "teacher_psnr": metrics.psnr(t, x), "teacher_ssim": metrics.ssim(t, x),
               "teacher_msssim": metrics.ms_ssim(t, x)}
        if lpips is not None:
            row["teacher_lpips"] = lpips(t, x).item()
        if student is not None:
            s = student(z.to(next(student.parameters()).dtype)).float()
            row.update({"student_psnr": metrics.psnr(s, x), "student_ssim": metrics.ssim(s, x),
                        "student_msssim": metrics.ms_ssim(s, x), "student_vs_teacher_psnr": metrics.psnr(s, t)})
            if lpips is not None:
                row["student_lpips"] = lpips(s, x).item()
        rows.append(row)
    keys = [k for k in rows[0] if k.endswith(("psnr", "ssim", "msssim", "lpips"))]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    if student is not None:
        mean["psnr_ratio"] = mean["student_psnr"] / mean["teacher_psnr"]
    note = "LPIPS VGG16 v0.1" if lpips is not None else \
        "skipped (no LPIPS weights given; see `turbovaed lpips-weights`)"
    return {"mean": mean, "clips": rows, "lpips": note}
