"""Errors users see, atomic writes, and safe weight loading (safetensors only, never pickle)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


class TurboVAEDError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class InputError(TurboVAEDError, ValueError):
    """Bad user input: wrong shapes, frame counts, non-finite values, unknown names."""


class CheckpointError(TurboVAEDError):
    """A checkpoint or weights file is missing, corrupt, unsafe, or does not match its config."""


class VideoError(TurboVAEDError):
    """A video file cannot be read or written."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(path: Path) -> None:
    """Give a temp file/folder the permissions a normal write would have (mkstemp/mkdtemp use 0600/0700)."""
    mask = _umask()
    if path.is_dir():
        path.chmod(0o777 & ~mask)
        for p in path.rglob("*"):
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
    else:
        path.chmod(0o666 & ~mask)


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside `target`; on success it replaces `target`, on error it vanishes."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a killed writer (SIGKILL skips cleanup)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _publish(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `target`; renamed onto it only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _publish(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def _check_safetensors(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist (expected a .safetensors file)")
    with path.open("rb") as f:
        head = f.read(8)
    if head[:2] in (b"\x80\x02", b"\x80\x04", b"\x80\x05") or head[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{path} is a pickle/torch.save file; only safetensors weights are loaded "
                              "(pickles can run arbitrary code)")


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a .safetensors file; refuse pickles and report truncated/corrupt files clearly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    _check_safetensors(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err


class LatentFile:
    """A 'latents' tensor (B, C, T, h, w) or (C, T, h, w) in a .safetensors file, read a time range at a
    time (memory-mapped slices), so a long latent sequence never has to fit in memory."""

    def __init__(self, path: str | Path, name: str = "latents") -> None:
        from safetensors import SafetensorError, safe_open

        self.path = Path(path)
        _check_safetensors(self.path)
        try:
            self._file = safe_open(str(self.path), framework="pt")
            names = list(self._file.keys())
            if name not in names:
                raise InputError(f"{self.path} has no '{name}' tensor (has {sorted(names)})")
            self._slice = self._file.get_slice(name)
            shape = tuple(self._slice.get_shape())
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{self.path} is not a readable safetensors file (truncated or corrupt?): {err}") from err
        if len(shape) not in (4, 5):
            raise InputError(f"{self.path}: '{name}' must be (B, C, T, h, w) or (C, T, h, w), got shape {shape}")
        self.batched = len(shape) == 5
        self.shape = shape if self.batched else (1, *shape)

    @property
    def frames(self) -> int:
        return self.shape[2]

    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Latent frames [start, stop) as a float tensor (B, C, n, h, w)."""
        stop = self.frames if stop is None else stop
        return self._slice[:, :, start:stop] if self.batched else self._slice[:, start:stop][None]
