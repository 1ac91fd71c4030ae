"""ExecuTorch (.pte): XNNPACK fp32 / int8 (PT2E static, per-channel, calibrated) / int4 (4-bit grouped
weights on Linear-form pointwise convs, int8 dynamic activations), or the Core ML delegate."""

from __future__ import annotations

from pathlib import Path

import torch

from turbovaed.export.recipe import ConvertOptions

# Weights/activations per precision (what the estimates and profile records state).


def _quantize_int8(model: torch.nn.Module, example: tuple, calib: list[tuple], keep: list[str]):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from turbovaed.export.quantize import outside_modules

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    if keep:  # mixed precision: leave these modules in fp32 (set_module_name(name, None) is refused by XNNPACK's)
        quantizer.set_filter_function(outside_modules(keep))
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    with torch.no_grad():
        for inputs in calib:
            prepared(*inputs)
    return convert_pt2e(prepared)


def _quantize_int4(model: torch.nn.Module, group_size: int, keep: list[str]) -> torch.nn.Module:
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    def wanted(module: torch.nn.Module, name: str) -> bool:
        return isinstance(module, torch.nn.Linear) and module.in_features % group_size == 0 and \
            not any(name.startswith(k) for k in keep)

    quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                           weight_granularity=PerGroup(group_size)), filter_fn=wanted)
    return model


def delegation(edge) -> dict:
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge.exported_program().graph_module)
    df = info.get_operator_delegation_dataframe()
    rows = {r["op_type"]: (int(r["occurrences_in_delegated_graphs"]), int(r["occurrences_in_non_delegated_graphs"]))
            for _, r in df.iterrows() if r["op_type"] != "Total"}
    conv = [v for k, v in rows.items() if "convolution" in k or "linear" in k]
    return {"delegated": info.num_delegated_nodes, "not_delegated": info.num_non_delegated_nodes,
            "delegated_subgraphs": info.num_delegated_subgraphs,
            "conv_delegated": sum(d for d, _ in conv), "conv_not_delegated": sum(n for _, n in conv),
            "not_delegated_ops": sorted(k for k, (_, n) in rows.items() if n and k != "getitem")}


def xnnpack_nodes(edge) -> dict:
    """What the XNNPACK delegate will run, read from its serialized payloads (decompiled with ExecuTorch's own
    flatc and schema): node kinds, and how many nodes carry a fused output clamp (a ReLU folded into a conv)."""
    import importlib.resources
    import json
    import re
    import tempfile
    from collections import Counter

    from executorch.backends.xnnpack import serialization
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._flatbuffer import _flatc_decompile
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    kinds: Counter[str] = Counter()
    fused = 0
    with tempfile.TemporaryDirectory() as d:
        schema, blob, decoded = Path(d) / "schema.fbs", Path(d) / "graph.bin", Path(d) / "graph.json"
        schema.write_bytes(importlib.resources.files(serialization).joinpath("schema.fbs").read_bytes())
        for module in edge.exported_program().graph_module.children():
            if not isinstance(module, LoweredBackendModule) or module.backend_id != "XnnpackBackend":
                continue
            payload = module.processed_bytes
            header = XNNHeader.from_bytes(payload[:XNNHeader.EXPECTED_LENGTH])
            blob.write_bytes(payload[header.flatbuffer_offset:header.flatbuffer_offset + header.flatbuffer_size])
            _flatc_decompile(d, str(schema), str(blob), ["--raw-binary"])
            graph = json.loads(re.sub(r"(-?)\binf\b", r"\1Infinity", decoded.read_text()))  # flatc writes inf
            for node in graph.get("xnodes", []):
                kinds[node["xnode_union_type"]] += 1
                fused += "output_min_max" in node
    return {"nodes": dict(kinds), "fused_output_clamps": fused}


def convert(model: torch.nn.Module, example: tuple, options: ConvertOptions, calib: list[tuple], out: Path,
            names: tuple[list[str], list[str]]) -> dict:
    from executorch.exir import to_edge_transform_and_lower

    if options.precision == "int8":
        model = _quantize_int8(model, example, calib, options.keep_float)
    elif options.precision == "int4":
        model = _quantize_int4(model, options.group_size, options.keep_float)
    program = torch.export.export(model, example)
    if options.delegate == "coreml":
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        partitioner = CoreMLPartitioner()
    else:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioner = XnnpackPartitioner()
    edge = to_edge_transform_and_lower(program, partitioner=[partitioner])
    ops = delegation(edge)
    if options.delegate != "coreml":
        ops["xnnpack"] = xnnpack_nodes(edge)
    (out / "decoder.pte").write_bytes(edge.to_executorch().buffer)
    info = {"artifact": "decoder.pte", "ops": ops}
    if options.delegate == "coreml":
        info["not_checked_here"] = ["running the Core ML delegate (needs Apple hardware); the lowering succeeded"]
        info["verified_by"] = "not run"
    return info


def runner(artifact: Path, model=None, options: ConvertOptions | None = None):
    """The .pte's forward through the ExecuTorch pybind runtime (None for the Core ML delegate: Apple only)."""
    if options is not None and options.delegate == "coreml":
        return None
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    threads = torch.get_num_threads()
    if portable_lib._threadpool_get_thread_count() != threads:  # XNNPACK's pool, sized once per process
        portable_lib._unsafe_reset_threadpool(threads)
    method = Runtime.get().load_program(str(artifact)).load_method("forward")
    return lambda *xs: [y.clone() for y in method.execute([x.contiguous() for x in xs])]
