"""Errors users see, atomic writes, and safe weight loading (safetensors only, never pickle)."""

from __future__ import annotations

import errno
import os
import re
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


def listing(names: list[str], limit: int = 5) -> str:
    """The first `limit` names, and how many more: for messages about thousands of files or tensors."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class WriteError(TurboVAEDError):
    """An output could not be written (no space, a file-size or quota limit, a read-only or forbidden folder)."""


WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


@contextmanager
def _writing(target: Path) -> Iterator[None]:
    """Turn a failed write into one WriteError naming the folder and the reason; whatever `target` was before
    stays as it was (the callers write to a temp name first)."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as err:
        found = re.search(r"os error (\d+)", str(err))  # safetensors reports the OS error in its message
        code = err.errno if isinstance(err, OSError) else int(found.group(1)) if found else None
        if code not in WRITE_ERRNOS:
            raise
        reason = os.strerror(code)
        raise WriteError(f"could not write {target.name} in {target.parent}: {reason}; "
                         f"{'its previous version is' if target.exists() else 'nothing was'} left there") from err


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
    with _writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a killed writer (SIGKILL skips cleanup)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        with _writing(target):
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
    with _writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with _writing(target):
            yield tmp
        _publish(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def save_pretrained(module: torch.nn.Module, directory: str | Path, config: dict,
                    extra_files: dict[str, str | bytes] | None = None, weights: str = "model.safetensors") -> Path:
    """Write config.json + safetensors weights (plus any extra files) into `directory` atomically: the one
    checkpoint format of students and of the benchmark peers."""
    import json

    from safetensors.torch import save_file

    with atomic_dir(directory) as tmp:
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp / weights),
                  metadata={"format": "pt"})
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        sums = {p.name: sha256_file(p) for p in sorted(tmp.glob("*.safetensors"))}
        (tmp / "config.json").write_text(json.dumps({**config, CHECKSUMS: sums}, indent=2))
    return Path(directory)


CHECKSUMS = "_weights_sha256"  # config.json: weight file name -> sha256 when saved, checked when loaded


def sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_saved(path: Path, config: dict) -> None:
    """Refuse a weights file whose sha256 differs from the one its config.json recorded when it was saved."""
    want = (config.get(CHECKSUMS) or {}).get(path.name)
    if want and sha256_file(path) != want:
        raise CheckpointError(f"{path}: weights changed since they were saved (sha256 differs from the one "
                              f"{path.parent / 'config.json'} records): the file was replaced or corrupted")


