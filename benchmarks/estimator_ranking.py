"""Does the estimator rank decoders as the runtimes do? Its host estimates (this machine's catalog entry and
calibration, fp32 CPU, ExecuTorch XNNPACK and ONNX Runtime) against the interleaved latencies that
benchmarks/pareto.py measured in one run (benchmarks/results/pareto.json: same decoders, same latents).

Per runtime: Spearman's rank correlation, each decoder's estimated / measured ratio (the estimate is for the
catalog's thread count, the measurement for pareto's: a common factor, which ranks ignore), and every pair the
two order differently. Measures nothing itself; re-run it after pareto.py.

    python benchmarks/estimator_ranking.py
Writes benchmarks/results/estimator_ranking.json (rendered into docs/results.md by scripts/readme_tables.py).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pareto import LATENTS, estimate_spec  # noqa: E402
from results_io import RESULTS, write_results  # noqa: E402

from turbovaed.profile import calibration  # noqa: E402
from turbovaed.profile.devices import load_catalog  # noqa: E402
from turbovaed.profile.estimate import costs_of, device_estimates  # noqa: E402

RUNTIMES = {"executorch": "executorch-xnnpack", "onnx": "onnxruntime"}  # backend -> pareto.json latency key


def ranks(values: dict[str, float]) -> dict[str, int]:
    return {name: i for i, name in enumerate(sorted(values, key=values.get))}


def spearman(a: dict[str, float], b: dict[str, float]) -> float:
    ra, rb, n = ranks(a), ranks(b), len(a)
    return 1 - 6 * sum((ra[k] - rb[k]) ** 2 for k in a) / (n * (n * n - 1))


def compare(estimated: dict[str, float], measured: dict[str, float]) -> dict:
    swapped = [f"{x} vs {y}" for x, y in itertools.combinations(measured, 2)
               if (estimated[x] < estimated[y]) != (measured[x] < measured[y])]
    return {"spearman": spearman(estimated, measured), "estimated_ms": estimated, "measured_ms": measured,
            "estimated_over_measured": {k: estimated[k] / measured[k] for k in measured},
            "pairs_ordered_differently": swapped}


def main() -> None:
    pareto = json.loads((RESULTS / "pareto.json").read_text())
    host, fits = load_catalog()["host"], calibration.fits()
    out = {"what": "estimator's host ranking vs the interleaved measurements in pareto.json",
           "measured": pareto["latency_setup"], "measured_on": pareto.get("scored"),
           "estimated": f"turbovaed.profile.estimate on the catalog's 'host' entry ({host.name}), fp32, cpu unit, "
                        "calibrated per kernel library", "runtimes": {}}
    for backend, key in RUNTIMES.items():
        estimated, measured = {}, {}
        for name, d in pareto["decoders"].items():
            est = device_estimates(host, costs_of(estimate_spec(name), LATENTS[2:]), backend, "fp32", fits)["cpu"]
            estimated[name] = est["seconds"] * 1e3
            measured[name] = d["latency"][key]["median_ms"]
        out["runtimes"][key] = compare(estimated, measured)
        r = out["runtimes"][key]
        swapped = ", ".join(r["pairs_ordered_differently"]) or "none"
        print(f"{key}: Spearman {r['spearman']:.2f}; ordered differently: {swapped}")
        for name in sorted(measured, key=measured.get):
            print(f"  {name:11s} measured {measured[name]:8.0f} ms  estimated {estimated[name]:8.0f} ms  "
                  f"({estimated[name] / measured[name]:.2f}x)")
    write_results("estimator_ranking", out)


if __name__ == "__main__":
    main()
