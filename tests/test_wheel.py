"""Installed the way users install it: a built wheel, non-editable, run from an empty directory."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> dict:
    """`python -m build --wheel` into a temp folder, installed with --no-deps into a fresh venv whose
    dependencies come from this environment's site-packages (a plain path in a .pth file: the editable
    turbovaed there is not picked up, so every `import turbovaed` is the wheel's)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"), str(REPO)],
                   check=True, capture_output=True, timeout=900)
    wheel = next((tmp / "dist").glob("turbovaed-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp / "empty"
    work.mkdir()
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("TURBOVAED_PROFILES", None)
    return {"py": py, "bin": venv / "bin" / "turbovaed", "work": work, "env": env, "wheel": wheel}


def run(w: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(w["bin"]), *args], cwd=w["work"], env=w["env"], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
    return result


def test_wheel_carries_its_data_and_imports_from_site_packages(wheel_env):
    import zipfile

    names = zipfile.ZipFile(wheel_env["wheel"]).namelist()
    for needed in ("turbovaed/_data/distill/quickstart.toml", "turbovaed/_data/export/host-onnx-fp32.toml",
                   "turbovaed/_data/devices/galaxy-s24.toml", "turbovaed/_data/web/index.html",
                   "turbovaed/_data/calibration/points.toml", "turbovaed/_data/calibration/host-cpu.json",
                   "turbovaed/assets/reference_teacher/config.json"):
        assert needed in names, needed
    where = subprocess.run([str(wheel_env["py"]), "-c", "import turbovaed, turbovaed.resources as r; "
                            "print(turbovaed.__file__); print(r.data_dir('export'))"],
                           capture_output=True, text=True, check=True, cwd=wheel_env["work"]).stdout.split()
    assert "site-packages" in where[0] and str(REPO) not in where[0]
    assert where[1].endswith("turbovaed/_data/export")


def test_installed_wheel_runs_info_export_profile_report_from_an_empty_directory(wheel_env):
    w = wheel_env
    assert "wan21-turbo" in run(w, "info").stdout
    subprocess.run([str(w["py"]), "-c", "from turbovaed.teachers import build_tiny; "
                    "from turbovaed.student import StudentDecoder; "
                    "from turbovaed.presets import student_config; "
                    "StudentDecoder(student_config(build_tiny('reference'), mini=True)).save_pretrained('s')"],
                   cwd=w["work"], env=w["env"], check=True, timeout=300)
    recipes = ["host-onnx-fp32"]
    try:  # the coreai extra is optional: its recipe is exported where it is installed (CI installs it)
        import coreai_opt  # noqa: F401
        recipes.append("iphone-coreai-fp16")
    except ImportError:
        pass
    for recipe in recipes:
        run(w, "export", recipe, "--checkpoint", "s", "--tiny-teacher", "--synthetic", "--height", "32",
            "--width", "32", "--out", "exports")
    manifests = {m.parent.name: json.loads(m.read_text()) for m in (w["work"] / "exports").glob("*/manifest.json")}
    assert sorted(manifests) == sorted(recipes) and all(m["numerics"]["status"] == "pass" for m in manifests.values())
    run(w, "profile", "exports", "--runs", "2", "--warmup", "0")
    assert list((w["work"] / "profiles" / "results").glob("*.json")), "records go under the working directory"
    run(w, "report")
    assert (w["work"] / "profiles" / "report" / "report.md").is_file()
    assert sorted(p.name for p in w["work"].iterdir()) == ["exports", "profiles", "s"]
