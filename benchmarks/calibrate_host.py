"""CPU calibration points: the calibration nets (turbovaed.profile.calibration.NETS) measured on this host.

Each net is exported by the project's own exporters (ExecuTorch XNNPACK and ONNX, fp32 and int8: the same
convert() and runner() our artifacts go through) at AI Hub's input size and smaller ones, and all are timed
round-robin in one process (median of --runs). The host's fp32 peak and copy bandwidth are measured in the
same run and stored with every point, so the CPU fits (per-call, per-layer, roofline factor; one per kernel
library: XNNPACK for ExecuTorch and LiteRT, ONNX Runtime's MLAS) are made against this machine's roofline.
Phone CPUs get these fits too: no published phone-CPU timings of these nets on catalog devices were in reach,
and the report says so.

    python benchmarks/calibrate_host.py [--runs 30] [--threads 2]
    python benchmarks/calibrate_host.py --report-only   # refit from the committed points, measure nothing

Writes profiles/calibration/host-cpu.json (read by the estimates) and benchmarks/results/calibrate_host.json
(the leave-one-out table of every class, for the README).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from results_io import write_results
from rich.progress import track

from turbovaed.export.core import backend_module
from turbovaed.io import atomic_file
from turbovaed.profile import calibration, devices

RUNTIMES = {"executorch": "executorch", "onnx": "onnxruntime"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="refit and rewrite the results from the points")
    args = parser.parse_args()
    if not args.report_only:
        measure(args)
    table = calibration.leave_one_out()
    for row in table:
        print(f"{row['point']:70s} measured {row['measured_ms']:8.3f} ms  leave-one-out {row['loo_ms']:8.3f} ms  "
              f"ratio {row['loo_ratio']:.2f}")
    write_results("calibrate_host", {"leave_one_out": table,
                                     "fits": {k: f.describe() for k, f in calibration.fits().items()}})


def measure(args: argparse.Namespace) -> None:
    """Time every case and write profiles/calibration/host-cpu.json."""
    torch.set_num_threads(args.threads)  # the runners size XNNPACK's pool and ORT's intra-op threads from it
    cases = [(name, (3, s, s), backend, precision) for name in calibration.NETS for s in calibration.sizes(name)
             for backend in RUNTIMES for precision in ("fp32", "int8")]
    with tempfile.TemporaryDirectory() as tmp:
        runners = {}
        for case in track(cases, description="export"):
            name, chw, backend, precision = case
            artifact = calibration.export_net(*case, Path(tmp) / f"{name}-{chw[1]}-{backend}-{precision}")
            runners[case] = (backend_module(backend).runner(artifact), torch.rand(1, *chw))
        times: dict = {case: [] for case in cases}
        for run, x in runners.values():  # warm-up
            run(x)
        for _ in track(range(args.runs), description="timing (interleaved)"):
            for case, (run, x) in runners.items():
                t0 = time.perf_counter()
                run(x)
                times[case].append(time.perf_counter() - t0)
    gflops, gbs = devices.measure_host(args.threads)
    ident = devices.host_identity()
    when = time.strftime("%Y-%m-%d", time.gmtime())
    spec = {"bandwidth_gbs": gbs, "peak_gflops_fp32": gflops,
            "source": f"measured {when} with the points: 2048^2 fp32 matmul {gflops:.0f} GFLOPS, 64 MiB copy {gbs:.1f} GB/s"}
    points = [{"net": name, "input": list(chw), "device": "host", "unit": "cpu", "compute": precision,
               "runtime": RUNTIMES[backend], "ms": statistics.median(times[(name, chw, backend, precision)]) * 1e3,
               "source": f"measured {when} by benchmarks/calibrate_host.py on {ident['soc']} ({args.threads} threads, "
                         f"turbovaed's {backend} exporter and runner, median of {args.runs} interleaved runs)",
               "unit_spec": spec} for name, chw, backend, precision in cases]
    out = calibration.POINTS_DIR / "host-cpu.json"
    with atomic_file(out) as tmp_file:
        tmp_file.write_text(json.dumps({"points": points}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
