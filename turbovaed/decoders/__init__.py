"""Decoders people already use, loaded from a local file (never a hub): `load(path)` reads safetensors, or a
`.pth`/`.pt` only through `torch.load(weights_only=True)`, tells family and variant from the tensors' names
and shapes (the file name only breaks a tie; `variant=` overrides), builds our module of that published
architecture and fills it strictly: every decoder tensor used, every parameter filled.

Families: TAEHV / TAEW (the Super decoders included) and LightX2V's LightTAE (madebyollin/taehv, `taehv.py`),
Turbo-VAED's released students (hustvl/Turbo-VAED,
`turbo_vaed.py`) and Flash-VAED's Wan 2.1 and LTX-Video students (Aoko955/Flash-VAED, `flash_vaed.py`,
`flash_vaed_ltx.py`). Whatever the family, `LoadedDecoder.canonical()` runs the published forward with
turbovaed's I/O ((B, C, T, h, w) latents in, as the family takes them: `takes_normalized`; (B, 3, T', H, W) frames
in [-1, 1] out), `mobile()` is its
exact 2D graph and `step()` its streaming step graph where the decoder is causal."""

from __future__ import annotations

import functools
import hashlib
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from turbovaed.decoders import flash_vaed, flash_vaed_ltx, taehv, turbo_vaed
from turbovaed.decoders.flash_vaed import FlashVAED, FlashVAEDStep
from turbovaed.decoders.flash_vaed_ltx import FlashVAEDLTX
from turbovaed.decoders.stepping import StepStream
from turbovaed.decoders.taehv import H3_CHUNK, Canonical, TAEHVDecoder, TAEHVStep, TGrow
from turbovaed.decoders.turbo_vaed import TurboVAED
from turbovaed.io import CheckpointError, InputError, check_finite, load_safetensors
from turbovaed.teachers import LatentNorm

# lighttae: taehv's architecture
FAMILIES = {"taehv": taehv.VARIANTS, "turbo-vaed": turbo_vaed.VARIANTS,
            "flash-vaed": {**flash_vaed.VARIANTS, **flash_vaed_ltx.VARIANTS}}


def family_of(variant) -> str:
    if isinstance(variant, turbo_vaed.Variant):
        return "turbo-vaed"
    if isinstance(variant, (flash_vaed.Variant, flash_vaed_ltx.Variant)):
        return "flash-vaed"
    return "lighttae" if variant.name.startswith("lighttae") else "taehv"


def build(variant) -> torch.nn.Module:
    """Our module of a variant's published architecture (random weights)."""
    kinds = {turbo_vaed.Variant: TurboVAED, flash_vaed.Variant: FlashVAED, flash_vaed_ltx.Variant: FlashVAEDLTX,
             taehv.Variant: TAEHVDecoder}
    return kinds[type(variant)](variant)


