"""Teacher vs student decode speed, measured in one run on the same latent.

Times the full-size teacher decoder (random weights: speed does not depend on them) against the
student preset in its reference (Conv3d) and mobile (2D-only) forms, eager PyTorch, and prints the
ratios and the parameter ratio. Default: LTX-Video at 17x256x256 (target: >= 30x faster, <= 20% params).

    python benchmarks/decode_speed.py [--teacher ltx] [--frames 17] [--size 256] [--repeats 3]

Writes benchmarks/results/decode_speed.json (the README's table is generated from it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from results_io import write_results

from turbovaed import presets, teachers
from turbovaed.student import StudentDecoder


def median_time(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up call."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="ltx", choices=sorted(teachers.TEACHERS))
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = teachers.get_spec(args.teacher)
    torch.manual_seed(0)
    vae = teachers._diffusers_class(spec)().eval()  # the released full-size config, random weights
    teacher = teachers.Teacher(spec, vae)
    config = presets.student_config(teacher)
    student = StudentDecoder(config).eval()
    mobile = student.to_mobile().eval()
    t = config.latents_for(args.frames)
    z = torch.randn(1, teacher.latent_channels, t, args.size // spec.spatial, args.size // spec.spatial)

    with torch.no_grad():
        out_t = teacher.decode(z)
        out_s = student(z)
        assert out_t.shape == out_s.shape, (out_t.shape, out_s.shape)
        mobile(z)  # warm-up
        runs: dict[str, list[float]] = {"teacher": [], "reference": [], "mobile": []}
        for _ in range(args.repeats):  # interleaved: machine noise hits every decoder alike
            for key, fn in (("teacher", lambda: teacher.decode(z)), ("reference", lambda: student(z)),
                            ("mobile", lambda: mobile(z))):
                t0 = time.perf_counter()
                fn()
                runs[key].append(time.perf_counter() - t0)
    t_teacher, t_ref, t_mob = (statistics.median(runs[k]) for k in ("teacher", "reference", "mobile"))
    p_teacher = sum(p.numel() for p in vae.decoder.parameters())
    p_student = student.num_parameters()
    print(f"teacher {spec.cls} decoder vs student preset '{args.teacher}', latents {tuple(z.shape)} -> "
          f"frames {tuple(out_s.shape)}, {args.threads} threads, eager fp32")
    print(f"{'':28s}{'params':>12s}{'median s':>10s}{'speed-up':>10s}")
    print(f"{'teacher decoder':28s}{p_teacher / 1e6:11.1f}M{t_teacher:10.3f}{1.0:9.1f}x")
    print(f"{'student reference (Conv3d)':28s}{p_student / 1e6:11.2f}M{t_ref:10.3f}{t_teacher / t_ref:9.1f}x")
    print(f"{'student mobile (2D only)':28s}{p_student / 1e6:11.2f}M{t_mob:10.3f}{t_teacher / t_mob:9.1f}x")
    print(f"speed-up (best student form): {t_teacher / min(t_ref, t_mob):.1f}x (target >= 30x); "
          f"params ratio {p_student / p_teacher:.3f} (target <= 0.20)")
    write_results("decode_speed", {
        "teacher": {"preset": args.teacher, "class": spec.cls, "decoder_params": p_teacher, "median_s": t_teacher},
        "student": {"preset": args.teacher, "params": p_student, "reference_median_s": t_ref, "mobile_median_s": t_mob},
        "latents": list(z.shape), "frames": list(out_s.shape), "threads": args.threads, "repeats": args.repeats,
        "interleaved": True})


if __name__ == "__main__":
    main()
