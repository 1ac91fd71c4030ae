"""Fidelity metrics on [-1, 1] video tensors (B, 3, T, H, W): PSNR, SSIM, MS-SSIM (pytorch-msssim)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> (B*T, 3, H, W) in [0, 1]."""
    return x.float().clamp(-1, 1).add(1).div(2).transpose(1, 2).flatten(0, 1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB over the whole clip(s), on the [0, 1] scale (what video VAE papers report)."""
    mse = (_frames(pred) - _frames(target)).pow(2).mean().item()
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(1.0 / mse)).item()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    from pytorch_msssim import ssim as _ssim

    return _ssim(_frames(pred), _frames(target), data_range=1.0, size_average=True).item()


def ms_ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """MS-SSIM (5 standard scales). Frames of 160 px or less use a smaller Gaussian window (odd,
    (w-1)*16 < side) so the coarsest scale still fits; 11 otherwise, as in the paper."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    side = min(pred.shape[-2:])
    win = msssim_window(side)
    if win is None:
        raise ValueError(f"MS-SSIM needs frames larger than 32 px, got {side}")
    return _ms_ssim(_frames(pred), _frames(target), data_range=1.0, size_average=True, win_size=win).item()


def msssim_window(side: int) -> int | None:
    """Largest odd Gaussian window (<= 11) whose 5-scale MS-SSIM fits frames of `side` px, or None."""
    win = 11
    while (win - 1) * 16 >= side and win > 3:
        win -= 2
    return win if (win - 1) * 16 < side else None


def bicubic(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The baseline every decoder must beat: each frame of x (B, 3, T, H, W) area-downsampled by the
    teacher's spatial factor and scaled back up bicubically, per frame, clamped to [-1, 1]."""
    b, c, t, h, w = x.shape
    frames = x.transpose(1, 2).reshape(b * t, c, h, w)
    small = F.interpolate(frames, scale_factor=1 / factor, mode="area")
    up = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)
    return up.reshape(b, t, c, h, w).transpose(1, 2)