@dataclass
class LoadedDecoder:
    family: str
    variant: taehv.Variant | turbo_vaed.Variant | flash_vaed.Variant | flash_vaed_ltx.Variant
    module: torch.nn.Module  # the published forward, with the family's own I/O
    path: Path
    sha256: str
    skipped: list[str] = field(default_factory=list)  # tensors of the file the decoder does not use (its encoder)
    notes: list[str] = field(default_factory=list)

    def canonical(self) -> torch.nn.Module:
        """The published forward with turbovaed's I/O: (B, C, T, h, w) in, (B, 3, T', H, W) in [-1, 1] out."""
        return canonical(self.module.float().eval()).eval()

    def mobile(self) -> torch.nn.Module:
        """The exact 2D-only graph of `canonical()` (TAEHV is 2D already)."""
        m = self.module.float().eval()
        return (Canonical(m) if isinstance(m, TAEHVDecoder) else m.to_mobile()).eval()

    def step(self) -> torch.nn.Module:
        """The streaming step graph (one latent frame per call, memory as explicit state); causal decoders only.
        It has `initial_states(latents BCTHW)`, `frames_to_trim`, `stream(latents, run)` and, where it takes
        the `first` flag after the latents, `takes_first`."""
        if isinstance(self.module, TAEHVDecoder) and self.variant.h3_chunks:
            raise InputError(f"{self.variant.name} drops frames per chunk of {H3_CHUNK} latents and at the clip's end "
                             "(MiniMax-H3's frame rule): it has no streaming step graph; decode or export whole clips")
        if not self.causal:
            raise InputError(f"{self.variant.name} is not causal (its temporal convs see later frames too): it has "
                             "no streaming step graph; decode or export whole clips")
        m = self.module.float().eval()
        return (Canonical(TAEHVStep(m)) if isinstance(m, TAEHVDecoder) else FlashVAEDStep(m.to_mobile())).eval()

    @property
    def causal(self) -> bool:
        """Whether it streams: TAEHV (but taeh3, whose chunk rule needs the clip's length) and Flash-VAED-Wan."""
        return isinstance(self.module, FlashVAED) or (isinstance(self.module, TAEHVDecoder)
                                                      and not self.variant.h3_chunks)

    @property
    def takes_normalized(self) -> bool:
        """Whether it decodes the diffusion model's (normalised) latents as they are (TAEHV / TAEW), rather than
        raw VAE latents (LightTAE, Turbo-VAED, Flash-VAED)."""
        return getattr(self.variant, "takes_normalized", False)

    @property
    def norm(self) -> LatentNorm | None:
        """The latent statistics the family publishes (None: its convention carries none)."""
        v = self.variant
        return LatentNorm(list(v.mean), list(v.std)) if isinstance(v, flash_vaed.Variant) else None

    def describe(self, sizes: dict[str, tuple[int, int]] | None = None) -> dict:
        """Family, variant, parameters, GMACs per output frame at the given sizes (over 5 latent frames, as the
        published 52.5 GMACs/frame of TAEHV at 512x512 counts), frame rule, latent convention."""
        from turbovaed.student import module_macs

        v = self.variant
        sizes = sizes or {"512x512": (512, 512), "720p": (720, 1280)}
        f, t, macs = v.spatial_ratio, 5, {}
        with torch.device("meta"):
            model = canonical(build(v))
        for label, (h, w) in sizes.items():
            shape = (1, v.latent_channels, t, math.ceil(h / f), math.ceil(w / f))
            macs[label] = module_macs(model, shape) / 1e9 / v.output_frames(t)
        output = "BCTHW RGB in [-1, 1] (unclamped)" if not isinstance(self.module, TAEHVDecoder) else \
            f"NTCHW RGB in {'[-1, 1]' if v.signed else '[0, 1]'}"
        return {"family": self.family, "variant": v.name, "decodes": v.vae, "params": self.module.num_parameters(),
                "gmacs_per_frame": macs, "frame_rule": v.frame_rule, "spatial_ratio": f, "latents": v.convention,
                "output": output, "causal": self.causal, "sha256": self.sha256, "skipped_tensors": len(self.skipped),
                "notes": self.notes}


def canonical(module: torch.nn.Module) -> torch.nn.Module:
    return Canonical(module) if isinstance(module, TAEHVDecoder) else module


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
    return check_finite(sd, path)


