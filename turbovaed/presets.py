"""Student presets: the ladder of layouts per teacher compression (mini / nano / base / turbo), and preset
names as the CLI and recipes spell them (a teacher family, optionally with a size suffix)."""

from __future__ import annotations

import torch

from turbovaed.io import InputError
from turbovaed.student import StudentConfig, StudentDecoder, count_macs
from turbovaed.teachers import TEACHERS, Teacher, TeacherSpec

# Presets: a ladder per teacher compression. Every rung is the same block vocabulary (so each lowers
# exactly to 2D and exports to every backend); they differ in where the work sits.
#   mini  - ~16x smaller than nano: tests and CPU smoke runs.
#   nano  - the CPU-sized students: all work at or near latent resolution, 4x4 depth-to-space out.
#   base  - about TAEHV's MACs per frame at 512x512: wider latent stages and a stage at 1/2 resolution.
#   turbo - Turbo-VAED's layout: ~40M parameters, 5x5x5 depthwise-separable blocks at latent resolution,
#           dense 3D convs (and dense shuffles) in the upsampled stages, work at 1/2 and full resolution.
#           Frames are trimmed once at the output (Turbo-VAED trims after each temporal shuffle), so one
#           static step graph serves every streamed chunk.
#   phone - phone-first (nn.MemBlock): dense 2D convs with fused ReLUs, no norms, the temporal mix by
#           concatenating the neighbour frame; few, wide layers below the output's 1/4 resolution. Phone NPUs
#           pay per pass over an activation, not per MAC: this rung spends MACs to save passes.
SIZES = ("mini", "nano", "base", "turbo", "phone")

# size -> spatial ratio -> (channels, blocks, dense, spatial shuffles, patch)
_LADDER: dict[str, dict[int, tuple]] = {
    "nano": {
        8: ((384, 160), (4, 3), (False, False), (2,), 4),
        16: ((384, 192, 96), (3, 3, 1), (False,) * 3, (2, 2), 4),
        32: ((512, 256, 128, 64), (3, 3, 2, 0), (False,) * 4, (2, 2, 2), 4),
    },
    # TAEHV-style decoders at 512x512 (benchmarks/peers): 52.5 GMACs/frame for 8x latents (patch 1), 13.6 for
    # 16x (patch 2, Wan 2.2), 3.8 for 32x (patch 4, LTX). base: 47.4, 14.1 and 4.2.
    "base": {
        8: ((512, 320, 160, 32), (6, 4, 2, 1), (False, False, False, True), (2, 2, 2), 1),
        16: ((512, 384, 192, 32), (5, 3, 2, 1), (False, False, False, True), (2, 2, 2), 2),
        32: ((768, 512, 256, 96, 32), (5, 3, 2, 2, 1), (False,) * 5, (2, 2, 2, 2), 2),
    },
    "phone": {
        8: ((256, 96), (3, 3), (True, True), (2,), 4),
        16: ((256, 128, 64), (3, 2, 2), (True,) * 3, (2, 2), 4),
        32: ((384, 256, 128, 64), (3, 2, 2, 1), (True,) * 4, (2, 2, 2), 4),
    },
    # Turbo-VAED (benchmarks/peers): 40.7M parameters for 8x latents, 41.9M for LTX. turbo: 41.2, 40.0, 41.4M.
    "turbo": {
        8: ((384, 256, 32, 16), (9, 4, 4, 4), (False, True, True, True), (2, 2, 2), 1),
        16: ((384, 224, 96, 24, 12), (9, 4, 3, 3, 3), (False, True, True, True, True), (2, 2, 2, 2), 1),
        32: ((320, 256, 128, 64, 16, 8), (2, 3, 2, 3, 1, 1), (False, True, True, True, True, True),
             (2, 2, 2, 2, 2), 1),
    },
}


