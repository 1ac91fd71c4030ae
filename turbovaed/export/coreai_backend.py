"""Apple Core AI (.aimodel; iOS 27 / macOS 27): fp32, fp16; coreai-opt compression of the 2D convs: int8 and
block-wise int4 weights, 4-bit k-means palettization. (W8A8 with coreai-opt's default static activation
config, calibrated on the export's latents, ran on the runtime at 31.4 dB against the fp32 test student,
under the 34 dB floor: not offered.)

Converted with coreai-torch (torch.export with its decomposition table; fp16 by coreai-opt's 16-bit cast)
and verified by prediction: coreai-core's Linux wheel carries Apple's in-package Core AI runtime (a CPU
reference runtime), which runs every artifact here on held-out latents. ANE/GPU specialisation exists on
macOS 27 only. Streaming step graphs carry their causal state as explicit inputs and outputs."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib.util
import io
import weakref
from pathlib import Path

import numpy as np
import torch

from turbovaed.export.backends import BACKENDS
from turbovaed.export.recipe import ConvertOptions
from turbovaed.io import CheckpointError, InputError

for _package in ("coreai_torch", "coreai_opt", "coreai"):  # the coreai extra: one clear message when absent
    if importlib.util.find_spec(_package) is None:
        raise ImportError(f"No module named {_package!r}", name=_package)


def _quiet():
    """coreai-opt's per-layer warnings and progress bars go nowhere; errors still raise."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def _compress(model: torch.nn.Module, example: tuple, options: ConvertOptions) -> torch.nn.Module:
    """The coreai-opt compression of a precision, finalized for Core AI (fp32 and fp16: the model itself)."""
    p = options.precision
    if p in ("fp32", "fp16"):
        return model
    import coreai_opt as opt

    keep = {n: None for n, _ in model.named_modules() if n and any(n == k or n.startswith(k + ".")
                                                                   for k in options.keep_float)}
    if p == "palettize4":
        from coreai_opt.palettization import KMeansPalettizer, KMeansPalettizerConfig

        config = KMeansPalettizerConfig.presets.w4()
        palettizer = KMeansPalettizer(copy.deepcopy(model), config.model_copy(update={"module_name_configs": keep})
                                      if keep else config)
        palettizer.prepare(example)
        return palettizer.finalize(backend=opt.ExportBackend.CoreAI)
    from coreai_opt.quantization import Quantizer, QuantizerConfig
    from coreai_opt.quantization.config.quantization_config import ModuleQuantizerConfig, OpQuantizerConfig

    preset = {"int8": QuantizerConfig.presets.w8, "int4": QuantizerConfig.presets.w4_per_block}[p]().global_config
    off = OpQuantizerConfig(op_input_spec=None, op_output_spec=None, op_state_spec=None)
    # the norm gains are multiplied in (a mul has no per-channel axis): they stay fp16
    config = QuantizerConfig(
        global_config=ModuleQuantizerConfig(op_input_spec=preset.op_input_spec, op_output_spec=preset.op_output_spec,
                                            op_state_spec=preset.op_state_spec, op_type_config={"mul": off}),
        module_name_configs={name: ModuleQuantizerConfig(op_input_spec=None, op_output_spec=None, op_state_spec=None)
                             for name in keep})
    quantizer = Quantizer(copy.deepcopy(model), config)
    quantizer.prepare(example)
    return quantizer.finalize(backend=opt.ExportBackend.CoreAI)


def convert(model: torch.nn.Module, example: tuple, options: ConvertOptions, calib: list[tuple], out: Path,
            names: tuple[list[str], list[str]]) -> dict:
    import coreai_torch
    from coreai.authoring.asset import AIModelAsset
    from coreai_opt.casting import cast_to_16_bit_precision

    inputs, outputs = names
    try:
        with _quiet():
            compressed = _compress(model, example, options)
            program = torch.export.export(compressed, example).run_decompositions(coreai_torch.get_decomp_table())
            if options.precision != "fp32":
                cast_to_16_bit_precision(program)
            converter = coreai_torch.TorchConverter().add_exported_program(program, input_names=inputs,
                                                                             output_names=outputs)
            converter.to_coreai().save_asset(out / "decoder.aimodel")
    except ValueError as err:  # coreai-opt refuses a compression it cannot apply to these convs
        raise InputError(f"coreai-opt cannot apply {options.precision} to this graph: {err}") from err
    summary = AIModelAsset.load(str(out / "decoder.aimodel")).summary()
    dtype = "float32" if options.precision == "fp32" else "float16"
    ops = dict(_pairs(summary.operation_distribution))
    return {
        "artifact": "decoder.aimodel",
        "io": {"inputs": [{"dtype": dtype}] * len(inputs), "outputs": [{"dtype": dtype}] * len(outputs)},
        "ops": {"op_types": ops, "total": sum(ops.values()), "storage_types": dict(_pairs(summary.storage_types)),
                "compute_types": list(summary.compute_types)},
        "minimum_deployment_target": f"iOS / macOS {summary._compatibility_version}",
        "verified_by": f"prediction on {BACKENDS['coreai'].host_runtime}, {_version()}",
        "not_checked_here": ["Neural Engine / GPU specialisation (macOS 27 and iOS 27 only)",
                             "on-device speed: the Linux runtime is a CPU correctness runtime"],
        "notes": ["streaming state is explicit inputs/outputs (the state_* tensors), not Core AI states"]
        if len(inputs) > 1 else [],
    }


