"""Core ML (.mlpackage, mlprogram): fp16; int8 weights; int4 block-wise weights (iOS 18); 4-bit
palettization. (W8A8 needs activation calibration by Core ML prediction, which runs only on macOS.)

Core ML predicts only on macOS. Here we check what can be checked: conversion succeeds, no MIL op
known to leave the Neural Engine path, every tensor rank <= 5, and the weights as coremltools
decompresses them, loaded back into the PyTorch mobile graph and run with fp16 activations, reproduce
the fp32 student within the precision's tolerance."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from turbovaed.export.recipe import ConvertOptions

# Weights/activations per precision (what the estimates and profile records state): Core ML computes in
# fp16 on GPU and ANE whatever the weight format.

# MIL ops that run on the Neural Engine in mlprogram form for these graphs; anything else is flagged.
ANE_FRIENDLY = {"const", "conv", "add", "mul", "sub", "rsqrt", "silu", "sigmoid", "relu", "reshape", "transpose", "concat",
                "slice_by_index", "pixel_shuffle", "cast", "linear", "matmul", "real_div",
                "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense", "constexpr_affine_dequantize"}


def _target(precision: str):
    import coremltools as ct

    return ct.target.iOS18 if precision == "int4" else ct.target.iOS17


def convert(model: torch.nn.Module, example: tuple, options: ConvertOptions, calib: list[tuple], out: Path,
            names: tuple[list[str], list[str]]) -> dict:
    import coremltools as ct
    from coremltools.optimize.coreml import (
        OpLinearQuantizerConfig,
        OpPalettizerConfig,
        OptimizationConfig,
        linear_quantize_weights,
        palettize_weights,
    )

    inputs, outputs = names
    program = torch.export.export(model, example).run_decompositions({})
    mlmodel = ct.convert(program, inputs=[ct.TensorType(name=n, shape=tuple(x.shape)) for n, x in zip(inputs, example)],
                         outputs=[ct.TensorType(name=n) for n in outputs], minimum_deployment_target=_target(options.precision),
                         compute_precision=ct.precision.FLOAT16, convert_to="mlprogram")
    p = options.precision
    skip = tuple(f"p_{k.replace('.', '_')}" for k in options.keep_float)
    kept = [op.name for fn in mlmodel._mil_program.functions.values() for op in fn.operations
            if op.op_type == "const" and skip and op.name.startswith(skip)]

    def config(global_config) -> OptimizationConfig:
        """Mixed precision: the recipe's keep_float modules keep fp16 weights."""
        return OptimizationConfig(global_config=global_config, op_name_configs={n: None for n in kept})

    if p == "int8":
        mlmodel = linear_quantize_weights(mlmodel, config(OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")))
    elif p == "int4":
        mlmodel = linear_quantize_weights(mlmodel, config(OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=options.group_size)))
    elif p == "palettize4":
        mlmodel = palettize_weights(mlmodel, config(OpPalettizerConfig(nbits=4, mode="kmeans")))
    mlmodel.save(str(out / "decoder.mlpackage"))
    ops, max_rank = {}, 0
    for fn in mlmodel._mil_program.functions.values():
        for op in fn.operations:
            ops[op.op_type] = ops.get(op.op_type, 0) + 1
            max_rank = max([max_rank] + [o.rank for o in op.outputs if o.rank is not None])
    off_ane = sorted(k for k in ops if k not in ANE_FRIENDLY)
    return {
        "artifact": "decoder.mlpackage",
        "ops": {"op_types": ops, "total": sum(ops.values()), "max_rank": max_rank, "ops_off_neural_engine_path": off_ane,
                "kept_float_weights": len(kept)},
        "minimum_deployment_target": str(_target(p)),
        "verified_by": "coremltools-decompressed weights in the PyTorch mobile graph, fp16 activations (CPU)",
        "weights_only_check": True,  # the .mlpackage itself is not run here: status says so
        "not_checked_here": ["Core ML prediction (macOS/iOS only): the .mlpackage was converted and inspected, "
                             "not run", "Neural Engine placement (needs an Apple device)"],
    }


def decompressed_weights(path: Path) -> dict[str, np.ndarray]:
    """Weights as Core ML will use them: the saved program parsed back by coremltools, constexpr
    (compressed) weights materialized, by MIL name."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.models import utils

    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    program = utils._convert_model_spec_to_pymil_prog(mlmodel, mlmodel.get_spec().specificationVersion, milproto.load)
    out = {}
    for fn in program.functions.values():
        feeds_constexpr = {v.op.name for op in fn.operations if op.op_type.startswith("constexpr")
                           for v in op.inputs.values() if getattr(v, "op", None) is not None}
        for op in fn.operations:
            if op.name in feeds_constexpr:  # quantized data / scales / LUTs: not weights themselves
                continue
            if op.op_type.startswith("constexpr"):
                out[op.name] = op.materialized_val_inference()
            elif op.op_type == "const" and op.name.startswith("p_") and op.outputs[0].val is not None:
                out[op.name] = np.asarray(op.outputs[0].val)
    return out


def runner(artifact: Path, model=None, options: ConvertOptions | None = None):
    """Weight-level numerics: load the decompressed weights into a copy of the mobile graph and run it
    with fp16 activations, the way Core ML computes on GPU/ANE. Weights of modules the graph never runs
    for this input size (a tap that sees no frame) are not in the program and need none."""
    weights = decompressed_weights(artifact)
    nets: list[torch.nn.Module] = []

    def load(xs: tuple[torch.Tensor, ...]) -> torch.nn.Module:
        net = copy.deepcopy(model).eval()
        ran = used_modules(net, xs)
        with torch.no_grad():
            for name, param in net.named_parameters():
                if name.rpartition(".")[0] not in ran:
                    continue
                key = "p_" + name.replace(".", "_") + "_to_fp16"
                match = next((v for k, v in weights.items() if k == key or k.startswith(key + "_")), None)
                if match is None:  # coremltools merges identical constants: find the twin by value
                    want = param.detach().half().float().numpy()
                    match = next((v for v in weights.values() if np.size(v) == want.size and
                                  np.allclose(np.asarray(v, dtype=np.float32).reshape(want.shape), want, atol=1e-3)),
                                 None)
                if match is None:
                    raise RuntimeError(f"Core ML program has no weight for {name} (looked for {key})")
                param.copy_(torch.from_numpy(np.asarray(match, dtype=np.float32)).reshape(param.shape))
        return net.half()

    def run(*xs: torch.Tensor) -> list[torch.Tensor]:
        if not nets:
            nets.append(load(xs))
        with torch.no_grad():
            ys = nets[0](*[x.half() for x in xs])
        return [y.float() for y in (ys if isinstance(ys, (tuple, list)) else (ys,))]

    return run


def used_modules(net: torch.nn.Module, xs: tuple[torch.Tensor, ...]) -> set[str]:
    """Names of the modules a forward on these inputs runs."""
    ran: set[str] = set()
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: ran.add(name)) for name, m in net.named_modules()]
    try:
        with torch.no_grad():
            net(*xs)
    finally:
        for h in hooks:
            h.remove()
    return ran
