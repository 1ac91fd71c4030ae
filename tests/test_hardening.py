"""Hardening: fuzzed inputs get clear errors (never a crash), fp16 decoding is safe, killed exports leave nothing."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from turbovaed import presets, teachers
from turbovaed.io import InputError, TurboVAEDError
from turbovaed.student import StudentDecoder

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8, torch.bool]
SPECIAL = [None, float("nan"), float("inf"), -float("inf")]


def fuzz_tensor(shape, dtype, special) -> torch.Tensor:
    x = torch.randn(shape) if len(shape) else torch.randn(())
    if special is not None and x.numel():
        x.view(-1)[0] = special
    return x.to(dtype)


@pytest.fixture(scope="module")
def tiny():
    teacher = teachers.build_tiny("wan21")
    student = StudentDecoder(presets.student_config(teacher, mini=True)).eval()
    return teacher, student


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=7), dtype=st.sampled_from(DTYPES),
       special=st.sampled_from(SPECIAL), entry=st.sampled_from(["decode", "step", "teacher_decode", "teacher_encode"]))
def test_library_entry_points_never_crash_without_a_clear_message(tiny, shape, dtype, special, entry):
    teacher, student = tiny
    if len(shape) == 5 and entry != "teacher_encode":
        shape[1] = 4 if shape[1] % 2 else shape[1]  # hit the valid-channel case often
    x = fuzz_tensor(shape, dtype, special)
    call = {"decode": student.decode, "step": lambda z: student.step(z)[0], "teacher_decode": teacher.decode,
            "teacher_encode": teacher.encode}[entry]
    try:
        out = call(x)
    except InputError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert torch.isfinite(out).all()  # whatever was accepted decodes to finite frames


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"\xff" * 64, b"{}" + b"\x00" * 30],
                         ids=["empty", "short", "garbage", "bad-header"])
def test_cli_fuzzed_files_give_one_clear_error(tmp_path, content):
    from test_cli import run

    (tmp_path / "lat.safetensors").write_bytes(content)
    for extra in ([], ["--stream"]):
        r = run("decode", "--teacher", "wan21", "--tiny-teacher", "--latents", str(tmp_path / "lat.safetensors"),
                "--out", str(tmp_path / "o.mp4"), *extra)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (1, 4, 0, 8, 8), (1, 4, 3, 8), (2, 1, 4, 3, 8, 8)])
def test_cli_fuzzed_shapes_give_one_clear_error(tmp_path, shape):
    from test_cli import run

    student = StudentDecoder(presets.student_config(teachers.build_tiny("wan21"), mini=True)).save_pretrained(tmp_path / "s")
    save_file({"latents": torch.randn(shape) if shape != (4, 3, 8, 8) else torch.randn(shape).to(torch.int32)},
              str(tmp_path / "lat.safetensors"))
    for extra in ([], ["--stream"]):
        r = run("decode", "--student", str(student), "--latents", str(tmp_path / "lat.safetensors"),
                "--out", str(tmp_path / "o.mp4"), *extra)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "error:" in r.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_fp16_decode_of_real_latents_is_finite_and_close_to_fp32(videos_dir, reference_student_dir):
    """The shipped reference teacher's latents of a real held-out clip, decoded in fp16 (weights and
    activations) by a student with trained weights (distilled from that teacher), against fp32."""
    from turbovaed import data, reference

    teacher = teachers.load("reference")
    student = StudentDecoder.from_pretrained(reference_student_dir).eval()
    clip = data.fixed_clips([videos_dir / reference.HELD_OUT[0]], 9, 64)[0][0]
    z = teacher.encode(clip[None])
    with torch.no_grad():
        ref = student(z)
        half = student.half()(z.half()).float()
    from turbovaed.metrics import psnr

    assert torch.isfinite(half).all()
    assert psnr(half.clamp(-1, 1), ref.clamp(-1, 1)) >= 45


def test_killed_export_leaves_no_artifact_and_the_next_run_cleans_up(tmp_path, student_dir):
    """SIGKILL an export mid-way: no artifact folder appears; the temp folder is swept by the next export."""
    out = tmp_path / "out"
    code = (f"from test_export import recipe_for; from turbovaed.export.core import export; "
            f"export(recipe_for('litert', 'int8'), {str(student_dir)!r}, {str(out)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parent)
    deadline = time.time() + 120
    while time.time() < deadline and not any(out.glob(".t-litert-int8.*")):  # the temp folder exists: mid-export
        time.sleep(0.05)
    started, running = any(out.glob(".t-litert-int8.*")), proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert started and running, "the kill must land mid-export: its temp folder existed and it was still running"
    assert not (out / "t-litert-int8").exists()
    from test_export import recipe_for

    from turbovaed.export.core import export

    export(recipe_for("litert", "int8"), student_dir, out)
    assert (out / "t-litert-int8" / "manifest.json").is_file()
    assert [p.name for p in out.iterdir()] == ["t-litert-int8"]  # no stale temp folder left


def test_turbovaed_errors_are_one_line():
    assert issubclass(InputError, TurboVAEDError)
