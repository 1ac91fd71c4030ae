"""One description per backend: everything turbovaed knows about a backend lives here and nowhere else.
Export reads its precisions and their meanings, the linear-pointwise need and its convert/runner module;
profile reads its runtime name, host compute unit, runtime module and phone runner; estimates read the
units its artifacts can use on a device and whether it reaches a phone NPU. Reading a description imports
nothing heavy: the backend's module (converters, runtimes) is imported by `module()` only when needed."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from turbovaed.io import InputError, TurboVAEDError


class MissingDependency(TurboVAEDError):
    pass


@dataclass(frozen=True)
class Fusion:
    """What a runtime does with the memory-only work around convs, which is what a memory-bound phone pays for.
    The estimator's passes follow these statements; tests check them against the converted graphs."""

    relu: str  # "fused": a ReLU runs inside the conv before it; "pass": a ReLU is an op of its own (2 passes)
    seen_in: str  # where the statement is checked
    concat: str = "copy"  # a channel or frame concat writes a new tensor on every runtime here
    depth_to_space: str = "copy"  # the pixel shuffle is a copy (one op, or a reshape/transpose pair)
    norm: str = "ops"  # RMSNorm runs as its elementwise ops (no fused norm kernel)


@dataclass(frozen=True)
class Backend:
    name: str
    precisions: dict[str, str]  # precision -> what it means in weight / activation bits
    runtime: str  # the runtime records name
    host_unit: str  # the compute unit of measurements on this machine
    runtime_module: str | None  # imported before an artifact is loaded here (None: no runtime here)
    version_package: str  # the package whose version a host record states
    device_units: tuple[str, ...]  # compute units its artifacts can use on a device (estimates)
    phone_runner: str | None = None  # the runtime's own benchmark tool, run over adb
    phone_units: tuple[str, ...] = ()
    npu: bool = False  # its 8-bit and float graphs reach a phone NPU through a vendor delegate (Qualcomm QNN)
    linear_pointwise: frozenset[str] = field(default_factory=frozenset)  # precisions needing nn.Linear pointwise
    host_label: str | None = None  # how host records name the runtime when it is not what a device runs
    cpu_library: str = ""  # the CPU kernel library its runtime uses (estimates fit one class per library)
    extra: str = "export"  # the pip extra that brings its packages
    fusion: Fusion = Fusion("pass", "not stated")

    def module(self):
        """The backend's convert / runner module, imported on first use; a missing package is one message."""
        try:
            return importlib.import_module(f"turbovaed.export.{self.name}_backend")
        except ImportError as err:
            raise MissingDependency(f"the {self.name} exporter needs the {self.extra} extras: pip install "
                                    f"'turbovaed[{self.extra}]' (missing: {err.name})") from err

    def meaning(self, precision: str, delegate: str = "xnnpack") -> str:
        if self.name == "executorch" and delegate == "coreml":
            return "fp32 weights; the Core ML delegate computes in fp16 on GPU/ANE (W32A16)"
        return self.precisions[precision]

    @property
    def host_runtime(self) -> str:
        return self.host_label or self.runtime


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("executorch", {
        "fp32": "W32A32", "int8": "W8A8 static (per-channel weights, calibrated activations)",
        "int4": "W4A8 dynamic (4-bit groupwise pointwise weights, int8 activations per call; depthwise convs fp32)"},
        runtime="executorch", host_unit="cpu/xnnpack", runtime_module="executorch.runtime",
        version_package="executorch", device_units=("cpu",), phone_runner="executor_runner", phone_units=("cpu",),
        cpu_library="xnnpack", linear_pointwise=frozenset({"int4"}),  # torchao's int4 path quantizes nn.Linear only
        fusion=Fusion("fused", "the XNNPACK delegate's payload: each ReLU is the output clamp of the conv before "
                               "it, no Clamp node (manifest ops.xnnpack)")),
    Backend("coreml", {
        "fp16": "W16A16", "int8": "W8A16 weight-only (int8 weights, fp16 compute)",
        "int4": "W4A16 weight-only (4-bit per-block weights, fp16 compute)",
        "palettize4": "W4A16 weight-only (4-bit k-means palette, fp16 compute)"},
        runtime="coreml", host_unit="ane", runtime_module=None, version_package="coremltools",
        device_units=("ane", "gpu", "cpu"), cpu_library="coreml",
        fusion=Fusion("pass", "the MIL program after coremltools' passes keeps `relu` ops (the Neural Engine "
                              "compiler may fuse them later, which cannot be seen here: counted)")),
    Backend("litert", {
        "fp32": "W32A32", "fp16": "W16A32 weight-only (fp16 weights, fp32 compute on CPU)",
        "int8": "W8A8 full-integer static (int8 inputs/outputs)",
        "int8-dynamic": "W8A8 dynamic (int8 weights, activations quantized per call)",
        "int4": "W4A32 weight-only (4-bit channel-wise weights, float compute)"},
        runtime="litert", host_unit="cpu/xnnpack", runtime_module="ai_edge_litert.interpreter",
        version_package="ai-edge-litert", device_units=("cpu", "gpu"), phone_runner="benchmark_model",
        phone_units=("cpu", "gpu"), npu=True, cpu_library="xnnpack",
        fusion=Fusion("fused", "the .tflite holds no RELU op: CONV_2D carries it as its fused activation")),
    Backend("onnx", {
        "fp32": "W32A32", "fp16": "W16A16 (fp32 graph inputs/outputs)",
        "int8": "W8A8 static QDQ (per-channel weights, calibrated activations)",
        "int4": "W4A16 QDQ (4-bit weights, 16-bit activations)"},
        runtime="onnxruntime", host_unit="cpu", runtime_module="onnxruntime", version_package="onnxruntime",
        device_units=("cpu",), npu=True, cpu_library="onnxruntime",
        fusion=Fusion("fused", "ONNX Runtime's optimised graph holds FusedConv with the activation, no Relu")),
    Backend("coreai", {
        "fp32": "W32A32 (fp32 weights and compute)", "fp16": "W16A16 (fp16 weights and compute)",
        "int8": "W8A16 weight-only (int8 per-channel weights, fp16 compute)",
        "int4": "W4A16 weight-only (4-bit weights in blocks of 32, fp16 compute)",
        "palettize4": "W4A16 weight-only (4-bit k-means palette per 16 output channels, fp16 compute; convs whose "
                      "output channels are not a multiple of 16 keep fp16 weights)"},
        runtime="coreai", host_unit="cpu", runtime_module="coreai.runtime", version_package="coreai-core",
        device_units=("ane", "gpu", "cpu"), host_label="coreai (Linux CPU reference runtime)", extra="coreai",
        cpu_library="coreai",
        fusion=Fusion("pass", "the Core AI program keeps `relu` ops")),
)}


def get(name: str) -> Backend:
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; expected one of {sorted(BACKENDS)}")
    return BACKENDS[name]
