"""Student building blocks, each in two forms over one set of weights.

`reference` blocks use nn.Conv3d on (B, C, T, H, W) tensors: readable, fast to train on a GPU.
`mobile` blocks (built by `.to_mobile()`) do the same arithmetic with 2D ops only, because no
mobile runtime runs Conv3d well (XNNPACK has none, Core ML caps rank at 5, LiteRT cannot convert
depthwise Conv3d). Mobile activations are (B*T, C, H, W) with frames folded into the batch; the
frame count `t` travels alongside as a Python int, so every traced shape is static. Each temporal
tap of a Conv3d becomes one Conv2d and the taps are summed. Every tensor stays rank <= 5, squares
are written `x * x`, and temporal padding is done with `cat`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PADDING_MODES = ("causal", "replicate")


def pad_time(x: torch.Tensor, front: int, back: int, dim: int) -> torch.Tensor:
    """Pad the frame axis by repeating edge frames (with `cat`, which every exporter lowers)."""
    if front == 0 and back == 0:
        return x
    first = x.narrow(dim, 0, 1)
    last = x.narrow(dim, x.shape[dim] - 1, 1)
    return torch.cat([first] * front + [x] + [last] * back, dim=dim)


class TimeCache:
    """Streaming state for one decode step: the last k_t - 1 input frames of every causal temporal conv.

    States are consumed and produced in call order, one per temporal conv. `states=None` starts a stream
    (the front padding is first-frame replicas, as in whole-clip decoding). Exported step graphs always
    take states and a (1,) float `first` flag instead: 1 on the first chunk selects the replicas, 0 the
    carried frames (an exact blend), so one static graph serves every chunk."""

    def __init__(self, states: list[torch.Tensor] | None = None, first: torch.Tensor | None = None) -> None:
        self.states = states
        self.first = first
        self.out: list[torch.Tensor] = []

    def pad(self, x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
        """x with n frames in front along `dim`; records the new state (the last n frames)."""
        if self.states is None:
            padded = pad_time(x, n, 0, dim)
        else:
            # the cache owns its list: dropping each state once used frees it while the step still runs
            prev, self.states[len(self.out)] = self.states[len(self.out)], None
            if self.first is not None:
                prev = self.first * torch.cat([x.narrow(dim, 0, 1)] * n, dim=dim) + (1 - self.first) * prev
            padded = torch.cat([prev, x], dim=dim)
        src = x if x.shape[dim] >= n else padded
        state = src.narrow(dim, src.shape[dim] - n, n)
        if self.first is None and state.untyped_storage().nbytes() > state.numel() * state.element_size():
            # eager streaming: a view would keep a whole activation alive until the next step (about 1 GB
            # at 720p), so keep a copy unless the state is all of x (then x itself, free). Exported graphs
            # (which always pass `first`) return their states as graph outputs.
            state = state.clone()
        self.out.append(state)
        return padded


def time_padding(kernel_t: int, mode: str) -> tuple[int, int]:
    """Frames to add before/after so a temporal conv keeps the frame count."""
    if mode == "causal":
        return kernel_t - 1, 0
    return (kernel_t - 1) // 2, kernel_t // 2


class RMSNorm(nn.Module):
    """RMS norm over channels (dim 1); the same code serves 4-D mobile and 5-D reference tensors."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt((x * x).mean(dim=1, keepdim=True) + self.eps)
        return x * scale * self.weight.view([1, -1] + [1] * (x.dim() - 2))

    def to_mobile(self, linear_pointwise: bool = False) -> MobileRMSNorm:
        return MobileRMSNorm(self)


