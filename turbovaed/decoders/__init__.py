"""Decoders people already use, loaded from a local file (never a hub): `load(path)` reads safetensors, or a
`.pth`/`.pt` only through `torch.load(weights_only=True)`, tells family and variant from the tensors' names
and shapes (the file name only breaks a tie; `variant=` overrides), builds our module of that published
architecture and fills it strictly: every decoder tensor used, every parameter filled.

Families so far: TAEHV / TAEW (madebyollin/taehv, `taehv.py`). Its 'super' variants are recognised and
refused with a clear message until their block is built."""

from __future__ import annotations

import hashlib
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from turbovaed.decoders.taehv import SUPER, VARIANTS, TAEHVDecoder, TGrow, Variant
from turbovaed.io import CheckpointError, InputError, load_safetensors


@dataclass
class LoadedDecoder:
    family: str
    variant: Variant
    module: torch.nn.Module
    path: Path
    sha256: str
    skipped: list[str] = field(default_factory=list)  # tensors of the file a decoder does not use (its encoder)
    notes: list[str] = field(default_factory=list)

    def describe(self, sizes: dict[str, tuple[int, int]] | None = None) -> dict:
        """Family, variant, parameters, GMACs per output frame at the given sizes (over 5 latent frames, as the
        published 52.5 GMACs/frame of TAEHV at 512x512 counts), frame rule, latent convention."""
        from turbovaed.student import module_macs

        v = self.variant
        sizes = sizes or {"512x512": (512, 512), "720p": (720, 1280)}
        macs = {}
        for label, (h, w) in sizes.items():
            f = 8 * v.patch_size
            with torch.device("meta"):
                model = TAEHVDecoder(v)
            t = 5
            macs[label] = module_macs(model, (1, t, v.latent_channels, math.ceil(h / f), math.ceil(w / f))) / 1e9 \
                / v.output_frames(t)
        return {"family": self.family, "variant": v.name, "decodes": v.vae, "params": self.module.num_parameters(),
                "gmacs_per_frame": macs, "frame_rule": f"T latent frames -> {v.t_upscale}T - {v.frames_to_trim} frames"
                + (" (all 4T when T is even)" if v.name == "taecvx" else ""),
                "spatial_ratio": 8 * v.patch_size, "latents": v.convention, "output": "NTCHW RGB in [0, 1]",
                "sha256": self.sha256, "skipped_tensors": len(self.skipped), "notes": self.notes}


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from .safetensors, or from .pth/.pt through torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if path.suffix not in (".pth", ".pt"):
        raise CheckpointError(f"{path}: expected a .safetensors, .pth or .pt weight file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as err:
        raise CheckpointError(f"{path} is not a weights-only pickle (it needs arbitrary code to load, or is "
                              f"truncated); convert it to safetensors where you trust it: {str(err).splitlines()[0]}"
                              ) from err
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise CheckpointError(f"{path} holds a {type(sd).__name__}, not a state dict of named tensors")
    return sd


def detect(sd: dict[str, torch.Tensor], name: str = "", variant: str | None = None) -> Variant:
    """The TAEHV variant these tensors fit; the file name breaks a tie between variants sharing one layout."""
    if "decoder.1.weight" not in sd or "decoder.22.weight" not in sd:
        if "decoder.0.weight" in sd and "decoder.1.conv.0.weight" in sd:
            raise InputError(f"{name}: a TAEHV 'super' decoder ({' / '.join(SUPER)}): recognised, but its decoder "
                             "block is not supported yet; use the non-super file of the same family")
        first = next(iter(sorted(sd)), "nothing")
        raise InputError(f"{name} matches no known decoder layout (closest: TAEHV, which needs decoder.1.weight and "
                         f"decoder.22.weight; the file starts with {first!r})")
    lc, out = sd["decoder.1.weight"].shape[1], sd["decoder.22.weight"].shape[0]
    patch = math.isqrt(out // 3)
    fits = [v for v in VARIANTS.values() if (v.latent_channels, v.patch_size) == (lc, patch)]
    if variant is not None:
        if variant not in VARIANTS:
            raise InputError(f"unknown TAEHV variant {variant!r}; known: {', '.join(VARIANTS)}")
        if VARIANTS[variant] not in fits:
            raise InputError(f"{name} has {lc} latent channels and patch size {patch}; variant {variant} takes "
                             f"{VARIANTS[variant].latent_channels} and {VARIANTS[variant].patch_size}")
        return VARIANTS[variant]
    if not fits:
        known = ", ".join(f"{v.name} {v.latent_channels}/{v.patch_size}" for v in VARIANTS.values())
        raise InputError(f"{name}: a TAEHV-style decoder with {lc} latent channels and patch size {patch}, which no "
                         f"known variant has ({known})")
    stem = Path(name).stem.lower()
    named = sorted((v for v in fits if v.name in stem), key=lambda v: -len(v.name))  # lighttaew2_1 over taew2_1
    if len(fits) == 1:
        return fits[0]
    if named and (len(named) == 1 or len(named[0].name) > len(named[1].name)):
        return named[0]
    raise InputError(f"{name}: the layout fits {', '.join(v.name for v in fits)} (one architecture, different "
                     "latents); say which with --variant, or keep the published file name")


def load(path: str | Path, variant: str | None = None) -> LoadedDecoder:
    """Load a decoder file strictly; one clear error for a file that fits no layout, a non-weights-only
    pickle, an ambiguous layout without `variant`, or a tensor that does not fit."""
    path = Path(path)
    sd = read_weights(path)
    v = detect(sd, path.name, variant)
    module = TAEHVDecoder(v).eval()
    want = module.state_dict()
    decoder = {k: t for k, t in sd.items() if k.startswith("decoder.")}
    skipped = sorted(k for k in sd if not k.startswith("decoder."))
    if any(not k.startswith("encoder.") for k in skipped):
        extra = next(k for k in skipped if not k.startswith("encoder."))
        raise InputError(f"{path.name}: tensor {extra!r} belongs to no part of a TAEHV model ({v.name})")
    notes = []
    for i, layer in enumerate(module.decoder):  # published quirk: a TGrow conv may hold stride*C rows
        key = f"decoder.{i}.conv.weight"
        if isinstance(layer, TGrow) and key in decoder and decoder[key].shape[0] > want[key].shape[0]:
            rows, has = want[key].shape[0], decoder[key].shape[0]
            if has % rows or decoder[key].shape[1:] != want[key].shape[1:]:
                raise InputError(f"{path.name}: {key} has shape {list(decoder[key].shape)}; {v.name} takes "
                                 f"{list(want[key].shape)} (or a multiple of its rows)")
            decoder[key] = decoder[key][-rows:]
            notes.append(f"{key}: kept the last {rows} of {has} rows (the file's TGrow upsamples time where "
                         f"{v.name} does not; the published loader keeps the last rows too)")
    for key, t in want.items():
        if key not in decoder:
            raise InputError(f"{path.name} is not a complete {v.name} decoder: {key!r} is missing")
        if decoder[key].shape != t.shape:
            raise InputError(f"{path.name} does not fit {v.name}: {key} has shape {list(decoder[key].shape)}, "
                             f"{v.name} takes {list(t.shape)}")
    unused = sorted(set(decoder) - set(want))
    if unused:
        raise InputError(f"{path.name}: tensor {unused[0]!r} is not part of the {v.name} decoder")
    module.load_state_dict({k: t.float() for k, t in decoder.items()}, strict=True)
    family = "lighttae" if v.name.startswith("lighttae") else "taehv"  # same architecture, retrained by LightX2V
    return LoadedDecoder(family, v, module, path, hashlib.sha256(path.read_bytes()).hexdigest(), skipped, notes)


def decode_file(loaded: LoadedDecoder, latents, normalized: bool = False) -> torch.Tensor:
    """Decode a LatentFile (read as (B, C, T, h, w) whatever its stored layout) with a loaded decoder; returns
    the first clip as (3, T', H, W) in [-1, 1], what turbovaed's video writer takes."""
    v = loaded.variant
    if normalized:
        raise InputError(f"{v.name} takes {v.convention} and ships no latent statistics to undo a normalisation: "
                         f"de-normalise with the {v.vae} VAE's latents_mean / latents_std first, then pass --raw")
    latents.check_channels(v.latent_channels, f"decoder {v.name}")
    z = latents.read()
    with torch.no_grad():
        frames = loaded.module(z.permute(0, 2, 1, 3, 4).contiguous())  # NTCHW in [0, 1]
    return frames[0].permute(1, 0, 2, 3) * 2 - 1
