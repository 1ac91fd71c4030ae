"""Flash-VAED's LTX-Video student (Aoko955/Flash-VAED, ICML 2026), written from the published definition
(`models/ltx/ltx_prune_1_4.py` and how `infer.py` builds and calls it): facts carry over (layer order, tensor
names, which stages are pruned, depthwise or per-frame, the padding of each conv, the pixel-shuffle orders),
the code is ours, built from the LTX-derived blocks of `turbo_vaed.py`.

`infer.py` builds `AutoencoderKLLTXVideo` with LTX-Video 0.9.0's decoder config (128 latent channels, widths
512, 512, 256, 128 from the latents up, 4 / 3 / 3 / 3 / 4 resnets, no timestep conditioning, no noise
injection, patch 4) and `ltx_prune_1_4` prunes it: the last two up blocks keep a quarter of their channels
(64, 32); the middle block and the first two up blocks use depthwise-separable 3x3x3 convs, the third up block
LTX's dense 3x3x3 convs and the last one per-frame 3x3 Conv2d; the pruned blocks always carry a LayerNorm +
1x1 shortcut. The upstream depthwise conv pads time causally (two copies of the first frame in front) whatever
the decoder's `is_causal`; every other temporal conv is non-causal (edge frames repeated on both sides) as
LTX-Video's decoder is, so the student decodes whole clips only. An upsampler is a dense conv to C * 8
channels read as (C, t, y, x) sub-positions, then the first frame dropped; the head is RMSNorm, SiLU, a conv
to 3 * 16 channels and LTX's 4x4 unpatchify. T latent frames decode to 8T - 7 frames at 32x.

Latents: `infer.py` divides by the scaling factor (1.0) and decodes, so the student takes raw LTX-Video VAE
latents (what the LTX pipeline passes to `vae.decode` after de-normalising), BCTHW; output in [-1, 1]
(unclamped, as published).

`FlashVAEDLTX.to_mobile()` is the exact 2D form (`turbo_vaed.MobileDecoder`): the upsampler's and the head's
output channels permuted once into pixel-shuffle order, so each is a conv plus `pixel_shuffle`."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from turbovaed.decoders.flash_vaed import FirstFrameRule
from turbovaed.decoders.turbo_vaed import (
    LTXTrunk,
    MidBlock,
    MobileDecoder,
    MobileRMSNorm,
    ResnetBlock,
    SeparableConv,
    TimeConv,
    UpBlock,
    Upsampler,
    per_frame,
    rms_norm,
)


@dataclass(frozen=True)
class Variant(FirstFrameRule):
    name: str
    latent_channels: int
    vae: str
    widths: tuple[int, ...]  # from the latents up: middle block, then each up block
    layers: tuple[int, ...]  # middle block, then each up block
    kinds: tuple[str, ...]  # each up block's conv: "depthwise" (causal), "dense" (non-causal) or "frame" (2D)
    scaling: tuple[bool, ...]
    patch_size: int = 4
    spatial_ratio: int = 32
    t_upscale: int = 8
    params_published: float = 0.0  # the paper and README state none

    @property
    def convention(self) -> str:
        return (f"raw {self.vae} VAE latents (the posterior, as the LTX pipeline de-normalises them before "
                "vae.decode), BCTHW")


VARIANTS = {v.name: v for v in (
    Variant("flash-vaed-ltx", 128, "LTX-Video", widths=(512, 512, 512, 64, 32), layers=(4, 3, 3, 3, 4),
            kinds=("depthwise", "depthwise", "dense", "frame"), scaling=(False, True, True, True)),
)}


class DepthwiseCausalConv(SeparableConv):
    """Upstream `LTXVideoDepthwiseCausalConv3d`: depthwise then pointwise, both with bias, time padded causally
    with first-frame copies whatever the decoder's `is_causal`."""

    names = ("depthwise", "pointwise")

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__(cin, cout, k, causal=True)


