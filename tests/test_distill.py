"""Distillation trainer: recipes, an end-to-end run, exact resume after SIGKILL, DDP, faults."""

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from turbovaed import presets, teachers
from turbovaed.distill import guard, loop, setup, trainer
from turbovaed.distill.recipe import DistillRecipe
from turbovaed.io import InputError
from turbovaed.recipes import build, load_toml, to_toml
from turbovaed.student import StudentDecoder

REPO = Path(__file__).resolve().parents[1]

TINY = """
output = "{out}"
[teacher]
name = "wan21"
tiny = true
[student]
mini = true
[data]
synthetic = true
size = 32
clips = 6
eval_clips = 2
eval_size = 64
latent_frames = 2
[train]
steps = {steps}
batch = 2
checkpoint_every = 3
threads = 1
"""


def tiny_recipe(tmp_path: Path, steps: int = 6, extra: str = "") -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(out=tmp_path / "student", steps=steps) + extra)
    return path


class Child:
    """A child process whose stdout and stderr go to files, read whole at any time with `.stdout.read()`: a pipe
    nobody reads while the test waits fills up (64 KB) and stalls the child until the timeout."""

    class _Output:
        def __init__(self) -> None:
            self.file = tempfile.TemporaryFile("w+")

        def read(self) -> str:
            self.file.seek(0)
            return self.file.read()

    def __init__(self, args: list[str], **kwargs) -> None:
        self.stdout, self.stderr = self._Output(), self._Output()
        self.process = subprocess.Popen(args, stdout=self.stdout.file, stderr=self.stderr.file, text=True, **kwargs)
        self.pid = self.process.pid

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout)

    def poll(self) -> int | None:
        return self.process.poll()

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)


def run_cli(*args: str, env: dict | None = None) -> Child:
    return Child([sys.executable, "-m", "turbovaed", *args], env={**os.environ, **(env or {})})


def test_every_shipped_recipe_parses_and_matches_its_teacher():
    for path in sorted((REPO / "distill").glob("*.toml")):
        recipe = load_toml(DistillRecipe, path)
        spec = teachers.get_spec(recipe.teacher.name)
        preset = recipe.student.preset.removesuffix("-mini")
        cfg = presets.student_config(teachers.get_spec(preset))
        assert (cfg.spatial_ratio, cfg.temporal_ratio) == (spec.spatial, spec.temporal), path.name
        assert build(DistillRecipe, __import__("tomllib").loads(to_toml(recipe))) == recipe  # round-trips
        if recipe.teacher.name == "reference":  # CPU recipes: the quickstart and its shipped starting point
            continue
        # GPU recipes follow Turbo-VAED's released setup: 17+ frames at 256^2 crops,
        # posterior samples, lr 1e-4, betas (0.9, 0.95), EMA 0.999, mid + first up block, held-out videos
        d, t = recipe.data, recipe.train
        assert spec.frames_for(d.latent_frames) >= 17 and d.size == 256 and d.resize >= d.size, path.name
        # (Mochi aligns the mid block only: its first up block triples time, which no student stage matches)
        blocks = [0] if path.stem == "mochi" else [0, 1]
        assert d.posterior == "sample" and d.eval_videos and recipe.loss.feature_blocks == blocks, path.name
        # 100k-clip folders: cache generations cover every video several times over the run
        assert d.refresh_every and t.steps // d.refresh_every * d.clips >= 3 * 100_000, path.name
        assert (t.lr, t.betas, t.ema_decay, t.weight_decay) == (1e-4, [0.9, 0.95], 0.999, 1e-4), path.name
    assert {p.stem for p in (REPO / "distill").glob("*.toml")} >= set(teachers.TEACHERS) - {"reference"} | {"quickstart"}


