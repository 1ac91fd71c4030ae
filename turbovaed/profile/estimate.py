"""Latency estimates per device x compute unit x precision, from the student's per-layer MACs and bytes
moved. Always stored with source = "estimate" and the inputs used, never as a measurement.

Per layer (every conv / linear of the mobile graph; norms, SiLUs, adds, temporal padding and pixel
shuffles as memory-only passes): roofline = max(2 * MACs / peak, bytes / bandwidth), summed. That is a
lower bound for a perfect kernel library; calibration.py turns it into an estimate (per-call cost +
per-operator dispatch + a roofline factor per unit, fitted on measurements of known conv nets)
and states its leave-one-out error. Units without calibration points keep the bare roofline, labelled."""

from __future__ import annotations

import math
import re

from torch import nn

from turbovaed.profile.devices import Device, Unit
from turbovaed.student import StudentConfig, StudentDecoder

# What each unit computes in: GPU delegates (LiteRT GPU, Core ML GPU) and the Neural Engine run fp16
# whatever the weights, and NPU delegates run float graphs in fp16 (Qualcomm HTP); CPUs (XNNPACK) compute at
# the artifact's activation width.
FP16_UNITS = ("gpu", "ane")
COMPUTE_FOR_BITS = {8: "int8", 16: "fp16", 32: "fp32"}


def weight_activation_bits(runtime: str, precision: str, unit: str) -> tuple[float, int]:
    """(weight bits, activation bits the unit moves and computes in) for an artifact on a unit, from the
    backend's stated precision meaning (W8A8, W4A16 weight-only, ...): activations are the compute dtype."""
    from turbovaed.export.core import precision_meaning

    m = re.match(r"W(\d+)A(\d+)", precision_meaning(runtime, precision))
    w_bits, a_bits = int(m.group(1)), int(m.group(2))
    if unit in FP16_UNITS or (unit == "npu" and a_bits > 8):
        a_bits = 16
    return w_bits, a_bits




class Costs(list):
    """Per-layer cost entries of one call, plus `ops`: how many operators the runtime dispatches."""

    ops: int = 0


# Operators counted apart from the dispatch count: metadata, and clamp-type activations, which the runtimes
# that fuse them (Backend.fusion) run inside the conv and the others as ops of their own (the ReLU entries).
NOT_DISPATCHED = {"detach", "alias", "empty", "t", "hardtanh", "hardtanh_", "relu", "relu_", "clamp", "clamp_"}


