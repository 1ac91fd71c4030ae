"""What the peer wrappers share: the trainer's interface around a published decoder module."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from turbovaed.io import save_pretrained


class Peer(nn.Module):
    """forward(z, return_features) with features read by hooks on `feature_modules()`, `to_mobile()` from the
    wrapped module's exact 2D form, `num_parameters()`, `save_pretrained()` with `self.config`."""

    net: nn.Module
    config: dict

    def feature_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward(self, z: torch.Tensor, return_features: bool = False):
        if not return_features:
            return self.net(z)
        features: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: features.append(out)) for m in self.feature_modules()]
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
        return save_pretrained(self, directory, {"_class_name": type(self).__name__, **self.config}, extra_files)
