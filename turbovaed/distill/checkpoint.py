"""Training state (model, EMA, optimizer, step, RNG) in safetensors + JSON, written atomically.

Exact resume needs the optimizer moments and the RNG state, not just the weights; both are stored
as tensors (no pickles) so resuming never unpickles anything. Two slots: DIR (newest) and DIR.prev (the one
before), each fsynced before it is renamed into place, so a crash at any moment, even between the renames,
leaves at least one whole checkpoint, and a torn newest slot falls back to the previous one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from turbovaed.io import CheckpointError, atomic_dir, load_safetensors

STATE_FILE = "state.safetensors"
META_FILE = "state.json"


def _flatten(prefix: str, obj, tensors: dict[str, torch.Tensor]):
    """Replace tensors in a nested dict/list by references, collecting them under dotted keys."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {str(k): _flatten(f"{prefix}.{k}", v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)]
    return obj


def _unflatten(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _optimizer_state(state: dict) -> dict:
    """JSON turns integer param ids into strings; turn them back."""
    state = dict(state)
    state["state"] = {int(k): v for k, v in state["state"].items()}
    return state


def previous_slot(directory: str | Path) -> Path:
    directory = Path(directory)
    return directory.with_name(directory.name + ".prev")


def next_slot(directory: str | Path) -> Path:
    directory = Path(directory)
    return directory.with_name(directory.name + ".next")


def has_checkpoint(directory: str | Path) -> bool:
    """Any slot exists (a crash between the renames leaves the staged next one and the previous one)."""
    return any(p.is_dir() for p in (Path(directory), previous_slot(directory), next_slot(directory)))


def recover(directory: str | Path) -> str | None:
    """Finish a save that a crash cut between its renames: a staged DIR.next (written whole, then renamed) that
    reads completes the rotation and becomes the newest slot; one that does not read is removed. Returns what
    was done, to be said out loud (None when there was nothing to do). Rank 0 only, before any rank reads."""
    directory, staged = Path(directory), next_slot(directory)
    if not staged.is_dir():
        return None
    try:
        step = int(json.loads((staged / META_FILE).read_text())["step"])
        load_safetensors(staged / STATE_FILE)
    except (OSError, ValueError, KeyError, CheckpointError) as err:
        shutil.rmtree(staged)
        return f"removed {staged}, an unfinished checkpoint that does not read ({err}); resuming from the older slots"
    if directory.is_dir():
        shutil.rmtree(previous_slot(directory), ignore_errors=True)
        directory.rename(previous_slot(directory))
    staged.rename(directory)
    _fsync(directory.parent)
    return f"{staged} (step {step}) was complete but a crash stopped it between renames: verified, and used"


def checkpoint_meta(directory: str | Path) -> dict | None:
    """The step and extra of the newest slot whose metadata reads (None: no checkpoint), without loading
    tensors: what a resume checks before it touches any module."""
    for slot in (Path(directory), previous_slot(directory)):
        try:
            meta = json.loads((slot / META_FILE).read_text())
            return {"step": int(meta["step"]), "extra": meta.get("extra", {})}
        except (OSError, ValueError, KeyError):
            continue
    return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def nonfinite_tensors(modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> list[str]:
    """Names of the floating-point tensors (module weights and buffers, optimizer state) holding NaN or inf,
    checked where they live (no copies)."""
    def walk(prefix: str, obj):
        if isinstance(obj, torch.Tensor):
            yield prefix, obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                yield from walk(f"{prefix}.{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                yield from walk(f"{prefix}.{i}", v)

    states = {**{f"m.{k}": m.state_dict() for k, m in modules.items()},
              **{f"o.{k}": o.state_dict() for k, o in optimizers.items()}}
    floats = [(name, t) for key, state in states.items() for name, t in walk(key, state) if t.is_floating_point()]
    if not floats:
        return []
    device = floats[0][1].device  # one host read for all of them (a GPU waits once per checkpoint)
    bad = torch.stack([(~t.isfinite()).any().to(device) for _, t in floats]).tolist()
    return [name for (name, _), b in zip(floats, bad) if b]


def save_training_state(directory: str | Path, modules: dict[str, torch.nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer], step: int, extra: dict | None = None) -> Path:
    """Everything needed to continue bit-exactly: weights, optimizer moments, step and RNG. The newest
    checkpoint moves to the previous slot; the new one is complete on disk before it takes its place."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    meta = {
        "step": step,
        "extra": extra or {},
        "modules": {k: _flatten(f"m.{k}", m.state_dict(), tensors) for k, m in modules.items()},
        "optimizers": {k: _flatten(f"o.{k}", o.state_dict(), tensors) for k, o in optimizers.items()},
        "rng": _flatten("rng", torch.get_rng_state(), tensors),
    }
    prev, staged = previous_slot(directory), next_slot(directory)
    with atomic_dir(staged) as tmp:
        save_file(tensors, str(tmp / STATE_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta))
        for f in (tmp / STATE_FILE, tmp / META_FILE, tmp):
            _fsync(f)
    if directory.is_dir():
        shutil.rmtree(prev, ignore_errors=True)
        directory.rename(prev)
    staged.rename(directory)
    _fsync(directory.parent)
    return directory


def load_training_state(directory: str | Path, modules: dict[str, torch.nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer], fresh: list[str] | None = None
                        ) -> tuple[int, dict]:
    """Restore in place from the newest whole slot; returns (step, extra). With a `fresh` list, modules and
    optimizers the checkpoint does not hold (a stage switched on at resume: GAN, feature alignment) keep
    their new initial state and are named in it; without one they are an error."""
    directory = Path(directory)
    errors = []
    for slot in (directory, previous_slot(directory)):
        if not slot.is_dir():
            continue
        try:
            step, extra = _load_slot(slot, modules, optimizers, fresh)
        except CheckpointError as err:
            errors.append(str(err))
            continue
        if errors:
            extra = {**extra, "fallback": f"newest checkpoint unreadable ({errors[0]}); resumed from {slot}"}
        return step, extra
    if not errors:
        raise CheckpointError(f"no training state in {directory}")
    raise CheckpointError(f"no readable training state in {directory} or its previous slot: {'; '.join(errors)}")


def _load_slot(directory: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
               fresh: list[str] | None) -> tuple[int, dict]:
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read training state in {directory}: {err}") from err
    tensors = load_safetensors(directory / STATE_FILE)
    try:
        for kind, items in (("modules", modules), ("optimizers", optimizers)):
            for k, obj in items.items():
                if k not in meta[kind] and fresh is not None:
                    fresh.append(k)
                    continue
                state = _unflatten(meta[kind][k], tensors)
                obj.load_state_dict(_optimizer_state(state) if kind == "optimizers" else state)
        torch.set_rng_state(_unflatten(meta["rng"], tensors))
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"training state in {directory} does not match this run: {err}") from err
    return int(meta["step"]), meta["extra"]
