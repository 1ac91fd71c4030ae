"""ONNX (.onnx, one file, opset 21) for onnxruntime and the browser: fp32, fp16 (fp32 I/O), int8 QDQ
(static, per-channel, calibrated), int4 QDQ weights with int16 activations (opset 21 QDQ types)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from turbovaed.export.quantize import in_modules
from turbovaed.export.recipe import ConvertOptions
from turbovaed.io import TurboVAEDError

# Weights/activations per precision (what the estimates and profile records state).

OPSET = 21


class _Reader:
    """onnxruntime CalibrationDataReader over our calibration latents."""

    def __init__(self, names: list[str], calib: list[tuple]) -> None:
        self.items = iter([{n: x.numpy() for n, x in zip(names, inputs)} for inputs in calib])

    def get_next(self):
        return next(self.items, None)

    def rewind(self) -> None:  # onnxruntime may call it; one pass is all we give
        pass


def op_counts(path: Path) -> dict:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return {"op_types": counts, "total": sum(counts.values())}


def kept_nodes(model, keep: list[str]) -> set[str]:
    """Names of the nodes the exporter recorded under a keep_float module (its name_scopes metadata: the
    module path of each node, e.g. ['', 'conv_out', 'conv_out.conv', ...]), which quantization must skip."""
    import ast

    if not keep:
        return set()
    names = set()
    for n in model.graph.node:
        meta = {p.key: p.value for p in n.metadata_props}
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        if n.op_type not in ("Constant",) and in_modules(scopes, keep):
            names.add(n.name)
    return names


def convert(model: torch.nn.Module, example: tuple, options: ConvertOptions, calib: list[tuple], out: Path,
            names: tuple[list[str], list[str]]) -> dict:
    import onnx

    target = out / "decoder.onnx"
    inputs, outputs = names
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        program = torch.onnx.export(model, example, dynamo=True, opset_version=OPSET, input_names=inputs,
                                    output_names=outputs, verbose=False)
        program.save(str(fp32), external_data=False)
        kept = kept_nodes(onnx.load(str(fp32)), options.keep_float)
        if options.precision == "fp32":
            fp32.replace(target)
        elif options.precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True, node_block_list=sorted(kept)),
                      str(target))
        else:
            from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
            from onnxruntime.quantization.shape_inference import quant_pre_process

            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32), str(pre))
            int4 = options.precision == "int4"
            excluded = [n.name for n in onnx.load(str(pre)).graph.node if n.name in kept]
            if len(excluded) < len(kept):
                raise TurboVAEDError(f"keep_float: {len(kept) - len(excluded)} of the kept modules' ONNX nodes were "
                                     "renamed by onnxruntime's pre-processing; cannot exclude them by name")
            def quantize(path: Path, reduce_range: bool) -> Path:
                quantize_static(str(pre), str(path), _Reader(inputs, calib), quant_format=QuantFormat.QDQ,
                                per_channel=True, reduce_range=reduce_range,
                                activation_type=QuantType.QInt16 if int4 else QuantType.QInt8,
                                weight_type=QuantType.QInt4 if int4 else QuantType.QInt8, nodes_to_exclude=excluded)
                return path

            if int4:
                quantize(target, False)
            else:  # 8-bit weights, or 7-bit ones (reduce_range) where 8-bit ones saturate an x86 CPU without VNNI
                # (AVX2's u8 x s8 multiply-add): the one nearer fp32 on the calibration inputs, here
                candidates = [quantize(Path(tmp) / f"int8-{r}.onnx", r) for r in (False, True)]
                closest(candidates, fp32, inputs, calib).replace(target)
    notes = ["int4 = 4-bit QDQ weights with 16-bit QDQ activations (W4A16)"] if options.precision == "int4" else []
    return {"artifact": "decoder.onnx", "ops": {**op_counts(target), "kept_float_nodes": sorted(kept)}, "notes": notes}


def closest(candidates: list[Path], reference: Path, names: list[str], calib: list[tuple]) -> Path:
    """The candidate model whose outputs are nearest the reference model's over the calibration inputs."""
    import numpy as np
    import onnxruntime as ort

    feeds = [{n: x.numpy() for n, x in zip(names, inputs)} for inputs in calib]

    def outputs(path: Path) -> list:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [session.run(None, feed)[0] for feed in feeds]

    want = outputs(reference)
    return min(candidates, key=lambda p: sum(float(np.mean((a - b) ** 2)) for a, b in zip(outputs(p), want)))


def runner(artifact: Path, model=None, options: ConvertOptions | None = None):
    """The model through onnxruntime's CPU provider, inputs in graph order."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = torch.get_num_threads()
    # No spinning after a call: idle sessions (other artifacts timed round-robin, in this process or beside it)
    # would otherwise keep the cores busy while the one being timed runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda *xs: [torch.from_numpy(y) for y in session.run(None, {n: x.numpy() for n, x in zip(names, xs)})]