@pytest.mark.parametrize("text,message", [
    ("[train]\nstepz = 3\n", "unknown recipe key(s) [train] stepz"),
    ("[train]\nsteps = 'many'\n", "'train.steps' must be int"),
    ("[data]\nvideos = 'x'\n", "'data.videos' must be a list"),
    ("bogus = 1\n", "unknown recipe key(s) bogus"),
    ("[loss]\nperceptual_kind = 'vgg'\n", "perceptual_kind must be one of"),
    ("[train]\nsteps = 0\n", "train.steps must be >= 1"),
    ("[train]\nlr = 0.0\n", "train.lr must be > 0"),
    ("[train]\nlr = -1e-4\n", "train.lr must be > 0"),
    ("[train]\nlr = nan\n", "train.lr must be a finite number"),
    ("[train]\ncheckpoint_every = 0\n", "train.checkpoint_every must be >= 1"),
    ("[train]\nmax_minutes = inf\n", "train.max_minutes must be a finite number"),
    ("[train]\nbetas = [0.9, nan]\n", "train.betas[1] must be a finite number"),
    ("[loss]\nfeature = -0.1\n", "loss.feature must be >= 0"),
    ("[gan]\nlr = 0.0\n", "gan.lr must be > 0"),
    ("[data]\nresize = -1\n", "data.resize must be >= 0"),
    ("[train]\nlr = nan\ncheckpoint_every = 0\n",
     "train.lr must be a finite number, got nan; train.checkpoint_every must be >= 1"),
    ("[train\n", "not valid TOML"),
])
def test_bad_recipes_fail_with_the_bad_key(tmp_path, text, message):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_toml(DistillRecipe, path)
    assert message in str(err.value)


@pytest.mark.parametrize("section,key,message", [
    ("teacher", 'path = "{tmp}/no-teacher"', "teacher.path = '{tmp}/no-teacher' does not exist"),
    ("data", 'videos = ["{tmp}/no-videos"]', "data.videos[0] = '{tmp}/no-videos' does not exist"),
    ("loss", 'perceptual_weights = "{tmp}/no.safetensors"', "loss.perceptual_weights = '{tmp}/no.safetensors' does not"),
    ("data", 'index = "{tmp}/file/videos.index.json"', "cannot write the run's output to {tmp}/file"),
])
def test_unreadable_inputs_and_unwritable_outputs_are_refused_before_any_work(tmp_path, section, key, message):
    (tmp_path / "file").write_text("a file, not a folder")
    recipe = tiny_recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace(f"[{section}]\n", f"[{section}]\n{key.format(tmp=tmp_path)}\n")
                      if f"[{section}]" in recipe.read_text() else
                      recipe.read_text() + f"[{section}]\n{key.format(tmp=tmp_path)}\n")
    proc = run_cli("distill", str(recipe))
    assert proc.wait(timeout=240) == 2
    err = proc.stderr.read()
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err
    assert not (tmp_path / "student.work").exists()


def test_mismatches_fail_before_training(tmp_path):
    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path))
    recipe.student.preset = "ltx-mini"
    with pytest.raises(InputError, match="latent channels"):
        trainer.distill(recipe, show_progress=False)
    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path))
    recipe.data.synthetic = False
    (tmp_path / "empty").mkdir()
    recipe.data.videos = [str(tmp_path / "empty")]
    with pytest.raises(Exception, match="no videos"):
        trainer.distill(recipe, show_progress=False)
    assert not (tmp_path / "student.work" / "checkpoint").exists()


def test_end_to_end_run_writes_a_diffusers_like_folder_that_learned(tmp_path):
    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path, steps=30, extra="[gan]\nenabled = true\nstart_step = 20\n"))
    recipe.train.lr = 5e-3
    out = trainer.distill(recipe, show_progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "raw.safetensors", "recipe.toml", "README.md", "metrics.json",
            "log.jsonl"} <= names
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    log = [r for r in records if "loss" in r]
    assert [r["step"] for r in log] == list(range(1, 31))
    assert [r["step"] for r in records if "eval_student_psnr" in r] == [30]  # the final evaluation is logged
    assert "gan_d" in log[-1] and "gan_d" not in log[0]
    first, last = sum(r["l1_teacher"] for r in log[:5]) / 5, sum(r["l1_teacher"] for r in log[-5:]) / 5
    assert last < 0.8 * first, (first, last)  # it learned
    ema, raw = load_file(str(out / "model.safetensors")), load_file(str(out / "raw.safetensors"))
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # EMA is its own set of weights
    report = json.loads((out / "metrics.json").read_text())
    assert report["mean"]["student_psnr"] > 0 and "offline fallback" in report["perceptual"]
    assert "| student vs ground truth |" in (out / "README.md").read_text()
    from turbovaed.student import StudentDecoder

    assert StudentDecoder.from_pretrained(out).config.latent_channels == 4


