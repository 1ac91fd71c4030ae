"""GPU smoke of the distillation trainer, the way users run it: `turbovaed distill` (and torchrun) on
real video files, bf16, every teacher family.

1. 20 steps per registered teacher family (tiny random configs of the real diffusers classes).
2. The full-size Wan 2.1 and LTX-Video decoders (diffusers' default configs, random weights saved to a
   local folder and loaded with from_pretrained, as real weights are), batch 4, 17x256x256, at each of
   --full-precisions (bf16; fp32 = TF32 matmuls/convs), in one process and, where the machine has two GPUs
   or more, two (torchrun + NCCL).
3. With two GPUs or more: a torchrun pair killed with SIGKILL mid-run, then `--resume`d to the end.

Every run has a wall-clock limit (--run-timeout): one that hangs is recorded as a timeout, never blocks
the rest. Prints s/step (median after warm-up), clips/s and peak GPU memory per run and writes --out
(benchmarks/results/gpu_smoke.json). Needs CUDA; `--device cpu --tiny-steps 2 --no-full` checks the script
itself on a CPU machine.

    python benchmarks/gpu_smoke.py
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from turbovaed import data, teachers

OUT = Path(__file__).resolve().parent / "results" / "gpu_smoke.json"
RECIPE = """output = "{out}"
[teacher]
name = "{name}"
{teacher}
[student]
{student}
[data]
videos = ["{videos}"]
held_out = ["clip0.mp4"]
latent_frames = {lf}
size = {size}
resize = {size}
clips = {clips}
workers = 2
eval_size = {size}
eval_per_video = 1
posterior = "sample"
[loss]
feature_blocks = [0, 1]
[train]
steps = {steps}
batch = {batch}
lr = 1e-4
device = "{device}"
precision = "{precision}"
checkpoint_every = 1000
eval_every = {eval_every}
log_every = 5
"""


def make_videos(folder: Path, size: int, frames: int = 24, count: int = 4) -> Path:
    """Real mp4 files (synthetic content) so the whole data path runs: index, seek, decode, crop."""
    for i in range(count):
        clip = data.synthetic_clip(frames, size + 32, size + 64, seed=i)
        data.write_video(folder / f"group{i % 2}" / f"clip{i}.mp4", clip, fps=24)
    return folder


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(name: str, work: Path, videos: Path, *, teacher_line: str, student_line: str, steps: int, batch: int,
        size: int, device: str, precision: str, procs: int = 1, timeout_s: float = 600, kill_at: int = 0) -> dict:
    """One `turbovaed distill` run (torchrun for procs > 1). kill_at > 0: SIGKILL the whole process group once
    the checkpoint reaches that step, then `--resume` to the end."""
    spec = teachers.get_spec(name)
    lf = next(k for k in range(1, 10) if spec.frames_for(k) >= 17)
    tag = f"{name}-{procs}p-{precision}{'-killed' if kill_at else ''}"
    out = work / tag
    recipe = work / f"{tag}.toml"
    recipe.write_text(RECIPE.format(out=out, name=name, teacher=teacher_line, student=student_line, videos=videos,
                                    lf=lf, size=size, clips=batch * procs * 3, steps=steps, batch=batch,
                                    device=device, precision=precision, eval_every=max(steps // 2, 1))
                      .replace("checkpoint_every = 1000", f"checkpoint_every = {kill_at or 1000}"))
    def command(*extra: str) -> list[str]:
        if procs == 1:
            return [sys.executable, "-m", "turbovaed", "distill", str(recipe), *extra]
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
                str(free_port()), "-m", "turbovaed", "distill", str(recipe), *extra]
    cmd = command()
    row = {"teacher": name, "processes": procs, "batch_per_process": batch, "frames": spec.frames_for(lf),
           "size": size, "precision": precision, "device": device, "steps": steps}
    t0 = time.perf_counter()
    if kill_at:
        state = Path(f"{out}.work") / "checkpoint" / "state.json"
        killed = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "4"})
        while time.perf_counter() - t0 < timeout_s and killed.poll() is None and not (
                state.is_file() and json.loads(state.read_text())["step"] >= kill_at):
            time.sleep(0.2)
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
        row["killed_at_step"] = json.loads(state.read_text())["step"] if state.is_file() else None
        cmd = command("--resume")  # a fresh port: the killed run's may linger
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "4"})
    try:
        _, stderr = proc.communicate(timeout=max(timeout_s - (time.perf_counter() - t0), 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's ranks too, not only the launcher
        proc.communicate()
        return {**row, "status": "timeout", "wall_s": round(time.perf_counter() - t0, 1)}
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        return {**row, "status": "failed", "error": stderr[-2000:]}
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if "loss" in r]
    steady = train[3:] or train
    metrics = json.loads((out / "metrics.json").read_text())
    return {**row, "status": "ok", "s_per_step": round(statistics.median(r["s_per_step"] for r in steady), 4),
            "clips_per_s": round(statistics.median(r["clips_per_s"] for r in steady), 2),
            "peak_gpu_mib": max((r.get("peak_mem_mib", 0) for r in train), default=0),
            "final_loss": train[-1]["loss"], "student_params": metrics["student_params"],
            "teacher_decoder_params": metrics["teacher_decoder_params"],
            "eval_student_psnr": round(metrics["mean"]["student_psnr"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny-steps", type=int, default=20)
    ap.add_argument("--full-steps", type=int, default=20)
    ap.add_argument("--families", nargs="*", default=[n for n in teachers.TEACHERS if n != "reference"])
    ap.add_argument("--no-full", action="store_true", help="skip the full-size Wan 2.1 / LTX runs")
    ap.add_argument("--precision", default="bf16", help="the tiny-family runs' precision")
    ap.add_argument("--full-precisions", nargs="*", default=["bf16"], help="full-size runs: bf16 and/or fp32 (TF32)")
    ap.add_argument("--run-timeout", type=float, default=600, help="seconds per run before it counts as a timeout")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_smoke needs CUDA (this machine has none); `--device cpu --tiny-steps 2 --no-full` checks the script")
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        small = make_videos(work / "videos64", 64)
        for name in args.families:
            rows.append(run(name, work, small, teacher_line="tiny = true", student_line="mini = true",
                            steps=args.tiny_steps, batch=2, size=64, device=args.device, precision=args.precision,
                            timeout_s=args.run_timeout))
            print(json.dumps(rows[-1]), flush=True)
        if not args.no_full:
            big = make_videos(work / "videos256", 256)
            for name in ("wan21", "ltx"):
                spec = teachers.get_spec(name)
                folder = work / f"{name}-weights"
                teachers._diffusers_class(spec)().save_pretrained(folder)  # full size, random weights
                for precision in args.full_precisions:
                    for procs in [1] + ([2] if gpus >= 2 else []):
                        rows.append(run(name, work, big, teacher_line=f'path = "{folder}"',
                                        student_line=f'preset = "{name}"', steps=args.full_steps, batch=4, size=256,
                                        device=args.device, precision=precision, procs=procs,
                                        timeout_s=args.run_timeout))
                        print(json.dumps(rows[-1]), flush=True)
        if gpus >= 2 or args.device == "cpu":  # a pair killed mid-run, then --resume (gloo on a CPU self-check)
            rows.append(run("wan21", work, small, teacher_line="tiny = true", student_line="mini = true",
                            steps=args.tiny_steps, batch=2, size=64, device=args.device, precision=args.precision,
                            procs=2, timeout_s=args.run_timeout, kill_at=max(args.tiny_steps // 2, 1)))
            print(json.dumps(rows[-1]), flush=True)
        if args.device == "cuda" and gpus < 2:
            print(f"two-process runs skipped: {gpus} GPU(s) visible (NCCL needs one GPU per rank)")
    device = torch.cuda.get_device_name(0) if gpus else "cpu"
    print(f"\n({device}, {args.precision})  teacher / processes / batch per process / clip: s/step, clips/s, peak MiB")
    for r in rows:
        print(f"{r['teacher']:10s} {r['processes']}p x{r['batch_per_process']} {r['frames']}x{r['size']}^2: "
              f"{r.get('s_per_step', 0):.3f} s/step, {r.get('clips_per_s', 0):.2f} clips/s, "
              f"{r.get('peak_gpu_mib', 0):.0f} MiB  {r['status']}")
    if args.device == "cuda":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": device, "gpus": gpus, "torch": torch.__version__, "rows": rows},
                                       indent=1) + "\n")
        print(f"wrote {args.out}")
    if any(r["status"] != "ok" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
