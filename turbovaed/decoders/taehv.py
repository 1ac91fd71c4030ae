"""The TAEHV / TAEW family of tiny video decoders (madebyollin/taehv), written from the published definition:
facts carry over (layer order, tensor names, the per-variant patch size, latent channels, time upscale and
trimmed frames), the code is ours.

The decoder is a sequence of 2D layers over N*T frames: Clamp (tanh(x/3)*3), a 3x3 conv, then three stages
of [3 MemBlocks, nearest 2x upsample, TGrow, 3x3 conv], ReLU and a 3x3 conv to 3*patch^2 channels, pixel
shuffle, clamp to [0, 1] (LightX2V's HunyuanVideo 1.5 LightTAE: LeakyReLU(0.2) throughout and a clamp to
[-1, 1]). A MemBlock sees its own input one frame earlier (zeros before the first frame);
a TGrow with stride 2 doubles the frames (a 1x1 conv to 2C channels read as two consecutive frames). The
first t_upscale - 1 output frames are dropped (taecvx keeps them when T is even; taeh3 drops them per chunk of 5
latents and drops the last 3 latents' frames, as MiniMax-H3's VAE does). Input NTCHW latents as the diffusion
model makes them (TAEHV applies no latent scale or shift; LightX2V's LightTAE takes de-normalised ones), output
NTCHW RGB in [0, 1]."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from turbovaed.decoders.stepping import StepStream

C = (256, 128, 64, 64)  # channels of the three stages and the head


@dataclass(frozen=True)
class Variant:
    name: str
    latent_channels: int
    patch_size: int
    time_upscale: tuple[bool, bool, bool]  # per decoder stage
    vae: str  # whose latents it decodes
    convention: str  # what the latents must be
    leaky: bool = False  # LeakyReLU(0.2) instead of ReLU (LightX2V's LightTAE for HunyuanVideo 1.5)
    super_block: bool = False  # the Super decoder: SuperMemBlocks, wider stages, pixel-shuffle upsampling
    signed: bool = False  # frames clamped to [-1, 1] (already the canonical range), not [0, 1]

    @property
    def t_upscale(self) -> int:
        return 2 ** sum(self.time_upscale)

    @property
    def frames_to_trim(self) -> int:
        return self.t_upscale - 1

    @property
    def takes_normalized(self) -> bool:
        """TAEHV decodes the diffusion model's latents as they are; LightX2V feeds its LightTAE de-normalised ones."""
        return self.convention == NORMALIZED

    @property
    def h3_chunks(self) -> bool:
        """taeh3 follows MiniMax-H3's VAE: frames in chunks of 5 latents, each chunk's first frames_to_trim frames
        dropped, then the last 3 latents' worth of frames (madebyollin/taehv's _decode_h3_video)."""
        return self.name == "taeh3"

    def output_frames(self, latent_frames: int) -> int:
        """Output frames for T latent frames: T * t_upscale, minus the trimmed start (taecvx keeps it for even T);
        taeh3: per started chunk of 5 latents 5 * t_upscale - frames_to_trim, minus 3 * t_upscale at the end."""
        if self.h3_chunks:
            chunks = -(-latent_frames // H3_CHUNK)
            return chunks * (H3_CHUNK * self.t_upscale - self.frames_to_trim) - H3_DROP * self.t_upscale
        keep_all = self.name == "taecvx" and latent_frames % 2 == 0
        return latent_frames * self.t_upscale - (0 if keep_all else self.frames_to_trim)

    @property
    def spatial_ratio(self) -> int:
        return 8 * self.patch_size

    @property
    def frame_rule(self) -> str:
        if self.h3_chunks:
            per = H3_CHUNK * self.t_upscale - self.frames_to_trim
            return (f"T latent frames -> {per} per started chunk of {H3_CHUNK} latents (its first "
                    f"{self.frames_to_trim} frames dropped; zeros pad the last chunk), minus the last "
                    f"{H3_DROP * self.t_upscale} frames (as MiniMax-H3's VAE)")
        return f"T latent frames -> {self.t_upscale}T - {self.frames_to_trim} frames" + (
            " (all 4T when T is even)" if self.name == "taecvx" else "")

    def to_dict(self) -> dict:
        return {**asdict(self), "t_upscale": self.t_upscale, "frames_to_trim": self.frames_to_trim}


# madebyollin/taehv: "TAEHV encodes / decodes exactly what diffusion models use" (no latent scale or shift)
NORMALIZED = "the diffusion model's latents (a pipeline's output_type='latent'; TAEHV applies no scale or shift), NTCHW"
H3_CHUNK, H3_DROP = 5, 3  # taeh3: latents per decode chunk, latents' worth of frames dropped at the end
VARIANTS = {v.name: v for v in (
    Variant("taehv", 16, 1, (False, True, True), "HunyuanVideo", NORMALIZED),
    Variant("taew2_1", 16, 1, (False, True, True), "Wan 2.1 (also Wan 2.2 14B, Qwen Image)", NORMALIZED),
    Variant("taecvx", 16, 1, (False, True, True), "CogVideoX", NORMALIZED),
    Variant("taeos1_3", 16, 1, (False, True, True), "Open-Sora 1.3", NORMALIZED),
    Variant("taew2_2", 48, 2, (False, True, True), "Wan 2.2 5B", NORMALIZED),
    Variant("taehv1_5", 32, 2, (False, True, True), "HunyuanVideo 1.5", NORMALIZED),
    Variant("taeh3", 24, 2, (False, True, True), "Hunyuan (24-channel)", NORMALIZED),
    Variant("taew2_2_super", 48, 2, (False, True, True), "Wan 2.2 5B (Super decoder)", NORMALIZED, super_block=True),
    Variant("taehv1_5_super", 32, 2, (False, True, True), "HunyuanVideo 1.5 (Super decoder)", NORMALIZED,
            super_block=True),
    Variant("taeltx_2", 128, 4, (True, True, True), "LTX-Video 2", NORMALIZED),
    Variant("taeltx2_3", 128, 4, (True, True, True), "LTX-Video 2.3", NORMALIZED),
    # LightX2V's LightTAE: TAEHV's architecture and tensor names, retrained; LightX2V feeds it de-normalised latents
    Variant("lighttaew2_1", 16, 1, (False, True, True), "Wan 2.1 (LightX2V LightTAE)",
            "de-normalised Wan 2.1 latents (latents * latents_std + latents_mean, as LightX2V feeds it), NTCHW"),
    # LightX2V builds this one with LeakyReLU(0.2) and clamps its frames to [-1, 1] (LightTaeHy15, model_type hy15)
    Variant("lighttae_hy1_5", 32, 2, (False, True, True), "HunyuanVideo 1.5 (LightX2V LightTAE)",
            "HunyuanVideo 1.5 latents divided by its scaling factor 1.03682 (as LightX2V feeds it), NTCHW",
            leaky=True, signed=True),
)}
C_SUPER = (512, 256, 128, 64)  # the Super decoder's stages


def conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def act(variant: Variant) -> nn.Module:
    return nn.LeakyReLU(0.2) if variant.leaky else nn.ReLU()


class MemBlock(nn.Module):
    """conv(cat(x, past)) -> act -> conv -> act -> conv, plus a skip, then act (ReLU, or the variant's)."""

    def __init__(self, n: int, variant: Variant):
        super().__init__()
        self.conv = nn.Sequential(conv(2 * n, n), act(variant), conv(n, n), act(variant), conv(n, n))
        self.act = act(variant)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(torch.cat([x, past], 1)) + x)