def test_sigkill_mid_run_then_resume_gives_identical_weights(tmp_path):
    straight = tmp_path / "a"
    straight.mkdir()
    trainer.distill(load_toml(DistillRecipe, tiny_recipe(straight, steps=9)), show_progress=False)

    killed = tmp_path / "b"
    killed.mkdir()
    recipe = tiny_recipe(killed, steps=9)
    proc = run_cli("distill", str(recipe))
    state = killed / "student.work" / "checkpoint" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (state.is_file() and json.loads(state.read_text())["step"] >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = json.loads(state.read_text())["step"]
    assert 3 <= step < 9, "the run must be killed mid-way"
    assert not (killed / "student").exists()
    # a fresh start refuses to clobber the checkpoint; --resume continues it
    again = run_cli("distill", str(recipe))
    assert again.wait() == 2 and "--resume" in again.stderr.read()
    resumed = run_cli("distill", str(recipe), "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    # a plain progress line where the terminal is not one (on stderr, with the other stage lines; results on stdout)
    assert "step 9/9 loss" in resumed.stderr.read() and "student checkpoint" in resumed.stdout.read()
    a = load_file(str(straight / "student" / "raw.safetensors"))
    b = load_file(str(killed / "student" / "raw.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ea = load_file(str(straight / "student" / "model.safetensors"))
    eb = load_file(str(killed / "student" / "model.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    la = [r["loss"] for r in map(json.loads, (straight / "student" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    lb = [r["loss"] for r in map(json.loads, (killed / "student" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert la[-3:] == lb[-3:]


def _poison(monkeypatch, bad_calls) -> None:
    """Make the perceptual loss NaN on the given calls (one call per step here)."""
    real = loop.msssim_grad_loss
    calls = {"n": 0}

    def poisoned(pred, target):
        calls["n"] += 1
        return real(pred, target) * (float("nan") if bad_calls(calls["n"]) else 1.0)

    monkeypatch.setattr(loop, "msssim_grad_loss", poisoned)


def test_a_non_finite_step_is_skipped_counted_and_the_run_finishes(tmp_path, monkeypatch):
    _poison(monkeypatch, lambda n: n == 5)
    out = trainer.distill(load_toml(DistillRecipe, tiny_recipe(tmp_path, steps=8)), show_progress=False)
    report = json.loads((out / "metrics.json").read_text())
    assert report["data"]["nonfinite_steps_skipped"] == 1 and "1 non-finite steps skipped" in (out / "README.md").read_text()
    log = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in log if r.get("skipped")] == [5] and len(log) == 8
    assert all(torch.isfinite(v).all() for v in load_file(str(out / "raw.safetensors")).values())


def test_non_finite_steps_in_a_row_stop_the_run_and_keep_finite_checkpoints(tmp_path, monkeypatch):
    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path, steps=8))
    recipe.train.max_nonfinite = 2
    _poison(monkeypatch, lambda n: n > 4)
    with pytest.raises(guard.TrainingError, match="2 steps in a row.*up to step 6"):
        trainer.distill(recipe, show_progress=False)
    from turbovaed.distill.checkpoint import load_training_state

    student = StudentDecoder(presets.student_config(teachers.build_tiny("wan21"), mini=True))
    step, _ = load_training_state(tmp_path / "student.work" / "checkpoint", {"student": student}, {})
    assert step == 3 and all(torch.isfinite(p).all() for p in student.parameters())
    assert not (tmp_path / "student").exists()


def video_recipe(tmp_path: Path, steps: int, extra: str = "") -> Path:
    """The tiny teacher on real files: nested mp4s, one held out."""
    from turbovaed import data

    for i, n in enumerate((14, 20, 12)):
        data.write_video(tmp_path / "videos" / f"group{i % 2}" / f"clip{i}.mp4", data.synthetic_clip(n, 48, 64, seed=i))
    text = TINY.format(out=tmp_path / "student", steps=steps).replace(
        "synthetic = true", f'videos = ["{tmp_path / "videos"}"]\nheld_out = ["clip2.mp4"]\nresize = 48\n'
                            "workers = 1\nstrides = [1, 2]\nflip = true\nposterior = \"sample\"")
    path = tmp_path / "video.toml"
    path.write_text(text + extra)
    return path


def test_two_process_ddp_fills_its_cache_per_rank_and_keeps_weights_identical(tmp_path):
    recipe = video_recipe(tmp_path, steps=4)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", "-m", "turbovaed", "distill", str(recipe)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert report["world_size"] == 2 and report["ranks_in_sync"] is True
    assert report["eval_set"] == "held-out videos: clip2.mp4"
    log = [r for r in map(json.loads, (tmp_path / "student" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(log) == 4 and log[0]["clips_per_s"] > 0
    work = tmp_path / "student.work"
    parts = {r: json.loads((work / "cache" / "gen-00000" / f"part-00{r}.json").read_text()) for r in (0, 1)}
    for r, part in parts.items():  # each rank encoded its own clips: i % 2 == rank, 6 clips in all
        assert sorted(i for s in part["shards"] for i in s["items"]) == list(range(r, 6, 2))
    index = json.loads((work / "videos.index.json").read_text())["videos"]
    assert sorted(Path(p).name for p in index) == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]


def test_bf16_and_fp16_autocast_steps(tmp_path):
    for precision in ("bf16", "fp16"):
        d = tmp_path / precision
        d.mkdir()
        recipe = load_toml(DistillRecipe, tiny_recipe(d, steps=4))
        recipe.train.precision = precision
        recipe.train.lr = 5e-3
        out = trainer.distill(recipe, show_progress=False)
        log = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
        assert len(log) == 4 and all(math.isfinite(r["loss"]) for r in log)
        assert json.loads((out / "metrics.json").read_text())["precision"] == precision
        state = json.loads((d / "student.work" / "checkpoint" / "state.json").read_text())
        assert bool(state["extra"]["scaler"]) == (precision == "fp16")  # fp16 steps go through a GradScaler


def test_eval_every_writes_side_by_side_samples_and_tensorboard(tmp_path):
    from turbovaed import data

    recipe = load_toml(DistillRecipe, video_recipe(tmp_path, steps=6, extra="eval_every = 3\ntensorboard = true\n"))
    out = trainer.distill(recipe, show_progress=False)
    work = tmp_path / "student.work"
    samples = sorted((work / "samples").glob("*.mp4"))
    assert [p.name for p in samples] == ["step-0000003.mp4", "step-0000006.mp4"]
    frames = data.read_frames(samples[0])
    assert frames.shape == (5, 64, 3 * 64, 3)  # ground truth | teacher | student
    gt = data.fixed_clips([tmp_path / "videos" / "group0" / "clip2.mp4"], 5, 64, per_video=2)[0][0]
    left = torch.from_numpy(frames[..., :64, :]).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert (left - gt).abs().mean() < 0.05  # the left third is the held-out clip itself
    evals = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "eval_student_psnr" in r]
    assert [r["step"] for r in evals] == [3, 6] and all(r["eval_student_psnr"] > 0 for r in evals)
    assert list((work / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "sample.mp4").read_bytes() == samples[-1].read_bytes()


def test_a_real_teacher_without_held_out_videos_is_refused(tmp_path):
    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path))
    recipe.teacher = type(recipe.teacher)(name="reference")
    with pytest.raises(InputError, match="names no held-out videos"):
        trainer.distill(recipe, show_progress=False)
    assert not (tmp_path / "student.work").exists() and not (tmp_path / "student").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_cuda_recipe_without_cuda_is_refused(tmp_path):
    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path))
    recipe.train.device = "cuda"
    with pytest.raises(InputError, match="no usable CUDA device.*GPU install"):
        trainer.distill(recipe, show_progress=False)
    assert not (tmp_path / "student.work").exists()


def test_a_dtype_the_device_cannot_do_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(InputError, match="Tesla V100 has no bf16"):
        setup.check_dtype(torch.device("cuda", 0), torch.bfloat16, "train.precision")
    setup.check_dtype(torch.device("cuda", 0), torch.float16, "train.precision")  # fp16 is fine there
    setup.check_dtype(torch.device("cpu"), torch.bfloat16, "train.precision")


def test_eval_videos_inside_the_training_folder_are_never_trained_on(tmp_path):
    from turbovaed import data

    for name in ("train/a.mp4", "train/b.mp4", "train/heldout/c.mp4"):
        data.write_video(tmp_path / name, data.synthetic_clip(9, 32, 32))
    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path))
    recipe.data.synthetic = False
    recipe.data.videos = [str(tmp_path / "train")]
    recipe.data.eval_videos = [str(tmp_path / "train" / "heldout")]
    train, held_out, unreadable = setup.videos_of(recipe, tmp_path / "work", rank=0, show_progress=False)
    assert sorted(i.path.name for i in train) == ["a.mp4", "b.mp4"] and [v.name for v in held_out] == ["c.mp4"]
    assert unreadable == []


