"""Export quality and host speed, measured in one run on real latents.

Builds every recipe in export/ for a student checkpoint (default: the quickstart student), prints
PSNR against the fp32 student on held-out real latents, bytes relative to the backend's fp32/fp16
artifact, and the targets (int8 >= 40 dB, int4 >= 34 dB and <= 0.2x bytes). Then times eager PyTorch
against the fp32 ExecuTorch, ONNX Runtime and LiteRT artifacts on the same input, interleaved, and
prints each runtime's time as a ratio of eager (target for ExecuTorch XNNPACK: <= 0.5x).
Where one compression exists on both Apple paths (int8 weights, 4-bit palettization), Core AI's output
predicted on its runtime is compared with Core ML's weight-level reconstruction on the same held-out latents.

    python benchmarks/export_quality.py [--checkpoint runs/quickstart/student] [--out exports]

Writes benchmarks/results/export_quality.json (the README's export table is generated from it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from results_io import write_results

from turbovaed.export import core
from turbovaed.recipes import build, load_toml
from turbovaed.student import StudentDecoder

REPO = Path(__file__).resolve().parents[1]
BASE = {"executorch": "fp32", "onnx": "fp32", "litert": "fp32", "coreml": "fp16", "coreai": "fp16"}
APPLE_PAIRS = ("int8", "palettize4")  # compressions both Core ML and Core AI offer


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


def quality(manifests: list[dict]) -> list[dict]:
    """Bytes (and ratio to the backend's base artifact) and PSNR vs the fp32 student, per artifact."""
    base = {m["backend"]: m["bytes"] for m in manifests if m["precision"] == BASE[m["backend"]] and
            m["recipe"]["delegate"] == "xnnpack" and "stream" not in m}
    print(f"\n{'artifact':34s}{'precision':>13s}{'bytes':>12s}{'x base':>8s}{'PSNR dB':>9s}{'target':>8s}  status")
    rows = []
    for m in manifests:
        n = m["numerics"]
        coreml_delegate = m["recipe"]["delegate"] == "coreml"
        ratio = None if coreml_delegate or m["backend"] not in base else m["bytes"] / base[m["backend"]]
        rows.append({"artifact": m["name"], "backend": m["backend"], "precision": m["precision"],
                     "precision_meaning": m.get("precision_meaning", ""), "delegate": m["recipe"]["delegate"],
                     "bytes": m["bytes"], "x_backend_base": ratio, "psnr_db": n.get("psnr_db"),
                     "min_psnr_db": core.MIN_PSNR[m["precision"]], "status": n["status"],
                     "verified_by": n.get("verified_by", ""), "stream": "stream" in m})
        psnr = f"{n['psnr_db']:.1f}" if "psnr_db" in n else "-"
        print(f"{m['name']:34s}{m['precision']:>13s}{m['bytes']:>12,}{ratio or float('nan'):8.2f}{psnr:>9s}"
              f">={core.MIN_PSNR[m['precision']]:.0f}  {n['status']}")
    return rows


def speed(checkpoint: Path, manifests: list[dict], runs: int) -> dict:
    """Eager PyTorch vs the fp32 ExecuTorch, ONNX Runtime and LiteRT artifacts on the same input, interleaved."""
    student = StudentDecoder.from_pretrained(checkpoint).eval()
    by_name = {m["name"]: m for m in manifests}
    shape = manifests[0]["inputs"][0]["shape"]
    z = torch.randn(shape)
    mobile = student.to_mobile().eval()
    runners = {"eager PyTorch (reference form)": lambda: student(z), "eager PyTorch (mobile form)": lambda: mobile(z)}
    for name, label in [("host-executorch-fp32", "ExecuTorch XNNPACK fp32"), ("host-onnx-fp32", "ONNX Runtime fp32"),
                        ("host-litert-fp32", "LiteRT XNNPACK fp32")]:
        if name in by_name:
            m = by_name[name]
            run = core.backend_module(m["backend"]).runner(Path(m["dir"]) / m["artifact"],
                                                           options=build(core.ExportRecipe, m["recipe"]).options)
            runners[label] = lambda run=run: run(z)
    with torch.no_grad():
        for fn in runners.values():
            fn()  # warm-up
        results = {k: [] for k in runners}
        for _ in range(runs):  # interleaved so machine noise hits every runtime alike
            for k, fn in runners.items():
                results[k].append(median_ms(fn, 1))
    eager = statistics.median(results["eager PyTorch (reference form)"])
    print(f"\nhost latency, input {tuple(shape)}, {torch.get_num_threads()} threads, median of {runs} interleaved runs")
    out = {}
    for k, v in results.items():
        med = statistics.median(v)
        out[k] = {"median_ms": med, "vs_eager": med / eager}
        print(f"{k:34s}{med:9.1f} ms{med / eager:8.2f}x eager{'  (target <= 0.5x)' if k.startswith('ExecuTorch') else ''}")
    return {"input_shape": shape, "output_shape": manifests[0]["outputs"][0]["shape"], "runs": runs,
            "threads": torch.get_num_threads(), "runtimes": out}


def apple_paths(checkpoint: Path, manifests: list[dict]) -> list[dict]:
    """Core AI predicted (its runtime) vs Core ML weight-level reconstruction, same compression, same held-out
    latents: PSNR of each against the fp32 student and of one against the other."""
    from turbovaed.metrics import psnr

    student = StudentDecoder.from_pretrained(checkpoint).float().eval()
    by = {(m["backend"], m["precision"]): m for m in manifests if "stream" not in m and m["recipe"]["delegate"] == "xnnpack"}
    rows = []
    for precision in APPLE_PAIRS:
        pair = [by.get((b, precision)) for b in ("coreai", "coreml")]
        if None in pair:
            continue
        recipes = [build(core.ExportRecipe, m["recipe"]) for m in pair]
        _, verify, *_ = core.calibration_latents(recipes[0], student, checkpoint)
        runs = []
        for m, recipe in zip(pair, recipes):
            backend = core.backend_module(m["backend"])
            model, _, _ = core.graph(student, recipe)
            runs.append(backend.runner(Path(m["dir"]) / m["artifact"], model=model, options=recipe.options))
        scores = {"coreai_vs_fp32": [], "coreml_weights_vs_fp32": [], "coreai_vs_coreml_weights": []}
        with torch.no_grad():
            for z in verify:
                ref, (a, b) = student(z), [run(z)[0] for run in runs]
                for key, x, y in (("coreai_vs_fp32", a, ref), ("coreml_weights_vs_fp32", b, ref),
                                  ("coreai_vs_coreml_weights", a, b)):
                    scores[key].append(psnr(x, y))
        row = {"precision": precision, "clips": len(verify), **{k: min(v) for k, v in scores.items()},
               "meaning": {"coreai": pair[0]["precision_meaning"], "coreml": pair[1]["precision_meaning"]}}
        rows.append(row)
        print(f"{precision:11s} Core AI (predicted) {row['coreai_vs_fp32']:.1f} dB, Core ML (weight level) "
              f"{row['coreml_weights_vs_fp32']:.1f} dB vs fp32; Core AI vs Core ML {row['coreai_vs_coreml_weights']:.1f} dB")
    return rows


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


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
    student = StudentDecoder.from_pretrained(args.checkpoint)
    write_results("export_quality", {
        "student": {"checkpoint": str(args.checkpoint), "params": student.num_parameters(),
                    "sha256": manifests[0]["student"]["sha256"]},
        "verified_on": manifests[0]["numerics"].get("verified_on", ""),
        "artifacts": quality(manifests), "apple_paths": apple_paths(args.checkpoint, manifests),
        "host_latency": speed(args.checkpoint, manifests, args.runs)})


if __name__ == "__main__":
    main()
