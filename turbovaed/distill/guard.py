"""The non-finite guard: a step whose gradients are not finite is skipped, by every rank alike, for each optimizer
(the generator side: student + alignment heads; the discriminator), after DDP has reduced the gradients; skips are
counted, too many in a row stop the run, and nothing non-finite is ever checkpointed or logged as bare NaN."""

from __future__ import annotations

import json
import math

import torch
import torch.distributed as dist

from turbovaed.io import TurboVAEDError


class TrainingError(TurboVAEDError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


def agreed(finite: torch.Tensor, world: int) -> torch.Tensor:
    """A 0-dim finiteness flag (float) agreed by every rank: the minimum over ranks, so one rank's NaN makes every
    rank skip. A device collective with no host sync (the caller reads it with the step's other numbers)."""
    flag = finite.float().reshape(1)
    if world > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag[0]


def grads_finite(params) -> torch.Tensor:
    """Whether every gradient of `params` (at least one has one) is finite, as a 0-dim device tensor."""
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).isfinite()


class NonFiniteGuard:
    """Counts skipped steps (kept in data_stats, so resumes carry the total) and stops the run after
    train.max_nonfinite in a row."""

    def __init__(self, stats: dict, limit: int, checkpoints: str) -> None:
        self.stats, self.limit, self.checkpoints, self.in_a_row = stats, limit, checkpoints, 0

    def __call__(self, finite: bool, step: int, key: str = "nonfinite_skipped") -> None:
        if finite:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.stats[key] = self.stats.get(key, 0) + 1
        if self.in_a_row >= self.limit:
            raise TrainingError(f"{self.in_a_row} steps in a row had a non-finite gradient (up to step {step}); "
                                f"stopped. The last checkpoints ({self.checkpoints}) hold finite weights")


def strict_json(record: dict) -> str:
    """One log line as strict JSON: a non-finite number becomes null (bare NaN / Infinity are not JSON)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(record), allow_nan=False)