def test_torch_compile_of_the_student_trains_and_saves_plain_weights(tmp_path):
    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path, steps=2))
    recipe.train.compile = True
    out = trainer.distill(recipe, show_progress=False)
    log = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log)
    from turbovaed.student import StudentDecoder

    assert not any("_orig_mod" in k for k in load_file(str(out / "raw.safetensors")))
    assert StudentDecoder.from_pretrained(out).num_parameters() > 0


def _torchrun(recipe: Path, port: int, *extra: str) -> Child:
    return Child([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                  "-m", "turbovaed", "distill", str(recipe), *extra], start_new_session=True,
                 env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_rank_run_killed_past_its_second_cache_refresh_resumes_exactly(tmp_path):
    """The shipped GPU recipes' shape in miniature: cache refreshes, feature alignment, GAN, grad_accum and a
    sampled posterior, two gloo ranks. Killed (whole process group, SIGKILL) past the second refresh, resumed:
    the same weights and losses as the uninterrupted run."""
    runs = {}
    for name in ("straight", "killed"):
        (tmp_path / name).mkdir()
        recipe = video_recipe(tmp_path / name, steps=10, extra="grad_accum = 2\n[gan]\nenabled = true\nstart_step = 2\n")
        recipe.write_text(recipe.read_text().replace("clips = 6", "clips = 4\nrefresh_every = 3").replace(
            "checkpoint_every = 3", "checkpoint_every = 1"))
        runs[name] = recipe
    straight = _torchrun(runs["straight"], 29541)
    assert straight.wait(timeout=900) == 0, straight.stderr.read()[-3000:]

    proc = _torchrun(runs["killed"], 29542)
    state = tmp_path / "killed" / "student.work" / "checkpoint" / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (
            state.is_file() and json.loads(state.read_text())["step"] >= 7):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 7 <= json.loads(state.read_text())["step"] < 10, "killed past the second refresh (steps 3 and 6)"
    resumed = _torchrun(runs["killed"], 29543, "--resume")
    assert resumed.wait(timeout=900) == 0, resumed.stderr.read()[-3000:]
    a, b = (load_file(str(tmp_path / n / "student" / "raw.safetensors")) for n in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[(r["step"], r["loss"], r.get("gan_d")) for r in map(json.loads, (tmp_path / n / "student" / "log.jsonl")
               .read_text().splitlines()) if "loss" in r] for n in ("straight", "killed")]
    assert losses[0] == losses[1] and len(losses[0]) == 10


def test_a_nan_on_one_rank_in_the_discriminator_or_alignment_loss_is_skipped_by_both(tmp_path):
    """Rank 1 alone gets a NaN discriminator loss at step 2 and a NaN alignment loss at step 4: both ranks skip
    that optimizer's step, the run finishes finite and in sync, and the log stays strict JSON."""
    recipe = video_recipe(tmp_path, steps=6, extra="[gan]\nenabled = true\nstart_step = 0\n")
    script = tmp_path / "poisoned.py"
    script.write_text(f"""
import os
import torch
from turbovaed.distill import loop
from turbovaed.distill.losses import FeatureAlignment
from turbovaed.distill.recipe import DistillRecipe
from turbovaed.distill.trainer import distill
from turbovaed.recipes import load_toml
rank1, calls = os.environ["RANK"] == "1", {{"d": 0, "a": 0}}
real_d, real_a = loop.hinge_d_loss, FeatureAlignment.forward
def hinge(*a):
    calls["d"] += 1
    return real_d(*a) * (float("nan") if rank1 and calls["d"] == 2 else 1.0)
def align(self, *a):
    calls["a"] += 1
    return real_a(self, *a) * (float("nan") if rank1 and calls["a"] == 4 else 1.0)
loop.hinge_d_loss, FeatureAlignment.forward = hinge, align
distill(load_toml(DistillRecipe, {str(recipe)!r}), show_progress=False)
""")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29544", str(script)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "student"
    report = json.loads((out / "metrics.json").read_text())
    assert report["ranks_in_sync"] is True and report["data"]["nonfinite_steps_skipped"] == 2
    def strict(constant):
        raise AssertionError(f"log.jsonl holds {constant}, which is not JSON")

    log = [json.loads(line, parse_constant=strict) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in log if "loss" in r}
    assert steps[2].get("gan_d_skipped") == "non-finite" and "skipped" not in steps[2]
    assert steps[4].get("skipped") == "non-finite"
    assert [s for s, r in steps.items() if "skipped" in r or "gan_d_skipped" in r] == [2, 4]
    state = load_file(str(tmp_path / "student.work" / "checkpoint" / "state.safetensors"))
    assert any(k.startswith("m.disc.") for k in state)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_checkpoint_with_any_non_finite_tensor_is_refused(tmp_path):
    from turbovaed.distill.checkpoint import nonfinite_tensors

    disc = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(disc.parameters())
    disc(torch.randn(3, 2)).sum().backward()
    opt.step()
    assert nonfinite_tensors({"disc": disc}, {"opt_d": opt}) == []
    opt.state[disc.weight]["exp_avg_sq"][0, 0] = float("nan")
    with torch.no_grad():
        disc.bias[1] = float("inf")
    assert nonfinite_tensors({"disc": disc}, {"opt_d": opt}) == ["m.disc.bias", "o.opt_d.state.0.exp_avg_sq"]


def test_a_training_video_replaced_under_the_same_name_is_noticed_and_named(tmp_path):
    """Same name, frame count and resolution, other content: the cache made from the old file is refused."""
    from turbovaed import data
    from turbovaed.io import CheckpointError

    recipe = load_toml(DistillRecipe, video_recipe(tmp_path, steps=2))
    recipe.data.workers = 0
    trainer.distill(recipe, show_progress=False)
    clip = tmp_path / "videos" / "group0" / "clip0.mp4"
    data.write_video(clip, data.synthetic_clip(14, 48, 64, seed=99))  # the same frames and size, new content
    recipe.train.steps = 4
    with pytest.raises(CheckpointError, match=r"changed \(size or time\) since the cache was made: .*clip0\.mp4"):
        trainer.distill(recipe, resume=True, show_progress=False)


def test_one_live_run_per_work_folder_and_a_dead_runs_lock_is_taken_over(tmp_path):
    recipe = tiny_recipe(tmp_path, steps=400)
    first = run_cli("distill", str(recipe))
    state = tmp_path / "student.work" / "checkpoint" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and not state.is_file():
        time.sleep(0.05)
    assert first.poll() is None, first.stderr.read()
    second = run_cli("distill", str(recipe), "--resume")
    assert second.wait(timeout=240) == 2
    err = second.stderr.read()
    assert f"in use by another live run (pid {first.pid} on" in err and "Traceback" not in err
    first.send_signal(signal.SIGKILL)  # a dead holder: its lock went with it
    first.wait()
    third = run_cli("distill", str(recipe), "--resume", "--steps", "9")
    assert third.wait(timeout=240) == 0, third.stderr.read()


def test_a_resume_with_a_changed_recipe_says_what_changed_in_the_terminal_log_and_card(tmp_path):
    recipe = tiny_recipe(tmp_path, steps=6)
    proc = run_cli("distill", str(recipe), "--steps", "3")
    assert proc.wait(timeout=240) == 0, proc.stderr.read()
    recipe.write_text(recipe.read_text().replace("batch = 2", "batch = 3\nlr = 3e-4"))
    resumed = run_cli("distill", str(recipe), "--resume")
    assert resumed.wait(timeout=240) == 0
    err = resumed.stderr.read()
    assert "resume at step 3 with a changed recipe" in err and "train.batch 2 -> 3" in err
    assert "train.lr 0.0001 -> 0.0003" in err
    assert "train.steps 3 -> 6" in err
    log = [json.loads(x) for x in (tmp_path / "student" / "log.jsonl").read_text().splitlines()]
    assert [r["changed_at_resume"]["train.batch"] for r in log if "changed_at_resume" in r] == [[2, 3]]
    card = (tmp_path / "student" / "README.md").read_text()
    assert "Recipe changed at resume (at step 3: `train.batch` 2 -> 3" in card
    # a change that makes the resume wrong is still refused
    recipe.write_text(recipe.read_text().replace("mini = true", "mini = false"))
    refused = run_cli("distill", str(recipe), "--resume", "--steps", "9")
    assert refused.wait(timeout=240) == 2 and "changes student_config" in refused.stderr.read()


def test_a_complete_checkpoint_left_between_the_two_renames_is_verified_and_used(tmp_path):
    recipe = tiny_recipe(tmp_path, steps=6)
    trainer.distill(load_toml(DistillRecipe, recipe), show_progress=False)  # slots: step 6, previous step 3
    ckpt = tmp_path / "student.work" / "checkpoint"
    ckpt.rename(ckpt.with_name("checkpoint.next"))  # the crash: previous rotated, next not yet renamed in
    resumed = run_cli("distill", str(recipe), "--resume", "--steps", "7")
    assert resumed.wait(timeout=240) == 0
    assert "(step 6) was complete but a crash stopped it between renames: verified, and used" in resumed.stderr.read()
    steps = [r["step"] for r in map(json.loads, (tmp_path / "student" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 8))  # continued from step 6, nothing redone
    # a staged slot that does not read is removed, out loud, and the older slots serve
    ckpt.rename(ckpt.with_name("checkpoint.next"))
    (ckpt.with_name("checkpoint.next") / "state.safetensors").write_bytes(b"\0" * 16)
    again = run_cli("distill", str(recipe), "--resume", "--steps", "8")
    assert again.wait(timeout=240) == 0
    assert "an unfinished checkpoint that does not read" in again.stderr.read()


def test_a_checkpoint_that_hits_a_file_size_limit_is_one_clear_error_and_keeps_the_previous_one(tmp_path):
    import resource

    recipe = tiny_recipe(tmp_path, steps=3)
    trainer.distill(load_toml(DistillRecipe, recipe), show_progress=False)
    state = tmp_path / "student.work" / "checkpoint" / "state.safetensors"
    before = state.read_bytes()
    limit = len(before) // 2

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "turbovaed", "distill", str(recipe), "--resume", "--steps", "6"],
                          capture_output=True, text=True, timeout=240, preexec_fn=small_files)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"could not write checkpoint.next in {tmp_path / 'student.work'}: File too large" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert state.read_bytes() == before and not list(state.parent.parent.glob(".checkpoint.next*"))
