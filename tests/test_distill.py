"""Distillation trainer: recipes, an end-to-end run, exact resume after SIGKILL, DDP, faults."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from turbovaed import teachers
from turbovaed.distill import trainer
from turbovaed.distill.recipe import DistillRecipe
from turbovaed.io import InputError
from turbovaed.recipes import build, load_toml, to_toml

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


def run_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "turbovaed", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def test_every_shipped_recipe_parses_and_matches_its_teacher():
    for path in sorted((REPO / "distill").glob("*.toml")):
        recipe = load_toml(DistillRecipe, path)
        spec = teachers.get_spec(recipe.teacher.name)
        preset = recipe.student.preset.removesuffix("-mini")
        cfg = teachers.get_spec(preset).student_config()
        assert (cfg.spatial_ratio, cfg.temporal_ratio) == (spec.spatial, spec.temporal), path.name
        assert build(DistillRecipe, __import__("tomllib").loads(to_toml(recipe))) == recipe  # round-trips
    assert {p.stem for p in (REPO / "distill").glob("*.toml")} >= set(teachers.TEACHERS) - {"reference"} | {"quickstart"}


@pytest.mark.parametrize("text,message", [
    ("[train]\nstepz = 3\n", "unknown recipe key(s) [train] stepz"),
    ("[train]\nsteps = 'many'\n", "'train.steps' must be int"),
    ("[data]\nvideos = 'x'\n", "'data.videos' must be a list"),
    ("bogus = 1\n", "unknown recipe key(s) bogus"),
    ("[loss]\nperceptual_kind = 'vgg'\n", "perceptual_kind must be one of"),
    ("[train]\nsteps = 0\n", "train.steps must be >= 1"),
    ("[train\n", "not valid TOML"),
])
def test_bad_recipes_fail_with_the_bad_key(tmp_path, text, message):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_toml(DistillRecipe, path)
    assert message in str(err.value)


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
    a = load_file(str(straight / "student" / "raw.safetensors"))
    b = load_file(str(killed / "student" / "raw.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ea = load_file(str(straight / "student" / "model.safetensors"))
    eb = load_file(str(killed / "student" / "model.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    la = [r["loss"] for r in map(json.loads, (straight / "student" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    lb = [r["loss"] for r in map(json.loads, (killed / "student" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert la[-3:] == lb[-3:]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    recipe = load_toml(DistillRecipe, tiny_recipe(tmp_path, steps=8))
    real = trainer.msssim_grad_loss
    calls = {"n": 0}

    def poisoned(pred, target):
        calls["n"] += 1
        return real(pred, target) * (float("nan") if calls["n"] > 4 else 1.0)

    monkeypatch.setattr(trainer, "msssim_grad_loss", poisoned)
    with pytest.raises(trainer.TrainingError, match="at step 4.*step 3"):
        trainer.distill(recipe, show_progress=False)
    from turbovaed.distill.checkpoint import load_training_state

    student = trainer.StudentDecoder(teachers.build_tiny("wan21").student_config(mini=True))
    step, _ = load_training_state(tmp_path / "student.work" / "checkpoint", {"student": student}, {})
    assert step == 3 and all(torch.isfinite(p).all() for p in student.parameters())
    assert not (tmp_path / "student").exists()


def test_two_process_ddp_keeps_weights_identical(tmp_path):
    recipe = tiny_recipe(tmp_path, steps=4)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", "-m", "turbovaed", "distill", str(recipe)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert report["world_size"] == 2 and report["ranks_in_sync"] is True
    log = [r for r in map(json.loads, (tmp_path / "student" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(log) == 4 and log[0]["clips_per_s"] > 0
