"""A TAEHV-style decoder (madebyollin/taehv), written from its README and model description, for
side-by-side comparison in turbovaed's harness (same trainer, data, exporters and timers).

Architecture as published: 2D 3x3 convs on frames folded into the batch, ReLU, no normalisation;
MemBlock = conv(cat(x, x of the previous frame)) -> ReLU -> conv -> ReLU -> conv, plus a skip, then ReLU;
TGrow = a 1x1 conv to stride * C channels, split into `stride` frames; nearest 2x spatial upsampling;
a tanh clamp on the latents; the decoder makes 4 frames per latent and trims the first 3 (1+4k rule).
Widths (256, 128, 64, 64), three MemBlocks per stage. With 16 latent channels and patch 1 the decoder
has 9.84M parameters (TAEHV's published size: ~9.8M); `patch_size` > 1 adds a final depth-to-space
(TAEHV's Wan 2.2 / LTX-2 variants).

Interface matches turbovaed's StudentDecoder where the trainer and exporters need it: forward(z,
return_features) on (B, C, T, h, w) latents -> (B, 3, 1+4(T-1), H, W) in [-1, 1], `to_mobile()` (the
model is already 2D-only), `num_parameters()`, `save_pretrained()`."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from turbovaed.io import save_pretrained

WIDTHS = (256, 128, 64, 64)


def conv(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


class MemBlock(nn.Module):
    """Residual block that also sees the previous frame's input (zeros before the first frame)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(conv(cin * 2, cout), nn.ReLU(), conv(cout, cout), nn.ReLU(), conv(cout, cout))
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        n, c, h, w = x.shape
        frames = x.reshape(n // t, t, c, h, w)
        past = torch.cat([torch.zeros_like(frames[:, :1]), frames[:, :-1]], dim=1).reshape(n, c, h, w)
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + self.skip(x))


class TGrow(nn.Module):
    """1x1 conv to stride * C channels; each input frame becomes `stride` frames (in order)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return self.conv(x).reshape(n * self.stride, c, h, w)


class TAEHVDecoder(nn.Module):
    def __init__(self, latent_channels: int = 16, patch_size: int = 1, time_upscale: tuple[bool, bool] = (True, True),
                 space_upscale: tuple[bool, bool, bool] = (True, True, True)) -> None:
        super().__init__()
        self.config = dict(latent_channels=latent_channels, patch_size=patch_size, time_upscale=list(time_upscale),
                           space_upscale=list(space_upscale))
        self.patch_size = patch_size
        self.time_strides = [2 if u else 1 for u in time_upscale]
        self.frames_to_trim = 2 ** sum(time_upscale) - 1
        f = WIDTHS
        self.conv_in = conv(latent_channels, f[0])
        self.stages = nn.ModuleList(nn.ModuleList(MemBlock(f[i], f[i]) for _ in range(3)) for i in range(3))
        self.space = [2 if u else 1 for u in space_upscale]
        self.grows = nn.ModuleList([TGrow(f[0], 1), TGrow(f[1], self.time_strides[0]), TGrow(f[2], self.time_strides[1])])
        self.convs = nn.ModuleList([conv(f[0], f[1], bias=False), conv(f[1], f[2], bias=False),
                                    conv(f[2], f[3], bias=False)])
        self.conv_out = conv(f[3], 3 * patch_size ** 2)

    def forward(self, z: torch.Tensor, return_features: bool = False):
        b, c, t, h, w = z.shape
        x = torch.tanh(z / 3) * 3
        x = x.transpose(1, 2).reshape(b * t, c, h, w)
        x = F.relu(self.conv_in(x))
        features = []
        for i, stage in enumerate(self.stages):
            for block in stage:
                x = block(x, t)
            features.append(x.reshape(b, t, *x.shape[1:]).transpose(1, 2))
            if self.space[i] > 1:
                x = F.interpolate(x, scale_factor=self.space[i], mode="nearest")
            x = self.grows[i](x)
            t = x.shape[0] // b
            x = self.convs[i](x)
        x = self.conv_out(F.relu(x))
        if self.patch_size > 1:
            x = F.pixel_shuffle(x, self.patch_size)
        x = x.reshape(b, t, *x.shape[1:]).transpose(1, 2)[:, :, self.frames_to_trim:]
        x = x * 2 - 1  # TAEHV decodes to [0, 1]; turbovaed frames are [-1, 1]
        return (x, features) if return_features else x

    def to_mobile(self, linear_pointwise: bool = False) -> TAEHVDecoder:
        return self  # 2D convs only: every backend takes it as it is

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | Path, extra_files: dict[str, str | bytes] | None = None) -> Path:
        return save_pretrained(self, directory, {"_class_name": "TAEHVDecoder", **self.config}, extra_files)
