"""Teacher registry and adapter over diffusers video VAEs.

Every video autoencoder class in the installed diffusers is either registered here or listed in
UNSUPPORTED (video) / NOT_VIDEO with a reason; a test fails when diffusers grows a class that is in
none of them. Teachers load from a local folder (`from_pretrained(dir)`), the way users bring real
weights on an offline machine; `tiny=True` builds a small random config of the same class for tests.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from turbovaed.io import CheckpointError, InputError
from turbovaed.student import StudentConfig, check_latents


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    cls: str  # diffusers class name
    spatial: int  # pixels per latent, each side
    temporal: int  # frames per latent frame
    latent_channels: int  # of the released full-size model
    first_frame: bool  # True: 1+k latents <-> 1+temporal*k frames; False: temporal*k frames
    models: str  # which released models use it
    tiny: dict = field(default_factory=dict)  # small random config of the same class, for tests
    decode_timestep: float | None = None  # LTX >= 0.9.1 decoders are conditioned on a timestep
    # Largest batch the diffusers class handles; larger batches run in slices. HunyuanVideo 1.5 (0.42.1):
    # its causal attention builds a (B, N, N) mask that broadcasts against (B, 1, N, C) queries into
    # (B, B, N, C), so any batch > 1 fails to reshape (measured).
    max_batch: int | None = None

    def frames_for(self, latent_frames: int) -> int:
        full = latent_frames * self.temporal
        return full - (self.temporal - 1) if self.first_frame else full


def _spec(name: str, cls: str, spatial: int, temporal: int, channels: int, models: str, tiny: dict,
          first_frame: bool = True, **extra) -> TeacherSpec:
    return TeacherSpec(name, cls, spatial, temporal, channels, first_frame, models, tiny, **extra)


TEACHERS: dict[str, TeacherSpec] = {s.name: s for s in [
    _spec("reference", "AutoencoderKLWan", 8, 4, 16, "turbovaed's shipped reference teacher (small Wan VAE "
          "trained on real clips; the embedded default)",
          dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
               latents_mean=[0.0] * 16, latents_std=[1.0] * 16)),
    _spec("ltx", "AutoencoderKLLTXVideo", 32, 8, 128, "LTX-Video 0.9.x (Lightricks/LTX-Video, vae/)",
          dict(latent_channels=8, block_out_channels=(8, 8, 16, 16), decoder_block_out_channels=(8, 8, 16, 16),
               layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1))),
    _spec("ltx2", "AutoencoderKLLTX2Video", 32, 8, 128, "LTX-2 (Lightricks/LTX-2, vae/)",
          dict(latent_channels=8, block_out_channels=(8, 16, 32, 64), decoder_block_out_channels=(8, 16, 32),
               layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1))),
    _spec("hunyuan", "AutoencoderKLHunyuanVideo", 8, 4, 16, "HunyuanVideo (tencent/HunyuanVideo, vae/)",
          dict(latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)),
    _spec("hunyuan15", "AutoencoderKLHunyuanVideo15", 16, 4, 32, "HunyuanVideo 1.5",
          dict(latent_channels=8, block_out_channels=(8, 8, 16, 16, 16), layers_per_block=1), max_batch=1),
    _spec("cogvideox", "AutoencoderKLCogVideoX", 8, 4, 16, "CogVideoX 2B/5B and 1.5 (THUDM)",
          dict(latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)),
    _spec("wan21", "AutoencoderKLWan", 8, 4, 16, "Wan 2.1 T2V/I2V and Wan 2.2 A14B (Wan-AI)",
          dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
               latents_mean=[0.0] * 4, latents_std=[1.0] * 4)),
    _spec("wan22", "AutoencoderKLWan", 16, 4, 48, "Wan 2.2 TI2V-5B (Wan-AI, the 16x residual VAE)",
          dict(base_dim=8, decoder_base_dim=8, z_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
               temperal_downsample=[False, True, True], latents_mean=[0.0] * 8, latents_std=[1.0] * 8,
               is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16)),
    _spec("mochi", "AutoencoderKLMochi", 8, 6, 12, "Mochi 1 (genmo/mochi-1-preview)",
          dict(encoder_block_out_channels=(32, 32, 32, 32), decoder_block_out_channels=(32, 32, 32, 32),
               latent_channels=4, layers_per_block=(1, 1, 1, 1, 1),
               add_attention_block=(False,) * 5, latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)),
    _spec("cosmos", "AutoencoderKLCosmos", 8, 8, 16, "Cosmos-1.0 tokenizer CV8x8x8 (nvidia)",
          dict(latent_channels=4, encoder_block_out_channels=(8, 16, 16, 16), decode_block_out_channels=(16,) * 4,
               attention_resolutions=(), num_layers=1, latents_mean=None, latents_std=None)),
    _spec("magvit", "AutoencoderKLMagvit", 8, 4, 16, "EasyAnimate v5 (alibaba-pai)",
          dict(latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)),
    _spec("kvae", "AutoencoderKLKVAEVideo", 8, 4, 16, "KVAE 1.0 video (kandinskylab)",
          dict(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=4)),
    _spec("kandinsky6", "Kandinsky6SRVAE", 16, 4, 64, "Kandinsky 6 super-resolution video VAE",
          dict(latent_channels=4, encoder_block_out_channels=(8, 8, 16, 16, 16),
               decoder_block_out_channels=(8, 8, 16, 16, 16), layers_per_block=1)),
]}

# Video autoencoders diffusers has that we do not distil (yet), each with the measured reason.
UNSUPPORTED: dict[str, str] = {
    "AutoencoderKLMiniMaxH3": "decoder is a ViT with register tokens and token drop, and its frame rule "
                              "(5n+2 latents <-> 17n+5 frames) is not an integer temporal ratio",
    "AutoencoderVidTok": "in diffusers 0.42.1 encode(17 frames) gives 4 latents that decode to 13 frames: "
                         "not length-preserving, so reconstruction targets cannot be aligned",
    "AutoencoderKLAllegro": "encode/decode run only tiled with a fixed 24x256x256 pixel tile: smaller inputs "
                            "silently decode to zeros (measured, diffusers 0.42.1) and one full-size tile "
                            "takes over 300 s on a 2-core CPU, too slow to distil from here",
    "AutoencoderKLTemporalDecoder": "Stable Video Diffusion: no temporal compression, latents are a 2-D "
                                    "image batch; an image student (e.g. TAESD-like) fits it better",
    "LTX2VideoDiffusionDecoderModel": "a multi-step diffusion decoder, not a one-pass VAE decoder",
}

# Everything else in diffusers.models.autoencoders is not a video VAE.
NOT_VIDEO: dict[str, str] = {
    **{c: "image autoencoder" for c in [
        "AsymmetricAutoencoderKL", "AutoencoderDC", "AutoencoderKL", "AutoencoderKLFlux2",
        "AutoencoderKLHunyuanImage", "AutoencoderKLHunyuanImageRefiner", "AutoencoderKLKVAE",
        "AutoencoderKLQwenImage", "AutoencoderKLQwenImage21", "AutoencoderRAE", "AutoencoderTiny",
        "ConsistencyDecoderVAE", "VQModel"]},
    **{c: "audio autoencoder or vocoder" for c in [
        "AutoencoderKLKVAEAudio", "AutoencoderKLLTX2Audio", "AutoencoderKLMiniMaxH3Audio", "AutoencoderOobleck",
        "AutoencoderSAME", "Cosmos3AVAEAudioTokenizer", "LongCatAudioDiTVae", "MMAudioVAE", "MMAudioVocoder",
        "MiniMaxMusic3Vocoder"]},
    "RFD4ProteinaAutoencoder": "protein structure autoencoder",
}


def get_spec(name: str) -> TeacherSpec:
    try:
        return TEACHERS[name]
    except KeyError:
        raise InputError(f"unknown teacher {name!r}; expected one of {sorted(TEACHERS)}") from None


@dataclass
class LatentNorm:
    """normalized = (raw - mean) * scale / std, per channel (or per channel and latent frame, as Cosmos).

    Diffusion models produce normalized latents; teacher and student decoders take raw ones."""

    mean: list[float] | None
    std: list[float] | None
    scale: float = 1.0

    def _stats(self, z: torch.Tensor, start: int) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        def shaped(values: list[float] | None, default: float):
            if values is None:
                return default
            v = torch.tensor(values, dtype=z.dtype, device=z.device).view(1, z.shape[1], -1, 1, 1)
            return v[:, :, start:start + z.shape[2]] if v.shape[2] > 1 else v
        return shaped(self.mean, 0.0), shaped(self.std, 1.0)

    def normalize(self, raw: torch.Tensor, start: int = 0) -> torch.Tensor:
        """`start`: the first latent frame's index (per-frame statistics, streamed chunks)."""
        mean, std = self._stats(raw, start)
        return (raw - mean) * self.scale / std

    def to_raw(self, normalized: torch.Tensor, start: int = 0) -> torch.Tensor:
        mean, std = self._stats(normalized, start)
        return normalized * std / self.scale + mean

    def to_dict(self) -> dict:
        return {"formula": "raw = normalized * std / scale + mean (the decoder takes raw latents)",
                "mean": self.mean, "std": self.std, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> LatentNorm:
        return cls(d.get("mean"), d.get("std"), float(d.get("scale", 1.0)))


def _as_list(value) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.flatten().tolist()
    return [float(v) for v in value]


class Teacher:
    """A frozen diffusers video VAE with the spec that explains it."""

    def __init__(self, spec: TeacherSpec, vae: nn.Module) -> None:
        self.spec = spec
        self.vae = vae.eval().requires_grad_(False)
        if getattr(vae, "use_framewise_decoding", False):
            # diffusers' HunyuanVideo decodes long latents in overlapping temporal tiles (5 latent frames as 5 + 2,
            # blended): its block features then have 7 frames for 5 and its frames are blended approximations.
            # Distillation targets are the teacher's exact decode.
            vae.use_framewise_decoding = False
        cfg = vae.config
        self.latent_channels = int(next(cfg[k] for k in ("latent_channels", "z_dim", "z_channels") if k in cfg))
        buffers = dict(vae.named_buffers())
        mean = cfg.get("latents_mean", buffers.get("latents_mean"))
        std = cfg.get("latents_std", buffers.get("latents_std"))
        self.norm = LatentNorm(_as_list(mean), _as_list(std), float(cfg.get("scaling_factor", 1.0) or 1.0))
        self.feature_modules = _feature_modules(vae)
        self._out_shapes: dict[tuple, list | None] = {}  # decoder outputs per latent shape (None: cannot cut)

    def check_frames(self, frames: torch.Tensor) -> None:
        if not isinstance(frames, torch.Tensor) or not frames.is_floating_point():
            raise InputError(f"frames must be a floating-point tensor in [-1, 1], got "
                             f"{getattr(frames, 'dtype', type(frames).__name__)}")
        if frames.dim() != 5 or frames.shape[1] != 3:
            raise InputError(f"frames must be (B, 3, T, H, W) in [-1, 1], got shape {tuple(frames.shape)}")
        t, h, w = frames.shape[2:]
        s = self.spec
        k, rem = divmod(t - (1 if s.first_frame else 0), s.temporal)
        if rem or k < (0 if s.first_frame else 1):
            rule = f"1 + {s.temporal}k" if s.first_frame else f"{s.temporal}k"
            raise InputError(f"{t} frames break the {s.name} frame rule: expected {rule} frames")
        if h % s.spatial or w % s.spatial or min(h, w, frames.shape[0]) < 1:
            raise InputError(f"frame size {h}x{w} must be a positive multiple of {s.spatial} for {s.name}")
        if not torch.isfinite(frames).all():
            raise InputError("frames contain NaN or inf values")

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def to(self, device: str | torch.device) -> Teacher:
        self.vae.to(device)
        return self

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Frames (B, 3, T, H, W) in [-1, 1] -> raw latents (posterior mean unless sample=True)."""
        dist = self._posterior(frames)
        return (dist.sample() if sample else dist.mode()).float()

    @torch.no_grad()
    def encode_posterior(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(posterior mean, log-variance) in fp32; log-variance None for deterministic encoders (Cosmos)."""
        dist = self._posterior(frames)
        logvar = getattr(dist, "logvar", None)
        return dist.mode().float(), None if logvar is None else logvar.float()

    def _posterior(self, frames: torch.Tensor):
        self.check_frames(frames)
        return self._sliced(lambda x: self.vae.encode(x).latent_dist, frames.to(self.device, self._dtype))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode_with_features(latents, features=False)[0]

    def decode_with_features(self, latents: torch.Tensor, features: bool = True, blocks: list[int] | None = None,
                             truncate: bool = False, check: bool = True) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Raw latents -> (frames (B, 3, T, H, W), outputs of the hooked decoder blocks in run order).

        `blocks` picks hooked blocks by index (0 = mid block, 1 = first up block, ...; default all).
        `truncate` stops the decoder right after the last picked block and returns frames None: feature
        alignment then costs only the low-resolution part of the teacher (its frames are cached). `check=False`
        skips validating the latents (a host read of their finiteness): the trainer's own cached latents."""
        if check:
            check_latents(latents, StudentConfig(latent_channels=self.latent_channels))
        picked = list(range(len(self.feature_modules))) if blocks is None else sorted(blocks)
        if any(not 0 <= i < len(self.feature_modules) for i in picked):
            raise InputError(f"feature blocks {blocks} out of range: {self.spec.name} has "
                             f"{len(self.feature_modules)} (0 = mid block, then the up blocks)")
        modules = [self.feature_modules[i] for i in picked] if features else []
        latents = latents.to(self.device, self._dtype)
        if truncate and modules:
            return None, self._sliced(lambda z: self._truncated_features(z, modules), latents)
        return self._sliced(lambda z: self._run(z, modules), latents)

    def _sliced(self, fn, x: torch.Tensor):
        """fn(x), run in batch slices of spec.max_batch where the diffusers class needs it; results
        (tensors, posteriors, tuples and lists of them) are joined along the batch."""
        n = self.spec.max_batch
        if not n or x.shape[0] <= n:
            return fn(x)
        return _join_batches([fn(part) for part in x.split(n)])

    def _run(self, latents: torch.Tensor, modules: list[nn.Module], stop: nn.Module | None = None
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        captured: list[tuple[int, torch.Tensor]] = []

        def hook(index: int, module: nn.Module):
            def capture(_m, _i, out):
                captured.append((index, out[0] if isinstance(out, tuple) else out))
                if module is stop:
                    raise _StopDecode
            return capture
        hooks = [m.register_forward_hook(hook(i, m)) for i, m in enumerate(modules)]
        kwargs = {}
        if "temb" in inspect.signature(self.vae.decode).parameters and self.vae.config.get("timestep_conditioning"):
            kwargs["temb"] = torch.full((latents.shape[0],), self.spec.decode_timestep or 0.0, device=latents.device,
                                        dtype=latents.dtype)
        try:
            with torch.no_grad():
                out = self.vae.decode(latents, **kwargs)
        finally:
            for h in hooks:
                h.remove()
        return getattr(out, "sample", out).float(), _join_chunks(captured, len(hooks))

    def _truncated_features(self, latents: torch.Tensor, modules: list[nn.Module]) -> list[torch.Tensor]:
        """Features without the expensive high-resolution tail: the last picked block raises, and each
        decoder call answers with a zero placeholder of the shape it would have returned (recorded on one
        full decode per latent shape), so VAEs that decode chunk by chunk keep going. That is exact where
        the chunks' causal state lives in the module or in caches the early layers update in place (Wan,
        Hunyuan tiles, Mochi, ...); a decoder that returns its state (CogVideoX's conv_cache) over several
        chunks cannot be cut, and decodes in full."""
        decoder = self.vae.decoder
        key = (tuple(latents.shape), latents.dtype)
        if key not in self._out_shapes:
            calls: list[tuple[torch.Size, int]] = []

            def record(_m, _i, out):
                calls.append((out[0].shape, len(out)) if isinstance(out, tuple) else (out.shape, 0))
            handle = decoder.register_forward_hook(record)
            try:
                self._run(latents, [])
            finally:
                handle.remove()
            self._out_shapes[key] = None if len(calls) > 1 and any(n for _, n in calls) else calls
        if self._out_shapes[key] is None:
            return self._run(latents, modules)[1]
        calls = iter(self._out_shapes[key])
        inner = decoder.forward

        def forward(*args, **kwargs):
            shape, items = next(calls)
            try:
                return inner(*args, **kwargs)
            except _StopDecode:
                placeholder = latents.new_zeros(shape)  # real memory: some VAEs blend tiles into it in place
                return (placeholder, *[None] * (items - 1)) if items else placeholder
        decoder.forward = forward
        try:
            return self._run(latents, modules, stop=modules[-1])[1]
        finally:
            del decoder.forward

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype


def _join_batches(parts: list):
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, (tuple, list)):
        return type(first)(_join_batches(list(p)) for p in zip(*parts))
    if first is None:
        return None
    joined = copy.copy(first)  # a diffusers posterior: join its tensors
    for k, v in vars(first).items():
        if isinstance(v, torch.Tensor):
            setattr(joined, k, torch.cat([getattr(p, k) for p in parts]))
    return joined


class _StopDecode(Exception):
    """Raised by the last aligned block's hook to end a truncated decode."""


def _feature_modules(vae: nn.Module) -> list[nn.Module]:
    """The decoder's mid block and each up block, in the order they run: where the student's stages
    align (Turbo-VAED aligns the first two).

    LDM-style decoders (KVAE, Kandinsky 6) keep blocks in plain containers that are never called
    themselves; there the last called child stands in for the container."""
    dec = vae.decoder

    def called(m: nn.Module) -> nn.Module:
        if type(m) is not nn.Module:
            return m
        blocks = getattr(m, "block", None)
        return blocks[-1] if isinstance(blocks, nn.ModuleList) else list(m.children())[-1]

    mids = [getattr(dec, n) for n in ("mid_block", "mid", "block_in") if hasattr(dec, n)]
    if isinstance(getattr(dec, "up_blocks", None), nn.ModuleList):
        ups = list(dec.up_blocks)
    else:  # LDM naming: `up` is listed from full resolution down and run in reverse
        ups = list(reversed(getattr(dec, "up", [])))
    return [called(m) for m in mids[:1] + ups]


def _join_chunks(captured: list[tuple[int, torch.Tensor]], count: int) -> list[torch.Tensor]:
    """Causal decoders (Wan, EasyAnimate) run block by block per latent chunk: join chunks in time."""
    parts = [[t.float() for j, t in captured if j == i] for i in range(count)]
    return [torch.cat(p, dim=2) for p in parts if p]


def _diffusers_class(spec: TeacherSpec):
    """The diffusers class, imported without the optional-kernel noise torchao prints on CPU builds."""
    import logging

    import diffusers
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    quiet = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    old = [q.level for q in quiet]
    dlogging.set_verbosity_error()
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        return getattr(diffusers, spec.cls)
    finally:
        dlogging.set_verbosity(level)
        for q, lvl in zip(quiet, old):
            q.setLevel(lvl)


def build_tiny(name: str, seed: int = 0) -> Teacher:
    """A small random teacher of the real class (tests and CPU smoke runs)."""
    spec = get_spec(name)
    torch.manual_seed(seed)
    return Teacher(spec, _diffusers_class(spec)(**spec.tiny))


def load(name: str, path: str | Path | None = None, tiny: bool = False, dtype: torch.dtype = torch.float32) -> Teacher:
    """Load a teacher from a local diffusers folder (the VAE folder, or a pipeline folder with vae/)."""
    spec = get_spec(name)
    if tiny:
        teacher = build_tiny(name)
        if dtype != torch.float32:
            teacher.vae.to(dtype)
        return teacher
    if path is None and name == "reference":
        from turbovaed.reference import ASSET_DIR

        if not (ASSET_DIR / "config.json").is_file():
            raise CheckpointError(f"the reference teacher is missing from {ASSET_DIR}; "
                                  "train it with benchmarks/train_reference_teacher.py")
        path = ASSET_DIR
    if path is None:
        raise InputError(f"teacher {name!r} needs a local weights folder (from_pretrained(dir)); "
                         "nothing is downloaded")
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"teacher folder {path} does not exist (expected a diffusers {spec.cls} folder "
                              "with config.json and safetensors weights, or a pipeline folder with vae/)")
    subfolder = "vae" if (path / "vae" / "config.json").is_file() and not (path / "config.json").is_file() else None
    try:
        vae = _diffusers_class(spec).from_pretrained(path, subfolder=subfolder, torch_dtype=dtype,
                                                     use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot load {spec.cls} from {path}: {err}") from err
    return Teacher(spec, vae)