class SuperMemBlock(nn.Module):
    """The Super decoder's block (ConvNeXt-like): 7x7 depthwise over cat(x, past), 1x1 to 4n, ReLU, 1x1 back to
    n, plus x; no activation after the sum."""

    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(2 * n, 2 * n, 7, padding=3, groups=2 * n, bias=False),
                                  nn.Conv2d(2 * n, 4 * n, 1), nn.ReLU(), nn.Conv2d(4 * n, n, 1, bias=False))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x, past], 1)) + x


class TGrow(nn.Module):
    """1x1 conv to stride*C channels, read as `stride` consecutive frames of C channels."""

    def __init__(self, n: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n, n * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        return self.conv(x).reshape(nt * self.stride, c, h, w)


class TAEHVDecoder(nn.Module):
    """The published TAEHV decoder for one variant; `forward(latents NTCHW) -> frames NTCHW in [0, 1]`."""

    def __init__(self, variant: Variant):
        super().__init__()
        self.variant = variant
        self.decoder = nn.Sequential(*(self.super_layers(variant) if variant.super_block else self.layers(variant)))

    @staticmethod
    def super_layers(variant: Variant) -> list[nn.Module]:
        """1x1 conv in (no Clamp), then per stage 3 SuperMemBlocks, a 3x3 conv to 4x the next stage's channels,
        ReLU, 2x pixel shuffle, TGrow; a 3x3 conv out."""
        layers: list[nn.Module] = [nn.Conv2d(variant.latent_channels, C_SUPER[0], 1, bias=False)]
        for stage, grow in enumerate(variant.time_upscale):
            n, m = C_SUPER[stage], C_SUPER[stage + 1]
            layers += [SuperMemBlock(n), SuperMemBlock(n), SuperMemBlock(n), conv(n, 4 * m), nn.ReLU(),
                       nn.PixelShuffle(2), TGrow(m, 2 if grow else 1)]
        return layers + [conv(C_SUPER[3], 3 * variant.patch_size ** 2)]

    @staticmethod
    def layers(variant: Variant) -> list[nn.Module]:
        layers: list[nn.Module] = [Clamp(), conv(variant.latent_channels, C[0]), act(variant)]
        for stage, grow in enumerate(variant.time_upscale):
            n = C[stage]
            layers += [MemBlock(n, variant), MemBlock(n, variant), MemBlock(n, variant), nn.Upsample(scale_factor=2),
                       TGrow(n, 2 if grow else 1), conv(n, C[stage + 1], bias=False)]
        return layers + [act(variant), conv(C[3], 3 * variant.patch_size ** 2)]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5 or latents.shape[2] != self.variant.latent_channels:
            raise ValueError(f"{self.variant.name} takes NTCHW latents with {self.variant.latent_channels} channels, "
                             f"got shape {tuple(latents.shape)}")
        t, v = latents.shape[1], self.variant
        # each MemBlock sees its own input one frame earlier, zeros before the first frame
        x = self.frames(latents, lambda frames: F.pad(frames, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1])
        if v.h3_chunks:  # zero frames fill the last chunk; each chunk drops its first frames, the clip its last
            chunk = H3_CHUNK * v.t_upscale
            x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, -x.shape[1] % chunk))
            n, frames = x.shape[:2]
            x = x.reshape(n * frames // chunk, chunk, *x.shape[2:])[:, v.frames_to_trim:]  # rank 5: it exports
            return x.reshape(n, -1, *x.shape[2:])[:, :-H3_DROP * v.t_upscale]
        keep_all = v.name == "taecvx" and t % 2 == 0
        return x if keep_all else x[:, v.frames_to_trim:]

    def frames(self, latents: torch.Tensor, past) -> torch.Tensor:
        """The layers over every frame of NTCHW latents, untrimmed: `past(frames)` gives each MemBlock the
        (N, T', C, H, W) inputs one frame earlier than its own `frames`. Output NTCHW in [0, 1] ([-1, 1] for a
        signed variant)."""
        n = latents.shape[0]
        x = latents.reshape(-1, *latents.shape[2:])
        for layer in self.decoder:
            if isinstance(layer, (MemBlock, SuperMemBlock)):
                frames = x.reshape(n, -1, *x.shape[1:])
                x = layer(x, past(frames).reshape(x.shape))
            else:
                x = layer(x)
        if self.variant.patch_size > 1:
            x = F.pixel_shuffle(x, self.variant.patch_size)
        return x.clamp(-1 if self.variant.signed else 0, 1).reshape(n, -1, *x.shape[1:])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class TAEHVStep(nn.Module):
    """One latent frame per call, TAEHV's causal memory as explicit state: forward(latent (N, 1, C, h, w),
    *states) -> (frames (N, t_upscale, 3, H, W) in [0, 1], *new states). A state is a MemBlock's input one frame
    earlier at its stage; a stream starts from zero states (`initial_states`), exactly like the whole-clip
    forward, and the first `frames_to_trim` frames of the stream are dropped (taecvx: none, like the published
    streaming decoder; `Canonical(step).stream` does both). Every op is 2D or a reshape: it exports like the
    whole-clip graph."""

    def __init__(self, decoder: TAEHVDecoder):
        super().__init__()
        self.net = decoder
        self.variant = decoder.variant

    @property
    def frames_to_trim(self) -> int:
        return 0 if self.variant.name == "taecvx" else self.variant.frames_to_trim

    def forward(self, latent: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        carried, new_states = iter(states), []

        def past(frames: torch.Tensor) -> torch.Tensor:  # the state is the previous call's last frame here
            new_states.append(frames[:, -1])
            before = next(carried)[:, None]
            # one frame at this stage: no empty slice in the graph (Core ML's converter reads [:, :-1] of one frame
            # as the whole frame)
            return before if frames.shape[1] == 1 else torch.cat([before, frames[:, :-1]], 1)

        return (self.net.frames(latent, past), *new_states)

    @torch.no_grad()
    def initial_states(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """Zero states of the right shapes for this latent size (found by a dry run of one latent frame)."""
        states: list[torch.Tensor] = []

        def past(frames: torch.Tensor) -> torch.Tensor:
            states.append(torch.zeros_like(frames[:, -1]))
            return torch.zeros_like(frames)

        self.net.frames(latent[:, :1], past)
        return states


class Canonical(nn.Module):
    """TAEHV (or its step) with turbovaed's I/O: (B, C, T, h, w) latents (the variant's convention) in,
    (B, 3, T', H, W) frames in [-1, 1] out, so its artifacts drop into bundles, apps and profilers like a student's.
    The conversion is a transpose and an affine map inside the graph; any states pass through unchanged."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.variant = inner.variant

    def forward(self, latents: torch.Tensor, *states: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.inner(latents.transpose(1, 2), *states)
        frames, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        frames = frames.transpose(1, 2)
        frames = frames if self.variant.signed else frames * 2 - 1
        return (frames, *rest) if states else frames

    @property
    def frames_to_trim(self) -> int:
        return self.inner.frames_to_trim

    def initial_states(self, latents: torch.Tensor) -> list[torch.Tensor]:
        """Zero states for (B, C, T, h, w) latents of this size. For a Canonical around a TAEHVStep."""
        return self.inner.initial_states(latents.transpose(1, 2))

    def stream(self, latents: torch.Tensor, run=None) -> torch.Tensor:
        """(B, C, T, h, w) latents one latent frame per call through `run` (default: this step graph; or an
        exported artifact's runner with the same I/O), the states carried from zeros, the stream's first frames
        trimmed as published. For a Canonical around a TAEHVStep."""
        return StepStream(self, run)(latents)
