"""Mixed precision by hand: `keep_float` in an export recipe names modules every backend leaves unquantized.
These helpers check the names and tell quantizers which graph nodes they may touch."""

from __future__ import annotations

import torch

from turbovaed.io import InputError


def check_keep_float(keep: list[str], mobile: torch.nn.Module) -> None:
    """Every keep_float entry must name a module of the graph (a name prefix at a dot boundary): a typo
    would otherwise quantize what the user meant to keep."""
    names = [n for n, _ in mobile.named_modules() if n]
    for k in keep:
        if not in_modules(names, [k]):
            top = sorted({n.split(".")[0] for n in names})
            raise InputError(f"keep_float names an unknown module {k!r}; the graph's modules are dotted names under "
                             f"{', '.join(top)} (e.g. {names[len(names) // 2]!r}; StudentDecoder.named_modules())")


def in_modules(scopes: list[str], keep: list[str]) -> bool:
    """Whether a graph node recorded under these module scopes belongs to a keep_float module."""
    return any(s == k or s.startswith(k + ".") for s in scopes for k in keep)


def outside_modules(keep: list[str]):
    """PT2E node filter: True for FX nodes outside every keep_float module (by the nn_module_stack the
    exporter records), i.e. the nodes a quantizer may annotate."""
    def allowed(node) -> bool:
        stack = node.meta.get("nn_module_stack") or {}
        return not in_modules([path for path, _ in stack.values()], keep)
    return allowed
