"""Distillation losses: offline perceptual fallback, feature alignment heads, 3D PatchGAN (hinge)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _frames01(x: torch.Tensor) -> torch.Tensor:
    return x.add(1).div(2).transpose(1, 2).flatten(0, 1)  # (B*T, 3, H, W) in [0, 1]


def msssim_grad_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Offline perceptual stand-in (no torchvision, no downloads): (1 - MS-SSIM) + L1 of spatial and
    temporal image gradients. MS-SSIM uses the largest odd Gaussian window the crop allows."""
    from pytorch_msssim import ms_ssim, ssim

    from turbovaed.metrics import msssim_window

    side = min(pred.shape[-2:])
    win = msssim_window(side)
    p, t = _frames01(pred), _frames01(target.clamp(-1, 1))
    if win is not None:
        structure = 1 - ms_ssim(p.clamp(0, 1), t, data_range=1.0, win_size=win)
    else:  # crops too small for 5 scales: plain SSIM with a 3x3 window
        structure = 1 - ssim(p.clamp(0, 1), t, data_range=1.0, win_size=3)
    grad = sum(F.l1_loss(torch.diff(pred, dim=d), torch.diff(target, dim=d)) for d in (2, 3, 4) if pred.shape[d] > 1)
    return structure + grad


class FeatureAlignment(nn.Module):
    """Throw-away 1x1x1 projections, one per aligned teacher block, from the student stage whose spatial
    size is closest (ties: the lower-resolution stage), resized in time and space to the teacher's grid."""

    def __init__(self, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> None:
        super().__init__()
        self.pairs: list[int] = []  # student stage per teacher block
        heads = []
        for t in teacher_shapes:
            best = min(range(len(student_shapes)), key=lambda i: (abs(math.log2(t[-1] / student_shapes[i][-1])), i))
            self.pairs.append(best)
            heads.append(nn.Conv3d(student_shapes[best][1], t[1], 1))
        self.heads = nn.ModuleList(heads)

    def forward(self, student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
        total = student_feats[0].new_zeros((), dtype=torch.float32)
        for head, i, t in zip(self.heads, self.pairs, teacher_feats):
            p = head(student_feats[i])
            if p.shape[2:] != t.shape[2:]:
                p = F.interpolate(p, size=t.shape[2:], mode="trilinear", align_corners=False)
            total = total + F.mse_loss(p.float(), t) / t.pow(2).mean().clamp_min(1e-6)  # scale-free per block
        return total


class PatchDiscriminator3d(nn.Module):
    """3D PatchGAN: strided Conv3d stack, one logit per spatio-temporal patch."""

    def __init__(self, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv3d(3, channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers):
            mods += [nn.Conv3d(c, c * 2, (3, 4, 4), (2 if i == 1 else 1, 2, 2), (1, 1, 1)),
                     nn.GroupNorm(8, c * 2), nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(nn.Conv3d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def adaptive_gan_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_weight: torch.Tensor) -> torch.Tensor:
    """VQGAN's balance: ||d rec / d w_last|| / ||d gan / d w_last||, clamped."""
    g_rec = torch.autograd.grad(rec_loss, last_weight, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_weight, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, 1e4).detach()
