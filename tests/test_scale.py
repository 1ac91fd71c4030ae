"""Distillation at scale (issue 21): bad files, coverage, stale caches, torn checkpoints, stage switches,
non-finite steps on one rank, setup refusals. Real clips where the question is about real files."""

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_distill import tiny_recipe

from turbovaed import data, presets
from turbovaed.distill import setup, trainer
from turbovaed.distill.checkpoint import previous_slot
from turbovaed.distill.recipe import DistillRecipe
from turbovaed.io import CheckpointError, InputError, VideoError
from turbovaed.recipes import load_toml


def _faststart(path: Path, frames: int, seed: int = 0) -> bytes:
    """An H.264 mp4 with its header (frame count) before the media data, as streaming encoders write."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for _ in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path.read_bytes()


def bad_files(folder: Path) -> dict[str, Path]:
    """One of each bad file a 100k-clip folder holds: the header promises frames the file cannot deliver
    (truncated mid-file; media data missing), zero bytes, a text file named .mp4."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = _faststart(folder / "whole.mp4", 40)
    (folder / "whole.mp4").unlink()
    mdat = raw.find(b"mdat")
    files = {"truncated": folder / "truncated.mp4", "no_media": folder / "no_media.mp4",
             "zero_bytes": folder / "zero_bytes.mp4", "not_video": folder / "not_video.mp4"}
    files["truncated"].write_bytes(raw[:mdat + (len(raw) - mdat) // 3])
    files["no_media"].write_bytes(raw[:mdat + 8])
    files["zero_bytes"].write_bytes(b"")
    files["not_video"].write_text("<html>404 not found</html>")
    return files


def test_a_header_that_over_counts_frames_reads_the_real_end(tmp_path):
    path = data.write_video(tmp_path / "v.mp4", data.synthetic_clip(40, 48, 64, seed=2), fps=10)
    lying = data.VideoInfo(path, 60, 10.0, 64, 48)  # the header claims 60 frames; 40 decode
    whole = data.to_tensor(data.read_frames(path))
    for seed in range(20):  # windows past the real end (1 in ~3 here) used to raise
        clip, meta = data.sample_clip(path, 9, (48, 64), random.Random(seed), info=lying)
        assert clip.shape == (3, 9, 48, 64) and meta["start"] <= 31
        assert torch.equal(clip, whole[:, meta["start"]:meta["start"] + 9])


def test_bad_videos_are_replaced_the_same_way_every_time_and_counted(tmp_path, videos_dir):
    bad = bad_files(tmp_path / "v" / "bad")
    good = [shutil.copy(videos_dir / n, tmp_path / "v" / n) for n in ("sam2_bedroom.mp4", "cotracker_cat.mp4")]
    infos, errors = data.index_videos(data.list_videos(tmp_path / "v"), tmp_path / "index.json")
    assert sorted(i.path.name for i in infos) == sorted(["no_media.mp4", "truncated.mp4", *(Path(g).name for g in good)])
    assert len(errors) == 2  # zero bytes and the text file never reach training
    sampler = data.ClipSampler([i.path for i in infos], 9, (64, 64), seed=1, resize=128, infos=infos)
    metas = [sampler.clip(i)[1] for i in range(8)]  # two epochs: every video is drawn twice
    replaced = [m for m in metas if m.get("replaced")]
    assert len(replaced) == 4 and all(Path(r["video"]).parent.name == "bad" for m in replaced for r in m["replaced"])
    again = data.ClipSampler([i.path for i in infos], 9, (64, 64), seed=1, resize=128, infos=infos)
    assert [again.clip(i)[1] for i in range(8)] == metas  # a resume draws the same replacements
    shutil.copy(bad["no_media"], tmp_path / "no_media_2.mp4")
    only_bad = data.ClipSampler([bad["no_media"], tmp_path / "no_media_2.mp4"], 9, (64, 64))
    with pytest.raises(VideoError, match="2 videos in a row failed"):
        only_bad.clip(0)


def test_an_epoch_touches_every_video_in_a_fresh_order():
    infos = [data.VideoInfo(Path(f"/data/{k:05d}.mp4"), 100, 24.0, 320, 240) for k in range(1000)]
    sampler = data.ClipSampler([i.path for i in infos], 17, (256, 256), seed=3, infos=infos)
    first = [sampler.video_of(i) for i in range(1000)]
    second = [sampler.video_of(i) for i in range(1000, 2000)]
    assert sorted(first) == sorted(second) == list(range(1000))  # all of the data, each epoch
    assert first != second and first[:200] != list(range(200))  # not the sorted folder order, not repeated
    assert data.ClipSampler([i.path for i in infos], 17, (256, 256), seed=3, infos=infos).video_of(1234) == \
        sampler.video_of(1234)


def test_an_interrupted_index_build_resumes_where_it_stopped(tmp_path, monkeypatch):
    for k in range(6):
        data.write_video(tmp_path / "v" / f"{k}.mp4", data.synthetic_clip(5, 16, 16, seed=k), fps=10)
    listed = data.list_videos(tmp_path / "v")
    real, probed = data._probe, []

    def dies_after_four(path):
        if len(probed) == 4:
            raise KeyboardInterrupt
        probed.append(path)
        return real(path)

    monkeypatch.setattr(data, "_probe", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        data.index_videos(listed, tmp_path / "index.json", workers=1, save_every_s=0)
    assert len(data.load_index(tmp_path / "index.json")) == 4  # saved while it grew
    probed.clear()
    monkeypatch.setattr(data, "_probe", lambda p: probed.append(p) or real(p))
    infos, _ = data.index_videos(listed, tmp_path / "index.json", workers=1)
    assert len(infos) == 6 and probed == listed[4:]


def test_two_ranks_on_real_clips_with_bad_files_and_a_non_finite_step_on_one_rank(tmp_path, videos_dir):
    """The 8-GPU run in miniature: gloo, real clips plus one of each bad file, two cache generations, and
    a NaN on rank 1 only at step 2, which both ranks skip."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for n in ("sam2_bedroom.mp4", "cotracker_cat.mp4", "cotracker_teddy.mp4", "sam2_02_cups.mp4"):
        shutil.copy(videos_dir / n, videos / n)
    shutil.copy(bad_files(videos / "bad")["no_media"], videos / "bad" / "held_out_bad.mp4")
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(tmp_path, steps=4).read_text().replace(
        "synthetic = true", f'videos = ["{videos}"]\nheld_out = ["held_out_bad.mp4", "sam2_02_cups.mp4"]\n'
                            'resize = 64\nrefresh_every = 2'
    ).replace("clips = 6", "clips = 8").replace("eval_size = 64", "eval_size = 64\neval_per_video = 1"))
    script = tmp_path / "poisoned.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from turbovaed.distill import loop, trainer
        from turbovaed.distill.recipe import DistillRecipe
        from turbovaed.recipes import load_toml
        real, calls = loop.msssim_grad_loss, [0]
        def poisoned(pred, target):
            calls[0] += 1
            nan = os.environ["RANK"] == "1" and calls[0] == 2
            return real(pred, target) * (float("nan") if nan else 1.0)
        loop.msssim_grad_loss = poisoned
        trainer.distill(load_toml(DistillRecipe, {str(recipe)!r}), show_progress=False)
    """))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29531", str(script)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "student"
    report = json.loads((out / "metrics.json").read_text())
    assert report["world_size"] == 2 and report["ranks_in_sync"] is True
    d = report["data"]
    assert d["videos_indexed"] == 5 and d["videos_unreadable"] == 2  # 3 good + truncated + no_media; 2 refused
    assert d["cache_generations"] == 2 and d["distinct_clips"] == 16 and d["distinct_videos"] == 5
    assert d["replaced_clips"] > 0 and d["nonfinite_steps_skipped"] == 1 and d["eval_videos_failed"] == 1
    assert report["eval_set"] == "held-out videos: sam2_02_cups.mp4"
    log = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in log if r.get("skipped")] == [2] and len(log) == 4
    assert [r["cache_generation"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
            if "cache_generation" in r] == [0, 1]
    assert [p.name for p in (tmp_path / "student.work" / "cache").iterdir()] == ["gen-00001"]  # the old one removed
    assert "replaced after their video failed to decode" in (out / "README.md").read_text()
    assert all(torch.isfinite(v).all() for v in load_file(str(out / "raw.safetensors")).values())


def test_a_torn_newest_checkpoint_falls_back_to_the_previous_slot(tmp_path):
    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path, steps=6))
    trainer.distill(recipe, show_progress=False)
    ckpt = tmp_path / "student.work" / "checkpoint"
    assert json.loads((previous_slot(ckpt) / "state.json").read_text())["step"] == 3
    state = ckpt / "state.safetensors"
    state.write_bytes(state.read_bytes()[:1000])  # killed mid-write of the newest slot
    recipe.train.steps = 9
    out = trainer.distill(recipe, resume=True, show_progress=False)
    log = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in log] == list(range(1, 10))  # steps 4-6 redone once, never duplicated
    # the rename window: only the previous slot exists; a fresh start refuses, --resume uses it
    shutil.rmtree(ckpt)
    with pytest.raises(InputError, match="--resume"):
        trainer.distill(recipe, show_progress=False)
    recipe.train.steps = 10
    trainer.distill(recipe, resume=True, show_progress=False)
    # torn, with no previous slot: one clear error, never a silent restart from step 0
    shutil.rmtree(previous_slot(ckpt))
    (ckpt / "state.safetensors").write_bytes(b"\0" * 100)
    recipe.train.steps = 12
    with pytest.raises(CheckpointError, match="no readable training state"):
        trainer.distill(recipe, resume=True, show_progress=False)


