"""Reference student -> fixed-shape mobile graph: the exact 2D form, example latents, shape checks."""

from __future__ import annotations

from turbovaed.io import InputError
from turbovaed.student import MobileDecoder, StudentConfig, StudentDecoder


def latent_shape(config: StudentConfig, latent_frames: int, height: int, width: int) -> tuple[int, ...]:
    """(1, C, T, h, w) for an output of `height` x `width`; InputError names the rule that is broken."""
    r = config.spatial_ratio
    if latent_frames < 1:
        raise InputError(f"latent_frames must be >= 1, got {latent_frames}")
    if height % r or width % r or height < r or width < r:
        raise InputError(f"output {height}x{width} must be a positive multiple of the {r}x spatial compression")
    return (1, config.latent_channels, latent_frames, height // r, width // r)


def mobile_graph(student: StudentDecoder, linear_pointwise: bool = False) -> MobileDecoder:
    """The 2D-only form in eval mode, fp32: what every backend converts."""
    return student.float().eval().to_mobile(linear_pointwise=linear_pointwise).eval()