def _temporal_split(temporal: int, shuffles: int, early: bool) -> tuple[list[int], int]:
    """Temporal factor per shuffle and the rest for the output conv. `early` puts every factor of 2 (then a
    3) in the first shuffles (Turbo-VAED); otherwise 2x goes to the first shuffles only while more than 2x
    would remain, the rest to the output conv (nano, where the output conv is the cheap place)."""
    factors, rest = [1] * shuffles, temporal
    for i in range(shuffles):
        for f in (2, 3) if early else (2,):
            if rest % f == 0 and (early or rest > 2):
                factors[i], rest = f, rest // f
                break
    return factors, rest


def family_preset(latent_channels: int, spatial: int, temporal: int, first_frame: bool = True,
                  mini: bool = False, temporal_padding: str = "causal", size: str = "nano") -> StudentConfig:
    """Student layout for a teacher's compression at one rung of the ladder (SIZES); `mini=True` is
    size="mini", a ~16x smaller nano for CPU work."""
    size = "mini" if mini else size
    if size not in SIZES:
        raise InputError(f"unknown student size {size!r}; expected one of {', '.join(SIZES)}")
    ladder = _LADDER["nano" if size == "mini" else size]
    if spatial not in ladder:
        raise InputError(f"no student layout for {spatial}x spatial compression; have {sorted(ladder)}")
    channels, blocks, dense, spatial_ups, patch = ladder[spatial]
    temporal_ups, rest = _temporal_split(temporal, len(spatial_ups), early=size in ("base", "turbo"))
    if size == "mini":
        channels = tuple(max(c // 4, 16) for c in channels)
        blocks = tuple(min(b, 1) for b in blocks)
    turbo, phone = size == "turbo", size == "phone"
    return StudentConfig(
        latent_channels=latent_channels, channels=channels, blocks=blocks, dense=dense,
        upsample=tuple(zip(temporal_ups, spatial_ups)), patch=patch, final_temporal=rest,
        temporal_padding=temporal_padding, first_frame=first_frame, kernel_dw=5 if turbo else None,
        dense_upsample=tuple(dense[1:]) if turbo else None,
        block="mem" if phone else "resnet", kernel_t=1 if phone else 3,  # phone: time mixes in the blocks only
    )


def parse_preset(name: str) -> tuple[str, str]:
    """'wan21' -> ('wan21', 'nano'); 'wan21-base' -> ('wan21', 'base'); InputError for anything else."""
    family, _, size = name.rpartition("-")
    if not (family in TEACHERS and size in SIZES):
        family, size = name, "nano"
    if family not in TEACHERS:
        names = sorted(TEACHERS)
        raise InputError(f"unknown student preset {name!r}; presets are a teacher family ({', '.join(names)}), "
                         f"optionally with a size suffix -{'/-'.join(SIZES)} (e.g. wan21-base)")
    return family, size


def student_config(teacher: TeacherSpec | Teacher, mini: bool = False, size: str = "nano") -> StudentConfig:
    """The `size` rung of a teacher's preset; a loaded teacher's own latent channels win over its family's
    (a checkpoint may differ from the released model)."""
    spec = teacher.spec if isinstance(teacher, Teacher) else teacher
    return family_preset(teacher.latent_channels, spec.spatial, spec.temporal, first_frame=spec.first_frame,
                         mini=mini, size=size)


def ladder_rows(families: list[str] | None = None) -> list[dict]:
    """Teacher family x ladder rung: parameters and GMACs per output frame at 512x512 and 720p (the height
    rounded up to the family's spatial multiple, e.g. 736 for 32x), over 5 latent frames."""
    rows = []
    for name in families or list(TEACHERS):
        for rung in SIZES:
            config = student_config(TEACHERS[name], size=rung)
            with torch.device("meta"):
                params = StudentDecoder(config).num_parameters()
            frames, s = config.frames_for(5), config.spatial_ratio
            tall = -(-720 // s) * s
            rows.append({"preset": name if rung == "nano" else f"{name}-{rung}", "params": params,
                         "gmacs_512": count_macs(config, (5, 512 // s, 512 // s)) / 1e9 / frames,
                         "gmacs_720p": count_macs(config, (5, tall // s, 1280 // s)) / 1e9 / frames,
                         "size_720p": f"{tall}x1280"})
    return rows