def test_resume_switches_on_the_gan_and_feature_alignment_and_refuses_a_new_architecture(tmp_path, capsys):
    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path, steps=3))
    recipe.loss.feature = 0.0
    trainer.distill(recipe, show_progress=False)
    recipe.train.steps, recipe.loss.feature = 5, 0.1
    recipe.gan.enabled, recipe.gan.start_step = True, 3
    out = trainer.distill(recipe, resume=True, show_progress=False)
    assert "align, disc, opt_align, opt_d not in the checkpoint" in capsys.readouterr().err
    log = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5] and "gan_d" in log[-1] and log[-1]["feature"] > 0
    recipe.train.steps = 7
    recipe.student.channels = [24, 16]
    with pytest.raises(CheckpointError, match="changes student_config"):
        trainer.distill(recipe, resume=True, show_progress=False)


def test_compile_with_the_adaptive_gan(tmp_path):
    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path, steps=2))
    recipe.train.compile, recipe.gan.enabled, recipe.gan.start_step = True, True, 1
    out = trainer.distill(recipe, show_progress=False)
    log = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert "gan_d" in log[1] and all(np.isfinite(r["loss"]) for r in log)


def test_a_stale_cache_is_refused_and_rebuilt_on_request(tmp_path):
    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path, steps=2))
    trainer.distill(recipe, show_progress=False)
    work = tmp_path / "student.work"
    for slot in ("checkpoint", "checkpoint.prev"):
        shutil.rmtree(work / slot, ignore_errors=True)
    recipe.data.seed = 5
    with pytest.raises(CheckpointError, match="differs in: seed.*--rebuild-cache"):
        trainer.distill(recipe, show_progress=False)
    trainer.distill(recipe, show_progress=False, rebuild_cache=True)
    part = json.loads((work / "cache" / "gen-00000" / "part-000.json").read_text())
    assert part["identity"]["seed"] == 5 and len(part["identity"]["teacher_weights"]) == 16