class MobileRMSNorm(nn.Module):
    """RMSNorm whose channel mean is a fixed 1x1 conv (weights 1/C): XNNPACK, Core ML and LiteRT all
    run convs, while a mean over the channel axis falls back to slow portable kernels. ONNX Runtime's ReduceMean was 0.96x
    of the conv over a whole decoder but not faster in every quarter of the run (benchmarks/rmsnorm_mean.py), so
    every backend gets the conv."""

    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        c = norm.weight.numel()
        self.eps = norm.eps
        self.weight = nn.Parameter(norm.weight.detach().clone().view(1, c, 1, 1))
        self.mean = nn.Conv2d(c, 1, 1, bias=False)
        with torch.no_grad():
            self.mean.weight.fill_(1.0 / c)

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return x * torch.rsqrt(self.mean(x * x) + self.eps) * self.weight


class Conv3d(nn.Module):
    """Conv3d with explicit temporal padding (causal or replicate); spatial padding is zeros."""

    def __init__(self, cin: int, cout: int, kernel_t: int, kernel_s: int, groups: int = 1,
                 padding: str = "causal", bias: bool = True) -> None:
        super().__init__()
        self.pad = time_padding(kernel_t, padding)
        self.conv = nn.Conv3d(cin, cout, (kernel_t, kernel_s, kernel_s),
                              padding=(0, kernel_s // 2, kernel_s // 2), groups=groups, bias=bias)

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        if cache is not None and self.pad[0]:
            return self.conv(cache.pad(x, self.pad[0], dim=2))
        return self.conv(pad_time(x, *self.pad, dim=2))

    def to_mobile(self, linear_pointwise: bool = False) -> nn.Module:
        kt, kh, kw = self.conv.kernel_size
        if linear_pointwise and kt == kh == kw == 1 and self.conv.groups == 1:
            return PointwiseLinear(self.conv)
        return TapConv2d(self.conv, self.pad)


class TapConv2d(nn.Module):
    """Mobile Conv3d: one Conv2d per temporal tap over frames folded into the batch, taps summed."""

    def __init__(self, conv: nn.Conv3d, pad: tuple[int, int]) -> None:
        super().__init__()
        kt, k, _ = conv.kernel_size
        self.pad = pad
        self.taps = nn.ModuleList()
        for j in range(kt):
            has_bias = conv.bias is not None and j == kt - 1
            tap = nn.Conv2d(conv.in_channels, conv.out_channels, k, padding=k // 2,
                            groups=conv.groups, bias=has_bias)
            with torch.no_grad():
                tap.weight.copy_(conv.weight[:, :, j])
                if has_bias:
                    tap.bias.copy_(conv.bias)
            self.taps.append(tap)

    def forward(self, x: torch.Tensor, t: int, cache: TimeCache | None = None) -> torch.Tensor:
        if len(self.taps) == 1:
            return self.taps[0](x)
        n, c, h, w = x.shape
        frames = x.reshape(n // t, t, c, h, w)
        frames = cache.pad(frames, self.pad[0], dim=1) if cache is not None else pad_time(frames, *self.pad, dim=1)
        out = self.taps[0](frames[:, 0:t].reshape(n, c, h, w))
        for j in range(1, len(self.taps)):
            out = out + self.taps[j](frames[:, j:j + t].reshape(n, c, h, w))
        return out


class PointwiseLinear(nn.Module):
    """Mobile 1x1x1 conv as nn.Linear on channels-last pixels (what weight-only int4 quantizers take).
    The bias stays outside the Linear (XNNPACK's int4 linear takes no float bias) and the Linear sees a
    2-D (pixels, C) matrix (XNNPACK fails to build a 4-D transpose fed by dynamically quantized data)."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        self.linear = nn.Linear(conv.in_channels, conv.out_channels, bias=False)
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None
        with torch.no_grad():
            self.linear.weight.copy_(conv.weight.flatten(1))

    def forward(self, x: torch.Tensor, t: int, cache: TimeCache | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.linear(x.permute(0, 2, 3, 1).reshape(n * h * w, c))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)


class SeparableConv3d(nn.Module):
    """Depthwise k_t x k x k conv, then pointwise 1x1x1: the cheap conv Turbo-VAED uses at low resolution."""

    def __init__(self, cin: int, cout: int, kernel_t: int, kernel_s: int, padding: str) -> None:
        super().__init__()
        self.depthwise = Conv3d(cin, cin, kernel_t, kernel_s, groups=cin, padding=padding, bias=False)
        self.pointwise = Conv3d(cin, cout, 1, 1, padding=padding)

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        return self.pointwise(self.depthwise(x, cache))

    def to_mobile(self, linear_pointwise: bool = False) -> nn.Module:
        return MobileSeq([self.depthwise.to_mobile(), self.pointwise.to_mobile(linear_pointwise)])


class MobileSeq(nn.Module):
    """Runs mobile layers in order; every mobile layer takes (x, t)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, t: int, cache: TimeCache | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, t, cache)
        return x


def make_conv(cin: int, cout: int, dense: bool, kernel_t: int, kernel_s: int, padding: str) -> nn.Module:
    if dense:
        return Conv3d(cin, cout, kernel_t, kernel_s, padding=padding)
    return SeparableConv3d(cin, cout, kernel_t, kernel_s, padding)


class ResBlock(nn.Module):
    """RMSNorm -> SiLU -> conv -> RMSNorm -> SiLU -> conv, plus skip (Turbo-VAED's block, no GroupNorm)."""

    def __init__(self, channels: int, dense: bool, kernel_t: int, kernel_s: int, padding: str,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = RMSNorm(channels, eps)
        self.conv1 = make_conv(channels, channels, dense, kernel_t, kernel_s, padding)
        self.norm2 = RMSNorm(channels, eps)
        self.conv2 = make_conv(channels, channels, dense, kernel_t, kernel_s, padding)

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        return x + self.conv2(F.silu(self.norm2(h)), cache)

    def to_mobile(self, linear_pointwise: bool = False) -> MobileResBlock:
        return MobileResBlock(self, linear_pointwise)


class MobileResBlock(nn.Module):
    def __init__(self, block: ResBlock, linear_pointwise: bool) -> None:
        super().__init__()
        self.norm1, self.norm2 = block.norm1.to_mobile(), block.norm2.to_mobile()
        self.conv1 = block.conv1.to_mobile(linear_pointwise)
        self.conv2 = block.conv2.to_mobile(linear_pointwise)

    def forward(self, x: torch.Tensor, t: int, cache: TimeCache | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, t)), t, cache)
        return x + self.conv2(F.silu(self.norm2(h, t)), t, cache)


class PixelShuffle3d(nn.Module):
    """Decoupled 3D pixel shuffle: a low-resolution conv to C*s_t*s*s channels, the temporal split by
    reshape, the spatial split by 2D pixel_shuffle. Channel layout (s_t, C, s, s): sub-frame j of
    input frame i becomes output frame i*s_t + j in both forms."""

    def __init__(self, cin: int, cout: int, scale_t: int, scale_s: int, dense: bool, kernel_t: int,
                 kernel_s: int, padding: str) -> None:
        super().__init__()
        self.cout, self.scale_t, self.scale_s = cout, scale_t, scale_s
        self.conv = make_conv(cin, cout * scale_t * scale_s * scale_s, dense, kernel_t, kernel_s, padding)

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        y = self.conv(x, cache)
        b, _, t, h, w = y.shape
        cs = self.cout * self.scale_s * self.scale_s
        y = y.reshape(b, self.scale_t, cs, t, h * w).permute(0, 2, 3, 1, 4)
        t = t * self.scale_t
        if self.scale_s == 1:
            return y.reshape(b, cs, t, h, w)
        y = y.reshape(b, cs, t, h, w).transpose(1, 2).reshape(b * t, cs, h, w)
        y = F.pixel_shuffle(y, self.scale_s)
        return y.reshape(b, t, self.cout, h * self.scale_s, w * self.scale_s).transpose(1, 2)

    def to_mobile(self, linear_pointwise: bool = False) -> MobilePixelShuffle3d:
        return MobilePixelShuffle3d(self, linear_pointwise)


class MobilePixelShuffle3d(nn.Module):
    def __init__(self, up: PixelShuffle3d, linear_pointwise: bool) -> None:
        super().__init__()
        self.cout, self.scale_t, self.scale_s = up.cout, up.scale_t, up.scale_s
        self.conv = up.conv.to_mobile(linear_pointwise)

    def forward(self, x: torch.Tensor, t: int, cache: TimeCache | None = None) -> torch.Tensor:
        y = self.conv(x, t, cache)
        n, _, h, w = y.shape
        # (B*T, s_t*C', H, W) -> (B*T*s_t, C', H, W) is a plain reshape: frame order is (i, j).
        y = y.reshape(n * self.scale_t, self.cout * self.scale_s * self.scale_s, h, w)
        return F.pixel_shuffle(y, self.scale_s) if self.scale_s > 1 else y


class MemBlock(nn.Module):
    """x + conv2(ReLU(conv1(cat(x, neighbour frame)))): TAEHV's memory idea in a residual block with no norm.

    Built for phone NPUs, which pay for every pass over an activation: the temporal mix is one conv over a
    channel concatenation (not a conv per temporal tap plus adds), both convs are plain 2D with a ReLU that
    fusing runtimes run inside the conv (Backend.fusion), and there is no norm. The neighbour is the previous
    frame (causal, the first frame is its own) or the next one (replicate padding, the last frame is its own)."""

    def __init__(self, channels: int, kernel_s: int, padding: str) -> None:
        super().__init__()
        self.pad = time_padding(2, padding)
        k = (1, kernel_s, kernel_s)
        self.conv1 = nn.Conv3d(2 * channels, channels, k, padding=(0, kernel_s // 2, kernel_s // 2))
        self.conv2 = nn.Conv3d(channels, channels, k, padding=(0, kernel_s // 2, kernel_s // 2))

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        padded = cache.pad(x, 1, dim=2) if cache is not None and self.pad[0] else pad_time(x, *self.pad, dim=2)
        neighbour = padded.narrow(2, self.pad[1], x.shape[2])
        return x + self.conv2(F.relu(self.conv1(torch.cat([x, neighbour], dim=1))))

    def to_mobile(self, linear_pointwise: bool = False) -> MobileMemBlock:
        return MobileMemBlock(self)


class MobileMemBlock(nn.Module):
    """MemBlock on frames folded into the batch: the neighbour frame by a reshape and a one-frame shift."""

    def __init__(self, block: MemBlock) -> None:
        super().__init__()
        self.pad = block.pad
        self.conv1, self.conv2 = (conv2d_of(c) for c in (block.conv1, block.conv2))
        self.act = nn.ReLU()  # a module, so estimates see it (fused into conv1 where the runtime does)

    def forward(self, x: torch.Tensor, t: int, cache: TimeCache | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        # one clip (every exported graph): the frames are the batch axis, so the shift stays 4-D (a 5-D
        # detour makes LiteRT's layout pass fail on int8 graphs and costs ONNX Runtime layout reorders)
        frames, dim = (x, 0) if n == t else (x.reshape(n // t, t, c, h, w), 1)
        frames = cache.pad(frames, 1, dim) if cache is not None and self.pad[0] else pad_time(frames, *self.pad, dim)
        neighbour = frames.narrow(dim, self.pad[1], t).reshape(n, c, h, w)
        return x + self.conv2(self.act(self.conv1(torch.cat([x, neighbour], dim=1))))


def conv2d_of(conv: nn.Conv3d) -> nn.Conv2d:
    """The Conv2d of a Conv3d with one temporal tap (same weights)."""
    k = conv.kernel_size[1]
    out = nn.Conv2d(conv.in_channels, conv.out_channels, k, padding=k // 2, groups=conv.groups,
                    bias=conv.bias is not None)
    with torch.no_grad():
        out.weight.copy_(conv.weight[:, :, 0])
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
    return out
