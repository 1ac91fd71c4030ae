"""The CLI as a user runs it: a real process, real files, one clear line per bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from turbovaed import presets, teachers
from turbovaed.student import StudentDecoder


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "turbovaed", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_info_reports_params_macs_and_frame_rule():
    result = run("info", "ltx", "--size", "256x256", "--frames", "17")
    assert result.returncode == 0, result.stderr
    assert "8 x 32 x 32" in result.stdout and "1+k latents -> 1+8k frames" in result.stdout
    assert "GMACs per output frame" in result.stdout


def test_decode_video_with_teacher_and_student_writes_mp4_and_comparison(tmp_path, videos_dir):
    # an (untrained) student for the tiny teacher's 4 latent channels
    student_dir = StudentDecoder(presets.student_config(teachers.build_tiny("wan21"), mini=True)).save_pretrained(
        tmp_path / "student")
    video = sorted(videos_dir.glob("*.mp4"))[0]
    result = run("decode", "--video", str(video), "--teacher", "wan21", "--tiny-teacher", "--student",
                 str(student_dir), "--frames", "9", "--size", "64x64", "--out", str(tmp_path / "out.mp4"))
    assert result.returncode == 0, result.stderr
    from turbovaed.data import read_frames

    assert read_frames(tmp_path / "out.mp4").shape == (9, 64, 64, 3)
    assert (tmp_path / "out.png").stat().st_size > 1000


def test_decode_stream_matches_whole_clip_decode(tmp_path):
    """`decode --stream` (chunk by chunk, tiled or not) writes the same video as a whole-clip decode."""
    from conftest import randomize

    from turbovaed.data import read_frames
    from turbovaed.metrics import psnr

    config = presets.student_config(teachers.build_tiny("wan21"), mini=True)
    student_dir = randomize(StudentDecoder(config), std=0.05).save_pretrained(tmp_path / "student")
    save_file({"latents": torch.randn(1, 4, 6, 6, 8)}, str(tmp_path / "lat.safetensors"))
    videos = {}
    for name, extra in {"whole": [], "stream": ["--stream", "--chunk", "2"],
                        "tiled": ["--stream", "--chunk", "1", "--tile", "4", "--overlap", "2"]}.items():
        result = run("decode", "--student", str(student_dir), "--latents", str(tmp_path / "lat.safetensors"),
                     "--out", str(tmp_path / f"{name}.mp4"), *extra)
        assert result.returncode == 0, result.stderr
        videos[name] = torch.from_numpy(read_frames(tmp_path / f"{name}.mp4")).float() / 127.5 - 1
    assert videos["whole"].shape == (config.frames_for(6), 48, 64, 3)
    assert psnr(videos["stream"], videos["whole"]) > 40  # same frames up to H.264
    assert psnr(videos["tiled"], videos["whole"]) > 20  # seams of an untrained student


def test_decode_stream_through_an_exported_step_graph(tmp_path, student_dir):
    """`decode --stream --artifact`: ONNX Runtime runs the exported step graph chunk by chunk, same video."""
    from test_export import recipe_for

    from turbovaed.data import read_frames
    from turbovaed.export.core import export
    from turbovaed.metrics import psnr

    export(recipe_for("onnx", "fp32", name="stream", shape={"latent_frames": 2, "height": 32, "width": 32,
                                                           "stream_chunk": 1}), student_dir, tmp_path)
    save_file({"latents": torch.randn(1, 4, 5, 4, 4)}, str(tmp_path / "lat.safetensors"))
    videos = {}
    for name, extra in {"eager": ["--student", str(student_dir)], "ort": ["--artifact", str(tmp_path / "stream")]}.items():
        result = run("decode", "--latents", str(tmp_path / "lat.safetensors"), "--stream", "--out",
                     str(tmp_path / f"{name}.mp4"), *extra)
        assert result.returncode == 0, result.stderr
        videos[name] = torch.from_numpy(read_frames(tmp_path / f"{name}.mp4")).float() / 127.5 - 1
    assert videos["ort"].shape[0] == 17 and psnr(videos["ort"], videos["eager"]) > 40
    save_file({"latents": torch.randn(1, 4, 5, 8, 8)}, str(tmp_path / "big.safetensors"))
    result = run("decode", "--latents", str(tmp_path / "big.safetensors"), "--stream", "--artifact",
                 str(tmp_path / "stream"), "--out", str(tmp_path / "big.mp4"))
    assert result.returncode == 2 and "takes latent chunks of shape" in result.stderr
    assert not (tmp_path / "big.mp4").exists()


def test_decode_stream_bad_input(tmp_path):
    student_dir = StudentDecoder(presets.student_config(teachers.build_tiny("wan21"), mini=True)).save_pretrained(
        tmp_path / "student")
    save_file({"latents": torch.randn(1, 4, 3, 8, 8)}, str(tmp_path / "lat.safetensors"))
    common = ["decode", "--latents", str(tmp_path / "lat.safetensors"), "--out", str(tmp_path / "o.mp4")]
    for extra, message in [(["--student", str(student_dir), "--stream", "--chunk", "0"], "--chunk must be >= 1"),
                           (["--teacher", "wan21", "--tiny-teacher", "--stream"], "--stream decodes --latents"),
                           (["--artifact", str(tmp_path), "--stream"], "not an exported artifact"),
                           (["--artifact", str(tmp_path)], "needs --stream"),
                           (["--student", str(student_dir), "--tile", "4", "--overlap", "4"], "overlap < tile")]:
        result = run(*common, *extra)
        assert result.returncode == 2 and message in " ".join(result.stderr.split()), result.stderr
        assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("args,message", [
    (["info", "nope"], "is not a checkpoint folder, and unknown student preset"),
    (["info", "wan21", "--frames", "16"], "break the frame rule"),
    (["info", "wan21", "--size", "abc"], "HEIGHTxWIDTH"),
    (["decode", "--teacher", "sora", "--latents", "LAT", "--out", "OUT"], "unknown teacher 'sora'"),
    (["decode", "--teacher", "wan21", "--tiny-teacher", "--latents", "BADCH", "--out", "OUT"], "expects 4"),
    (["decode", "--teacher", "wan21", "--tiny-teacher", "--latents", "NAN", "--out", "OUT"], "NaN or inf"),
    (["decode", "--teacher", "wan21", "--tiny-teacher", "--latents", "PICKLE", "--out", "OUT"], "pickle"),
    (["decode", "--student", "MISSING", "--latents", "LAT", "--out", "OUT"], "does not exist"),
    (["decode", "--teacher", "wan21", "--tiny-teacher", "--video", "NOTVIDEO", "--out", "OUT"], "cannot read video"),
])
def test_bad_input_gives_one_clear_error_and_writes_nothing(tmp_path, args, message):
    save_file({"latents": torch.randn(1, 4, 3, 8, 8)}, str(tmp_path / "lat.safetensors"))
    save_file({"latents": torch.randn(1, 7, 3, 8, 8)}, str(tmp_path / "badch.safetensors"))
    nan = torch.randn(1, 4, 3, 8, 8)
    nan[0, 0, 0, 0, 0] = float("nan")
    save_file({"latents": nan}, str(tmp_path / "nan.safetensors"))
    torch.save({"latents": torch.randn(1, 4, 3, 8, 8)}, tmp_path / "pickle.safetensors")
    (tmp_path / "notvideo.mp4").write_bytes(b"nope" * 50)
    files = {"LAT": "lat.safetensors", "BADCH": "badch.safetensors", "NAN": "nan.safetensors",
             "PICKLE": "pickle.safetensors", "MISSING": "missing", "NOTVIDEO": "notvideo.mp4", "OUT": "out/o.mp4"}
    args = [str(tmp_path / files[a]) if a in files else a for a in args]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
    # nothing written but the command's log, kept in its output folder (issue: a failed command keeps its log)
    after = sorted(p.name for p in tmp_path.rglob("*") if p.name != "turbovaed.log" and p != tmp_path / "out")
    assert after == before


def test_quickstart_fine_tunes_the_shipped_student_from_the_shipped_teacher(tmp_path):
    result = run("quickstart", "--out", str(tmp_path / "qs"), "--steps", "3", "--no-export")
    assert result.returncode == 0, result.stderr[-2000:]
    said = " ".join(result.stdout.split())  # table titles wrap
    assert "student (EMA)" in said and "vs bicubic dB" in said and "per-frame bicubic" in said
    assert "started from the shipped reference student" in said
    assert (tmp_path / "qs" / "student" / "model.safetensors").is_file()
    assert "Started from the shipped reference student" in (tmp_path / "qs" / "student" / "README.md").read_text()


def test_a_starting_point_of_another_architecture_is_refused_before_any_work(tmp_path):
    other = StudentDecoder(presets.student_config(teachers.get_spec("reference"), mini=True)).save_pretrained(
        tmp_path / "other")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'output = "{tmp_path / "student"}"\n[student]\npreset = "reference"\ninit = "{other}"\n')
    result = run("distill", str(recipe))
    assert result.returncode == 2 and "is a different student than the recipe's: " in result.stderr
    assert "channels" in result.stderr and not (tmp_path / "student.work" / "cache").exists()


def test_decode_takes_generator_latents_in_either_layout_normalised_and_bf16(tmp_path):
    """What a diffusion pipeline hands over (output_type='latent'): normalised by the VAE's latents_mean/std,
    often bf16, in diffusers' (B, C, T, H, W) or TAEHV/ComfyUI's (N, T, C, H, W) layout."""
    import json

    from conftest import randomize

    from turbovaed.data import read_frames
    from turbovaed.teachers import LatentNorm

    config = presets.student_config(teachers.build_tiny("wan21"), mini=True)
    student_dir = randomize(StudentDecoder(config), std=0.05).save_pretrained(tmp_path / "student")
    norm = LatentNorm([0.5, -0.2, 0.1, 0.0], [2.0, 0.5, 1.5, 1.0], 1.0)
    (student_dir / "latent_norm.json").write_text(json.dumps({**norm.to_dict(), "teacher": "wan21"}))
    raw = torch.randn(1, 4, 4, 6, 8)
    gen = norm.normalize(raw).to(torch.bfloat16)  # as a pipeline stores it
    raw = norm.to_raw(gen.float())  # what the bf16 file really holds, in raw terms
    files = {"raw": ({"latents": raw}, None), "gen": ({"latents": gen}, None),
             "gen_btchw": ({"latents": gen.transpose(1, 2).contiguous()}, None),
             "gen_meta": ({"latents": gen.transpose(1, 2).contiguous()}, {"layout": "btchw", "latents": "normalized"})}
    for name, (tensors, meta) in files.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"), metadata=meta)
    common = ["decode", "--student", str(student_dir), "--out"]
    videos = {}
    # 4 channels and 4 frames: (B, C, T, H, W) files must say so (--layout); TAEHV-layout ones state it
    for name, extra in {"raw": ["--latents", "raw", "--layout", "bcthw"],
                        "gen": ["--latents", "gen", "--normalized", "--layout", "bcthw"],
                        "gen_btchw": ["--latents", "gen_btchw", "--layout", "btchw", "--normalized"],
                        "gen_meta": ["--latents", "gen_meta", "--layout", "btchw"],
                        "gen_stream": ["--latents", "gen", "--normalized", "--stream", "--chunk", "2",
                                       "--layout", "bcthw"]}.items():
        extra = [str(tmp_path / f"{x}.safetensors") if x in files else x for x in extra]
        result = run(*common, str(tmp_path / f"{name}.mp4"), *extra)
        assert result.returncode == 0, result.stderr
        videos[name] = read_frames(tmp_path / f"{name}.mp4").astype(float)
    same = {name: abs(videos[name] - videos["raw"]).mean() for name in ("gen", "gen_btchw", "gen_meta", "gen_stream")}
    assert max(same.values()) < 1.0, same  # the same frames, up to H.264 and bf16
    wrong = abs(videos["raw"] - read_frames_of_undenormalised(tmp_path, common, student_dir)).mean()
    assert wrong > 2.0 and wrong > 4 * max(same.values()), (wrong, same)


def read_frames_of_undenormalised(tmp_path, common, student_dir):
    """Decoding the normalised file as if raw gives visibly different frames: the flag matters."""
    from turbovaed.data import read_frames

    result = run(*common, str(tmp_path / "wrong.mp4"), "--latents", str(tmp_path / "gen.safetensors"), "--raw",
                 "--layout", "bcthw")
    assert result.returncode == 0, result.stderr
    return read_frames(tmp_path / "wrong.mp4").astype(float)


def test_layout_and_normalisation_mistakes_are_named(tmp_path):
    student_dir = StudentDecoder(presets.student_config(teachers.build_tiny("wan21"), mini=True)).save_pretrained(
        tmp_path / "student")
    save_file({"latents": torch.randn(1, 3, 4, 8, 8)}, str(tmp_path / "btchw.safetensors"))
    save_file({"latents": torch.randn(1, 4, 3, 8, 8)}, str(tmp_path / "raw.safetensors"), metadata={"latents": "raw"})
    save_file({"latents": torch.randn(1, 4, 3, 8, 8)}, str(tmp_path / "plain.safetensors"))
    save_file({"latents": torch.randn(1, 4, 4, 8, 8)}, str(tmp_path / "both.safetensors"))  # 4 channels, 4 frames
    out = str(tmp_path / "o.mp4")
    for args, message in [
        (["--latents", "btchw"], "looks like (N, T, C, H, W) as TAEHV and ComfyUI use: pass --layout btchw"),
        (["--latents", "both"], "fit both (B, C, T, H, W) as diffusers pipelines return and (N, T, C, H, W) as "
                                "TAEHV and ComfyUI use (4 channels, 4 frames): pass --layout bcthw or --layout btchw"),
        (["--latents", "raw", "--normalized"], "states in its metadata that its latents are raw"),
        (["--latents", "plain", "--layout", "nope"], "unknown latent layout 'nope'"),
        (["--latents", "plain", "--normalized"], "carries none"),  # a student without latent_norm.json
    ]:
        args = [str(tmp_path / f"{a}.safetensors") if a in ("btchw", "raw", "plain", "both") else a for a in args]
        result = run("decode", "--student", str(student_dir), "--out", out, *args)
        assert result.returncode == 2 and message in " ".join(result.stderr.split()), result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "o.mp4").exists()
    result = run("decode", "--student", str(student_dir), "--out", out, "--latents", str(tmp_path / "btchw.safetensors"),
                 "--layout", "btchw")
    assert result.returncode == 0, result.stderr


NOISE = ("Warning", "warn(", "cpuinfo", "ODIE", "[START]", "oneDNN", "absl", "Failed to load", "training mode",
         "passes/s")


def test_export_and_profile_keep_third_party_output_off_the_terminal(tmp_path, student_dir):
    """Converters, runtimes and their native logs write to turbovaed.log in the output folder (named at the
    end); the terminal holds our stages and tables only, under a line budget. -v shows the noise live."""
    out = tmp_path / "exports"
    recipes = ["host-executorch-fp32", "android-litert-int8"]  # the noisiest converters: ExecuTorch, TF/LiteRT
    tiny = ("--checkpoint", str(student_dir), "--teacher", "wan21", "--tiny-teacher", "--synthetic", "--height", "32",
            "--width", "32")
    first = run("export", *recipes, *tiny, "--out", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    from turbovaed.cli.tables import artifacts_table
    from turbovaed.quickstart import artifact_summary

    manifests = [json.loads(p.read_text()) for p in sorted(out.glob("*/manifest.json"))]
    assert len(artifacts_table([artifact_summary(m) for m in manifests], "quickstart").rows) == 2
    second = run("profile", str(out), "--runs", "2", "--warmup", "0", "--results", str(tmp_path / "profiles"))
    assert second.returncode == 0, second.stderr[-3000:]
    for result, log in ((first, out / "turbovaed.log"), (second, tmp_path / "profiles" / "turbovaed.log")):
        terminal = (result.stdout + result.stderr).splitlines()
        assert not [line for line in terminal if any(n in line for n in NOISE)], terminal
        assert len(terminal) <= 40, len(terminal)
        assert f"third-party output: {log}" in result.stderr and log.stat().st_size > 0
    assert any(n in (out / "turbovaed.log").read_text() for n in NOISE)  # the noise exists: it was captured
    loud = run("-v", "profile", str(out), "--runs", "2", "--warmup", "0", "--results", str(tmp_path / "loud"))
    assert loud.returncode == 0 and not (tmp_path / "loud" / "turbovaed.log").exists()
    assert any(n in loud.stdout + loud.stderr for n in NOISE)  # the runtimes' native logs, live


def test_latent_files_as_they_come(tmp_path):
    """A Wan-style (1, 16, 16, h, w) file fits both layouts and is refused until its layout is said; torch.save
    latents (.pt: a bare tensor, or a dict with 'latents'/'latent'/'z') load weights-only; `latents convert`
    writes a self-describing safetensors file that later runs read without flags."""
    from turbovaed.io import InputError, LatentFile, convert_latents

    z = torch.randn(1, 16, 16, 4, 5)  # (N, T, C, h, w): 16 frames of 16 channels
    torch.save(z.to(torch.bfloat16), tmp_path / "bare.pt")
    torch.save({"z": z, "layout": "btchw"}, tmp_path / "dict.pth")
    with pytest.raises(InputError, match="fit both .* --layout bcthw or --layout btchw"):
        LatentFile(tmp_path / "bare.pt").check_channels(16, "decoder")
    stated = LatentFile(tmp_path / "dict.pth")  # the dict's string entry states the layout
    assert stated.layout == "btchw" and torch.equal(stated.read(), z.transpose(1, 2))
    assert torch.allclose(LatentFile(tmp_path / "bare.pt", layout="btchw").read(), z.transpose(1, 2), atol=0.05)
    with pytest.raises(InputError, match="--normalized .* or --raw"):
        convert_latents(tmp_path / "dict.pth", tmp_path / "c.safetensors", None, None)
    with pytest.raises(InputError, match="say its axis order"):
        convert_latents(tmp_path / "bare.pt", tmp_path / "c.safetensors", None, True)
    assert not (tmp_path / "c.safetensors").exists()
    result = run("latents", "convert", str(tmp_path / "bare.pt"), str(tmp_path / "c.safetensors"), "--layout", "btchw",
                 "--normalized")
    assert result.returncode == 0, result.stderr
    converted = LatentFile(tmp_path / "c.safetensors")
    assert converted.layout_known and converted.stated_normalized() is True and converted.shape == (1, 16, 16, 4, 5)
    converted.check_channels(16, "decoder")  # no flags needed any more
    assert converted.dtype == "BF16"

    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(Exception, match="not a weights-only torch file"):
        LatentFile(tmp_path / "junk.pt")


def test_non_finite_or_changed_student_weights_are_refused_by_decode_and_export(tmp_path):
    from safetensors.torch import load_file

    config = presets.student_config(teachers.build_tiny("wan21"), mini=True)
    save_file({"latents": torch.randn(1, 4, 2, 4, 4)}, str(tmp_path / "lat.safetensors"))
    nan_dir = StudentDecoder(config).save_pretrained(tmp_path / "nan")
    weights = load_file(str(nan_dir / "model.safetensors"))
    name = sorted(weights)[3]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(nan_dir / "model.safetensors"))
    (nan_dir / "config.json").write_text((nan_dir / "config.json").read_text().replace("_weights_sha256", "_old"))
    changed = StudentDecoder(config).save_pretrained(tmp_path / "changed")
    weights = load_file(str(changed / "model.safetensors"))
    weights[name].view(-1)[0] += 1.0
    save_file(weights, str(changed / "model.safetensors"))
    for folder, message in ((nan_dir, f"non-finite values (NaN or inf) in {name}"),
                            (changed, "weights changed since they were saved")):
        for args in (["decode", "--student", str(folder), "--latents", str(tmp_path / "lat.safetensors"),
                      "--out", str(tmp_path / "o.mp4")],
                     ["export", "host-onnx-fp32", "--checkpoint", str(folder), "--out", str(tmp_path / "exports"),
                      "--teacher", "wan21", "--tiny-teacher", "--synthetic"]):
            result = run(*args)
            assert result.returncode == 2 and message in result.stderr, (args[0], result.stderr[-2000:])
            assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.mp4").exists() and not list((tmp_path / "exports").glob("*/manifest.json"))


def test_absurd_sizes_are_refused_with_the_memory_they_need_and_the_option_that_lowers_it(tmp_path):
    config = presets.student_config(teachers.build_tiny("wan21"), mini=True)
    small = StudentDecoder(config).save_pretrained(tmp_path / "small")
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "config.json").write_text((small / "config.json").read_text().replace(
        f'"channels": [\n    {config.channels[0]}', '"channels": [\n    100000'))
    (huge / "model.safetensors").write_bytes((small / "model.safetensors").read_bytes())
    save_file({"latents": torch.randn(1, 4, 2, 4, 4)}, str(tmp_path / "lat.safetensors"))
    result = run("decode", "--student", str(huge), "--latents", str(tmp_path / "lat.safetensors"),
                 "--out", str(tmp_path / "o.mp4"))
    assert result.returncode == 2 and "GiB (estimated)" in result.stderr and "too large to load" in result.stderr
    save_file({"latents": torch.zeros(1, 4, 1, 3000, 3000, dtype=torch.bfloat16)}, str(tmp_path / "big.safetensors"))
    result = run("decode", "--student", str(small), "--latents", str(tmp_path / "big.safetensors"),
                 "--out", str(tmp_path / "o.mp4"))
    assert result.returncode == 2 and "--stream --chunk 1" in result.stderr and "Traceback" not in result.stderr
    result = run("export", "host-onnx-fp32", "--checkpoint", str(small), "--out", str(tmp_path / "exports"),
                 "--teacher", "wan21", "--tiny-teacher", "--synthetic", "--height", "100000", "--width", "100000")
    assert result.returncode == 2 and "shape.height / shape.width" in result.stderr, result.stderr[-2000:]
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'output = "{tmp_path / "student"}"\n[teacher]\nname = "wan21"\ntiny = true\n[student]\nmini = true\n'
                      "[data]\nsynthetic = true\nsize = 4096\n[train]\nbatch = 64\n")
    result = run("distill", str(recipe))
    assert result.returncode == 2 and "lower train.batch" in result.stderr, result.stderr[-2000:]


def test_messages_reach_the_terminal_whole_and_without_escape_codes(tmp_path):
    """Square brackets are not markup (an extra, a shape), and an error carrying ANSI codes (torch's weights-only
    message) reaches a pipe without them."""
    import io

    from turbovaed import logs

    buffer = io.StringIO()
    logs.console(file=buffer).print("pip install 'turbovaed[coreai]' for latents [1, 16, 5, 32, 32] [bold]x[/]")
    assert buffer.getvalue().strip() == "pip install 'turbovaed[coreai]' for latents [1, 16, 5, 32, 32] [bold]x[/]"
    missing = subprocess.run([sys.executable, "-c", "import sys; sys.modules['coreai_torch'] = None\n"
                              "from turbovaed.export.backends import get\nget('coreai').module()"],
                             capture_output=True, text=True, timeout=120)
    assert "turbovaed[coreai]" in missing.stderr  # the library's own message
    cli = subprocess.run([sys.executable, "-c", "import sys; sys.modules['coreai_torch'] = None\n"
                          "from turbovaed.cli import main\nsys.argv = ['turbovaed', 'export', 'iphone-coreai-fp16', "
                          f"'--checkpoint', {str(tmp_path / 'none')!r}, '--out', {str(tmp_path / 'x')!r}]\nmain()"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2 and "pip install 'turbovaed[coreai]'" in cli.stderr, cli.stderr[-1500:]
    torch.save({"latents": torch.nn.Linear(2, 2)}, tmp_path / "module.pt")  # a pickled module
    pickled = run("decode", "--student", str(tmp_path / "none"), "--latents", str(tmp_path / "module.pt"),
                  "--out", str(tmp_path / "o.mp4"))
    assert pickled.returncode == 2 and "weights-only" in pickled.stderr and "\x1b" not in pickled.stderr
    assert "trust the source" in pickled.stderr  # torch's own words, without its bold


def test_a_failed_command_keeps_its_log_and_names_its_complete_outputs(tmp_path, student_dir):
    """Two exports, the second without its backend's package: the first is complete and said so, the failing stage
    is named (its partial output removed), and the log with the traceback stays in the output folder."""
    out = tmp_path / "exports"
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.modules['coreai_torch'] = None\n"
                           "from turbovaed.cli import main\nsys.argv = ['turbovaed', 'export', 'host-onnx-fp32', "
                           f"'iphone-coreai-fp16', '--checkpoint', {str(student_dir)!r}, '--out', {str(out)!r}, "
                           "'--teacher', 'wan21', '--tiny-teacher', '--synthetic', '--height', '32', '--width', '32']\n"
                           "main()"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "stopped in stage 'iphone-coreai-fp16': its partial output was removed" in proc.stderr
    assert f"complete in {out}: host-onnx-fp32/" in proc.stderr
    assert f"third-party output: {out / 'turbovaed.log'}" in proc.stderr
    assert "Traceback" in (out / "turbovaed.log").read_text() and "Traceback" not in proc.stderr
    assert (out / "host-onnx-fp32" / "manifest.json").is_file() and not (out / "iphone-coreai-fp16").exists()
