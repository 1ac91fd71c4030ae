"""A Turbo-VAED-style decoder (hustvl/Turbo-VAED, arXiv 2508.09136), written from the paper and the
released configs, for side-by-side comparison in turbovaed's harness.

Layout as released (configs/Turbo-VAED-{Hunyuan,LTX}.json, read lowest resolution first): conv_in ->
mid block -> up blocks, each = [a ResnetBlock changing width] -> [decoupled 3D pixel shuffle: a dense 3x3x3
conv to C * s_t * s * s channels, temporal split, 2D pixel shuffle, the first s_t - 1 frames trimmed] ->
ResnetBlocks (RMSNorm, SiLU, conv, RMSNorm, SiLU, conv, skip). Blocks at latent resolution use 5x5x5
depthwise-separable convs, the upsampled stages dense 3x3x3 convs; decoding is non-causal (replicate
padding on both sides in time). `patch_size` 4 (LTX) adds two per-frame 2D conv + pixel-shuffle stages.
Parameter counts: HUNYUAN 40.74M (published ~40.7M), LTX 41.89M (published ~41.9M).

Built from turbovaed.nn's blocks, so it lowers exactly to 2D like a turbovaed student (Turbo-VAED ships
no exporter; ExecuTorch's XNNPACK and LiteRT cannot run its Conv3d as written)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from turbovaed.io import save_pretrained
from turbovaed.nn import Conv3d, RMSNorm, make_conv

HUNYUAN = dict(latent_channels=16, block_out_channels=(16, 32, 256, 512), layers_per_block=(5, 4, 4, 4, 5),
               scaling=(True, True, True, False), spatio_only=(True, False, False, False),
               is_dw_conv=(False, False, False, True, True), dw_kernel=5, patch_size=1)
LTX = dict(latent_channels=128, block_out_channels=(64, 128, 256, 512), layers_per_block=(3, 2, 3, 1, 1),
           scaling=(True, True, True, False), spatio_only=(False, False, False, False),
           is_dw_conv=(False, False, False, True, True), dw_kernel=5, patch_size=4)
PAD = "replicate"  # non-causal in time, as released (decoder_causal: false)


def _conv(cin: int, cout: int, dw: bool, k: int) -> nn.Module:
    """k x k x k depthwise-separable, or dense 3x3x3."""
    return make_conv(cin, cout, not dw, k if dw else 3, k if dw else 3, PAD)


class ResnetBlock(nn.Module):
    """RMSNorm, SiLU, conv, RMSNorm, SiLU, conv, plus a (norm + 1x1 conv) shortcut when the width changes."""

    def __init__(self, cin: int, cout: int, dw: bool, k: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = RMSNorm(cin), _conv(cin, cout, dw, k)
        self.norm2, self.conv2 = RMSNorm(cout), _conv(cout, cout, dw, k)
        self.shortcut = nn.ModuleList([RMSNorm(cin), Conv3d(cin, cout, 1, 1, padding=PAD)]) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return h + (self.shortcut[1](self.shortcut[0](x)) if self.shortcut is not None else x)


class Upsampler(nn.Module):
    """Decoupled 3D pixel shuffle: dense 3x3x3 conv, temporal split, 2D pixel shuffle, trim s_t - 1 frames."""

    def __init__(self, channels: int, scale_t: int, scale_s: int) -> None:
        super().__init__()
        self.scale_t, self.scale_s = scale_t, scale_s
        self.conv = Conv3d(channels, channels * scale_t * scale_s ** 2, 3, 3, padding=PAD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = x.shape
        y = self.conv(x)
        y = y.reshape(b, -1, self.scale_t, t, h, w).permute(0, 3, 2, 1, 4, 5).reshape(b * t * self.scale_t, -1, h, w)
        y = F.pixel_shuffle(y, self.scale_s)
        y = y.reshape(b, t * self.scale_t, *y.shape[1:]).transpose(1, 2)
        return y[:, :, self.scale_t - 1:]


class TurboVAEDDecoder(nn.Module):
    def __init__(self, latent_channels: int, block_out_channels: tuple[int, ...], layers_per_block: tuple[int, ...],
                 scaling: tuple[bool, ...], spatio_only: tuple[bool, ...], is_dw_conv: tuple[bool, ...],
                 dw_kernel: int = 5, patch_size: int = 1) -> None:
        super().__init__()
        self.config = dict(latent_channels=latent_channels, block_out_channels=list(block_out_channels),
                           layers_per_block=list(layers_per_block), scaling=list(scaling),
                           spatio_only=list(spatio_only), is_dw_conv=list(is_dw_conv), dw_kernel=dw_kernel,
                           patch_size=patch_size)
        widths, layers = block_out_channels[::-1], layers_per_block[::-1]
        scaling, spatio_only, dw = scaling[::-1], spatio_only[::-1], is_dw_conv[::-1]
        self.conv_in = Conv3d(latent_channels, widths[0], 3, 3, padding=PAD)
        self.mid = nn.Sequential(*[ResnetBlock(widths[0], widths[0], dw[0], dw_kernel) for _ in range(layers[0])])
        self.ups = nn.ModuleList()
        cin = widths[0]
        for i, cout in enumerate(widths):
            block = nn.Sequential()
            if cin != cout:
                block.append(ResnetBlock(cin, cout, dw[i + 1], dw_kernel))
            if scaling[i]:
                block.append(Upsampler(cout, 1 if spatio_only[i] else 2, 2))
            block.extend(ResnetBlock(cout, cout, dw[i + 1], dw_kernel) for _ in range(layers[i + 1]))
            self.ups.append(block)
            cin = cout
        self.patch_size = patch_size
        self.up2d = nn.ModuleList()
        for _ in range({1: 0, 2: 1, 4: 2}[patch_size]):  # per-frame conv + 2x pixel shuffle, width / 4
            self.up2d.append(nn.ModuleList([RMSNorm(cin), nn.Conv2d(cin, cin, 3, padding=1)]))
            cin //= 4
        self.norm_out = RMSNorm(cin)
        self.conv_out = Conv3d(cin, 3, 3, 3, padding=PAD)

    def forward(self, z: torch.Tensor, return_features: bool = False):
        x = self.mid(self.conv_in(z))
        features = [x]
        for block in self.ups:
            x = block(x)
            features.append(x)
        for norm, conv in self.up2d:
            b, c, t, h, w = x.shape
            y = F.silu(norm(x)).transpose(1, 2).reshape(b * t, c, h, w)
            y = F.pixel_shuffle(conv(y), 2)
            x = y.reshape(b, t, *y.shape[1:]).transpose(1, 2)
        x = self.conv_out(F.silu(self.norm_out(x)))
        return (x, features) if return_features else x

    def to_mobile(self, linear_pointwise: bool = False) -> MobileTurboVAED:
        return MobileTurboVAED(self)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | Path, extra_files: dict[str, str | bytes] | None = None) -> Path:
        return save_pretrained(self, directory, {"_class_name": "TurboVAEDDecoder", **self.config}, extra_files)


# ----------------------------------------------------------------------------- the exact 2D-only form
class MobileResnetBlock(nn.Module):
    def __init__(self, block: ResnetBlock) -> None:
        super().__init__()
        self.norm1, self.norm2 = block.norm1.to_mobile(), block.norm2.to_mobile()
        self.conv1, self.conv2 = block.conv1.to_mobile(), block.conv2.to_mobile()
        self.shortcut = None if block.shortcut is None else nn.ModuleList(m.to_mobile() for m in block.shortcut)

    def forward(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, int]:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x, t)), t), t)), t)
        skip = x if self.shortcut is None else self.shortcut[1](self.shortcut[0](x, t), t)
        return h + skip, t


class MobileUpsampler(nn.Module):
    def __init__(self, up: Upsampler) -> None:
        super().__init__()
        self.scale_t, self.scale_s = up.scale_t, up.scale_s
        self.conv = up.conv.to_mobile()

    def forward(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, int]:
        y = self.conv(x, t)  # channel c * s_t + j is sub-frame j of channel c
        n, _, h, w = y.shape
        st = self.scale_t
        y = y.reshape(n, -1, st, h * w).transpose(1, 2).reshape(n * st, -1, h, w)
        y = F.pixel_shuffle(y, self.scale_s)
        keep = t * st - (st - 1)
        y = y.reshape(n // t, t * st, *y.shape[1:])[:, st - 1:]
        return y.reshape(-1, *y.shape[2:]), keep


class MobileTurboVAED(nn.Module):
    """Frames folded into the batch, Conv3d taps as Conv2d (turbovaed.nn), the shuffle's trim as a slice."""

    def __init__(self, ref: TurboVAEDDecoder) -> None:
        super().__init__()
        self.conv_in = ref.conv_in.to_mobile()
        blocks = [*ref.mid, *[m for block in ref.ups for m in block]]
        self.blocks = nn.ModuleList(MobileUpsampler(m) if isinstance(m, Upsampler) else MobileResnetBlock(m)
                                    for m in blocks)
        self.up2d = nn.ModuleList(nn.ModuleList([norm.to_mobile(), conv]) for norm, conv in ref.up2d)
        self.norm_out, self.conv_out = ref.norm_out.to_mobile(), ref.conv_out.to_mobile()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = z.shape
        x = self.conv_in(z.transpose(1, 2).reshape(b * t, c, h, w), t)
        for block in self.blocks:
            x, t = block(x, t)
        for norm, conv in self.up2d:
            x = F.pixel_shuffle(conv(F.silu(norm(x, t))), 2)
        x = self.conv_out(F.silu(self.norm_out(x, t)), t)
        return x.reshape(b, t, *x.shape[1:]).transpose(1, 2)
