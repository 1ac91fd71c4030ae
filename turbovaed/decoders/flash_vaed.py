"""Flash-VAED's Wan 2.1 student (Aoko955/Flash-VAED, ICML 2026), written from the published definition
(`models/wan/model_hybrid_aggressive.py`, its `WanVAE` wrapper and `infer.py`): facts carry over (layer order,
tensor names, norms, causal zero padding, the first-frame rule of the time upsamplers, the latent statistics),
the code is ours.

The published decoder is Wan 2.1's, pruned and partly 2D: a 1x1x1 `conv2` on the latents, then `decoder`: a
causal 3x3x3 conv (16 -> 384), a middle of [residual block, per-frame spatial self-attention, residual block],
six residual blocks with two causal time+space upsamplers among them, then per-frame 2D residual blocks around
a 2D upsampler, and a head (RMS norm, SiLU, causal 3x3x3 conv to RGB). A residual block at latent resolution is
RMS norm -> SiLU -> causal depthwise-separable 3x3x3 conv, twice, plus a (depthwise-separable 1x1x1) shortcut.
Every temporal conv is causal with zero padding in front (two frames for kernel 3). A time upsampler passes the
first latent frame's features through unchanged and, from the second frame on, doubles frames with a causal
(3, 1, 1) conv to 2C channels read as two sub-frames; each upsampler then scales space 2x (nearest) and
convolves per frame. T latent frames decode to 4T - 3 frames.

The published wrapper decodes one latent frame per call with a cache of each causal conv's last two input
frames; `FlashVAED.forward` is the same computation over the whole clip at once (equal, tested), and
`FlashVAEDStep` is that per-frame decode with the caches as explicit state for one static graph. The
wrapper takes normalised latents (z - mean) / std and multiplies them back by Wan 2.1's published
statistics; turbovaed's graphs take raw latents (the statistics are known, so `--normalized` and
`input_latents = "normalized"` convert). The wrapper also drops its cache after latent frame 20 (81 frames),
restarting the stream there; turbovaed decodes any length as one stream (identical up to 21 latent frames)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from turbovaed.decoders.stepping import StepStream

# Wan 2.1's latent statistics, as Flash-VAED's wrapper (and Wan) publish them
WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632,
              -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382,
             1.1253, 2.8251, 1.9160)


class FirstFrameRule:
    """A variant's frame rule where time is upscaled t_upscale x and the first t_upscale - 1 frames dropped (one
    frame from the first latent frame): T latent frames decode to t_upscale * T - t_upscale + 1."""

    @property
    def frames_to_trim(self) -> int:
        return self.t_upscale - 1

    def output_frames(self, latent_frames: int) -> int:
        return latent_frames * self.t_upscale - self.frames_to_trim

    @property
    def frame_rule(self) -> str:
        return f"T latent frames -> {self.t_upscale}T - {self.frames_to_trim} frames"

    def to_dict(self) -> dict:
        return {**asdict(self), "frames_to_trim": self.frames_to_trim}


@dataclass(frozen=True)
class Variant(FirstFrameRule):
    name: str
    latent_channels: int
    vae: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    spatial_ratio: int = 8
    t_upscale: int = 4
    params_published: float = 0.0  # the paper and README state none
    # measured with trained-like random weights: 8-bit activations break its attention (ONNX W8A8 26 dB, ExecuTorch
    # W8A8 fails to load, LiteRT refuses the quantized transposes), even with the attention kept float
    int8_activations: bool = False

    @property
    def convention(self) -> str:
        return (f"raw {self.vae} VAE latents, BCTHW (the published wrapper takes normalised ones, (z - mean) / std, "
                f"and de-normalises with {self.vae}'s published statistics, which turbovaed carries: --normalized "
                "converts)")


VARIANTS = {v.name: v for v in (Variant("flash-vaed-wan2_1", 16, "Wan 2.1", WAN21_MEAN, WAN21_STD),)}
CACHE = 2  # frames of past input a causal kernel-3 conv sees


class Stream:
    """Explicit state of a per-frame decode: each causal conv's last two input frames, consumed and produced
    in call order. `first` (a (1,) float, 1 on a stream's first call) selects by exact 0/1 blends what the
    published per-frame decode does on its first latent frame, so one static graph serves every call: on that
    call an upsampler passes its single frame through (here: repeated to the usual count, only sub-frame 0
    counting), so layers after it keep [0, their sub-frame-0 input] and the upsamplers' own convs keep zeros."""

    def __init__(self, states: list[torch.Tensor], first: torch.Tensor):
        self.states, self.first, self.out = list(states), first, []

    def pad(self, x: torch.Tensor, dim: int, keep_zeros_first: bool = False) -> torch.Tensor:
        prev = self.states[len(self.out)]  # zeros on a stream's first call (the protocol), so no zeros are made here
        padded = torch.cat([prev, x], dim)
        generic = padded.narrow(dim, padded.shape[dim] - CACHE, CACHE)
        on_first = prev if keep_zeros_first else torch.cat([prev.narrow(dim, 0, 1), x.narrow(dim, 0, 1)], dim)
        self.out.append(self.first * on_first + (1 - self.first) * generic)
        return padded


def rms_norm(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Wan's RMS_norm: x / ||x|| over channels * sqrt(C) * gamma (no mean, eps 1e-12 on the norm)."""
    return F.normalize(x, dim=1) * x.shape[1] ** 0.5 * gamma


class RMSNorm(nn.Module):
    def __init__(self, dim: int, images: bool):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.gamma)


class CausalConv3d(nn.Conv3d):
    """Conv3d with zero padding: spatial k // 2 each side, time k - 1 frames in front (or the stream's state)."""

    def __init__(self, cin: int, cout: int, kernel, groups: int = 1):
        super().__init__(cin, cout, kernel, groups=groups)

    def forward(self, x: torch.Tensor, stream: Stream | None = None, keep_zeros_first: bool = False) -> torch.Tensor:
        kt, kh, kw = self.kernel_size
        if kt > 1:
            x = stream.pad(x, 2, keep_zeros_first) if stream is not None else F.pad(x, (0, 0, 0, 0, kt - 1, 0))
        return super().forward(F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2)))


