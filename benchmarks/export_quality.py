"""Export quality and host speed, measured in one run on real latents.

Builds every recipe in export/ for a student checkpoint (default: the quickstart student), prints
PSNR against the fp32 student on held-out real latents, bytes relative to the backend's fp32/fp16
artifact, and the targets (int8 >= 40 dB, int4 >= 34 dB and <= 0.2x bytes). Then times eager PyTorch
against the fp32 ExecuTorch, ONNX Runtime and LiteRT artifacts on the same input, interleaved, and
prints each runtime's time as a ratio of eager (target for ExecuTorch XNNPACK: <= 0.5x).

    python benchmarks/export_quality.py [--checkpoint runs/quickstart/student] [--out exports]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from turbovaed.export import core
from turbovaed.recipes import load_toml
from turbovaed.student import StudentDecoder

REPO = Path(__file__).resolve().parents[1]
BASE = {"executorch": "fp32", "onnx": "fp32", "litert": "fp32", "coreml": "fp16"}


def build_all(checkpoint: Path, out: Path, only: list[str] | None) -> list[dict]:
    manifests = []
    for path in sorted((REPO / "export").glob("*.toml")):
        if only and path.stem not in only:
            continue
        recipe = load_toml(core.ExportRecipe, path)
        t0 = time.perf_counter()
        manifests.append(core.export(recipe, checkpoint, out))
        print(f"  built {recipe.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return manifests


def print_quality(manifests: list[dict]) -> None:
    base = {m["backend"]: m["bytes"] for m in manifests if m["precision"] == BASE[m["backend"]] and
            m["recipe"]["delegate"] == "xnnpack"}
    print(f"\n{'artifact':34s}{'precision':>13s}{'bytes':>12s}{'x base':>8s}{'PSNR dB':>9s}{'target':>8s}  status")
    for m in manifests:
        n = m["numerics"]
        ratio = m["bytes"] / base[m["backend"]] if m["backend"] in base else float("nan")
        psnr = f"{n['psnr_db']:.1f}" if "psnr_db" in n else "-"
        target = f">={core.MIN_PSNR[m['precision']]:.0f}"
        size_note = " (size target <= 0.2x)" if m["precision"] in ("int4", "palettize4") else ""
        print(f"{m['name']:34s}{m['precision']:>13s}{m['bytes']:>12,}{ratio:8.2f}{psnr:>9s}{target:>8s}  "
              f"{n['status']}{size_note}")


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def print_speed(checkpoint: Path, manifests: list[dict], runs: int) -> None:
    from turbovaed.export import executorch_backend, litert_backend, onnx_backend

    student = StudentDecoder.from_pretrained(checkpoint).eval()
    by_name = {m["name"]: m for m in manifests}
    shape = manifests[0]["inputs"][0]["shape"]
    z = torch.randn(shape)
    runners = {"eager PyTorch (reference form)": lambda: student(z)}
    mobile = student.to_mobile().eval()
    runners["eager PyTorch (mobile form)"] = lambda: mobile(z)
    for name, module, label in [("host-executorch-fp32", executorch_backend, "ExecuTorch XNNPACK fp32"),
                                ("host-onnx-fp32", onnx_backend, "ONNX Runtime fp32"),
                                ("host-litert-fp32", litert_backend, "LiteRT XNNPACK fp32")]:
        if name in by_name:
            artifact = Path(by_name[name]["dir"]) / by_name[name]["artifact"]
            runners[label] = _session(module, artifact)
    with torch.no_grad():
        for fn in runners.values():
            fn()  # warm-up
        results = {k: [] for k in runners}
        for _ in range(runs):  # interleaved so machine noise hits every runtime alike
            for k, fn in runners.items():
                results[k].append(median_ms(fn, 1))
    eager = statistics.median(results["eager PyTorch (reference form)"])
    print(f"\nhost latency, input {tuple(shape)}, {torch.get_num_threads()} threads, median of {runs} interleaved runs")
    for k, v in results.items():
        med = statistics.median(v)
        note = "  (target <= 0.5x)" if k.startswith("ExecuTorch") else ""
        print(f"{k:34s}{med:9.1f} ms{med / eager:8.2f}x eager{note}")


def _session(module, artifact: Path):
    """A callable that runs the artifact once with its runtime, loaded once."""
    if module.__name__.endswith("executorch_backend"):
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(str(artifact)).load_method("forward")
        z = torch.randn(_shape(artifact))
        return lambda m=method, z=z: m.execute([z])
    if module.__name__.endswith("onnx_backend"):
        import onnxruntime as ort

        s = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
        x = torch.randn(_shape(artifact)).numpy()
        return lambda s=s, x=x: s.run(None, {"latents": x})
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(artifact), num_threads=torch.get_num_threads())
    it.allocate_tensors()
    idx = it.get_input_details()[0]["index"]
    x = torch.randn(_shape(artifact)).numpy()

    def run(it=it, idx=idx, x=x):
        it.set_tensor(idx, x)
        it.invoke()
    return run


def _shape(artifact: Path) -> list[int]:
    return json.loads((artifact.parent / "manifest.json").read_text())["inputs"][0]["shape"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("runs/quickstart/student"))
    p.add_argument("--out", type=Path, default=Path("exports"))
    p.add_argument("--only", nargs="*", help="recipe names (default: all in export/)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    manifests = build_all(args.checkpoint, args.out, args.only)
    for m in manifests:
        m["dir"] = str(args.out / m["name"])
    print_quality(manifests)
    print_speed(args.checkpoint, manifests, args.runs)


if __name__ == "__main__":
    main()
