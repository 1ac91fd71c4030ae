"""Turbo-VAED (hustvl/Turbo-VAED) in turbovaed's harness: the real architecture from
`turbovaed.decoders.turbo_vaed` (what `turbovaed.decoders.load` fills from a released weight file), wrapped in
the interface the trainer, exporters and timers take: forward(z, return_features) on (B, C, T, h, w) latents ->
(B, 3, T', H, W) frames in [-1, 1], `to_mobile()` (its exact 2D lowering), `num_parameters()`,
`save_pretrained()`. Pass a weight file to start from released weights; keyword overrides shrink the
released layout for tests (e.g. block_out_channels=(8, 8, 16, 32))."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from peers.base import Peer
from torch import nn

from turbovaed.decoders import load
from turbovaed.decoders.turbo_vaed import VARIANTS, TurboVAED


class TurboVAEDDecoder(Peer):
    def __init__(self, variant: str = "turbo-vaed-hunyuan", weights: str | Path | None = None, **overrides) -> None:
        super().__init__()
        v = dataclasses.replace(VARIANTS[variant], **overrides)
        self.config = {"variant": variant, **{k: list(x) if isinstance(x, tuple) else x for k, x in overrides.items()}}
        self.net = load(weights, variant).module if weights else TurboVAED(v)

    def feature_modules(self) -> list[nn.Module]:
        """The mid block and each up block: where feature alignment reads."""
        return [self.net.mid_block, *self.net.up_blocks]
