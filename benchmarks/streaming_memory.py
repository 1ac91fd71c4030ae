"""Streaming decode at 720p: peak memory vs clip length, chunked vs whole-clip throughput, per-chunk latency.

All in one run on this machine (figures are ratios, since the machine is noisy):
1. peak RSS of `decode --stream --chunk 1` (latents file -> mp4, written as frames come) for 121 vs 17
   output frames, each in a fresh process (target: ratio <= 1.2); and the peak above the process's RSS
   once the model is loaded (target: <= 1.5 GB at 720p);
2. chunked (1 latent frame per step) vs whole-clip throughput at 17 frames, interleaved (target >= 0.8x);
3. latency of one 1-latent-frame step at 720p: eager PyTorch, ExecuTorch (XNNPACK fp32 step graph),
   ONNX Runtime and LiteRT (the exported step graphs, state as explicit inputs/outputs).

The student is the `reference` preset (16 latent channels, 8x/4x) or --student CHECKPOINT; speed and
memory do not depend on the weights.

    python benchmarks/streaming_memory.py [--student runs/quickstart/student] [--threads 2]

Writes benchmarks/results/streaming_memory.json (the README's streaming table is generated from it).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from results_io import RESULTS, write_results
from safetensors.torch import save_file

from turbovaed import presets, teachers
from turbovaed.export.core import backend_module
from turbovaed.export.recipe import ConvertOptions
from turbovaed.student import StreamingStep, StudentDecoder

WIDTH, HEIGHT = 1280, 720


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(student: str, latents: str, out: str, threads: int) -> None:
    """One streamed decode in this fresh process; prints peak RSS before and after decoding."""
    from turbovaed.io import LatentFile
    from turbovaed.stream import Streamer, stream_to_video

    torch.set_num_threads(threads)
    model = load_student(student)
    with torch.no_grad():  # one tiny step so lazy allocations of the runtime are in the baseline
        model.step(torch.zeros(1, model.config.latent_channels, 1, 2, 2))[1].close()
    streamer = Streamer(model)
    base = rss_mb()
    frames = stream_to_video(streamer, LatentFile(Path(latents)), Path(out), chunk=1)
    print(json.dumps({"frames": frames, "baseline_mb": base, "peak_mb": rss_mb()}))


def load_student(student: str) -> StudentDecoder:
    if student:
        return StudentDecoder.from_pretrained(student).eval()
    torch.manual_seed(0)
    return StudentDecoder(presets.student_config(teachers.get_spec("reference"))).eval()


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="", help="checkpoint folder (default: the reference preset, random weights)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parts", default="memory,throughput,runtimes",
                   help="which measurements (results of the others are kept from the last results file)")
    p.add_argument("--child", nargs=3, metavar=("LATENTS", "OUT", "UNUSED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.student, args.child[0], args.child[1], args.threads)
    torch.set_num_threads(args.threads)
    model = load_student(args.student)
    cfg = model.config
    h, w = HEIGHT // cfg.spatial_ratio, WIDTH // cfg.spatial_ratio
    print(f"student: {model.num_parameters():,} params, 720p output = latents {cfg.latent_channels}x{h}x{w} per frame, "
          f"{args.threads} threads")
    parts = set(args.parts.split(","))
    previous = RESULTS / "streaming_memory.json"
    result = json.loads(previous.read_text()) if previous.is_file() and parts != {"memory", "throughput", "runtimes"} \
        else {}
    result |= {"student": args.student or "reference preset (random weights)", "params": model.num_parameters(),
              "latents_per_frame": [cfg.latent_channels, h, w], "output": [HEIGHT, WIDTH], "threads": args.threads}

    if "memory" in parts:
        result["memory"] = peak_memory(args, cfg, h, w)
    if "throughput" in parts:
        result["throughput_17_frames"] = throughput(args, model, h, w)
    if "runtimes" in parts:
        result["step_720p"] = runtimes(args, model, h, w)
    write_results("streaming_memory", result)


def peak_memory(args: argparse.Namespace, cfg, h: int, w: int) -> dict:
    """Peak RSS of a streamed decode to mp4, fresh process per length."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for frames in (17, 121):
            n = cfg.latents_for(frames)
            lat = Path(tmp) / f"lat{n}.safetensors"
            save_file({"latents": torch.randn(1, cfg.latent_channels, n, h, w)}, str(lat))
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", str(lat),
                   str(Path(tmp) / f"out{n}.mp4"), "-"] + (["--student", args.student] if args.student else [])
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows[frames] = json.loads(proc.stdout.strip().splitlines()[-1]) | {"seconds": time.perf_counter() - t0}
            r = rows[frames]
            r["above_model_mb"] = r["peak_mb"] - r["baseline_mb"]
            print(f"  stream {r['frames']:4d} frames to mp4: peak RSS {r['peak_mb']:.0f} MB "
                  f"(+{r['above_model_mb']:.0f} MB over the loaded model), {r['seconds']:.1f} s")
        a, b = rows[17], rows[121]
        memory = {"17": a, "121": b, "peak_ratio_121_vs_17": b["peak_mb"] / a["peak_mb"],
                            "max_above_model_mb": max(a["above_model_mb"], b["above_model_mb"])}
        print(f"peak RSS 121 vs 17 frames: {b['peak_mb'] / a['peak_mb']:.3f}x (target <= 1.2); peak above the "
              f"loaded model {memory['max_above_model_mb']:.0f} MB (target <= 1500)")
    return memory


