"""The web demo end to end: a real headless Chromium (Playwright) decodes an ONNX app bundle with
onnxruntime-web; its frames are checked against the Python decode of the same latents."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from turbovaed.demo import ORT_DIST, check_bundle, serve
from turbovaed.export.core import export
from turbovaed.io import InputError
from turbovaed.metrics import psnr
from turbovaed.profile import schema
from turbovaed.profile.devices import load_catalog

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync"]


def read_f32(path: Path, shape: list[int]) -> torch.Tensor:
    return torch.from_numpy(np.fromfile(path, dtype="<f4").reshape(shape))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, student_dir):
    from test_export import recipe_for

    out = tmp_path_factory.mktemp("bundles")
    for precision in ("fp32", "int8"):
        export(recipe_for("onnx", precision), student_dir, out, bundle=True)
    return out


def test_bundle_format_is_what_the_apps_read(bundles):
    folder = bundles / "t-onnx-fp32"
    meta = check_bundle(folder, backend="onnx")
    z = read_f32(folder / meta["latents"]["file"], meta["latents"]["shape"])
    frames = read_f32(folder / meta["reference_frames"]["file"], meta["reference_frames"]["shape"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert list(z.shape) == manifest["inputs"][0]["shape"] and list(frames.shape) == manifest["outputs"][0]["shape"]
    import onnxruntime as ort

    got = ort.InferenceSession(str(folder / meta["artifact"])).run(None, {"latents": z.numpy()})[0]
    assert psnr(torch.from_numpy(got), frames) > 60  # the reference frames are what the artifact decodes
    with pytest.raises(InputError, match="bundle.json"):
        check_bundle(bundles)
    with pytest.raises(InputError, match="ONNX"):
        check_bundle(folder, backend="coreml")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does)")
@pytest.mark.skipif(not ORT_DIST.is_dir(), reason="onnxruntime-web is not installed (npm ci --prefix device_apps/web)")
@pytest.mark.parametrize("precision,min_psnr", [("fp32", 60.0), ("int8", 40.0)])
def test_chromium_decodes_the_bundle_like_python(bundles, tmp_path, precision, min_psnr):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    folder = bundles / f"t-onnx-{precision}"
    meta = check_bundle(folder)
    server = serve(folder, port=0)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/?runs=3&device=host&ep=wasm")
            page.wait_for_function("window.turbovaed && window.turbovaed.done", timeout=120_000)
            result = page.evaluate("({error: turbovaed.error, shape: turbovaed.shape, isolated: crossOriginIsolated, "
                                   "cores: navigator.hardwareConcurrency, "
                                   "output: Array.from(turbovaed.output || []), record: turbovaed.record})")
            page.screenshot(path=str(tmp_path / "web-demo.png"))
            browser.close()
    finally:
        server.shutdown()
    assert result["error"] is None, result["error"]
    browser_frames = torch.tensor(result["output"]).reshape(result["shape"])
    z = read_f32(folder / meta["latents"]["file"], meta["latents"]["shape"])
    import onnxruntime as ort

    python_frames = torch.from_numpy(ort.InferenceSession(str(folder / meta["artifact"])).run(None, {"latents": z.numpy()})[0])
    fp32_student = read_f32(folder / meta["reference_frames"]["file"], meta["reference_frames"]["shape"])
    assert psnr(browser_frames, python_frames) > 60  # same model, same latents: WASM = native ORT
    assert psnr(browser_frames, fp32_student) >= min_psnr
    record = schema.validate(result["record"], set(load_catalog()))
    assert record.runtime == "onnxruntime-web" and record.compute_unit == "wasm" and record.runs == 3
    # the server's COOP/COEP headers isolate the page, so WASM runs one thread per core, and says so
    assert result["isolated"] and record.threads == result["cores"], (result["isolated"], record.threads)
    assert "execution provider wasm" in record.notes and record.first_inference_ms > 0
    assert record.artifact_sha256 == json.loads((folder / "manifest.json").read_text())["sha256"]
    assert (tmp_path / "web-demo.png").stat().st_size > 2000
