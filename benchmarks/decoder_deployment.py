"""Estimated FPS of the decoders people already use (TAEHV / TAEW / LightTAE, Turbo-VAED, Flash-VAED) beside turbovaed's
presets of the same latent geometry, on every catalog device, at 512x512 and 720p.

Estimates, not measurements: each decoder's exported 2D graph is traced on the meta device (no weights needed)
and every (backend, precision) it exports to is estimated per compute unit through the calibrated roofline
(`turbovaed.profile.estimate`); a cell is the fastest calibrated estimate with its leave-one-out error class,
or the roofline bound where no calibration exists (labelled). Writes benchmarks/results/decoder_deployment.json;
docs/results.md's table is generated from it (scripts/readme_tables.py)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbovaed import presets  # noqa: E402
from turbovaed.decoders import flash_vaed, flash_vaed_ltx, taehv, turbo_vaed  # noqa: E402
from turbovaed.io import atomic_file  # noqa: E402
from turbovaed.profile import calibration  # noqa: E402
from turbovaed.profile.devices import load_catalog  # noqa: E402
from turbovaed.profile.estimate import best_cell, costs_of  # noqa: E402
from turbovaed.teachers import TEACHERS  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "decoder_deployment.json"
SIZES = {"512x512": (512, 512), "720p": (720, 1280)}
LATENT_FRAMES = 5
DECODERS = [taehv.VARIANTS[n] for n in ("taehv", "taew2_2", "taeltx_2")] + \
    [turbo_vaed.VARIANTS[n] for n in ("turbo-vaed-hunyuan", "turbo-vaed-ltx")] + \
    [flash_vaed.VARIANTS["flash-vaed-wan2_1"], flash_vaed_ltx.VARIANTS["flash-vaed-ltx"]]
STUDENTS = {"turbovaed wan21 (nano)": ("wan21", "nano"), "turbovaed wan21-phone": ("wan21", "phone"),
            "turbovaed wan21-turbo": ("wan21", "turbo"), "turbovaed wan22 (nano)": ("wan22", "nano"),
            "turbovaed wan22-phone": ("wan22", "phone"), "turbovaed ltx (nano)": ("ltx", "nano"),
            "turbovaed ltx-phone": ("ltx", "phone")}


def rows() -> list[dict]:
    catalog, fits = load_catalog(), calibration.fits()
    models = [(v.name, "peer", v, v.spatial_ratio, v.output_frames(LATENT_FRAMES), v.latent_channels)
              for v in DECODERS]
    # Flash-VAED's Wan attention does not survive int8 activations (docs/limits.md): float and weight-only for it
    float_only = {v.name for v in DECODERS if not getattr(v, "int8_activations", True)}
    for label, (family, size) in STUDENTS.items():
        cfg = presets.student_config(TEACHERS[family], size=size)
        models.append((label, "turbovaed", cfg, cfg.spatial_ratio, cfg.frames_for(LATENT_FRAMES), cfg.latent_channels))
    out = []
    for name, kind, spec, ratio, frames, channels in models:
        for size, (h, w) in SIZES.items():
            shape = (LATENT_FRAMES, math.ceil(h / ratio), math.ceil(w / ratio))
            costs = costs_of(spec, shape)
            print(f"{name} {size}: {sum(c['macs'] for c in costs) / 1e9 / frames:.1f} GMACs/frame", flush=True)
            out.append({"decoder": name, "kind": kind, "latent_channels": channels, "spatial_ratio": ratio,
                        "size": size, "frames": frames, "gmacs_per_frame": sum(c["macs"] for c in costs) / 1e9 / frames,
                        "devices": {d: best_cell(dev, costs, frames, fits, name in float_only)
                                    for d, dev in catalog.items()}})
    return out


def main() -> None:
    result = {"about": __doc__.split("\n\n")[0], "latent_frames": LATENT_FRAMES, "source": "estimate",
              "rows": rows()}
    with atomic_file(OUT) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