def counting_ops():
    """A dispatch mode counting the operators a forward executes (aten level, on the meta device): what a
    runtime dispatches one by one, and what the calibration's per-op cost multiplies. The student's count
    matches its exported graphs (157 vs 158 ONNX nodes for the quickstart student)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func.__name__.split(".")[0] not in NOT_DISPATCHED
            return func(*args, **(kwargs or {}))

    return Count()


def traced_costs(model: nn.Module, x, passes: dict) -> Costs:
    """[{name, macs, act_elems, weight_elems}] per dispatched layer of one forward on the meta device: every
    Conv2d / Linear, plus the memory-only modules named in `passes` (type name -> passes over the output, or
    fn(module) -> that number or fn(x, out) -> elements moved; 0 = none). Each nn.ReLU is an entry marked
    "relu": a pass of its own only on runtimes that do not fuse it (`for_backend`)."""
    costs = Costs()

    def conv(name: str):
        def fn(module: nn.Module, inputs, out) -> None:
            per_out = math.prod(module.weight.shape[1:]) if isinstance(module, nn.Conv2d) else module.in_features
            costs.append({"name": name, "macs": out.numel() * per_out, "act_elems": inputs[0].numel() + out.numel(),
                          "weight_elems": module.weight.numel()})
        return fn

    def memory(name: str, n):
        def fn(module: nn.Module, inputs, out) -> None:
            out = out[0] if isinstance(out, tuple) else out  # decoder blocks return (frames, frame count)
            costs.append({"name": name, "macs": 0, "act_elems": n(inputs[0], out) if callable(n) else n * out.numel(),
                          "weight_elems": 0})
        return fn

    def relu(name: str):
        def fn(module: nn.Module, inputs, out) -> None:
            costs.append({"name": name, "macs": 0, "act_elems": 2 * out.numel(), "weight_elems": 0, "relu": True})
        return fn

    def attention(name: str):
        def fn(module: nn.Module, inputs, out) -> None:
            n, c, h, w = inputs[0].shape  # the (h*w)^2 score matrix is written and read once per frame
            costs.append({"name": name, "macs": module.attention_macs(inputs[0]),
                          "act_elems": 2 * n * (h * w) ** 2 + 4 * inputs[0].numel(), "weight_elems": 0})
        return fn

    for name, m in model.named_modules():
        kind = type(m).__name__
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not name.endswith(".mean"):
            m.register_forward_hook(conv(name))
        elif hasattr(m, "attention_macs"):
            m.register_forward_hook(attention(name))
        elif isinstance(m, nn.ReLU):
            m.register_forward_hook(relu(name))
        elif kind in passes:
            n = passes[kind](m) if callable(passes[kind]) else passes[kind]
            if n:
                m.register_forward_hook(memory(name, n))
    with counting_ops() as counter:
        model(x)
    costs.ops = counter.n
    return costs


def _tap_passes(m: nn.Module):
    """TapConv2d: the cat for the temporal padding + one add per extra tap (3 passes); none for one tap."""
    k = len(m.taps)
    return (lambda x, y: 2 * x.numel() * (1 + 2 / max(1, x.shape[0])) + 3 * (k - 1) * y.numel()) if k > 1 else 0


def _mem_passes(m: nn.Module):
    """A memory block (ours or TAEHV's): the input one frame earlier (a cat over frames: read x, write x and
    one frame), the channel cat with it (read 2x, write 2x) and the residual add (3 passes). Its ReLUs are
    entries of their own (`relus_fused`)."""
    return lambda x, y: 2 * x.numel() * (1 + 1 / max(1, x.shape[0])) + 4 * x.numel() + 3 * y.numel()


# Memory-only passes per module type of any decoder's 2D graph (ours and the decoders people use), counted
# alike for all: elementwise ops read and write (2 passes), binary ops read two and write one (3), copies 2.
PASSES = {"MobileRMSNorm": 5,  # x*x, its channel-mean conv, rsqrt, scale, multiply
          "TapConv2d": _tap_passes, "CausalTaps": _tap_passes,
          "MobileResBlock": 7,  # two SiLUs (2 passes each) and the residual add (3)
          "MobilePixelShuffle3d": 2, "PixelShuffle": 2,  # the depth-to-space copy
          "MobileMemBlock": _mem_passes, "MemBlock": _mem_passes, "SuperMemBlock": _mem_passes,
          "MobileStandardize": 7,  # subtract the mean, square, its mean conv, rsqrt, multiply
          "MobileResnetBlock": 7, "MobileUpsampler": 2, "MobileFrameUpsampler": 4,
          "MobileResidualBlockFast": 7, "MobileResidualBlock2D": 7, "MobileResample": 3,
          "Upsample": 1, "Clamp": 2}


def costs_of(decoder, latent_shape: tuple[int, int, int]) -> Costs:
    """Per-layer costs of one decode of latents (T, h, w) by the exported 2D graph of a decoder: a student
    (its StudentConfig) or a decoder family's variant (turbovaed.decoders, what a decoder file's artifacts
    run, without the file). One code path for both, so their estimates compare."""
    import torch

    from turbovaed import decoders

    with torch.device("meta"):
        if isinstance(decoder, StudentConfig):
            model = StudentDecoder(decoder).to_mobile()
        else:
            module = decoders.build(decoder)
            model = module.to_mobile() if hasattr(module, "to_mobile") else decoders.canonical(module)
    return traced_costs(model, torch.empty(1, decoder.latent_channels, *latent_shape, device="meta"), PASSES)


def roofline(costs: list[dict], unit: Unit, w_bits: float, a_bits: int) -> dict:
    """Roofline seconds per call on one compute unit (weights at w_bits, activations moved and computed at
    a_bits), with the inputs that produced it: a lower bound for a perfect kernel library and no per-call or
    per-operator cost."""
    compute = COMPUTE_FOR_BITS[a_bits]
    act, wgt = a_bits / 8, w_bits / 8
    peak = unit.peak_gflops(compute) * 1e9
    bw = unit.bandwidth_gbs * 1e9
    seconds, bound_by_memory = 0.0, 0
    for c in costs:
        t_compute = 2 * c["macs"] / peak
        t_memory = (c["act_elems"] * act + c["weight_elems"] * wgt) / bw
        seconds += max(t_compute, t_memory)
        bound_by_memory += t_memory > t_compute
    return {"roofline_seconds": seconds, "macs": sum(c["macs"] for c in costs), "layers": len(costs),
            "ops": getattr(costs, "ops", len(costs)),
            "memory_bound_layers": bound_by_memory,
            "bytes": sum(c["act_elems"] * act + c["weight_elems"] * wgt for c in costs), "weight_bits": w_bits,
            "activation_bits": a_bits, "compute": compute, "peak_gflops": peak / 1e9, "bandwidth_gbs": unit.bandwidth_gbs,
            "unit_source": unit.source}


def calibration_class(unit: str, compute: str, runtime: str) -> str:
    """The fit an estimate uses (it may have no points yet: then the estimate is a labelled bound). CPU speed
    depends on the kernel library as much as on the chip (XNNPACK, ONNX Runtime's MLAS, Core ML each get a fit);
    GPUs one per runtime; NPUs and the Neural Engine are reached by one stack each."""
    from turbovaed.export.backends import BACKENDS

    if unit == "cpu":
        library = next((b.cpu_library for b in BACKENDS.values() if runtime in (b.name, b.runtime)), runtime)
        return f"cpu-{compute}-{library}"
    return f"gpu-{compute}-{runtime}" if unit == "gpu" else f"{unit}-{compute}"


def estimate(costs: list[dict], unit: Unit, w_bits: float, a_bits: int, unit_name: str, runtime: str,
             fits: dict, dynamic: bool = False, device_id: str = "") -> dict:
    """Seconds per call: the roofline through the unit's calibration (per-call + per-op cost + roofline factor,
    fitted on measured conv nets) where one exists, else the bare roofline, labelled uncalibrated. Dynamic-
    activation kernels (quantizing per call) are unlike the static W8A8 ones the int8 classes were fitted on."""
    est = roofline(costs, unit, w_bits, a_bits)
    cls = calibration_class(unit_name, est["compute"], runtime)
    fit = None if dynamic else fits.get(f"{cls}@{device_id}") or fits.get(cls)  # the device's own fit first
    est["calibration"] = fit.describe() if fit else None
    est["seconds"] = fit.predict(est["ops"], est["roofline_seconds"]) if fit else est["roofline_seconds"]
    return est


def relus_fused(costs: Costs, fused: bool) -> Costs:
    """The costs on a runtime that runs each ReLU inside the conv before it (no pass, no op) or not (its entry's
    passes and one dispatched op each)."""
    kept = Costs(c for c in costs if not (fused and c.get("relu")))
    kept.ops = getattr(costs, "ops", len(costs)) + (0 if fused else sum(1 for c in costs if c.get("relu")))
    return kept


def for_backend(costs: Costs, backend) -> Costs:
    """The costs as `backend`'s runtime runs them (Backend.fusion)."""
    return relus_fused(costs, backend.fusion.relu == "fused")


