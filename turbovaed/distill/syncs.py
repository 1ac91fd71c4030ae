"""Count the host reads of tensors a block of training code makes: on a GPU each one waits for the device.

Every .item()/float()/bool() of a tensor dispatches aten._local_scalar_dense and every .tolist() copies to
the host; both are counted. Reads made for the host's own bookkeeping are not: the data loader's (CPU tensors
read from the cache, in worker processes on a GPU node) and the optimizer's step counters (CPU tensors)."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HOST_SIDE = ("torch/utils/data", "torch/optim")


def _on_host() -> bool:
    return any(part in f.filename for f in traceback.extract_stack() for part in HOST_SIDE)


class HostReads(TorchDispatchMode):
    """`with HostReads() as reads: ...` then `reads.count`."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._tolist = torch.Tensor.tolist

    def __enter__(self) -> HostReads:
        tolist, reads = self._tolist, self

        def counted(tensor: torch.Tensor):
            reads.count += not _on_host()
            return tolist(tensor)
        torch.Tensor.tolist = counted
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        torch.Tensor.tolist = self._tolist
        super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += not _on_host()
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counting(owner, name: str) -> Iterator[list[int]]:
    """Within the block, every call of owner.name counts its host reads; yields the counts, one per call."""
    real, counts = getattr(owner, name), []

    def counted(*args, **kwargs):
        with HostReads() as reads:
            try:
                return real(*args, **kwargs)
            finally:
                counts.append(reads.count)
    setattr(owner, name, counted)
    try:
        yield counts
    finally:
        setattr(owner, name, real)
