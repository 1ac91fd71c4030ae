"""Memory a size needs, estimated before anything is allocated: a config with 100000 channels or an export at
100000 px is refused with the number and the option that lowers it, instead of an allocator traceback.

Estimates come from the student's layers traced on the meta device (nothing allocated): weights, the largest
layer's input + output (what an inference pass holds at once), and for training every layer's activations
(what autograd keeps) with the optimizer's copies of the weights. They are estimates: the check refuses only
what clearly cannot fit."""

from __future__ import annotations

import os

import torch

from turbovaed.io import InputError

GIB = 2**30


def available(device: torch.device | str = "cpu") -> int:
    """Bytes free on `device`: the GPU's free memory, or the host's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def student_bytes(config, latent_shape: tuple[int, int, int], batch: int = 1, training: bool = False) -> int:
    """Estimated peak bytes of one student pass over latents (T, h, w) at fp32."""
    from turbovaed.profile.estimate import layer_costs

    costs = layer_costs(config, latent_shape)
    weights = sum(c["weight_elems"] for c in costs)
    if training:  # weights, grads, two Adam moments, EMA; autograd keeps every layer's activations
        return 4 * (5 * weights + batch * sum(c["act_elems"] for c in costs))
    return 4 * (weights + batch * max(c["act_elems"] for c in costs))


def parameter_bytes(config) -> int:
    """fp32 bytes of a student's weights, counted on the meta device."""
    from turbovaed.student import StudentDecoder

    with torch.device("meta"):
        return 4 * StudentDecoder(config).num_parameters()


def check(needed: int, what: str, lower: str, device: torch.device | str = "cpu") -> None:
    """Refuse `what` when it needs more than `device` has free, saying how much and what lowers it."""
    free = available(device)
    if needed > free:
        raise InputError(f"{what} needs about {needed / GIB:.1f} GiB (estimated) but {torch.device(device)} has "
                         f"{free / GIB:.1f} GiB free: {lower}")
