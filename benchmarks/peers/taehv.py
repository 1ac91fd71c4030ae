"""TAEHV (madebyollin/taehv) in turbovaed's harness: the real architecture from `turbovaed.decoders.taehv`
(what `turbovaed.decoders.load` fills from a published weight file), wrapped in the interface the trainer,
exporters and timers take: forward(z, return_features) on (B, C, T, h, w) latents -> (B, 3, 1+4(T-1), H, W)
frames in [-1, 1] (TAEHV itself takes NTCHW and returns [0, 1]), `to_mobile()` (TAEHV is 2D already),
`num_parameters()`, `save_pretrained()`. Pass a weight file to start from its published weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from turbovaed.decoders import load
from turbovaed.decoders.taehv import VARIANTS, MemBlock, Variant
from turbovaed.decoders.taehv import TAEHVDecoder as Published
from turbovaed.io import save_pretrained


def variant_for(latent_channels: int, patch_size: int) -> Variant:
    """The published variant of this latent geometry (taehv / taew2_2 / taeltx_2 ...), else one built alike."""
    fits = [v for v in VARIANTS.values() if (v.latent_channels, v.patch_size) == (latent_channels, patch_size)]
    return fits[0] if fits else Variant(f"taehv-{latent_channels}c-p{patch_size}", latent_channels, patch_size,
                                        (False, True, True), "any (trained here)", "raw VAE latents")


class TAEHVDecoder(nn.Module):
    def __init__(self, latent_channels: int = 16, patch_size: int = 1, weights: str | Path | None = None) -> None:
        super().__init__()
        self.config = dict(latent_channels=latent_channels, patch_size=patch_size)
        self.net = load(weights).module if weights else Published(variant_for(latent_channels, patch_size))
        # the last MemBlock of each stage: where the trainer's feature alignment reads
        blocks = [i for i, m in enumerate(self.net.decoder) if isinstance(m, MemBlock)]
        self.taps = blocks[2::3]

    def forward(self, z: torch.Tensor, return_features: bool = False):
        b = z.shape[0]
        features: list[torch.Tensor] = []
        hooks = [self.net.decoder[i].register_forward_hook(
            lambda _m, _i, out: features.append(out.reshape(b, -1, *out.shape[1:]).transpose(1, 2)))
            for i in self.taps] if return_features else []
        try:
            frames = self.net(z.transpose(1, 2)).transpose(1, 2) * 2 - 1  # NTCHW [0, 1] -> BCTHW [-1, 1]
        finally:
            for h in hooks:
                h.remove()
        return (frames, features) if return_features else frames

    def to_mobile(self, linear_pointwise: bool = False) -> TAEHVDecoder:
        return self  # 2D convs only: every backend takes it as it is

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | Path, extra_files: dict[str, str | bytes] | None = None) -> Path:
        return save_pretrained(self, directory, {"_class_name": "TAEHVDecoder", **self.config}, extra_files)