class SeparableConv3d(nn.Module):
    """Causal depthwise k x k x k conv (with bias), then a pointwise 1x1x1 conv."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.depthwise_conv = CausalConv3d(cin, cin, k, groups=cin)
        self.pointwise_conv = nn.Conv3d(cin, cout, 1)

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x, stream))


class ResidualBlockFast(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.residual = nn.Sequential(RMSNorm(cin, False), nn.SiLU(), SeparableConv3d(cin, cout, 3),
                                      RMSNorm(cout, False), nn.SiLU(), nn.Dropout(0.0), SeparableConv3d(cout, cout, 3))
        self.shortcut = SeparableConv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        h = x
        for layer in self.residual:
            h = layer(h, stream) if isinstance(layer, SeparableConv3d) else layer(h)
        return self.shortcut(x) + h


def per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class AttentionBlock(nn.Module):
    """Single-head self-attention over one frame's pixels (applied per frame)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    @staticmethod
    def attention_macs(x: torch.Tensor) -> int:
        """QK^T and AV over one frame's h*w pixels, for every frame (what conv counts miss)."""
        n, c, h, w = x.shape
        return 2 * n * (h * w) ** 2 * c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = (t.reshape(n, c, h * w).transpose(1, 2) for t in self.to_qkv(self.norm(x)).chunk(3, dim=1))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, c, h, w)
        return self.proj(out) + x


class ResidualBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.residual = nn.Sequential(RMSNorm(cin, True), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                      RMSNorm(cout, True), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1))
        self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class Resample(nn.Module):
    """2x nearest upsample and a 3x3 conv per frame; '3d' first doubles frames from the second latent frame on."""

    def __init__(self, cin: int, cout: int, time: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))
        self.time_conv = CausalConv3d(cin, cin * 2, (3, 1, 1)) if time else None

    def split(self, y: torch.Tensor) -> torch.Tensor:
        """(B, 2C, T, H, W) -> (B, C, 2T, H, W): channels [0, C) are sub-frame 0, [C, 2C) sub-frame 1."""
        b, c2, t, h, w = y.shape
        return y.reshape(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        if self.time_conv is not None:
            if stream is None:  # whole clip: the first frame passes, the rest double (never seeing the first)
                rest = x[:, :, 1:]
                x = torch.cat([x[:, :, :1], self.split(self.time_conv(rest))], 2) if rest.shape[2] else x
            else:
                doubled = self.split(self.time_conv(x, stream, keep_zeros_first=True))
                x = stream.first * torch.cat([x, x], 2) + (1 - stream.first) * doubled
        return per_frame(self.resample, x)


class HybridDecoder3d(nn.Module):
    def __init__(self, z: int = 16):
        super().__init__()
        self.conv1 = CausalConv3d(z, 384, 3)
        self.middle = nn.ModuleList([ResidualBlockFast(384, 384), AttentionBlock(384), ResidualBlockFast(384, 384)])
        self.upsamples = nn.ModuleList([
            ResidualBlockFast(384, 384), ResidualBlockFast(384, 384), ResidualBlockFast(384, 384),
            Resample(384, 192, True),
            ResidualBlockFast(192, 384), ResidualBlockFast(384, 384), ResidualBlockFast(384, 384),
            Resample(384, 24, True),
            ResidualBlock2D(24, 24), ResidualBlock2D(24, 24), ResidualBlock2D(24, 24),
            Resample(24, 12, False),
            ResidualBlock2D(12, 12), ResidualBlock2D(12, 12), ResidualBlock2D(12, 12)])
        self.head = nn.ModuleList([RMSNorm(12, False), nn.SiLU(), CausalConv3d(12, 3, 3)])

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        x = self.middle[0](self.conv1(x, stream), stream)
        x = self.middle[2](per_frame(self.middle[1], x), stream)
        for layer in self.upsamples:
            x = per_frame(layer, x) if isinstance(layer, ResidualBlock2D) else layer(x, stream)
        return self.head[2](F.silu(self.head[0](x)), stream)


class FlashVAED(nn.Module):
    """The published Wan 2.1 student (tensor names as `WanVAE_` holds them); forward(raw latents BCTHW) ->
    frames BCTHW in [-1, 1] (unclamped; the wrapper clamps)."""

    def __init__(self, variant: Variant):
        super().__init__()
        self.variant = variant
        self.conv2 = nn.Conv3d(variant.latent_channels, variant.latent_channels, 1)
        self.decoder = HybridDecoder3d(variant.latent_channels)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5 or latents.shape[1] != self.variant.latent_channels:
            raise ValueError(f"{self.variant.name} takes BCTHW latents with {self.variant.latent_channels} channels, "
                             f"got shape {tuple(latents.shape)}")
        return self.decode(latents)

    def decode(self, latents: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        return self.decoder(self.conv2(latents), stream)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def to_mobile(self) -> MobileFlashVAED:
        return MobileFlashVAED(self)


class FlashVAEDStep(nn.Module):
    """One latent frame per call, the causal caches as explicit state: forward(latent (B, C, 1, h, w), first (1,),
    *states) -> (frames (B, 3, 4, H, W), *new states). Start a stream with `first` = 1 and zero states
    (`initial_states`); on that call only the first of the 4 frames is a frame of the video, and it is
    returned as the last of the four, so a stream drops its first 3 frames (like TAEHV's). Equal to the whole-clip
    forward; one static graph for every call."""

    def __init__(self, model: FlashVAED | MobileFlashVAED):
        super().__init__()
        self.net = model
        self.variant = model.variant
        self.frames_to_trim = model.variant.frames_to_trim
        self.takes_first = True

    def forward(self, latent: torch.Tensor, first: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stream = Stream(list(states), first)
        y = self.net.decode(latent, stream)
        # the first call's one frame goes last, where the stream keeps it (the first 3 are dropped)
        y = torch.cat([y[:, :, :-1], first * y[:, :, :1] + (1 - first) * y[:, :, -1:]], 2)
        return (y, *stream.out)

    @torch.no_grad()
    def initial_states(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """Zero states of the right shapes for this latent size (from a dry run that records them)."""
        shapes: list[torch.Size] = []

        class Recorder(Stream):
            def pad(self, x, dim, keep_zeros_first=False):
                shapes.append(x.narrow(dim, 0, 1).expand(*x.shape[:dim], CACHE, *x.shape[dim + 1:]).shape)
                self.states.append(torch.zeros(shapes[-1], dtype=x.dtype))
                return super().pad(x, dim, keep_zeros_first)

        self.net.decode(latent[:, :, :1], Recorder([], torch.ones(1)))
        return [torch.zeros(s) for s in shapes]

    def stream(self, latents: torch.Tensor, run=None) -> torch.Tensor:
        """(B, C, T, h, w) latents one frame per call through `run` (default: this module; or an exported
        artifact's runner with the same I/O), trimmed as published: (B, 3, 4T - 3, H, W)."""
        return StepStream(self, run)(latents)


# ----------------------------------------------------------------------------- the exact 2D form
class MobileRMSNorm(nn.Module):
    """rms_norm with the channel mean of squares as a fixed 1x1 conv (weights 1/C): x * rsqrt(max(mean(x^2),
    1e-24 / C)) * gamma equals x / max(||x||, 1e-12) * sqrt(C) * gamma."""

    def __init__(self, norm: RMSNorm):
        super().__init__()
        c = norm.gamma.shape[0]
        self.floor = 1e-24 / c
        self.gamma = nn.Parameter(norm.gamma.detach().clone().reshape(1, c, 1, 1))
        self.mean = nn.Conv2d(c, 1, 1, bias=False)
        with torch.no_grad():
            self.mean.weight.fill_(1.0 / c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.clamp_min(self.mean(x * x), self.floor)) * self.gamma


def conv2d_of(conv: nn.Conv3d, tap: int = 0, padding: bool = True) -> nn.Conv2d:
    """One temporal tap of a Conv3d as a Conv2d (the bias on the last tap only)."""
    kt, kh, kw = conv.kernel_size
    has_bias = conv.bias is not None and tap == kt - 1
    out = nn.Conv2d(conv.in_channels, conv.out_channels, (kh, kw), padding=(kh // 2, kw // 2) if padding else 0,
                    groups=conv.groups, bias=has_bias)
    with torch.no_grad():
        out.weight.copy_(conv.weight[:, :, tap])
        if has_bias:
            out.bias.copy_(conv.bias)
    return out


def add(tensors) -> torch.Tensor:
    """The sum of tensors without Python's leading 0 (which exports as an alias some converters refuse)."""
    it = iter(tensors)
    out = next(it)
    for t in it:
        out = out + t
    return out


class CausalTaps(nn.Module):
    """A causal Conv3d over frames folded into the batch: one Conv2d per temporal tap, the taps summed. Over a
    whole clip the zero frames in front contribute nothing, so the first k - 1 output frames sum only the taps
    that see real frames (no zero tensor is built); in a stream the state frames go in front."""

    def __init__(self, conv: CausalConv3d):
        super().__init__()
        self.taps = nn.ModuleList(conv2d_of(conv, j) for j in range(conv.kernel_size[0]))

    def forward(self, x: torch.Tensor, t: int, stream: Stream | None = None, keep_zeros_first: bool = False
                ) -> torch.Tensor:
        k = len(self.taps)
        if k == 1 or (t == 1 and stream is None):  # one frame of a clip: only the last tap sees a real frame
            return self.taps[-1](x)
        n, c, h, w = x.shape
        frames = x.reshape(n // t, t, c, h, w)
        if stream is not None:
            frames = stream.pad(frames, 1, keep_zeros_first)
            return add(self.tap(j, frames, j, j + t) for j in range(k)).reshape(n, -1, h, w)
        parts = [add(self.tap(j, frames, i - k + 1 + j, i - k + 2 + j) for j in range(k - 1 - i, k))
                 for i in range(min(t, k - 1))]
        if t > k - 1:
            parts.append(add(self.tap(j, frames, j, j + t - k + 1) for j in range(k)))
        return (torch.cat(parts, 1) if len(parts) > 1 else parts[0]).reshape(n, -1, h, w)

    def tap(self, j: int, frames: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Tap j over frames [lo, hi) of (B, T, C, H, W), as (B, hi - lo, C', H, W)."""
        b, _, c, h, w = frames.shape
        y = self.taps[j](frames[:, lo:hi].reshape(b * (hi - lo), c, h, w))
        return y.reshape(b, hi - lo, *y.shape[1:])


class MobileSeparable(nn.Module):
    def __init__(self, conv: SeparableConv3d):
        super().__init__()
        self.depthwise = CausalTaps(conv.depthwise_conv)
        self.pointwise = conv2d_of(conv.pointwise_conv)

    def forward(self, x: torch.Tensor, t: int, stream: Stream | None = None) -> torch.Tensor:
        return self.pointwise(self.depthwise(x, t, stream))


class MobileResidualBlockFast(nn.Module):
    def __init__(self, block: ResidualBlockFast):
        super().__init__()
        r = block.residual
        self.norm1, self.conv1, self.norm2, self.conv2 = (MobileRMSNorm(r[0]), MobileSeparable(r[2]),
                                                          MobileRMSNorm(r[3]), MobileSeparable(r[6]))
        self.shortcut = MobileSeparable(block.shortcut) if isinstance(block.shortcut, SeparableConv3d) else None

    def forward(self, x: torch.Tensor, t: int, stream: Stream | None = None) -> tuple[torch.Tensor, int]:
        h = self.conv1(F.silu(self.norm1(x)), t, stream)
        h = self.conv2(F.silu(self.norm2(h)), t, stream)
        return (x if self.shortcut is None else self.shortcut(x, t)) + h, t


class MobileAttention(nn.Module):
    """Attention as two batched matmuls and a softmax (what every mobile runtime runs), the 1/sqrt(C) scale
    folded into the query rows of to_qkv."""

    def __init__(self, block: AttentionBlock):
        super().__init__()
        c = block.proj.in_channels
        self.norm, self.proj = MobileRMSNorm(block.norm), block.proj
        self.to_qkv = nn.Conv2d(c, 3 * c, 1)
        with torch.no_grad():
            scale = torch.ones(3 * c, 1, 1, 1)
            scale[:c] = c ** -0.5
            self.to_qkv.weight.copy_(block.to_qkv.weight * scale)
            self.to_qkv.bias.copy_(block.to_qkv.bias * scale.flatten())

    attention_macs = staticmethod(AttentionBlock.attention_macs)

    def forward(self, x: torch.Tensor, t: int, stream: Stream | None = None) -> tuple[torch.Tensor, int]:
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x))
        q, k, v = (qkv[:, i * c:(i + 1) * c].reshape(n, c, h * w) for i in range(3))
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # (n, hw, hw)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(n, c, h, w)
        return self.proj(out) + x, t


class MobileResidualBlock2D(nn.Module):
    def __init__(self, block: ResidualBlock2D):
        super().__init__()
        r = block.residual
        self.norm1, self.conv1, self.norm2, self.conv2 = MobileRMSNorm(r[0]), r[2], MobileRMSNorm(r[3]), r[6]
        self.shortcut = block.shortcut

    def forward(self, x: torch.Tensor, t: int, stream: Stream | None = None) -> tuple[torch.Tensor, int]:
        return self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x)))))) + self.shortcut(x), t


