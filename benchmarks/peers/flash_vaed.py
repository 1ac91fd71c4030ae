"""Flash-VAED's Wan 2.1 student (Aoko955/Flash-VAED) in turbovaed's harness: the real architecture from
`turbovaed.decoders.flash_vaed` (what `turbovaed.decoders.load` fills from the released file), wrapped in the
interface the trainer, exporters and timers take: forward(z, return_features) on raw (B, 16, T, h, w) latents ->
(B, 3, 4T - 3, H, W) frames in [-1, 1], `to_mobile()` (its exact 2D form), `num_parameters()`,
`save_pretrained()`. Pass a weight file to start from the released weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from turbovaed.decoders import load
from turbovaed.decoders.flash_vaed import VARIANTS, FlashVAED, Resample
from turbovaed.io import save_pretrained


class FlashVAEDDecoder(nn.Module):
    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        self.config = {"variant": "flash-vaed-wan2_1"}
        self.net = load(weights).module if weights else FlashVAED(VARIANTS["flash-vaed-wan2_1"])

    def forward(self, z: torch.Tensor, return_features: bool = False):
        if not return_features:
            return self.net(z)
        d = self.net.decoder  # the middle's output and each time upsampler's: where feature alignment reads
        taps = [d.middle[2], *(m for m in d.upsamples if isinstance(m, Resample) and m.time_conv is not None)]
        features: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: features.append(out)) for m in taps]
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
        return save_pretrained(self, directory, {"_class_name": "FlashVAEDDecoder", **self.config}, extra_files)
