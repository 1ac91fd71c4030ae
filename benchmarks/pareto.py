"""Quality versus latency: every ladder preset and the peers' real architectures (TAEHV, Turbo-VAED-Hunyuan,
Flash-VAED-Wan, from turbovaed.decoders), distilled from the reference teacher with the same trainer, data,
settings and wall-clock budget, then timed through the runtimes users deploy. A peer starts from random
weights, or from its released weights with --weights NAME=PATH (they were trained for another VAE's latents:
a head start, not the released decoder's own quality).

For each decoder: parameters, GMACs per output frame (256x256 and 512x512), host latency of the 2D-only
form at 17x256x256 through ONNX Runtime and ExecuTorch XNNPACK (fp32, random weights, runs interleaved
across decoders and runtimes, median), and held-out PSNR / SSIM / LPIPS against ground truth and against
the teacher (9x128x128 windows of turbovaed.reference.HELD_OUT, 3 per clip), beside per-frame bicubic 8x.
Every decoder is distilled once per wall-clock budget (--minutes 4 20), so the table shows which rung
pays off with time. Each row also carries the project's estimate of its 720p FPS on the iPhone 16 Pro and the
Galaxy S24 (Wan-geometry latents 5x90x160; the fastest calibrated cell, or the roofline bound, labelled).
Writes benchmarks/results/pareto.json and pareto.png. Training one decoder adds it to its budget folder's
runs.json, so `--skip-train` then scores and times every decoder trained there, interleaved. Rows of
decoders and budgets not scored in this run are kept from the previous pareto.json (same teacher, same
windows), marked with the run that scored them; latency is measured for every row in this run.

    python benchmarks/pareto.py --lpips runs/lpips/lpips_vgg.safetensors [--minutes 4 20] [--runs 3]
        [--only nano taehv] [--skip-train] [--weights taehv=taew2_1.safetensors flash-vaed=Flash_VAED_Wan.pth]
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers.flash_vaed import FlashVAEDDecoder  # noqa: E402
from peers.taehv import TAEHVDecoder  # noqa: E402
from peers.turbo_vaed import TurboVAEDDecoder  # noqa: E402
from train_reference_teacher import bicubic_baseline  # noqa: E402

from turbovaed import data, metrics, presets, reference, teachers  # noqa: E402
from turbovaed.decoders import flash_vaed, turbo_vaed  # noqa: E402
from turbovaed.distill.recipe import DistillRecipe  # noqa: E402
from turbovaed.distill.trainer import distill  # noqa: E402
from turbovaed.evaluate import EvalClip, prepare, score  # noqa: E402
from turbovaed.io import atomic_file, load_safetensors  # noqa: E402
from turbovaed.profile import calibration  # noqa: E402
from turbovaed.profile.devices import load_catalog  # noqa: E402
from turbovaed.profile.estimate import best_cell, costs_of  # noqa: E402
from turbovaed.recipes import build, to_toml  # noqa: E402
from turbovaed.student import StudentDecoder, load_state, module_macs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SPEC = teachers.get_spec("reference")
CANDIDATES = {  # name -> (kind, builder(weights)); every one takes the reference teacher's 16-channel 8x/4x latents
    "nano": ("turbovaed", lambda w=None: StudentDecoder(presets.student_config(SPEC, size="nano"))),
    "base": ("turbovaed", lambda w=None: StudentDecoder(presets.student_config(SPEC, size="base"))),
    "turbo": ("turbovaed", lambda w=None: StudentDecoder(presets.student_config(SPEC, size="turbo"))),
    "phone": ("turbovaed", lambda w=None: StudentDecoder(presets.student_config(SPEC, size="phone"))),
    "taehv": ("peer", lambda w=None: TAEHVDecoder(16, weights=w)),
    "turbo-vaed": ("peer", lambda w=None: TurboVAEDDecoder("turbo-vaed-hunyuan", weights=w)),
    "flash-vaed": ("peer", lambda w=None: FlashVAEDDecoder(weights=w)),
}
LATENTS = (1, 16, 5, 32, 32)  # -> 17 x 256 x 256
PHONES, PHONE_LATENTS = ("iphone-16-pro", "galaxy-s24"), (5, 90, 160)  # 720p from Wan-geometry latents


def estimate_spec(name: str):
    """What the estimator traces for a candidate: a student's config, or the published variant of a peer's
    architecture at this latent geometry (16 channels, 8x / 4x: Wan 2.1's)."""
    if CANDIDATES[name][0] == "turbovaed":
        return presets.student_config(SPEC, size=name)
    return {"taehv": lambda: TAEHVDecoder(16).net.variant, "turbo-vaed": lambda: turbo_vaed.VARIANTS["turbo-vaed-hunyuan"],
            "flash-vaed": lambda: flash_vaed.VARIANTS["flash-vaed-wan2_1"]}[name]()


def phone_fps(name: str) -> dict[str, dict]:
    """Estimated 720p FPS per phone: the fastest calibrated cell (estimate) and, where faster, the roofline bound."""
    spec, catalog, fits = estimate_spec(name), load_catalog(), calibration.fits()
    frames = spec.frames_for(5) if hasattr(spec, "frames_for") else spec.output_frames(5)
    costs = costs_of(spec, PHONE_LATENTS)
    return {d: best_cell(catalog[d], costs, frames, fits) for d in PHONES}


def fps_of(cell: dict) -> tuple[float, str]:
    """The figure a table shows for a phone cell, and its label: 'est.' (calibrated) or 'bound' (roofline)."""
    best = max((c for c in (cell["estimate"], cell["roofline_bound"]) if c), key=lambda c: c["fps"])
    return best["fps"], "est." if best is cell["estimate"] else "bound"


def recipe(name: str, out: Path, minutes: float, threads: int) -> DistillRecipe:
    """The quickstart's data and losses; one fixed lr and EMA for every decoder; the budget is wall clock."""
    return build(DistillRecipe, {
        "output": str(out / name), "teacher": {"name": "reference"}, "student": {"preset": "reference"},
        "data": {"held_out": [*reference.HELD_OUT, "carphone_pristine.mp4"], "latent_frames": 3, "size": 64,
                 "resize": 128, "clips": 64, "eval_size": 128},
        "loss": {"frames": 1.0, "teacher": 1.0, "perceptual": 0.2, "feature": 0.1},
        "train": {"steps": 1_000_000, "max_minutes": minutes, "batch": 4, "lr": 1e-3, "betas": [0.9, 0.99],
                  "warmup": 10, "ema_decay": 0.98, "checkpoint_every": 1_000_000, "threads": threads}})


def train(names: list[str], out: Path, minutes: float, threads: int, cache: Path | None,
          weights: dict[str, Path] | None = None) -> dict[str, dict]:
    """Distil each candidate (a peer given released weights starts from them); the teacher-latent cache is
    filled once and copied to the others."""
    weights = weights or {}
    runs = {}
    for name in names:
        r = recipe(name, out, minutes, threads)
        work = r.work
        shutil.rmtree(work, ignore_errors=True)
        if cache is not None:
            shutil.copytree(cache, work / "cache")
        print(f"distilling {name} for {minutes} min ...", flush=True)
        start = weights.get(name)
        folder = distill(r, show_progress=False, make_student=functools.partial(CANDIDATES[name][1], start))
        cache = work / "cache"
        metrics = json.loads((folder / "metrics.json").read_text())
        runs[name] = {"folder": str(folder), "steps": metrics["steps"], "minutes": minutes,
                      "started_from": str(start) if start else "random init"}
    return runs


def budget_dir(out: Path, minutes: float) -> Path:
    return out / f"{minutes:g}min"


def load_trained(name: str, folder: Path) -> nn.Module:
    model = CANDIDATES[name][1]()
    load_state(model, load_safetensors(folder / "model.safetensors"), folder)
    return model.eval()


@torch.no_grad()
def rate(model: nn.Module, prepared: list[EvalClip], lpips: nn.Module | None) -> dict[str, dict[str, float]]:
    """Mean PSNR / SSIM (/ LPIPS) of the model's decodes against ground truth and against the teacher."""
    sums: dict[str, dict[str, float]] = {"vs_ground_truth": {}, "vs_teacher": {}}
    for c in prepared:
        s = model(c.latents).float()
        for key, ref in (("vs_ground_truth", c.frames), ("vs_teacher", c.teacher)):
            row = {"psnr": metrics.psnr(s, ref), "ssim": metrics.ssim(s, ref)}
            if lpips is not None:
                row["lpips"] = lpips(s, ref).item()
            for k, v in row.items():
                sums[key][k] = sums[key].get(k, 0.0) + v / len(prepared)
    return sums


def quality(names: list[str], runs: dict[str, dict], lpips_path: Path | None) -> tuple[dict, float]:
    """Scores on the held-out windows for every budget; the teacher encodes, decodes and is scored once."""
    lpips = None
    if lpips_path:
        from turbovaed.lpips import LPIPS

        lpips = LPIPS(str(lpips_path))
    videos = [v for v in data.list_videos(data.shared_videos_dir()) if v.name in reference.HELD_OUT]
    clips = data.fixed_clips(videos, reference.EVAL_FRAMES, reference.EVAL_SIZE)
    prepared = prepare(teachers.load("reference"), clips, lpips)
    out: dict = {"teacher": score(None, prepared, lpips)["mean"]}
    for budget, trained in runs.items():
        for name in names:
            out.setdefault(name, {})[budget] = rate(load_trained(name, Path(trained[name]["folder"])), prepared, lpips)
    return out, bicubic_baseline([c for c, _ in clips])


def latency(names: list[str], runs: int, threads: int) -> dict[str, dict]:
    """ms per 17x256x256 decode, ONNX Runtime and ExecuTorch XNNPACK, fp32, interleaved."""
    import onnxruntime as ort
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    torch.manual_seed(0)
    z = torch.randn(LATENTS)
    fns, tmp = {}, Path(tempfile.mkdtemp(prefix="pareto-"))
    try:
        for name in names:
            mobile = CANDIDATES[name][1]().eval().to_mobile().eval()
            with torch.no_grad():
                expected = mobile(z)
                onnx_path = tmp / f"{name}.onnx"
                torch.onnx.export(mobile, (z,), dynamo=True, verbose=False).save(str(onnx_path), external_data=False)
                edge = to_edge_transform_and_lower(torch.export.export(mobile, (z,)), partitioner=[XnnpackPartitioner()])
            pte = tmp / f"{name}.pte"
            pte.write_bytes(edge.to_executorch().buffer)
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.log_severity_level = threads, 3
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: z.numpy()}
            method = Runtime.get().load_program(str(pte)).load_method("forward")
            for runtime, fn in (("onnxruntime", lambda s=session, f=feed: s.run(None, f)[0]),
                                ("executorch-xnnpack", lambda m=method: m.execute([z])[0])):
                got = torch.as_tensor(fn())
                err = (got - expected).abs().max().item()
                if err > 1e-3 * expected.abs().max().item():
                    raise RuntimeError(f"{name} through {runtime} disagrees with PyTorch (max error {err:.3g})")
                fns[(name, runtime)] = fn
            print(f"  built {name}: ONNX {onnx_path.stat().st_size / 1e6:.1f} MB, .pte {pte.stat().st_size / 1e6:.1f} MB",
                  flush=True)
        times: dict[tuple, list[float]] = {k: [] for k in fns}
        for r in range(runs + 1):  # the first round warms up
            for key, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                if r:
                    times[key].append((time.perf_counter() - t0) * 1000)
            print(f"  latency round {r}/{runs}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, dict] = {n: {} for n in names}
    for (name, runtime), ts in times.items():
        out[name][runtime] = {"median_ms": statistics.median(ts), "runs_ms": [round(t, 1) for t in ts]}
    return out


def plot(results: dict, path: Path) -> Path:
    """Held-out PSNR at the last budget against measured CPU time (ONNX Runtime, ExecuTorch) and against the
    estimated 720p FPS on each phone; every budget of a decoder on one vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("onnxruntime", "ms, ONNX Runtime"), ("executorch-xnnpack", "ms, ExecuTorch XNNPACK")] + \
        [(d, f"720p FPS on {d} (est.)") for d in PHONES]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    for ax, (key, label) in zip(axes, panels):
        for name, row in results["decoders"].items():
            x = row["latency"][key]["median_ms"] if key in row["latency"] else fps_of(row["phone_720p"][key])[0]
            ys = [b["quality"]["vs_ground_truth"]["psnr"] for b in row["budgets"].values()]
            ax.plot([x] * len(ys), ys, marker="o" if row["kind"] == "turbovaed" else "s")
            ax.annotate(f"{name} ({row['params'] / 1e6:.1f}M)", (x, ys[-1]), textcoords="offset points", xytext=(4, 4))
        ax.axhline(results["bicubic_8x_psnr"], color="grey", ls="--", label="bicubic 8x")
        ax.axhline(results["teacher"]["teacher_psnr"], color="k", ls=":", label="teacher")
        ax.set(xscale="log", xlabel=label + (" per 17x256² decode, this CPU" if "ms" in label else ""),
               ylabel="held-out PSNR dB", title=("faster: left" if "ms" in label else "faster: right"))
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle(f"quality vs speed; distillation budgets {results['budgets']} min (1 point per budget)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def earlier_rows(names: list[str]) -> dict[str, dict]:
    """Rows of the previous pareto.json (same teacher and windows) for decoders and budgets this run did not
    score, each budget marked with the run that scored it."""
    path = RESULTS / "pareto.json"
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    kept = {}
    for name, row in old["decoders"].items():
        if name not in CANDIDATES:
            continue
        budgets = {b: {**v, "scored": v.get("scored", old.get("scored", "an earlier run"))}
                   for b, v in row["budgets"].items() if name not in names}
        if budgets:
            kept[name] = budgets
    return kept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[4.0, 20.0],
                   help="distillation wall-clock budgets per decoder; each decoder is distilled once per budget")
    p.add_argument("--runs", type=int, default=3, help="timed rounds (after one warm-up round)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--lpips", type=Path, default=None, help="LPIPS VGG weights (turbovaed lpips-weights)")
    p.add_argument("--out", type=Path, default=Path("runs/pareto"))
    p.add_argument("--skip-train", action="store_true", help="reuse the students already in --out")
    p.add_argument("--weights", nargs="*", default=[], metavar="NAME=PATH",
                   help="start a peer from its released weights (e.g. taehv=taew2_1.pth, turbo-vaed=...pth, "
                        "flash-vaed=Flash_VAED_Wan.pth), loaded by turbovaed.decoders; default: random init")
    args = p.parse_args()
    weights = dict(item.split("=", 1) for item in args.weights)
    unknown = sorted(set(weights) - {n for n, (kind, _) in CANDIDATES.items() if kind == "peer"})
    if unknown:
        p.error(f"--weights names peers only ({', '.join(n for n, (k, _) in CANDIDATES.items() if k == 'peer')}), "
                f"got {', '.join(unknown)}")
    torch.set_num_threads(args.threads)
    names, runs, cache = args.only, {}, None
    for minutes in args.minutes:
        folder = budget_dir(args.out, minutes)
        if not args.skip_train:
            trained = train(names, folder, minutes, args.threads, cache, {k: Path(v) for k, v in weights.items()})
            cache = Path(trained[names[0]]["folder"]).with_name(names[0] + ".work") / "cache"
            kept = json.loads((folder / "runs.json").read_text()) if (folder / "runs.json").exists() else {}
            with atomic_file(folder / "runs.json") as tmp:  # other decoders' runs stay; a crash keeps the old file
                tmp.write_text(json.dumps(kept | trained, indent=1))
        runs[f"{minutes:g}"] = json.loads((folder / "runs.json").read_text())
    scores, bicubic = quality(names, runs, args.lpips)
    kept = earlier_rows(names)
    everyone = names + [n for n in kept if n not in names]
    timings = latency(everyone, args.runs, args.threads)
    scored = time.strftime("%Y-%m-%d")
    decoders = {}
    for name in everyone:
        kind, make = CANDIDATES[name]
        with torch.device("meta"):  # sizes and MACs need no weights
            model = make()
        budgets = {b: {"quality": scores[name][b], "distillation": runs[b][name], "scored": scored}
                   for b in runs if name in names}
        decoders[name] = {
            "kind": kind, "params": model.num_parameters(),
            "gmacs_per_frame_256": module_macs(model, LATENTS) / 1e9 / 17,
            "gmacs_per_frame_512": module_macs(model, (1, 16, 5, 64, 64)) / 1e9 / 17,
            "latency": timings[name], "phone_720p": phone_fps(name),
            "budgets": dict(sorted((kept.get(name, {}) | budgets).items(), key=lambda kv: float(kv[0])))}
    results = {
        "what": "quality vs latency on the shipped reference teacher (16-channel, 8x spatial, 4x temporal latents)",
        "teacher": scores["teacher"], "bicubic_8x_psnr": bicubic,
        "eval": f"{reference.EVAL_FRAMES}x{reference.EVAL_SIZE}x{reference.EVAL_SIZE}, 3 windows of each of "
                f"{', '.join(reference.HELD_OUT)}; LPIPS {'VGG16 v0.1' if args.lpips else 'not measured'}",
        "latency_setup": f"2D-only form, fp32, latents {LATENTS} -> 17x256x256, {args.threads} threads, median of "
                         f"{args.runs} interleaved rounds after one warm-up, random weights",
        "threads": args.threads, "scored": scored,
        "budgets": sorted({b for d in decoders.values() for b in d["budgets"]}, key=float),
        "phone_setup": f"720p from latents {PHONE_LATENTS} (Wan geometry), the fastest deployment per phone by the "
                       "project's estimator (turbovaed.profile.estimate.best_cell): calibrated estimate, or roofline "
                       "bound where no calibration covers the unit (labelled)",
        "distillation_setup": {"minutes_each": args.minutes,
                               "recipe": to_toml(recipe("NAME", args.out, args.minutes[-1], args.threads))},
        "decoders": decoders}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pareto.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"plot: {plot(results, RESULTS / 'pareto.png')}")
    print(f"{'decoder':12s} {'budget':>6s} {'params':>8s} {'GMAC/f':>7s} {'ORT ms':>8s} {'ET ms':>8s} {'PSNR':>6s} "
          f"{'SSIM':>6s} {'LPIPS':>6s} {'vsT':>6s} {'iPhone':>7s} {'S24':>7s} steps")
    for name, d in decoders.items():
        for budget, b in d["budgets"].items():
            g, t = b["quality"]["vs_ground_truth"], b["quality"]["vs_teacher"]
            print(f"{name:12s} {budget:>5s}m {d['params'] / 1e6:7.2f}M {d['gmacs_per_frame_256']:7.2f} "
                  f"{d['latency']['onnxruntime']['median_ms']:8.0f} "
                  f"{d['latency']['executorch-xnnpack']['median_ms']:8.0f} {g['psnr']:6.2f} {g['ssim']:6.4f} "
                  f"{g.get('lpips', float('nan')):6.4f} {t['psnr']:6.2f} "
                  f"{fps_of(d['phone_720p'][PHONES[0]])[0]:7.1f} {fps_of(d['phone_720p'][PHONES[1]])[0]:7.1f} "
                  f"{b['distillation']['steps']}")
    print(f"teacher {scores['teacher']['teacher_psnr']:.2f} dB; bicubic 8x {bicubic:.2f} dB")


if __name__ == "__main__":
    main()
