"""RMSNorm's channel mean on ONNX Runtime: the fixed 1x1 conv every backend gets (turbovaed.nn.MobileRMSNorm)
against a ReduceMean, in one process, interleaved (1 thread, fp32, random weights, latents (1, 16, 5, 32, 32) ->
17x256x256). Decides whether ONNX exports should take the mean as a reduction: only if it is faster.

    python benchmarks/rmsnorm_mean.py [--size nano] [--runs 20]
Writes benchmarks/results/rmsnorm_mean.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402

from turbovaed import presets  # noqa: E402
from turbovaed.export.lowering import mobile_graph  # noqa: E402
from turbovaed.nn import MobileRMSNorm  # noqa: E402
from turbovaed.student import StudentDecoder  # noqa: E402


def reduce_mean(self: MobileRMSNorm, x: torch.Tensor, t: int) -> torch.Tensor:
    """MobileRMSNorm's forward with the channel mean as a reduction (what ONNX exports as ReduceMean)."""
    return x * torch.rsqrt((x * x).mean(dim=1, keepdim=True) + self.eps) * self.weight


def main() -> None:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="nano", choices=["nano", "base"])
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student = StudentDecoder(presets.family_preset(16, 8, 4, size=args.size)).eval()
    z = torch.randn(1, 16, 5, 32, 32)
    sessions, outputs = {}, {}
    with tempfile.TemporaryDirectory() as d:
        for how in ("conv", "reduce"):
            mobile = mobile_graph(student)
            if how == "reduce":
                for norm in mobile.modules():
                    if isinstance(norm, MobileRMSNorm):
                        norm.forward = reduce_mean.__get__(norm)
            path = Path(d) / f"{how}.onnx"
            torch.onnx.export(mobile, (z,), str(path), dynamo=True, external_data=False)
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            sessions[how] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            outputs[how] = sessions[how].run(None, {sessions[how].get_inputs()[0].name: z.numpy()})[0]
    times = {how: [] for how in sessions}
    for _ in range(args.runs):  # interleaved: both forms see the same machine state
        for how, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: z.numpy()})
            times[how].append(time.perf_counter() - t0)
    median = {how: statistics.median(v) * 1e3 for how, v in times.items()}
    ratio = median["reduce"] / median["conv"]
    quarter = max(1, args.runs // 4)  # the ratio within each quarter of the runs: this run's own spread
    spread = [statistics.median(times["reduce"][i:i + quarter]) / statistics.median(times["conv"][i:i + quarter])
              for i in range(0, args.runs - quarter + 1, quarter)]
    faster = max(spread) < 0.98  # adopted only if the reduction wins in every quarter
    difference = float(abs(outputs["conv"] - outputs["reduce"]).max())
    print(f"{args.size}: conv {median['conv']:.0f} ms, ReduceMean {median['reduce']:.0f} ms ({ratio:.3f}x; per quarter "
          f"{min(spread):.3f}-{max(spread):.3f}x); max difference {difference:.1e}")
    write_results("rmsnorm_mean", {
        "what": "ONNX Runtime time of RMSNorm's channel mean as a 1x1 conv vs as ReduceMean (whole decoder)",
        "setup": f"{args.size} (Wan 2.1 geometry), fp32, latents {tuple(z.shape)}, 1 thread, median of {args.runs} "
                 "interleaved runs, random weights", "onnxruntime": ort.__version__,
        "median_ms": median, "reduce_over_conv": ratio, "reduce_over_conv_per_quarter": spread,
        "max_abs_difference": difference,
        "decision": "ReduceMean" if faster else "keep the conv (the reduction does not win in every quarter)"})

if __name__ == "__main__":
    main()