def _pairs(items) -> list[tuple[str, int]]:
    """coreai's summary lists '(name, count)' strings."""
    out = []
    for item in items:
        name, _, count = str(item).strip("()").rpartition(", ")
        out.append((name.strip("'\""), int(count)))
    return out


def _version() -> str:
    from importlib.metadata import version

    return f"coreai-core {version('coreai-core')}"


UNITS = ("ane", "gpu", "cpu")  # compute units the OS runtime specialises for (macOS 27 / iOS 27)


def specialization(unit: str):
    """Core AI's specialisation options preferring `unit`: the OS runtime of macOS 27 only (the Linux wheel's
    reference runtime has no delegates). Anywhere else one clear error."""
    import platform

    from coreai.runtime import SpecializationOptions

    if unit not in UNITS:
        raise InputError(f"Core AI compute units are {', '.join(UNITS)}, not {unit}")
    if platform.system() != "Darwin" or not SpecializationOptions.is_supported():
        raise InputError(f"Core AI specialises for {unit} only on macOS 27 with the OS Core AI runtime; this machine "
                         f"runs {platform.system()} {platform.release()} (its in-package runtime is a CPU reference "
                         "runtime: `turbovaed profile host` measures that). Run this on a Mac with macOS 27, or on "
                         "iPhone with device_apps/ios")
    from coreai.runtime import ComputeUnitKind  # exported by the macOS build only

    kind = {"ane": ComputeUnitKind.neural_engine, "gpu": ComputeUnitKind.gpu, "cpu": ComputeUnitKind.cpu}[unit]()
    return SpecializationOptions.from_preferred_compute_unit_kind(kind)


class Loaded:
    """One loaded .aimodel function: `run(*tensors)` checks shapes against the artifact's own descriptors,
    casts inputs to the dtypes it declares (fp16 unless fp32) and returns fp32 tensors in output order.
    `load_ms` is the load (with specialisation for `unit` on macOS 27). Closed when collected."""

    def __init__(self, artifact: Path, unit: str | None = None):
        import time

        from coreai.authoring.asset import AIModelAsset

        self.artifact = Path(artifact)
        if self.artifact.suffix != ".aimodel" or not (self.artifact / "metadata.json").is_file():
            raise CheckpointError(f"{self.artifact} is not a Core AI .aimodel folder (expected metadata.json inside)")
        options = None if unit is None else specialization(unit)
        asset = AIModelAsset.load(str(self.artifact))
        self._loop = asyncio.new_event_loop()
        t0 = time.perf_counter()
        self._session = asset.executable(specialization_options=options)
        with _quiet():
            program = self._loop.run_until_complete(self._session.__aenter__())
            self._fn = program.load_function(program.function_names[0])
        self.load_ms = (time.perf_counter() - t0) * 1000
        self.inputs, self.outputs = list(self._fn.desc.input_names), list(self._fn.desc.output_names)
        self._wants = {n: self._fn.desc.input_descriptor(n) for n in self.inputs}
        weakref.finalize(self, Loaded._close, self._loop, self._session)
        self._check_manifest()

    def _check_manifest(self) -> None:
        """An asset beside a manifest must take exactly the inputs the manifest describes (names and shapes):
        apps and profilers build their inputs from the manifest."""
        import json

        path = self.artifact.parent / "manifest.json"
        if not path.is_file():
            return  # during export the manifest is written after verification
        described = [(i["name"], list(i["shape"])) for i in json.loads(path.read_text()).get("inputs", [])]
        actual = [(n, list(self._wants[n].shape)) for n in self.inputs]
        if described != actual:
            raise InputError(f"{self.artifact} takes inputs {actual} but its manifest describes {described}: "
                             "the asset and manifest.json do not belong together (re-export the recipe)")

    def feed(self, *xs: torch.Tensor) -> dict:
        from coreai.runtime import NDArray

        if len(xs) != len(self.inputs):
            raise InputError(f"{self.artifact.name} takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), "
                             f"got {len(xs)}")
        for n, x in zip(self.inputs, xs):
            if list(x.shape) != list(self._wants[n].shape):
                raise InputError(f"{self.artifact.name} input {n!r} takes shape {list(self._wants[n].shape)}, "
                                 f"got {list(x.shape)}")
        return {n: NDArray(np.ascontiguousarray(x.detach().numpy().astype(self._wants[n].dtype)))
                for n, x in zip(self.inputs, xs)}

    def call(self, feed: dict) -> dict:
        """One prediction on prepared inputs (what a timer measures)."""
        return self._loop.run_until_complete(self._fn(feed))

    def run(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        got = self.call(self.feed(*xs))
        return [torch.from_numpy(np.array(got[n].numpy(), dtype=np.float32)) for n in self.outputs]

    @staticmethod
    def _close(loop, session) -> None:
        loop.run_until_complete(session.__aexit__(None, None, None))
        loop.close()


def runner(artifact: Path, model=None, options: ConvertOptions | None = None):
    """Run the .aimodel on the Core AI runtime of this machine (one executable loaded and kept for every call)."""
    return Loaded(artifact).run
