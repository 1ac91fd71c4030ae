import os

import pytest
import torch

from turbovaed.data import shared_videos_dir

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def videos_dir():
    path = shared_videos_dir()
    if path is None:
        pytest.skip("real clips not found: ../shared/videos is absent (set TURBOVAED_VIDEOS to a folder of mp4s)")
    return path


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter (norm gains included) non-trivial values so equivalence tests bite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            offset = 1.0 if "norm" in name else 0.0  # norm gains around 1, like a trained model
            p.copy_(torch.randn(p.shape, generator=g) * std + offset)
    return model