def check_finite(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Refuse weights holding NaN or inf, naming the tensor: they would decode black frames without a word."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise CheckpointError(f"{path} holds non-finite values (NaN or inf) in {listing(bad)}")
    return state


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
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    return check_finite(state, path)


LAYOUTS = {"bcthw": "(B, C, T, H, W) as diffusers pipelines return", "btchw": "(N, T, C, H, W) as TAEHV and ComfyUI use"}


class LatentFile:
    """A 'latents' tensor in a .safetensors file, read a time range at a time (memory-mapped slices), so a
    long latent sequence never has to fit in memory. `layout` is "bcthw" (diffusers: (B, C, T, h, w) or
    (C, T, h, w)) or "btchw" (TAEHV / ComfyUI: (N, T, C, h, w) or (T, C, h, w)); reads always come back as
    float32 (B, C, n, h, w) whatever the stored dtype (generators save bf16). A file may state its layout
    and whether it is normalised in its safetensors metadata ("layout", "latents": "raw" | "normalized").
    With no layout given or stated the default is "bcthw", and `check_channels` refuses a file that fits both
    (a (1, 16, 16, h, w) Wan file): decoding it the wrong way round would be silent garbage."""

    def __init__(self, path: str | Path, name: str = "latents", layout: str | None = None) -> None:
        if layout is not None and layout not in LAYOUTS:
            raise InputError(f"unknown latent layout {layout!r}; expected one of {sorted(LAYOUTS)}")
        self.path = Path(path)
        if self.path.suffix in (".pt", ".pth"):
            self._slice, shape, dtype, self.metadata = self._open_torch(name)
        else:
            self._slice, shape, dtype, self.metadata = self._open_safetensors(name)
        stated = self.metadata.get("layout")
        if stated is not None and layout is not None and stated != layout:
            raise InputError(f"{self.path} states layout {stated!r} in its metadata but {layout!r} was asked for")
        if stated is not None and stated not in LAYOUTS:
            raise InputError(f"{self.path} states an unknown layout {stated!r} in its metadata")
        self.layout_known = (layout or stated) is not None
        layout = layout or stated or "bcthw"
        if len(shape) not in (4, 5):
            raise InputError(f"{self.path}: '{name}' must be {LAYOUTS[layout]} (or without the batch axis), "
                             f"got shape {shape}")
        self.dtype = dtype
        if dtype not in ("F16", "BF16", "F32", "F64"):
            raise InputError(f"{self.path}: latents must be floating point, got {dtype}")
        self.batched, self.stored_shape = len(shape) == 5, shape
        self._use(layout)

    def _open_safetensors(self, name: str) -> tuple:
        """A memory-mapped slice of the tensor, its shape, dtype and the file's metadata."""
        from safetensors import SafetensorError, safe_open

        _check_safetensors(self.path)
        try:
            handle = safe_open(str(self.path), framework="pt")
            names = list(handle.keys())
            if name not in names:
                raise InputError(f"{self.path} has no '{name}' tensor (has {sorted(names)})")
            tensor = handle.get_slice(name)
            self._file = handle  # the slice reads through it
            return tensor, tuple(tensor.get_shape()), tensor.get_dtype(), handle.metadata() or {}
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{self.path} is not a readable safetensors file (truncated or corrupt?): {err}") from err

    def _open_torch(self, name: str) -> tuple:
        """A torch.save'd tensor, or a dict holding one under 'latents' / 'latent' / 'z' (string entries of the
        dict, e.g. 'layout', act as metadata), loaded weights-only and memory-mapped."""
        import pickle

        if not self.path.is_file():
            raise CheckpointError(f"{self.path} does not exist")
        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise CheckpointError(f"{self.path} is not a weights-only torch file of latents (it needs arbitrary code "
                                  f"to load, or is truncated): {str(err).splitlines()[0]}") from err
        metadata = {}
        if isinstance(obj, dict):
            metadata = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, str)}
            key = next((k for k in (name, "latents", "latent", "z") if torch.is_tensor(obj.get(k))), None)
            if key is None:
                raise InputError(f"{self.path} holds a dict without a '{name}', 'latent' or 'z' tensor "
                                 f"(keys: {sorted(map(str, obj))})")
            obj = obj[key]
        if not torch.is_tensor(obj):
            raise InputError(f"{self.path} holds a {type(obj).__name__}, not a latent tensor")
        dtypes = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}
        return obj, tuple(obj.shape), dtypes.get(obj.dtype, str(obj.dtype)), metadata

    def _use(self, layout: str) -> None:
        full = self.stored_shape if self.batched else (1, *self.stored_shape)
        self.layout = layout
        self.shape = full if layout == "bcthw" else (full[0], full[2], full[1], *full[3:])  # as (B, C, T, h, w)

    def check_channels(self, expected: int, what: str) -> None:
        """One clear error when the channel axis does not hold `expected` channels, naming the layout that
        would fit. With no layout given or stated, a file that fits both (a (1, 16, 16, h, w) Wan file) is
        refused: say which with --layout or the file's metadata."""
        if not self.layout_known and self.shape[1] == self.shape[2] == expected:
            raise InputError(f"{self.path}: latents {self.stored_shape} fit both {LAYOUTS['bcthw']} and "
                             f"{LAYOUTS['btchw']} ({expected} channels, {expected} frames): pass --layout bcthw "
                             "or --layout btchw (or state 'layout' in the file's metadata)")
        if self.shape[1] == expected:
            return
        other = "btchw" if self.layout == "bcthw" else "bcthw"
        hint = ""
        if self.shape[2] == expected:
            hint = f"; it looks like {LAYOUTS[other]}: pass --layout {other}"
        raise InputError(f"{self.path}: latents {self.stored_shape} read as {LAYOUTS[self.layout]} have "
                         f"{self.shape[1]} channels, {what} expects {expected}{hint}")

    def stated_normalized(self) -> bool | None:
        """True/False when the file's metadata says "normalized"/"raw", else None."""
        value = self.metadata.get("latents")
        if value not in (None, "raw", "normalized"):
            raise InputError(f"{self.path}: metadata 'latents' must be 'raw' or 'normalized', got {value!r}")
        return None if value is None else value == "normalized"

    @property
    def frames(self) -> int:
        return self.shape[2]

    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Latent frames [start, stop) as a float32 tensor (B, C, n, h, w)."""
        stop = self.frames if stop is None else stop
        if self.layout == "bcthw":
            z = self._slice[:, :, start:stop] if self.batched else self._slice[:, start:stop][None]
        else:
            z = (self._slice[:, start:stop] if self.batched else self._slice[start:stop][None]).transpose(1, 2)
        return z.float().contiguous()


def convert_latents(source: str | Path, target: str | Path, layout: str | None, normalized: bool | None) -> str:
    """SOURCE (any layout, .safetensors or weights-only .pt/.pth) -> TARGET .safetensors in (B, C, T, h, w),
    stored dtype kept, with metadata {"layout": "bcthw", "latents": "raw" | "normalized"}; written atomically."""
    from safetensors.torch import save_file

    target = Path(target)
    if target.suffix != ".safetensors":
        raise InputError(f"the converted file must be a .safetensors path, got {target}")
    src = LatentFile(source, layout=layout)
    if not src.layout_known:
        raise InputError(f"{source}: say its axis order with --layout bcthw ({LAYOUTS['bcthw']}) or --layout btchw "
                         f"({LAYOUTS['btchw']}); stored shape {src.stored_shape}")
    stated = src.stated_normalized()
    if normalized is None and stated is None:
        raise InputError(f"{source}: say whether the latents are --normalized (a pipeline's output) or --raw "
                         "(what a VAE decoder takes)")
    if None not in (normalized, stated) and normalized != stated:
        raise InputError(f"{source} states {'normalized' if stated else 'raw'} latents in its metadata")
    state = "normalized" if (stated if normalized is None else normalized) else "raw"
    dtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}.get(src.dtype, torch.float32)
    with atomic_file(target) as tmp:
        save_file({"latents": src.read().to(dtype).contiguous()}, str(tmp), metadata={"layout": "bcthw", "latents": state})
    return f"wrote {target}: latents {tuple(src.shape)} (B, C, T, h, w), {state}, {src.dtype}"


GIB = 2**30


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes free on `device`: the GPU's free memory, or the host's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_memory(needed: int, what: str, lower: str, device: torch.device | str = "cpu") -> None:
    """Refuse `what` when its estimated bytes exceed what `device` has free, before anything is allocated: one
    error with the number and what lowers it, instead of an allocator's traceback."""
    free = available_memory(device)
    if needed > free:
        raise InputError(f"{what} needs about {needed / GIB:.1f} GiB (estimated) but {torch.device(device)} has "
                         f"{free / GIB:.1f} GiB free: {lower}")
