"""Turbo-VAED's released students (hustvl/Turbo-VAED, arXiv 2508.09136), written from the published
definition (`autoencoder_kl_turbo_vaed.py` and `configs/Turbo-VAED-*.json`): facts carry over (layer order,
tensor names, norms and their epsilons, padding, the decoupled 3D pixel shuffle), the code is ours.

`TurboVAED` is the published decoder with its tensor names (what `model.decoder.load_state_dict` takes):
conv_in -> mid_block -> up_blocks -> [patch 2/4: per-frame conv + 2D pixel shuffle stages] -> norm_out -> SiLU
-> conv_out. Every ResnetBlock is RMSNorm(eps 1e-8, no weight) -> act -> conv -> RMSNorm -> SiLU -> conv plus
a skip (LayerNorm + 1x1 conv where the width changes); the first act is ReLU in up blocks that upsample. Blocks
at latent resolution use 5x5x5 depthwise-separable convs, the rest dense 3x3x3 convs; every temporal conv is
non-causal (edge frames repeated on both sides), spatial padding is zeros. An upsampler is a dense conv to
C * s_t * 4 channels, a temporal split, a 2D pixel shuffle and (except Video DC-AE) the first s_t - 1 frames
dropped. norm_out is a parameter-free RMS norm over channels (eps 1e-8) for every patch size, as upstream's
current forward has it since commit 32be94c ("fix norm"; patch 2/4 decoders ended with a BatchNorm3d before, and
files holding its statistics still load: upstream ignores them, loading with strict=False). Input
(B, C, T, h, w) raw latents of the teacher VAE (its posterior), output (B, 3, T', H, W)
in [-1, 1] (unclamped, as published; writers clamp).

`TurboVAED.to_mobile()` is the exact 2D form: frames folded into the batch, every temporal tap a Conv2d
(turbovaed.nn), norms as 1x1 convs, the temporal split as a reshape and the trim as a slice; rank <= 5."""

from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from turbovaed.nn import TapConv2d, pad_time


@dataclass(frozen=True)
class Variant:
    """The fields of a released config that shape the decoder (lists read highest resolution first, as
    the configs write them), plus what its latents are."""
    name: str
    latent_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: tuple[int, ...]  # mid block last
    spatio_temporal_scaling: tuple[bool, ...]
    spatio_only: tuple[bool, ...]
    is_dw_conv: tuple[bool, ...]  # mid block last
    patch_size: int
    vae: str
    params_published: float  # millions, as the paper's tables state (0: none published)
    dw_kernel: int = 5
    video_dc_ae: bool = False  # no frames trimmed after a temporal upsample

    @property
    def convention(self) -> str:
        return f"raw {self.vae} VAE latents (the posterior, no mean/std normalisation), BCTHW"

    @property
    def spatial_ratio(self) -> int:
        return self.patch_size * 2 ** sum(self.spatio_temporal_scaling)

    @property
    def t_upscale(self) -> int:
        return 2 ** sum(s and not o for s, o in zip(self.spatio_temporal_scaling, self.spatio_only))

    @property
    def frames_to_trim(self) -> int:
        return 0 if self.video_dc_ae else self.t_upscale - 1

    def output_frames(self, latent_frames: int) -> int:
        return latent_frames * self.t_upscale - self.frames_to_trim

    @property
    def frame_rule(self) -> str:
        return f"T latent frames -> {self.t_upscale}T" + (f" - {self.frames_to_trim}" if self.frames_to_trim else "") \
            + " frames"

    def to_dict(self) -> dict:
        return {**asdict(self), "t_upscale": self.t_upscale, "frames_to_trim": self.frames_to_trim}


_HY = dict(latent_channels=16, block_out_channels=(16, 32, 256, 512), layers_per_block=(5, 4, 4, 4, 5),
           spatio_temporal_scaling=(True, True, True, False), spatio_only=(True, False, False, False),
           is_dw_conv=(False, False, False, True, True), patch_size=1)
