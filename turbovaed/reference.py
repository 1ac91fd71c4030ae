"""The shipped reference teacher: a small AutoencoderKLWan trained on real clips (the embedded default).

No real teacher weights can be downloaded here, so the quickstart and the fidelity benchmark use this
one: a real diffusers video VAE class with 16 latent channels, 8x spatial and 4x temporal compression
and the 1+4k frame rule, trained as a full VAE by benchmarks/train_reference_teacher.py."""

from __future__ import annotations

from pathlib import Path

ASSET_DIR = Path(__file__).resolve().parent / "assets" / "reference_teacher"
# A student distilled once from it (distill/reference-student.toml): where the quickstart starts from.
STUDENT_DIR = Path(__file__).resolve().parent / "assets" / "reference_student"

# Clips never used for training: evaluation of the teacher and of every student distilled from it.
HELD_OUT = ("sam2_02_cups.mp4", "cotracker_paragliding.mp4", "imageio_realshort.mp4")

CONFIG = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
              temperal_downsample=[False, True, True], latents_mean=[0.0] * 16, latents_std=[1.0] * 16)

EVAL_FRAMES, EVAL_SIZE = 9, 128