class FrameConv(nn.Conv2d):
    """A k x k Conv2d run on every frame (upstream `LTXVideoSpatialResnetBlock3d`'s convs; the tensor names stay
    those of a bare Conv2d)."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__(cin, cout, k, padding=k // 2)

    @property
    def first(self) -> nn.Conv2d:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame(super().forward, x)

    def to_mobile(self) -> nn.Module:
        return PerFrame(self)


class PerFrame(nn.Module):
    """A FrameConv's weights as a plain Conv2d over frames folded into the batch."""

    def __init__(self, conv: FrameConv):
        super().__init__()
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
        self.conv.load_state_dict(conv.state_dict())

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return self.conv(x)


CONVS = {"depthwise": DepthwiseCausalConv, "dense": TimeConv, "frame": FrameConv}


class LTXUpsampler(nn.Module):
    """Upstream `LTXVideoUpsampler3d` (no residual, factor 1): a non-causal 3x3x3 conv to C * 8 channels, channel
    c * 8 + 4 j + 2 y + x read as sub-frame j, row y, column x of channel c, then the first frame dropped."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = TimeConv(channels, channels * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = x.shape
        y = self.conv(x).reshape(b, -1, 2, 2, 2, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return y.reshape(b, -1, t * 2, h * 2, w * 2)[:, :, 1:]

    def to_mobile(self) -> nn.Module:
        """turbo_vaed's decoupled upsampler (channel (c * 4 + 2 y + x) * 2 + j) with the rows permuted to it."""
        c = self.conv.conv.in_channels
        up = Upsampler(c, 2, trim=True)
        with torch.no_grad():
            for name in ("weight", "bias"):
                src = getattr(self.conv.conv, name)
                getattr(up.conv.conv, name).copy_(src.reshape(c, 2, 4, *src.shape[1:]).transpose(1, 2).reshape(src.shape))
        return up.to_mobile()


class FlashVAEDLTX(LTXTrunk):
    """The published LTX student's decoder; `forward(latents BCTHW) -> frames BCTHW`."""

    def __init__(self, variant: Variant):
        super().__init__()
        self.variant = v = variant
        w = v.widths
        self.conv_in = TimeConv(v.latent_channels, w[0], 3)
        self.mid_block = MidBlock([self.resnet(w[0], w[0], "depthwise") for _ in range(v.layers[0])])
        self.up_blocks = nn.ModuleList()
        for i, kind in enumerate(v.kinds):
            cin, cout, pruned = w[i], w[i + 1], kind != "depthwise"
            # a per-frame block's conv_in is dense 3D, as upstream builds it
            conv_in = self.resnet(cin, cout, "dense" if kind == "frame" else kind, pruned) \
                if cin != cout or pruned else None
            resnets = [self.resnet(cout, cout, kind, pruned) for _ in range(v.layers[i + 1])]
            self.up_blocks.append(UpBlock(conv_in, LTXUpsampler(cout) if v.scaling[i] else None, resnets))
        self.conv_out = TimeConv(w[-1], 3 * v.patch_size ** 2, 3)

    @staticmethod
    def resnet(cin: int, cout: int, kind: str, shortcut: bool = False) -> ResnetBlock:
        return ResnetBlock(cin, cout, CONVS[kind], 3, shortcut=shortcut or cin != cout)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.unpatchify(self.conv_out(F.silu(rms_norm(self.trunk(latents)))))

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """LTX's unpatchify: channel c * p * p + p * a + b is row b, column a of a p x p patch."""
        b, _, t, h, w = x.shape
        p = self.variant.patch_size
        x = x.reshape(b, -1, 1, p, p, t, h, w).permute(0, 1, 5, 2, 6, 4, 7, 3)
        return x.reshape(b, -1, t, h * p, w * p)

    def to_mobile(self) -> MobileDecoder:
        head = copy.deepcopy(self.conv_out)
        p = self.variant.patch_size
        with torch.no_grad():  # rows into pixel-shuffle order: c * p * p + p * row + column
            for t in (head.conv.weight, head.conv.bias):
                t.copy_(t.reshape(-1, p, p, *t.shape[1:]).transpose(1, 2).reshape(t.shape))
        return MobileDecoder(self.conv_in.to_mobile(), [m.to_mobile() for m in self.trunk_blocks()],
                             MobileRMSNorm(head.conv.in_channels), head.to_mobile(), patch=p)
