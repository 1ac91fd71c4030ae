"""TFLite/LiteRT (.tflite) via litert-torch: fp32; fp16 and int4 weights (ai-edge-quantizer); int8
dynamic and full-integer static (PT2E, calibrated). Verified with the ai-edge-litert interpreter."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from turbovaed.export.recipe import ConvertOptions

# Weights/activations per precision (what the estimates and profile records state).


def _pt2e(model: torch.nn.Module, example: tuple, calib: list[tuple], dynamic: bool, keep: list[str]):
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from turbovaed.export.quantize import outside_modules

    class KeepFloat(PT2EQuantizer):
        """The global config on every node outside the keep_float modules. (PT2EQuantizer's own
        set_module_name refuses None, and its name filter turns '_' into '.', missing names like conv_out.)"""

        def _annotate_for_static_quantization_config(self, model):
            return self._annotate_all_static_patterns(model, self.global_config, outside_modules(keep))

        def _annotate_for_dynamic_quantization_config(self, model):
            return self._annotate_all_dynamic_patterns(model, self.global_config, outside_modules(keep))

    quantizer = KeepFloat().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    with torch.no_grad():
        for inputs in calib:
            prepared(*inputs)
    return convert_pt2e(prepared, fold_quantize=False), QuantConfig(pt2e_quantizer=quantizer)


def _ai_edge_quantize(fp32: Path, target: Path, precision: str) -> None:
    from ai_edge_quantizer import quantizer, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName

    if precision == "fp16":
        manager = recipe_manager.RecipeManager()
        manager.add_weight_only_config(regex=".*", operation_name=TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                       algorithm_key=AlgorithmName.FLOAT_CASTING)
        chosen = manager.get_quantization_recipe()
    else:
        chosen = recipe.weight_only_wi4_afp32()
    q = quantizer.Quantizer(str(fp32))
    q.load_quantization_recipe(chosen)
    target.write_bytes(bytes(q.quantize().quantized_model))


def op_counts(path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    counts: dict[str, int] = {}
    for op in interp._get_ops_details():
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return {"op_types": counts, "total": sum(counts.values()),
            "conv_3d": counts.get("CONV_3D", 0), "flex_or_custom": sum(v for k, v in counts.items()
                                                                     if k.startswith(("FlexDelegate", "CUSTOM")))}


def convert(model: torch.nn.Module, example: tuple, options: ConvertOptions, calib: list[tuple], out: Path,
            names: tuple[list[str], list[str]]) -> dict:
    import litert_torch

    target = out / "decoder.tflite"
    p = options.precision
    if p in ("int8", "int8-dynamic"):
        quantized, config = _pt2e(model, example, calib, dynamic=p == "int8-dynamic", keep=options.keep_float)
        litert_torch.convert(quantized, example, quant_config=config).export(str(target))
    else:
        if options.keep_float and p != "fp32":
            from turbovaed.io import InputError

            raise InputError(f"keep_float is not supported for litert {p}: ai-edge-quantizer's weight-only recipes "
                             "select ops by TFLite tensor name, which does not carry module names; use litert int8 / "
                             "int8-dynamic (PT2E, by module name) or another backend")
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.tflite"
            litert_torch.convert(model, example).export(str(fp32))
            if p == "fp32":
                fp32.replace(target)
            else:
                _ai_edge_quantize(fp32, target, p)
    notes = {"int4": ["int4 = 4-bit channel-wise weights, float compute (ai-edge-quantizer weight-only)"],
             "int8": ["full-integer: int8 input/output tensors; quantize latents with the input scale/zero point"],
             }.get(p, [])
    return {"artifact": "decoder.tflite", "ops": op_counts(target), "notes": notes, "io": io_types(target)}


def io_types(artifact: Path) -> dict:
    """Per input / output (in argument order): its dtype and, for integer tensors, the scale and zero point an
    app must (de)quantize with: full-integer int8 graphs take and return int8."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(artifact))

    def describe(details: list[dict]) -> list[dict]:
        out = []
        for d in sorted(details, key=_position):
            entry = {"dtype": np.dtype(d["dtype"]).name}
            if d["dtype"] != np.float32:
                entry["quantization"] = {"scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1])}
            out.append(entry)
        return out

    return {"inputs": describe(interp.get_input_details()), "outputs": describe(interp.get_output_details())}


def _position(detail: dict) -> int:
    """Argument position of a tensor named like 'serving_default_args_10' / '..._output_3_output'."""
    return int(re.findall(r"(?:args|output)_(\d+)", detail["name"])[-1])


def runner(artifact: Path, model=None, options: ConvertOptions | None = None):
    """The model through the ai-edge-litert interpreter (XNNPACK delegate on by default). Inputs and outputs
    are matched to argument positions by name; int8 I/O is (de)quantized with each tensor's scale/zero point."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(artifact), num_threads=torch.get_num_threads())
    interp.allocate_tensors()
    inputs = sorted(interp.get_input_details(), key=_position)
    outputs = sorted(interp.get_output_details(), key=_position)

    def run(*xs: torch.Tensor) -> list[torch.Tensor]:
        for detail, x in zip(inputs, xs):
            x = x.numpy()
            if detail["dtype"] != np.float32:
                scale, zero = detail["quantization"]
                info = np.iinfo(detail["dtype"])
                x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])
            interp.set_tensor(detail["index"], x)
        interp.invoke()
        results = []
        for detail in outputs:
            y = interp.get_tensor(detail["index"])
            if detail["dtype"] != np.float32:
                scale, zero = detail["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            results.append(torch.from_numpy(np.array(y)))
        return results

    return run