def detect(sd: dict[str, torch.Tensor], name: str = "", variant: str | None = None) -> taehv.Variant:
    """The TAEHV variant these tensors fit; the file name breaks a tie between variants sharing one layout."""
    is_super = "decoder.0.weight" in sd and "decoder.1.conv.0.weight" in sd  # the Super decoder's 1x1 conv in
    first_conv = "decoder.0.weight" if is_super else "decoder.1.weight"
    if first_conv not in sd or "decoder.22.weight" not in sd:
        first = next(iter(sorted(sd)), "nothing")
        raise InputError(f"{name} matches no known decoder layout (closest: TAEHV, which needs decoder.1.weight and "
                         f"decoder.22.weight; the file starts with {first!r})")
    lc, out = sd[first_conv].shape[1], sd["decoder.22.weight"].shape[0]
    patch = math.isqrt(out // 3)
    fits = [v for v in taehv.VARIANTS.values() if (v.latent_channels, v.patch_size, v.super_block) == (lc, patch, is_super)]
    if variant is not None:
        if variant not in taehv.VARIANTS:
            raise InputError(f"unknown TAEHV variant {variant!r}; known: {', '.join(taehv.VARIANTS)}")
        if taehv.VARIANTS[variant] not in fits:
            raise InputError(f"{name} has {lc} latent channels and patch size {patch}; variant {variant} takes "
                             f"{taehv.VARIANTS[variant].latent_channels} and {taehv.VARIANTS[variant].patch_size}")
        return taehv.VARIANTS[variant]
    if not fits:
        known = ", ".join(f"{v.name} {v.latent_channels}/{v.patch_size}" for v in taehv.VARIANTS.values())
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


def _turbo_tensors(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The decoder's tensors of a Turbo-VAED file (a bare decoder state dict, as the released .pth, or a whole
    AutoencoderKLTurboVAED one with `decoder.` names) and the names it does not use: the latent statistics
    buffers (zeros and ones as the class registers them), the training-only feature-alignment heads, and the
    statistics of the BatchNorm3d norm_out that upstream replaced by a parameter-free RMS norm (commit 32be94c;
    its loader ignores them, loading with strict=False)."""
    prefixed = "decoder.conv_in.conv.weight" in sd
    decoder = {k.removeprefix("decoder."): t for k, t in sd.items() if k.startswith("decoder.") or not prefixed}
    skipped = sorted(k for k in sd if prefixed and not k.startswith("decoder."))
    for k in [k for k in decoder if _unused_turbo_tensor(k)]:
        skipped.append(k)
        del decoder[k]
    extra = [k for k in skipped if not _unused_turbo_tensor(k)]
    if extra:
        raise InputError(f"tensor {extra[0]!r} belongs to no part of a Turbo-VAED model")
    return decoder, sorted(skipped)


def _unused_turbo_tensor(name: str) -> bool:
    return name in ("latents_mean", "latents_std") or name.startswith(("aligned_feature", "norm_out."))


@functools.cache
def _layout(variant) -> dict[str, tuple[int, ...]]:
    """Names and shapes a variant's module has (built once per variant, on the meta device)."""
    with torch.device("meta"):
        return {k: tuple(t.shape) for k, t in build(variant).state_dict().items()}


def _mismatch(have: dict[str, torch.Tensor], want: dict[str, tuple[int, ...]]) -> str | None:
    """The first tensor where a file and a layout differ, said plainly; None when they agree exactly."""
    for k, shape in want.items():
        if k not in have:
            return f"{k!r} is missing"
        if tuple(have[k].shape) != shape:
            return f"{k} has shape {list(have[k].shape)}, the layout takes {list(shape)}"
    extra = sorted(set(have) - set(want))
    return f"tensor {extra[0]!r} is not part of it" if extra else None


def _filled(path: Path, v, decoder: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Our module of variant v filled strictly from a file's decoder tensors; one clear error where they differ."""
    wrong = _mismatch(decoder, _layout(v))
    if wrong:
        raise InputError(f"{path.name} does not fit {v.name}: {wrong}")
    module = build(v).eval()
    module.load_state_dict({k: t.float() if t.is_floating_point() else t for k, t in decoder.items()}, strict=True)
    return module


def detect_turbo_vaed(decoder: dict[str, torch.Tensor], name: str, variant: str | None) -> turbo_vaed.Variant:
    """The released Turbo-VAED config whose decoder has exactly these names and shapes; the file name breaks the
    Hunyuan / CogVideoX tie (one layout, different latents)."""
    variants = turbo_vaed.VARIANTS
    if variant is not None:
        if variant not in variants:
            raise InputError(f"unknown Turbo-VAED variant {variant!r}; known: {', '.join(variants)}")
        wrong = _mismatch(decoder, _layout(variants[variant]))
        if wrong:
            raise InputError(f"{name} does not fit {variant}: {wrong}")
        return variants[variant]
    checks = {v: _mismatch(decoder, _layout(v)) for v in variants.values()}
    fits = [v for v, wrong in checks.items() if wrong is None]
    if not fits:
        closest = max(checks, key=lambda v: len(set(_layout(v)) & set(decoder)))
        raise InputError(f"{name} matches no released Turbo-VAED config (closest: {closest.name}: {checks[closest]})")
    stem = Path(name).stem.lower()
    named = [v for v in fits if v.name.removeprefix("turbo-vaed-") in stem]
    if len(fits) == 1 or len(named) == 1:
        return fits[0] if len(fits) == 1 else named[0]
    raise InputError(f"{name}: the layout fits {', '.join(v.name for v in fits)} (one architecture, different "
                     "latents); say which with --variant, or keep a file name that names the VAE")


def _closest_family(sd: dict[str, torch.Tensor], name: str) -> InputError:
    """One message for a file that fits no family: the family sharing most tensor names, its first mismatch."""
    layouts = {"TAEHV (taehv)": _layout(taehv.VARIANTS["taehv"]),
               "Turbo-VAED (turbo-vaed-hunyuan)": _layout(turbo_vaed.VARIANTS["turbo-vaed-hunyuan"]),
               "Flash-VAED (flash-vaed-wan2_1)": _layout(flash_vaed.VARIANTS["flash-vaed-wan2_1"]),
               "Flash-VAED (flash-vaed-ltx)": _layout(flash_vaed_ltx.VARIANTS["flash-vaed-ltx"])}
    stripped = {k.removeprefix("decoder."): t for k, t in sd.items()}
    score = {f: max(len(set(lay) & set(sd)), len(set(lay) & set(stripped))) for f, lay in layouts.items()}
    family = max(score, key=score.get)
    have = sd if len(set(layouts[family]) & set(sd)) >= len(set(layouts[family]) & set(stripped)) else stripped
    return InputError(f"{name} matches no known decoder layout (closest family: {family}, sharing {score[family]} of "
                      f"{len(layouts[family])} tensor names: {_mismatch(have, layouts[family])})")


def load(path: str | Path, variant: str | None = None) -> LoadedDecoder:
    """Load a decoder file strictly; one clear error for a file that fits no layout, a non-weights-only
    pickle, an ambiguous layout without `variant`, or a tensor that does not fit."""
    path = Path(path)
    sd = read_weights(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if variant in flash_vaed.VARIANTS or (variant is None and "decoder.middle.1.to_qkv.weight" in sd):
        return _load_flash_vaed(path, sd, variant or "flash-vaed-wan2_1", digest)
    if variant in flash_vaed_ltx.VARIANTS or (variant is None and any(k.endswith(".conv1.depthwise.weight") for k in sd)):
        return _load_flash_vaed_ltx(path, sd, variant or "flash-vaed-ltx", digest)
    if variant in turbo_vaed.VARIANTS or (variant is None and any(k.endswith("conv_in.conv.weight") for k in sd)):
        decoder, skipped = _turbo_tensors(sd)
        v = detect_turbo_vaed(decoder, path.name, variant)
        module = _filled(path, v, decoder)
        notes = ["not causal: whole clips only (no streaming step graph)"]
        if skipped:
            notes.append(f"{len(skipped)} tensors not used by the decoder (latent statistics buffers, training-only "
                         "feature-alignment heads)")
        return LoadedDecoder("turbo-vaed", v, module, path, digest, skipped, notes)
    if "decoder.1.weight" not in sd and "decoder.0.weight" not in sd:
        raise _closest_family(sd, path.name)
    return _load_taehv(path, sd, variant, digest)


def _load_flash_vaed(path: Path, sd: dict[str, torch.Tensor], variant: str, digest: str) -> LoadedDecoder:
    """Flash-VAED's Wan student: the whole `WanVAE_` state dict (its encoder is empty); the encoder-side 1x1
    `conv1` is recognised and not used."""
    v = flash_vaed.VARIANTS[variant]
    skipped = sorted(k for k in sd if k in ("conv1.weight", "conv1.bias"))
    decoder = {k: t for k, t in sd.items() if k not in skipped}
    module = _filled(path, v, decoder)
    notes = ["causal: streams one latent frame per call (`decode --stream`, stream_chunk = 1)",
             "the published wrapper restarts its stream after latent frame 20 (81 frames); turbovaed decodes any "
             "length as one stream (the same frames up to 21 latent frames)"]
    return LoadedDecoder("flash-vaed", v, module, path, digest, skipped, notes)


def _load_flash_vaed_ltx(path: Path, sd: dict[str, torch.Tensor], variant: str, digest: str) -> LoadedDecoder:
    """Flash-VAED's LTX student: a whole `AutoencoderKLLTXVideo` state dict (as `infer.py` loads it) or the bare
    decoder; the encoder, the latent statistics buffers and the `mean_of_means` / `std_of_means` extras
    `infer.py` drops are recognised and not used."""
    v = flash_vaed_ltx.VARIANTS[variant]
    prefixed = any(k.startswith("decoder.") for k in sd)
    unused = ("latents_mean", "latents_std", "mean_of_means", "std_of_means")
    skipped = sorted(k for k in sd if k in unused or (prefixed and k.startswith("encoder.")))
    decoder = {k.removeprefix("decoder.") if prefixed else k: t for k, t in sd.items() if k not in skipped}
    module = _filled(path, v, decoder)
    notes = ["not causal: whole clips only (no streaming step graph)"]
    if skipped:
        notes.append(f"{len(skipped)} tensors not used by the decoder (its encoder, latent statistics buffers)")
    return LoadedDecoder("flash-vaed", v, module, path, digest, skipped, notes)


def _load_taehv(path: Path, sd: dict[str, torch.Tensor], variant: str | None, digest: str) -> LoadedDecoder:
    v = detect(sd, path.name, variant)
    want = _layout(v)
    decoder = {k: t for k, t in sd.items() if k.startswith("decoder.")}
    skipped = sorted(k for k in sd if not k.startswith("decoder."))
    if any(not k.startswith("encoder.") for k in skipped):
        extra = next(k for k in skipped if not k.startswith("encoder."))
        raise InputError(f"{path.name}: tensor {extra!r} belongs to no part of a TAEHV model ({v.name})")
    notes = []
    for i, layer in enumerate(build(v).decoder):  # published quirk: a TGrow conv may hold stride*C rows
        key = f"decoder.{i}.conv.weight"
        if isinstance(layer, TGrow) and key in decoder and decoder[key].shape[0] > want[key][0]:
            rows, has = want[key][0], decoder[key].shape[0]
            if has % rows or tuple(decoder[key].shape[1:]) != want[key][1:]:
                raise InputError(f"{path.name}: {key} has shape {list(decoder[key].shape)}; {v.name} takes "
                                 f"{list(want[key])} (or a multiple of its rows)")
            decoder[key] = decoder[key][-rows:]
            notes.append(f"{key}: kept the last {rows} of {has} rows (the file's TGrow upsamples time where "
                         f"{v.name} does not; the published loader keeps the last rows too)")
    return LoadedDecoder(family_of(v), v, _filled(path, v, decoder), path, digest, skipped, notes)


class DecoderStreamer(StepStream):
    """A causal decoder file's step graph as a streamer (`stream.stream_to_video` takes it): one latent frame per
    call, the states carried, the stream's first frames dropped as published; frames in [-1, 1]."""

    def __init__(self, loaded: LoadedDecoder) -> None:
        super().__init__(loaded.step())

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return super().__call__(z).clamp(-1, 1)

    def close(self) -> None:
        self.states = None


def decode_file(loaded: LoadedDecoder, latents, normalized: bool | None = None) -> torch.Tensor:
    """Decode a LatentFile (read as (B, C, T, h, w) whatever its stored layout) with a loaded decoder; returns
    the first clip as (3, T', H, W) in [-1, 1], what turbovaed's video writer takes."""
    v = loaded.variant
    latents.check_channels(v.latent_channels, f"decoder {v.name}")
    z = latents.read()
    with torch.no_grad():
        return loaded.canonical()(as_decoder_takes(loaded, z, normalized))[0].clamp(-1, 1)


def as_decoder_takes(loaded: LoadedDecoder, z: torch.Tensor, normalized: bool | None) -> torch.Tensor:
    """Latents in the decoder's own convention: normalised ones as they are for TAEHV (None: as the decoder takes
    them), raw ones as they are for the rest, normalised ones de-normalised with statistics the file ships."""
    check_convention(loaded, normalized)
    return loaded.norm.to_raw(z) if normalized and not loaded.takes_normalized else z


def check_convention(loaded: LoadedDecoder, normalized: bool | None) -> None:
    """Refuse latents a decoder cannot be given: raw ones to TAEHV, normalised ones to a raw-latent decoder that
    ships no statistics to undo the normalisation."""
    v = loaded.variant
    if loaded.takes_normalized and normalized is False:
        raise InputError(f"{v.name} decodes {v.convention}; raw latents would need the {v.vae} VAE's "
                         "latents_mean / latents_std to normalise them: pass the pipeline's latents (--normalized)")
    if not loaded.takes_normalized and normalized and loaded.norm is None:
        raise InputError(f"{v.name} takes {v.convention} and ships no latent statistics to undo a normalisation: "
                         f"de-normalise with the {v.vae} VAE's latents_mean / latents_std first, then pass --raw")