def throughput(args: argparse.Namespace, model: StudentDecoder, h: int, w: int) -> dict:
    """Whole clip vs 1-latent chunks at 17 frames, interleaved."""
    cfg = model.config
    z = torch.randn(1, cfg.latent_channels, cfg.latents_for(17), h, w)

    def streamed() -> None:
        state = None
        for i in range(z.shape[2]):
            _, state = model.step(z[:, :, i:i + 1], state)

    whole_t, chunk_t = [], []
    with torch.no_grad():
        model(z[:, :, :2])  # warm-up
        for _ in range(args.repeats):
            whole_t += timed(lambda: model(z), 1)
            chunk_t += timed(streamed, 1)
    tw, tc = statistics.median(whole_t), statistics.median(chunk_t)
    print(f"17 frames at 720p: whole clip {tw:.2f} s ({17 / tw:.2f} fps), 1-latent chunks {tc:.2f} s "
          f"({17 / tc:.2f} fps): chunked throughput {tw / tc:.2f}x whole-clip (target >= 0.8)")
    return {"whole_s": tw, "chunked_s": tc, "chunked_vs_whole": tw / tc, "repeats": args.repeats}


def runtimes(args: argparse.Namespace, model: StudentDecoder, h: int, w: int) -> dict:
    """One 1-latent step at 720p through each runtime (after the first chunk: first = 0), interleaved."""
    z = torch.randn(1, model.config.latent_channels, 2, h, w)
    step = StreamingStep(model.to_mobile().eval()).eval()
    inputs = step.initial_inputs(z[:, :, :1])
    with torch.no_grad():
        _, *states = step(*inputs)
    inputs = (z[:, :, 1:2], torch.zeros(1), *states)
    runners = {"eager (mobile form)": lambda *xs: step(*xs)}
    names = (["latents", "first", *[f"state_{i}" for i in range(len(states))]],
             ["frames", *[f"state_{i}_out" for i in range(len(states))]])
    steps = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend, artifact in (("executorch", "decoder.pte"), ("onnx", "decoder.onnx"), ("litert", "decoder.tflite")):
            out = Path(tmp) / backend
            out.mkdir()
            t0 = time.perf_counter()
            backend_module(backend).convert(step, inputs, ConvertOptions(), [], out, names=names)
            runners[backend] = backend_module(backend).runner(out / artifact, model=step)
            print(f"  exported the 720p step graph to {backend} in {time.perf_counter() - t0:.0f} s")
        with torch.no_grad():
            ref = step(*inputs)[0]
            times: dict[str, list[float]] = {k: [] for k in runners}
            errors = {k: (run(*inputs)[0] - ref).abs().max().item() for k, run in runners.items()}  # also warm-up
            for _ in range(args.repeats):  # round-robin, so every runtime sees the same machine state
                for k, run in runners.items():
                    times[k] += timed(lambda run=run: run(*inputs), 1)
        for k in runners:
            t = statistics.median(times[k])
            steps[k] = {"ms": t * 1000, "fps": ref.shape[2] / t, "max_abs_diff_vs_eager": errors[k]}
            print(f"  {k:20s} one step (1 latent -> {ref.shape[2]} frames 720p): {t * 1000:7.0f} ms "
                  f"({ref.shape[2] / t:.2f} fps), max |diff| vs eager {errors[k]:.1e}")
    return {"frames_per_step": ref.shape[2], "repeats": args.repeats, "runtimes": steps}


if __name__ == "__main__":
    main()
