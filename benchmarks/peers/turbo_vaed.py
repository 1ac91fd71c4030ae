"""Turbo-VAED (hustvl/Turbo-VAED) in turbovaed's harness: the real architecture from
`turbovaed.decoders.turbo_vaed` (what `turbovaed.decoders.load` fills from a released weight file), wrapped in
the interface the trainer, exporters and timers take: forward(z, return_features) on (B, C, T, h, w) latents ->
(B, 3, T', H, W) frames in [-1, 1], `to_mobile()` (its exact 2D lowering), `num_parameters()`,
`save_pretrained()`. Pass a weight file to start from released weights; keyword overrides shrink the
released layout for tests (e.g. block_out_channels=(8, 8, 16, 32))."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from turbovaed.decoders import load
from turbovaed.decoders.turbo_vaed import VARIANTS, TurboVAED
from turbovaed.io import save_pretrained


class TurboVAEDDecoder(nn.Module):
    def __init__(self, variant: str = "turbo-vaed-hunyuan", weights: str | Path | None = None, **overrides) -> None:
        super().__init__()
        v = dataclasses.replace(VARIANTS[variant], **overrides)
        self.config = {"variant": variant, **{k: list(x) if isinstance(x, tuple) else x for k, x in overrides.items()}}
        self.net = load(weights, variant).module if weights else TurboVAED(v)

    def forward(self, z: torch.Tensor, return_features: bool = False):
        if not return_features:
            return self.net(z)
        features: list[torch.Tensor] = []  # the mid block and each up block: where feature alignment reads
        hooks = [m.register_forward_hook(lambda _m, _i, out: features.append(out))
                 for m in (self.net.mid_block, *self.net.up_blocks)]
        try:
            frames = self.net(z)
        finally:
            for h in hooks:
                h.remove()
        return frames, features

    def to_mobile(self, linear_pointwise: bool = False) -> nn.Module:
        return self.net.to_mobile()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | Path, extra_files: dict[str, str | bytes] | None = None) -> Path:
        return save_pretrained(self, directory, {"_class_name": "TurboVAEDDecoder", **self.config}, extra_files)
