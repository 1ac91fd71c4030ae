"""Teacher FLOPs per training step for feature alignment: full decode vs the decode cut after the last
aligned block (the teacher's frames are cached, so only its low-resolution blocks must run).

Counted with torch's FlopCounterMode on the meta device (no weights, no memory): full-size Wan 2.1 and
LTX-Video decoders (diffusers' default configs), batch 4, 17x256x256, blocks [0, 1] (mid block and first
up block, Turbo-VAED's feature_indices). Writes benchmarks/results/teacher_cost.json.

    python benchmarks/teacher_cost.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from turbovaed import teachers

OUT = Path(__file__).resolve().parent / "results" / "teacher_cost.json"


def count(name: str, batch: int = 4, frames: int = 17, size: int = 256, blocks=(0, 1)) -> dict:
    spec = teachers.get_spec(name)
    cls = teachers._diffusers_class(spec)
    with torch.device("meta"):
        vae = cls()
    for name_, buf in list(vae.named_buffers()):  # latent statistics are read as numbers: give them values
        if "." not in name_:
            setattr(vae, name_, torch.zeros(buf.shape))
    teacher = teachers.Teacher(spec, vae)
    with torch.device("meta"):
        lat = (frames - 1) // spec.temporal + 1
        z = torch.zeros(batch, teacher.latent_channels, lat, size // spec.spatial, size // spec.spatial)
    with FlopCounterMode(display=False) as full:
        teacher.decode_with_features(z, blocks=list(blocks))
    teacher.decode_with_features(z, blocks=list(blocks), truncate=True)  # records the decoder's output shapes
    with FlopCounterMode(display=False) as cut:
        teacher.decode_with_features(z, blocks=list(blocks), truncate=True)
    f, c = full.get_total_flops(), cut.get_total_flops()
    return {"teacher": name, "class": spec.cls, "decoder_params": sum(p.numel() for p in teacher.vae.decoder.parameters()),
            "batch": batch, "frames": frames, "size": size, "blocks": list(blocks),
            "full_tflops_per_step": round(f / 1e12, 3), "cut_tflops_per_step": round(c / 1e12, 3),
            "reduction": round(f / c, 1)}


def main() -> None:
    rows = [count("wan21"), count("ltx")]
    for r in rows:
        print(f"{r['teacher']:6s} {r['class']:24s} {r['decoder_params'] / 1e6:6.1f}M decoder params: "
              f"{r['full_tflops_per_step']:8.2f} TFLOPs/step full -> {r['cut_tflops_per_step']:6.2f} cut "
              f"= {r['reduction']}x fewer (batch {r['batch']}, {r['frames']}x{r['size']}^2, blocks {r['blocks']})")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"method": "FlopCounterMode on the meta device, diffusers default configs",
                               "rows": rows}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