class MobileResample(nn.Module):
    """Nearest 2x upsampling as a grouped 1x1 conv of ones (each channel to 4 copies) and a depth-to-space:
    exact, and ops every delegate takes (a resize or a cat of one tensor with itself falls back)."""

    def __init__(self, block: Resample):
        super().__init__()
        self.conv = block.resample[1]
        self.time = CausalTaps(block.time_conv) if block.time_conv is not None else None
        self.register_buffer("ones", torch.ones(4 * self.conv.in_channels, 1, 1, 1), persistent=False)

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(F.conv2d(x, self.ones, groups=x.shape[1]), 2)

    def forward(self, x: torch.Tensor, t: int, stream: Stream | None = None) -> tuple[torch.Tensor, int]:
        if self.time is not None:
            n, c, h, w = x.shape
            frames = x.reshape(n // t, t, c, h, w)
            if stream is None and t > 1:  # the first frame passes; the others double (sub-frame 0 = channels [0, C))
                doubled = self.time(frames[:, 1:].reshape(-1, c, h, w), t - 1).reshape(n // t, 2 * (t - 1), c, h, w)
                x, t = torch.cat([frames[:, :1], doubled], 1).reshape(-1, c, h, w), 2 * t - 1
            elif stream is not None:  # on a first call sub-frame 0 is the input frame (sub-frame 1 is never used)
                doubled = self.time(x, t, stream, keep_zeros_first=True).reshape(n, 2, c, h, w)
                sub0 = stream.first * x.reshape(n, 1, c, h, w) + (1 - stream.first) * doubled[:, :1]
                x, t = torch.cat([sub0, doubled[:, 1:]], 1).reshape(n * 2, c, h, w), 2 * t
        return self.conv(self.upsample(x)), t


class MobileFlashVAED(nn.Module):
    """The published decoder in 2D ops only (frames folded into the batch), the same weights; forward(raw
    latents BCTHW) -> frames BCTHW; `decode(latents, stream)` is also the step graph's body."""

    def __init__(self, ref: FlashVAED):
        super().__init__()
        self.variant = ref.variant
        d = ref.decoder
        self.conv2 = conv2d_of(ref.conv2)
        self.conv1 = CausalTaps(d.conv1)
        kinds = {ResidualBlockFast: MobileResidualBlockFast, AttentionBlock: MobileAttention,
                 ResidualBlock2D: MobileResidualBlock2D, Resample: MobileResample}
        self.blocks = nn.ModuleList(kinds[type(m)](m) for m in [*d.middle, *d.upsamples])
        self.norm_out, self.conv_out = MobileRMSNorm(d.head[0]), CausalTaps(d.head[2])

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode(latents)

    @torch.no_grad()
    def fold_denormalization(self, norm) -> None:
        """Take normalised latents: raw = z * std + mean folded into the 1x1 `conv2` (exact: both are linear)."""
        std = torch.tensor(norm.std, dtype=self.conv2.weight.dtype)
        mean = torch.tensor(norm.mean, dtype=self.conv2.weight.dtype)
        w = self.conv2.weight  # (C, C, 1, 1)
        self.conv2.bias += w.flatten(1) @ mean
        w *= std.view(1, -1, 1, 1)

    def decode(self, latents: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        b, c, t, h, w = latents.shape
        x = self.conv1(self.conv2(latents.transpose(1, 2).reshape(b * t, c, h, w)), t, stream)
        for block in self.blocks:
            x, t = block(x, t, stream)
        x = self.conv_out(F.silu(self.norm_out(x)), t, stream)
        return x.reshape(b, t, *x.shape[1:]).transpose(1, 2)
