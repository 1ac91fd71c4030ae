"""Distillation losses: offline perceptual fallback, feature alignment heads, 3D PatchGAN (hinge)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from turbovaed.io import InputError


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
    """Throw-away 1x1x1 projections, one per aligned teacher block, from a student stage with the same frames.

    Frames are aligned exactly, never interpolated in time: a stage matches a teacher block when it has the
    block's frame count, or (causal first-frame families) when it has u*T_latent frames against the block's
    u*(T_latent - 1) + 1 and so carries u - 1 leading frames that the student drops at its output; those are
    cut. Among matching stages the closest in spatial size is used (ties: the lower resolution), and the
    projection is resized in space only. A block that no stage matches in time is one clear error."""

    def __init__(self, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size], latent_frames: int,
                 first_frame: bool = True) -> None:
        super().__init__()
        self.pairs: list[int] = []  # student stage per teacher block
        self.offsets: list[int] = []  # leading student frames cut to meet the block's frames
        heads = []
        for k, t in enumerate(teacher_shapes):
            matches = {i: time_offset(s[2], t[2], latent_frames, first_frame) for i, s in enumerate(student_shapes)}
            matches = {i: o for i, o in matches.items() if o is not None}
            if not matches:
                raise InputError(f"teacher feature block {k} has {t[2]} frames, which no student stage matches "
                                 f"exactly (stages have {[s[2] for s in student_shapes]} frames for {latent_frames} "
                                 "latent frames): leave it out of loss.feature_blocks")
            best = min(matches, key=lambda i: (abs(math.log2(t[-1] / student_shapes[i][-1])), i))
            self.pairs.append(best)
            self.offsets.append(matches[best])
            heads.append(nn.Conv3d(student_shapes[best][1], t[1], 1))
        self.heads = nn.ModuleList(heads)

    def forward(self, student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
        total = student_feats[0].new_zeros((), dtype=torch.float32)
        for head, i, offset, t in zip(self.heads, self.pairs, self.offsets, teacher_feats):
            p = head(student_feats[i][:, :, offset:])
            if p.shape[2:] != t.shape[2:]:  # same frames; space only
                p = F.interpolate(p, size=t.shape[2:], mode="trilinear", align_corners=False)
            total = total + F.mse_loss(p.float(), t) / t.pow(2).mean().clamp_min(1e-6)  # scale-free per block
        return total


def time_offset(student_frames: int, teacher_frames: int, latent_frames: int, first_frame: bool) -> int | None:
    """Leading student frames to cut so a student stage meets a teacher block frame for frame, or None."""
    if student_frames == teacher_frames:
        return 0
    up, rem = divmod(student_frames, latent_frames)
    if first_frame and not rem and up > 1 and teacher_frames == up * (latent_frames - 1) + 1:
        return up - 1
    return None


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