def device_estimates(device: Device, costs: list[dict], runtime: str, precision: str, fits: dict) -> dict[str, dict]:
    """Estimate per compute unit of `device` that `runtime` can use (none if the device lacks the runtime)."""
    if runtime not in device.runtimes:
        return {}
    from turbovaed.export.backends import get

    backend = get(runtime)
    costs = for_backend(costs, backend)
    units = list(backend.device_units)
    w_bits, a_bits = weight_activation_bits(runtime, precision, "npu")
    if backend.npu and ((w_bits, a_bits) == (8, 8) or w_bits >= 16):
        units.append("npu")  # NPU delegates (QNN for LiteRT, the QNN EP for ONNX) run W8A8 and float graphs
    dynamic = "dynamic" in backend.meaning(precision)
    return {u: estimate(costs, device.units[u], *weight_activation_bits(runtime, precision, u), u, runtime, fits, dynamic,
                        device.id) for u in units if u in device.units}


def candidates(float_only: bool = False) -> list[tuple[str, str]]:
    """Every (backend, precision) a decoder deploys as, static quantization only."""
    from turbovaed.export.backends import BACKENDS

    return [(b.name, p) for b in BACKENDS.values() for p in b.precisions
            if "dynamic" not in p and (not float_only or p in ("fp32", "fp16"))]


def best_cell(device: Device, costs: list[dict], frames: int, fits: dict, float_only: bool = False) -> dict:
    """A decoder's fastest deployment on a device: {"estimate": the best calibrated cell, "roofline_bound": the
    best uncalibrated bound where it beats that (labelled, not an estimate)}; each cell has fps, runtime,
    precision, unit and the calibration's worst leave-one-out ratio."""
    cal, bound = None, None
    for backend, precision in candidates(float_only):
        for unit, est in device_estimates(device, costs, backend, precision, fits).items():
            cell = {"fps": frames / est["seconds"], "runtime": backend, "precision": precision, "unit": unit,
                    "loo": (est["calibration"] or {}).get("worst_leave_one_out_ratio")}
            if est["calibration"]:
                cal = cell if cal is None or cell["fps"] > cal["fps"] else cal
            elif bound is None or cell["fps"] > bound["fps"]:
                bound = cell
    return {"estimate": cal, "roofline_bound": bound if bound and (cal is None or bound["fps"] > cal["fps"]) else None}
