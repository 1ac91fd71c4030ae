"""`turbovaed demo web`: serve device_apps/web with an app bundle and onnxruntime-web on localhost."""

from __future__ import annotations

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from turbovaed.export.core import BUNDLE_FORMAT
from turbovaed.io import InputError
from turbovaed.resources import data_dir

WEB_DIR = data_dir("web")
# onnxruntime-web from npm: beside the app in a checkout (npm ci --prefix device_apps/web), else in the
# working directory (an installed wheel's package folder is not the place to npm install into).
_ORT = Path("node_modules") / "onnxruntime-web" / "dist"
ORT_DIST = next((d for d in (WEB_DIR / _ORT, Path.cwd() / _ORT) if d.is_dir()), WEB_DIR / _ORT)


def check_bundle(bundle: Path, backend: str | None = None) -> dict:
    """bundle.json of an app bundle, checked: the format, the files it names, and the backend if given."""
    try:
        meta = json.loads((Path(bundle) / "bundle.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{bundle} is not an app bundle (no readable bundle.json; export with --bundle): {err}") from err
    if meta.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{bundle}/bundle.json has format {meta.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    for name in (meta["artifact"], meta["manifest"], meta["latents"]["file"], meta["reference_frames"]["file"]):
        if not (Path(bundle) / name).exists():
            raise InputError(f"{bundle} lacks {name}, which bundle.json names")
    if backend and meta["backend"] != backend:
        raise InputError(f"the web demo runs ONNX bundles; {bundle} is a {meta['backend']} bundle")
    return meta


class _Handler(SimpleHTTPRequestHandler):
    """Serves the page from WEB_DIR, /ort/ from onnxruntime-web's dist, /bundle/ from the bundle."""

    def __init__(self, *args, bundle: Path, **kwargs) -> None:
        self.bundle = bundle
        super().__init__(*args, directory=str(WEB_DIR), **kwargs)

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, root in (("/ort/", ORT_DIST), ("/bundle/", self.bundle)):
            if clean.startswith(prefix):
                target = (root / clean[len(prefix):]).resolve()
                return str(target) if target.is_relative_to(root.resolve()) else str(root / "__forbidden__")
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        # Cross-origin isolation: SharedArrayBuffer, hence onnxruntime-web's multi-threaded WASM.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        super().end_headers()

    def log_message(self, *args) -> None:  # quiet: the page shows progress
        pass


SimpleHTTPRequestHandler.extensions_map.update({".mjs": "text/javascript", ".wasm": "application/wasm"})


def serve(bundle: Path, port: int = 8765, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the demo server in a background thread; returns it (server.server_address has the port)."""
    check_bundle(bundle, backend="onnx")
    if not ORT_DIST.is_dir():
        version = json.loads((WEB_DIR / "package.json").read_text())["dependencies"]["onnxruntime-web"]
        raise InputError(f"onnxruntime-web is not installed: run `npm install onnxruntime-web@{version}` in the "
                         f"working directory (or `npm ci --prefix {WEB_DIR}` in a source checkout)")
    server = ThreadingHTTPServer((host, port), functools.partial(_Handler, bundle=Path(bundle).resolve()))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
