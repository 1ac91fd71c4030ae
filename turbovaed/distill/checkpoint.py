"""Training state (model, EMA, optimizer, step, RNG) in safetensors + JSON, written atomically.

Exact resume needs the optimizer moments and the RNG state, not just the weights; both are stored
as tensors (no pickles) so resuming never unpickles anything."""

from __future__ import annotations

import json
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


def save_training_state(directory: str | Path, modules: dict[str, torch.nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer], step: int, extra: dict | None = None) -> Path:
    """Everything needed to continue bit-exactly: weights, optimizer moments, step and RNG."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta = {
        "step": step,
        "extra": extra or {},
        "modules": {k: _flatten(f"m.{k}", m.state_dict(), tensors) for k, m in modules.items()},
        "optimizers": {k: _flatten(f"o.{k}", o.state_dict(), tensors) for k, o in optimizers.items()},
        "rng": _flatten("rng", torch.get_rng_state(), tensors),
    }
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / STATE_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta))
    return Path(directory)


def load_training_state(directory: str | Path, modules: dict[str, torch.nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer]) -> tuple[int, dict]:
    """Restore in place; returns (step, extra)."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read training state in {directory}: {err}") from err
    tensors = load_safetensors(directory / STATE_FILE)
    try:
        for k, m in modules.items():
            m.load_state_dict(_unflatten(meta["modules"][k], tensors))
        for k, o in optimizers.items():
            o.load_state_dict(_optimizer_state(_unflatten(meta["optimizers"][k], tensors)))
        torch.set_rng_state(_unflatten(meta["rng"], tensors))
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"training state in {directory} does not match this run: {err}") from err
    return int(meta["step"]), meta["extra"]