VARIANTS = {v.name: v for v in (
    Variant("turbo-vaed-hunyuan", **_HY, vae="HunyuanVideo", params_published=40.7),
    Variant("turbo-vaed-cog", **_HY, vae="CogVideoX", params_published=40.7),  # the Hunyuan layout: a tie
    Variant("turbo-vaed-ltx", 128, (64, 128, 256, 512), (3, 2, 3, 1, 1), (True, True, True, False),
            (False, False, False, False), (False, False, False, True, True), 4, "LTX-Video", 41.9),
    Variant("turbo-vaed-dc", 128, (64, 128, 256, 512), (4, 3, 3, 3, 4), (True, True, True, False),
            (True, False, False, False), (False, False, False, True, True), 4, "Video DC-AE", 0.0,
            video_dc_ae=True),
)}


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """diffusers' RMSNorm(eps=1e-8, no weight) over the channel axis, computed in fp32."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(1, keepdim=True) + 1e-8)).to(x.dtype)


def per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """A 2D op on every frame of (B, C, T, H, W): frames folded into the batch and back."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class TimeConv(nn.Module):
    """A k x k x k Conv3d with zero spatial padding and edge frames repeated in time, (k - 1) / 2 on each side."""

    def __init__(self, cin: int, cout: int, k: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, k, padding=(0, k // 2, k // 2), groups=groups)
        self.pad = ((k - 1) // 2, (k - 1) // 2)

    @property
    def first(self) -> nn.Conv3d:
        return self.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pad_time(x, *self.pad, dim=2))

    def to_mobile(self) -> nn.Module:
        return TapConv2d(self.conv, self.pad)


class SeparableConv(nn.Module):
    """Depthwise k x k x k conv (with bias), then a pointwise 1x1x1 conv; time padded with edge frames ((k - 1) / 2
    each side, or `causal`: k - 1 first-frame copies in front). `names`: the two convs' upstream tensor names."""

    names = ("depthwise_conv", "pointwise_conv")

    def __init__(self, cin: int, cout: int, k: int, causal: bool = False):
        super().__init__()
        setattr(self, self.names[0], nn.Conv3d(cin, cin, k, padding=(0, k // 2, k // 2), groups=cin))
        setattr(self, self.names[1], nn.Conv3d(cin, cout, 1))
        self.pad = (k - 1, 0) if causal else ((k - 1) // 2, (k - 1) // 2)

    @property
    def first(self) -> nn.Conv3d:
        return getattr(self, self.names[0])

    @property
    def pointwise_part(self) -> nn.Conv3d:
        return getattr(self, self.names[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_part(self.first(pad_time(x, *self.pad, dim=2)))

    def to_mobile(self) -> nn.Module:
        return MobileChain([TapConv2d(self.first, self.pad), TapConv2d(self.pointwise_part, (0, 0))])


def conv(cin: int, cout: int, k: int, dw: bool) -> nn.Module:
    return SeparableConv(cin, cout, k) if dw else TimeConv(cin, cout, k)


class ResnetBlock(nn.Module):
    """RMSNorm -> act -> conv -> RMSNorm -> SiLU -> conv, plus the input (through LayerNorm and a 1x1 conv of the
    same kind where the width changes, or where `shortcut` says). `make(cin, cout, k)` builds the convs."""

    def __init__(self, cin: int, cout: int, make, k: int, relu_first: bool = False, shortcut: bool | None = None):
        super().__init__()
        self.relu_first, self.channels = relu_first, (cin, cout)
        self.conv1, self.conv2 = make(cin, cout, k), make(cout, cout, k)
        shortcut = cin != cout if shortcut is None else shortcut
        self.norm3 = nn.LayerNorm(cin, eps=1e-6) if shortcut else None
        self.conv_shortcut = make(cin, cout, 1) if shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = rms_norm(x)
        h = F.relu(h) if self.relu_first else F.silu(h)
        h = self.conv2(F.silu(rms_norm(self.conv1(h))))
        if self.norm3 is not None:
            x = self.conv_shortcut(self.norm3(x.movedim(1, -1)).movedim(-1, 1))
        return h + x

    def to_mobile(self) -> nn.Module:
        return MobileResnetBlock(self)


class Upsampler(nn.Module):
    """Decoupled 3D pixel shuffle: conv to C * s_t * s * s channels, channel c * s_t + j read as sub-frame j,
    2D pixel shuffle, the first s_t - 1 frames dropped (kept for Video DC-AE)."""

    def __init__(self, channels: int, scale_t: int, trim: bool):
        super().__init__()
        self.scale_t, self.trim = scale_t, trim
        self.conv = TimeConv(channels, channels * scale_t * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = x.shape
        st = self.scale_t
        y = self.conv(x).reshape(b, -1, st, t, h, w).transpose(2, 3).reshape(b, -1, t * st, h, w)
        y = F.pixel_shuffle(y.transpose(1, 2).reshape(b * t * st, -1, h, w), 2)
        y = y.reshape(b, t * st, *y.shape[1:]).transpose(1, 2)
        return y[:, :, st - 1:] if self.trim else y

    def to_mobile(self) -> nn.Module:
        return MobileUpsampler(self)


class MidBlock(nn.Module):
    def __init__(self, resnets: list[nn.Module]):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        return x


class UpBlock(nn.Module):
    """[conv_in where the width changes] -> [upsampler] -> resnets, with the published names."""

    def __init__(self, conv_in: nn.Module | None, upsampler: nn.Module | None, resnets: list[nn.Module]):
        super().__init__()
        self.conv_in = conv_in
        self.upsamplers = nn.ModuleList([upsampler]) if upsampler is not None else None
        self.resnets = nn.ModuleList(resnets)

    def parts(self) -> list[nn.Module]:
        return [m for m in [self.conv_in, *(self.upsamplers or []), *self.resnets] if m is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.parts():
            x = m(x)
        return x


class FrameUpsampler(nn.Module):
    """Per-frame 3x3 Conv2d (C -> C) and a 2x pixel shuffle (C / 4 channels out)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame(lambda f: F.pixel_shuffle(self.conv(f), 2), x)

    def to_mobile(self) -> nn.Module:
        return MobileFrameUpsampler(self)


class LTXTrunk(nn.Module):
    """What LTX-Video-derived decoders share: conv_in -> mid_block -> up_blocks, with their published names."""

    variant: object
    conv_in: TimeConv
    mid_block: MidBlock
    up_blocks: nn.ModuleList

    def trunk(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5 or latents.shape[1] != self.variant.latent_channels:
            raise ValueError(f"{self.variant.name} takes BCTHW latents with {self.variant.latent_channels} channels, "
                             f"got shape {tuple(latents.shape)}")
        x = self.mid_block(self.conv_in(latents))
        for block in self.up_blocks:
            x = block(x)
        return x

    def trunk_blocks(self) -> list[nn.Module]:
        """The mid block's and up blocks' parts in call order (each has `to_mobile()`)."""
        return [*self.mid_block.resnets, *(m for b in self.up_blocks for m in b.parts())]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class TurboVAED(LTXTrunk):
    """The published decoder of one released config; `forward(latents BCTHW) -> frames BCTHW`."""

    def __init__(self, variant: Variant):
        super().__init__()
        self.variant = v = variant
        widths, layers, dw = v.block_out_channels[::-1], v.layers_per_block[::-1], v.is_dw_conv[::-1]
        scaling, spatial_only = v.spatio_temporal_scaling[::-1], v.spatio_only[::-1]
        self.conv_in = TimeConv(v.latent_channels, widths[0], 3)
        self.mid_block = MidBlock([self.resnet(widths[0], widths[0], dw[0]) for _ in range(layers[0])])
        self.up_blocks = nn.ModuleList()
        cin = widths[0]
        for i, cout in enumerate(widths):
            up = Upsampler(cout, 1 if spatial_only[i] else 2, not v.video_dc_ae) if scaling[i] else None
            resnets = [self.resnet(cout, cout, dw[i + 1], relu_first=scaling[i]) for _ in range(layers[i + 1])]
            self.up_blocks.append(UpBlock(self.resnet(cin, cout, dw[i + 1]) if cin != cout else None, up, resnets))
            cin = cout
        if v.patch_size >= 2:
            self.upsampler2d_1 = FrameUpsampler(cin)
            cin //= 4
        if v.patch_size >= 4:
            self.upsampler2d_2 = FrameUpsampler(cin)
            cin //= 4
        self.conv_out = TimeConv(cin, 3, 3)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.trunk(latents)
        for name in ("upsampler2d_1", "upsampler2d_2"):
            if hasattr(self, name):
                x = getattr(self, name)(F.silu(rms_norm(x)))
        return self.conv_out(F.silu(rms_norm(x)))

    def resnet(self, cin: int, cout: int, dw: bool, relu_first: bool = False) -> ResnetBlock:
        k = self.variant.dw_kernel if dw else 3
        return ResnetBlock(cin, cout, functools.partial(conv, dw=dw), k, relu_first)

    def to_mobile(self) -> MobileDecoder:
        blocks = self.trunk_blocks() + [getattr(self, n) for n in ("upsampler2d_1", "upsampler2d_2") if hasattr(self, n)]
        return MobileDecoder(self.conv_in.to_mobile(), [m.to_mobile() for m in blocks],
                             MobileRMSNorm(self.conv_out.conv.in_channels),
                             self.conv_out.to_mobile())


# ----------------------------------------------------------------------------- the exact 2D form
class MobileChain(nn.Module):
    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, t)
        return x


class MobileRMSNorm(nn.Module):
    """RMSNorm(eps 1e-8, no weight) with its channel mean as a fixed 1x1 conv (weights 1/C), which every
    mobile runtime runs as a conv rather than a slow reduction."""

    def __init__(self, channels: int):
        super().__init__()
        self.mean = nn.Conv2d(channels, 1, 1, bias=False)
        with torch.no_grad():
            self.mean.weight.fill_(1.0 / channels)

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return x * torch.rsqrt(self.mean(x * x) + 1e-8)


class MobileStandardize(nn.Module):
    """LayerNorm over channels of (N, C, H, W) without its affine (folded into the next 1x1 conv): mean and
    variance as fixed 1x1 convs (weights 1/C)."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        c = norm.normalized_shape[0]
        self.eps = norm.eps
        self.mean = nn.Conv2d(c, 1, 1, bias=False)
        with torch.no_grad():
            self.mean.weight.fill_(1.0 / c)

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        d = x - self.mean(x)
        return d * torch.rsqrt(self.mean(d * d) + self.eps)


def folded_shortcut(block: ResnetBlock) -> nn.Module:
    """The 1x1x1 shortcut conv with norm3's per-channel weight and bias folded in (exact: both are linear), so
    the mobile graph carries no elementwise affine a converter could fuse away from its weights."""
    sc = copy.deepcopy(block.conv_shortcut)
    first = sc.first
    w, b = block.norm3.weight.detach(), block.norm3.bias.detach()
    ones = [1] * (first.weight.ndim - 2)
    with torch.no_grad():
        if first.groups == 1:
            first.bias += first.weight.flatten(1) @ b
            first.weight *= w.view(1, -1, *ones)
        else:
            first.bias += first.weight.flatten() * b
            first.weight *= w.view(-1, 1, *ones)
    return sc.to_mobile()


class MobileResnetBlock(nn.Module):
    def __init__(self, block: ResnetBlock):
        super().__init__()
        self.relu_first = block.relu_first
        self.norm1, self.norm2 = MobileRMSNorm(block.channels[0]), MobileRMSNorm(block.channels[1])
        self.conv1, self.conv2 = block.conv1.to_mobile(), block.conv2.to_mobile()
        self.norm3 = MobileStandardize(block.norm3) if block.norm3 is not None else None
        self.shortcut = folded_shortcut(block) if block.norm3 is not None else None

    def forward(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, int]:
        h = self.norm1(x, t)
        h = F.relu(h) if self.relu_first else F.silu(h)
        h = self.conv2(F.silu(self.norm2(self.conv1(h, t), t)), t)
        if self.norm3 is not None:
            x = self.shortcut(self.norm3(x, t), t)
        return h + x, t


class MobileUpsampler(nn.Module):
    def __init__(self, up: Upsampler):
        super().__init__()
        self.scale_t, self.trim = up.scale_t, up.trim
        self.conv = up.conv.to_mobile()

    def forward(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, int]:
        y = self.conv(x, t)  # (B*T, C*4*s_t, h, w): channel c * s_t + j is sub-frame j of channel c
        n, _, h, w = y.shape
        st = self.scale_t
        y = y.reshape(n, -1, st, h * w).transpose(1, 2).reshape(n * st, -1, h, w)
        y = F.pixel_shuffle(y, 2)
        if not self.trim or st == 1:
            return y, t * st
        y = y.reshape(n // t, t * st, *y.shape[1:])[:, st - 1:]
        return y.reshape(-1, *y.shape[2:]), t * st - (st - 1)


class MobileFrameUpsampler(nn.Module):
    def __init__(self, up: FrameUpsampler):
        super().__init__()
        self.norm = MobileRMSNorm(up.conv.in_channels)
        self.conv = up.conv

    def forward(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, int]:
        return F.pixel_shuffle(self.conv(F.silu(self.norm(x, t))), 2), t


class MobileDecoder(nn.Module):
    """A decoder in 2D ops only, the same weights: frames folded into the batch; (B, C, T, h, w) in,
    (B, 3, T', H, W) out. `patch` > 1: conv_out's rows are already in pixel-shuffle order."""

    def __init__(self, conv_in: nn.Module, blocks: list[nn.Module], norm_out: nn.Module, conv_out: nn.Module,
                 patch: int = 1):
        super().__init__()
        self.conv_in, self.blocks, self.norm_out, self.conv_out = conv_in, nn.ModuleList(blocks), norm_out, conv_out
        self.patch = patch

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = latents.shape
        x = self.conv_in(latents.transpose(1, 2).reshape(b * t, c, h, w), t)
        for block in self.blocks:
            x, t = block(x, t)
        x = self.conv_out(F.silu(self.norm_out(x, t)), t)
        x = F.pixel_shuffle(x, self.patch) if self.patch > 1 else x
        return x.reshape(b, t, *x.shape[1:]).transpose(1, 2)
