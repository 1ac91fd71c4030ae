"""Flash-VAED's Wan 2.1 student (Aoko955/Flash-VAED) in turbovaed's harness: the real architecture from
`turbovaed.decoders.flash_vaed` (what `turbovaed.decoders.load` fills from the released file), wrapped in the
interface the trainer, exporters and timers take: forward(z, return_features) on raw (B, 16, T, h, w) latents ->
(B, 3, 4T - 3, H, W) frames in [-1, 1], `to_mobile()` (its exact 2D form), `num_parameters()`,
`save_pretrained()`. Pass a weight file to start from the released weights."""

from __future__ import annotations

from pathlib import Path

from peers.base import Peer
from torch import nn

from turbovaed.decoders import load
from turbovaed.decoders.flash_vaed import VARIANTS, FlashVAED, Resample


class FlashVAEDDecoder(Peer):
    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        self.config = {"variant": "flash-vaed-wan2_1"}
        self.net = load(weights).module if weights else FlashVAED(VARIANTS["flash-vaed-wan2_1"])

    def feature_modules(self) -> list[nn.Module]:
        """The middle's output and each time upsampler's: where feature alignment reads."""
        d = self.net.decoder
        return [d.middle[2], *(m for m in d.upsamples if isinstance(m, Resample) and m.time_conv is not None)]
