"""Host profiling repeatability and estimate error bar, measured in one run.

Profiles an artifacts folder twice (each pass: every runtime interleaved, N runs after warm-up) and
checks that each artifact's second-pass median falls inside the first pass's printed p10-p90 band
(target: all do); then prints the host roofline estimate vs the measurement per artifact (target:
within 3x).

    python benchmarks/profile_repeatability.py runs/quickstart/exports [--runs 20] [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from results_io import write_results

from turbovaed.profile.devices import load_catalog, measured_host
from turbovaed.profile.host import estimate_records, find_manifests, profile_artifacts
from turbovaed.profile.report import host_check


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifacts", type=Path)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    first, skipped = profile_artifacts(args.artifacts, runs=args.runs, warmup=3, threads=args.threads)
    second, _ = profile_artifacts(args.artifacts, runs=args.runs, warmup=3, threads=args.threads)
    first, second = ([r for r in rs if r.status == "ok"] for rs in (first, second))
    again = {(r.artifact, tuple(r.input_shape)): r for r in second}
    inside = 0
    print(f"{'artifact':28s} {'pass 1 median [p10-p90] ms':>30s} {'pass 2 median':>14s}  inside band")
    for r in sorted(first, key=lambda r: r.latency.median_ms):
        s = again[(r.artifact, tuple(r.input_shape))]
        ok = r.latency.p10_ms <= s.latency.median_ms <= r.latency.p90_ms
        inside += ok
        print(f"{r.artifact:28s} {r.latency.median_ms:10.2f} [{r.latency.p10_ms:7.2f}-{r.latency.p90_ms:7.2f}] "
              f"{s.latency.median_ms:14.2f}  {'yes' if ok else 'NO'}")
    print(f"repeatability: {inside}/{len(first)} second-pass medians inside the first pass's p10-p90 band")
    host = measured_host(args.threads, load_catalog())
    estimates = estimate_records(find_manifests(args.artifacts), {"host": host})
    table, ratios = host_check(first + estimates)
    print(table)
    within = sum(1 / 3 <= x <= 3 for x in ratios)
    print(f"host estimate within 3x of the measurement for {within}/{len(ratios)} artifacts "
          f"(range {min(ratios):.2f}x-{max(ratios):.2f}x)")
    for line in skipped:
        print(f"skipped {line}")
    write_results("profile_repeatability", {
        "artifacts": str(args.artifacts), "runs": args.runs, "threads": args.threads, "inside_band": inside,
        "total": len(first), "host_measured_over_estimate": ratios, "within_3x": within,
        "host_unit": host.units["cpu"].source})


if __name__ == "__main__":
    main()
