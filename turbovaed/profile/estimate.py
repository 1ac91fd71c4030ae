"""Roofline latency estimates per device x compute unit x precision, from the student's per-layer MACs and
bytes moved. Always stored with source = "estimate" and the inputs used, never as a measurement.

Per layer (every conv / linear of the mobile graph; norms, SiLUs, adds, temporal padding and pixel
shuffles as memory-only passes): time = max(2 * MACs / peak, bytes / bandwidth), summed. This is a
lower bound for a perfect kernel library; the host check (estimate vs measurement on this machine)
gives the error bar to quote."""

from __future__ import annotations

import re

from torch import nn

from turbovaed.profile.devices import Device, Unit
from turbovaed.student import StudentConfig, StudentDecoder

# What each unit computes in: GPU delegates (LiteRT GPU, Core ML GPU) and the Neural Engine run fp16
# whatever the weights; CPUs (XNNPACK) and NPUs compute at the artifact's activation width.
FP16_UNITS = ("gpu", "ane")
COMPUTE_FOR_BITS = {8: "int8", 16: "fp16", 32: "fp32"}


def weight_activation_bits(runtime: str, precision: str, unit: str) -> tuple[float, int]:
    """(weight bits, activation bits the unit moves and computes in) for an artifact on a unit, from the
    backend's stated precision meaning (W8A8, W4A16 weight-only, ...): activations are the compute dtype."""
    from turbovaed.export.core import precision_meaning

    m = re.match(r"W(\d+)A(\d+)", precision_meaning(runtime, precision))
    w_bits, a_bits = int(m.group(1)), int(m.group(2))
    if unit in FP16_UNITS:
        a_bits = 16
    return w_bits, a_bits


# Runtimes whose W8A8 artifacts run on a phone NPU through a vendor delegate (Qualcomm QNN: LiteRT's QNN
# delegate, ONNX Runtime's QNN execution provider).
NPU_RUNTIMES = ("litert", "onnx")
# Which compute units each runtime's artifacts can use on a device.
RUNTIME_UNITS = {"coreml": ("ane", "gpu", "cpu"), "executorch": ("cpu",), "litert": ("cpu", "gpu"), "onnx": ("cpu",),
                 "pytorch": ("cpu",)}


def layer_costs(config: StudentConfig, latent_shape: tuple[int, int, int]) -> list[dict]:
    """[{name, macs, act_elems, weight_elems}] for one decode of latents (T, h, w), on the meta device."""
    import torch

    with torch.device("meta"):
        model = StudentDecoder(config).to_mobile()
    costs = []

    def hook(name: str):
        def fn(module: nn.Module, inputs, out) -> None:
            x = inputs[0]
            per_out = module.weight[0].numel() if isinstance(module, nn.Conv2d) else module.in_features
            costs.append({"name": name, "macs": out.numel() * per_out, "act_elems": x.numel() + out.numel(),
                          "weight_elems": module.weight.numel()})
        return fn

    def passes(name: str, n: float):  # memory-only work: n full passes (read or write) over the output
        def fn(module: nn.Module, inputs, out) -> None:
            costs.append({"name": name, "macs": 0, "act_elems": n(inputs[0], out) if callable(n) else n * out.numel(),
                          "weight_elems": 0})
        return fn

    for name, m in model.named_modules():
        kind = type(m).__name__
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not name.endswith(".mean"):
            m.register_forward_hook(hook(name))
        elif kind == "MobileRMSNorm":  # x*x, scale, multiply: ~5 passes
            m.register_forward_hook(passes(name, 5))
        elif kind == "TapConv2d" and len(m.taps) > 1:  # cat for the padding + one add per extra tap (3 passes)
            m.register_forward_hook(passes(name, lambda x, y, k=len(m.taps): 2 * x.numel() * (1 + 2 / max(1, x.shape[0]))
                                           + 3 * (k - 1) * y.numel()))
        elif kind == "MobileResBlock":  # two SiLUs (2 passes each) and the residual add (3)
            m.register_forward_hook(passes(name, 7))
        elif kind == "MobilePixelShuffle3d":  # the depth-to-space copy
            m.register_forward_hook(passes(name, 2))
    model(torch.empty(1, config.latent_channels, *latent_shape, device="meta"))
    return costs


def roofline(costs: list[dict], unit: Unit, precision: str, runtime: str, unit_name: str = "cpu") -> dict:
    """Estimated seconds per decode on one compute unit, with the inputs that produced it."""
    w_bits, a_bits = weight_activation_bits(runtime, precision, unit_name)
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
    macs = sum(c["macs"] for c in costs)
    return {"seconds": seconds, "macs": macs, "layers": len(costs), "memory_bound_layers": bound_by_memory,
            "bytes": sum(c["act_elems"] * act + c["weight_elems"] * wgt for c in costs), "weight_bits": w_bits,
            "activation_bits": a_bits, "compute": compute, "peak_gflops": peak / 1e9, "bandwidth_gbs": unit.bandwidth_gbs,
            "unit_source": unit.source}


def device_estimates(device: Device, costs: list[dict], runtime: str, precision: str) -> dict[str, dict]:
    """Roofline per compute unit of `device` that `runtime` can use (none if the device lacks the runtime)."""
    if runtime not in device.runtimes:
        return {}
    units = list(RUNTIME_UNITS.get(runtime, ("cpu",)))
    if runtime in NPU_RUNTIMES and weight_activation_bits(runtime, precision, "npu") == (8, 8):
        units.append("npu")  # W8A8 graphs are what NPU delegates (QNN for LiteRT, the QNN EP for ONNX) run
    return {u: roofline(costs, device.units[u], precision, runtime, u) for u in units if u in device.units}