def test_setup_refuses_before_any_heavy_work(tmp_path, monkeypatch):
    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path, steps=2))
    recipe.train.tensorboard = True
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    with pytest.raises(InputError, match="needs TensorBoard"):
        trainer.distill(recipe, show_progress=False)
    monkeypatch.undo()
    recipe.train.tensorboard = False
    (tmp_path / "afile").write_text("x")
    blocked = load_toml(DistillRecipe, tiny_recipe(tmp_path, steps=2))
    blocked.output = str(tmp_path / "afile" / "student")
    with pytest.raises(InputError, match="cannot write the run's output"):
        trainer.distill(blocked, show_progress=False)
    monkeypatch.setattr(setup.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(InputError, match=r"latent cache needs about .* GB free"):
        trainer.distill(recipe, show_progress=False)
    assert not (tmp_path / "student.work" / "cache").exists() and not (tmp_path / "student").exists()
    recipe.teacher.tiny, recipe.teacher.path = False, str(tmp_path / "no-such-teacher")
    with pytest.raises(InputError, match="teacher.path = .* does not exist"):
        trainer.distill(recipe, show_progress=False)


FAMILIES = ["reference", "ltx", "ltx2", "hunyuan", "hunyuan15", "cogvideox", "wan21", "wan22", "mochi", "cosmos",
            "magvit", "kvae", "kandinsky6"]


@pytest.mark.parametrize("family", FAMILIES)
def test_feature_alignment_pairs_frames_exactly_per_family(family):
    """Per family, with the blocks its shipped recipe aligns: each student stage meets its teacher block with
    equal frames, and (causal teachers) frame for frame: a change to latent frame 2 first shows at the same
    aligned frame in both."""
    from turbovaed import teachers
    from turbovaed.distill.losses import FeatureAlignment
    from turbovaed.student import StudentDecoder

    recipe = Path(__file__).parents[1] / "distill" / f"{'quickstart' if family == 'reference' else family}.toml"
    blocks = load_toml(DistillRecipe, recipe).loss.feature_blocks
    torch.manual_seed(0)
    teacher = teachers.build_tiny(family)
    student = StudentDecoder(presets.student_config(teacher, mini=True)).eval()
    z = torch.randn(1, teacher.latent_channels, 5, 8, 8)
    z2 = z.clone()
    z2[:, :, 2:] += 1.0
    with torch.no_grad():
        (_, tf), (_, tf2) = (teacher.decode_with_features(x, blocks=blocks, truncate=True) for x in (z, z2))
        (_, sf), (_, sf2) = (student(x, return_features=True) for x in (z, z2))
    align = FeatureAlignment([f.shape for f in sf], [f.shape for f in tf], 5, teacher.spec.first_frame)
    for k, (i, offset) in enumerate(zip(align.pairs, align.offsets)):
        s, s2 = sf[i][:, :, offset:], sf2[i][:, :, offset:]
        assert s.shape[2] == tf[k].shape[2], (family, k)

        def first_changed(a, b):
            return next(j for j in range(a.shape[2]) if not torch.allclose(a[:, :, j], b[:, :, j], atol=1e-5))
        if offset and family != "cogvideox":  # causal on both sides: latent 2 first shows at the same frame
            # (CogVideoX's GroupNorm pools statistics over all frames, so every frame changes: not causal)
            assert first_changed(s, s2) == first_changed(tf[k], tf2[k]), (family, k)


def test_one_host_read_per_training_step(tmp_path):
    """The loop reads the device once per step (gradient finiteness and the logged losses together), plus
    one finiteness check per checkpoint (HostReads: what would wait on a GPU)."""
    from turbovaed.distill.syncs import counting

    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path, steps=6))  # checkpoints at steps 3 and 6
    with counting(trainer, "train_loop") as counts:
        trainer.distill(recipe, show_progress=False)
    assert counts == [6 + 2]


def test_index_command_builds_the_index_a_recipe_reads(tmp_path):
    bad_files(tmp_path / "v")
    data.write_video(tmp_path / "v" / "good.mp4", data.synthetic_clip(9, 32, 32), fps=10)
    proc = subprocess.run([sys.executable, "-m", "turbovaed", "index", str(tmp_path / "v"), "--index",
                           str(tmp_path / "i.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "5 videos" in proc.stdout and "3 readable, 2 unreadable" in proc.stdout
    assert len(data.load_index(tmp_path / "i.json")) == 5
