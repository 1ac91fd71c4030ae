"""A distilled student as `pipe.vae` of a diffusers video pipeline (WanPipeline, LTXPipeline, HunyuanVideoPipeline,
...): the pipeline denoises as usual and decodes through the student.

Pipelines read their VAE's config and attributes, then call `vae.decode(latents, return_dict=False)[0]` on raw
latents (they undo the normalisation themselves) and expect (B, 3, T, H, W) in [-1, 1]:
- Wan: `config.latents_mean / latents_std / z_dim` and `config.scale_factor_temporal / scale_factor_spatial`;
- LTX: `latents_mean / latents_std` as tensors, `config.scaling_factor`, `config.timestep_conditioning`,
  `spatial_compression_ratio / temporal_compression_ratio`;
- Hunyuan: `config.scaling_factor`, `spatial_compression_ratio / temporal_compression_ratio`.
The student carries its teacher's statistics (latent_norm.json), so one object serves all of them.

For `output_type="latent"` results, `decode_latents` decodes what a pipeline returned (the diffusion model's
latents; LTX packs them to (B, S, D), unpacked by the pipeline's own code) with any StudentVAE, whole or streamed;
`preview` is a `callback_on_step_end` that shows the denoising as it goes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.utils.accelerate_utils import apply_forward_hook

from turbovaed.io import InputError, TurboVAEDError
from turbovaed.stream import decode_tiled
from turbovaed.student import StudentDecoder
from turbovaed.teachers import LatentNorm


class StudentVAE(ModelMixin, ConfigMixin):
    """Decode-only VAE for diffusers pipelines: a turbovaed student (`from_student`) or a decoder file people
    already use (`from_decoder_file`: TAEHV / TAEW, LightTAE, Turbo-VAED, Flash-VAED, all of which take the raw
    latents a pipeline hands to `vae.decode`)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, z_dim: int, scale_factor_spatial: int, scale_factor_temporal: int,
                 latents_mean: list[float] | None = None, latents_std: list[float] | None = None,
                 scaling_factor: float = 1.0, timestep_conditioning: bool = False, source: str = "") -> None:
        super().__init__()
        self.decoder: torch.nn.Module | None = None  # set by from_student / from_decoder_file
        self.loaded = None  # the decoder file (turbovaed.decoders.LoadedDecoder) behind `decoder`, if any
        # LTX's pipeline reads the statistics as tensors (the properties below); Wan's reads the config lists
        self.register_buffer("mean_tensor", torch.tensor(latents_mean or [0.0] * z_dim), persistent=False)
        self.register_buffer("std_tensor", torch.tensor(latents_std or [1.0] * z_dim), persistent=False)
        self.spatial_compression_ratio, self.temporal_compression_ratio = scale_factor_spatial, scale_factor_temporal
        self.tile = 0

    @property
    def latents_mean(self) -> torch.Tensor:
        return self.mean_tensor

    @property
    def latents_std(self) -> torch.Tensor:
        return self.std_tensor

    @classmethod
    def _wrap(cls, decoder: torch.nn.Module, channels: int, spatial: int, temporal: int, norm: LatentNorm,
              source: str) -> StudentVAE:
        if norm.mean is not None and len(norm.mean) != channels:
            raise InputError(f"{source}: per-frame latent statistics (Cosmos) have no diffusers VAE equivalent")
        # explicit zeros and ones where a convention has no statistics: Wan's pipeline builds tensors from the lists
        vae = cls(channels, spatial, temporal, norm.mean or [0.0] * channels, norm.std or [1.0] * channels,
                  norm.scale, source=source)
        vae.decoder = decoder.float().eval()
        return vae.eval()

    def streamer(self):
        """One latent frame per call, the decoder's causal memory carried: a student's or a causal decoder file's."""
        from turbovaed import decoders
        from turbovaed.stream import Streamer

        if isinstance(self.decoder, StudentDecoder):
            return Streamer(self.decoder)
        return decoders.DecoderStreamer(self.loaded)

    @classmethod
    def from_student(cls, folder: str | Path, like=None) -> StudentVAE:
        """A student checkpoint folder as a pipeline VAE, with its teacher's statistics (latent_norm.json), or those
        of `like` (the pipeline's own VAE)."""
        folder = Path(folder)
        student = StudentDecoder.from_pretrained(folder)
        if like is not None:
            norm = pipeline_norm(like, student.config.latent_channels)
        elif (folder / "latent_norm.json").is_file():
            norm = LatentNorm.from_dict(json.loads((folder / "latent_norm.json").read_text()))
        else:
            raise InputError(f"{folder} has no latent_norm.json (distilled before students kept their teacher's "
                             "statistics): pass like=pipe.vae, so the pipeline's own statistics are used")
        c = student.config
        return cls._wrap(student, c.latent_channels, c.spatial_ratio, c.temporal_ratio, norm, str(folder))

    @classmethod
    def from_decoder_file(cls, path: str | Path, like=None, variant: str | None = None) -> StudentVAE:
        """A decoder file (turbovaed.decoders.load) as a pipeline VAE, in its own latent convention: TAEHV / TAEW
        decode the diffusion model's latents as they are (statistics zeros and ones, scaling 1: the pipeline's
        de-normalisation does nothing); Flash-VAED ships its statistics; LightTAE and Turbo-VAED take raw latents,
        de-normalised with those of `like` (the pipeline's own VAE, required for them)."""
        from turbovaed import decoders

        loaded = decoders.load(path, variant)
        v = loaded.variant
        if loaded.takes_normalized:
            norm = LatentNorm(None, None, 1.0)
        elif loaded.norm is not None:
            norm = loaded.norm
        elif like is not None:
            norm = pipeline_norm(like, v.latent_channels)
        else:
            raise InputError(f"{v.name} takes {v.convention}: pass like=pipe.vae, so the pipeline de-normalises "
                             "with its own VAE's statistics before decoding")
        vae = cls._wrap(loaded.canonical(), v.latent_channels, v.spatial_ratio, v.t_upscale, norm, f"{path} ({v.name})")
        vae.loaded = loaded
        return vae

    def enable_tiling(self, tile: int = 48) -> None:
        """Decode in spatial tiles of `tile` latent pixels, blended (what pipelines call for large videos)."""
        self.tile = tile

    def disable_tiling(self) -> None:
        self.tile = 0

    def enable_slicing(self) -> None:  # the decoder takes a batch at once; nothing to slice
        pass

    def disable_slicing(self) -> None:
        pass

    def encode(self, *args, **kwargs):
        raise TurboVAEDError("StudentVAE decodes only: encode with the teacher VAE (image-to-video pipelines need it)")

    @apply_forward_hook  # enable_model_cpu_offload's hooks move the decoder to the device for decode
    @torch.no_grad()
    def decode(self, z: torch.Tensor, temb: torch.Tensor | None = None, return_dict: bool = True):
        """Raw latents (B, C, T, h, w) -> frames (B, 3, T', H, W) in [-1, 1]. `temb` (LTX's decode timestep) is
        accepted and unused: these decoders are not timestep-conditioned (config.timestep_conditioning is False)."""
        z = z.to(next(self.decoder.parameters()).dtype)
        frames = decode_tiled(lambda zt, _: self.decoder(zt), z, self.tile, 2, self.spatial_compression_ratio) \
            if self.tile else self.decoder(z)
        frames = frames.clamp(-1, 1)
        return DecoderOutput(sample=frames) if return_dict else (frames,)


def pipeline_norm(vae, channels: int) -> LatentNorm:
    """The normalisation a pipeline undoes with its VAE: Wan keeps the statistics in the config, LTX as tensors on
    the VAE, Hunyuan has none (a scaling factor)."""
    mean, std = (vae.config.get(k) if k in vae.config else getattr(vae, k, None) for k in ("latents_mean", "latents_std"))
    as_list = lambda v: None if v is None else torch.as_tensor(v).flatten().tolist()[:channels]  # noqa: E731
    return LatentNorm(as_list(mean), as_list(std), float(vae.config.get("scaling_factor", 1.0) or 1.0))


def latent_grid(pipe, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(latent frames, height, width) of a pipeline's latents for a video of this size."""
    vae = pipe.vae
    t = getattr(vae, "temporal_compression_ratio", None) or vae.config.scale_factor_temporal
    s = getattr(vae, "spatial_compression_ratio", None) or vae.config.scale_factor_spatial
    return (num_frames - 1) // t + 1, height // s, width // s


def unpack(pipe, latents: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
    """What a pipeline returned with output_type="latent" (or hands a step callback) as (B, C, T, h, w), still
    normalised: LTX's packed (B, S, D) through the pipeline's own `_unpack_latents` and its transformer's patches."""
    if latents.dim() == 3:
        if not hasattr(pipe, "_unpack_latents"):
            raise InputError(f"{type(pipe).__name__} returned packed (B, S, D) latents and has no _unpack_latents")
        latents = pipe._unpack_latents(latents, *latent_grid(pipe, num_frames, height, width),
                                       pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)
    if latents.dim() != 5:
        raise InputError(f"expected (B, C, T, h, w) or packed (B, S, D) latents, got shape {tuple(latents.shape)}")
    return latents


def raw_latents(pipe, latents: torch.Tensor, num_frames: int, height: int, width: int, vae=None) -> torch.Tensor:
    """What a pipeline returned with output_type="latent" -> what a VAE's decode takes (pipe.vae's unless `vae` is
    given): unpacked (LTX), then de-normalised with that VAE's statistics, as the pipeline itself does."""
    z = unpack(pipe, latents, num_frames, height, width)
    return pipeline_norm(vae if vae is not None else pipe.vae, z.shape[1]).to_raw(z.float())


def decode_latents(vae: StudentVAE, pipe, latents: torch.Tensor, num_frames: int, height: int, width: int,
                   stream: bool = False) -> torch.Tensor:
    """Decode what `pipe` returned with output_type="latent" (or hands a step callback) with `vae`, which need not
    be pipe.vae: frames (B, 3, T', H, W) in [-1, 1] on the latents' device. The latents are the diffusion model's,
    whatever the VAE; they are de-normalised with `vae`'s statistics, exactly as the pipeline would before calling
    `vae.decode`. `stream=True` decodes one latent frame at a time (causal decoders: memory flat in time)."""
    z = raw_latents(pipe, latents, num_frames, height, width, vae)
    if not stream:
        return vae.decode(z).sample
    streamer = vae.streamer()
    with torch.no_grad():
        frames = torch.cat([streamer(z[:, :, i:i + 1]) for i in range(z.shape[2])], 2)
    streamer.close()
    return frames.clamp(-1, 1)


def preview(vae: StudentVAE, show, num_frames: int, height: int, width: int, every: int = 5):
    """A `callback_on_step_end` for live previews: every `every` steps (and at the last), the current latents
    decoded by `vae` (a tiny decoder: milliseconds) go to `show(step, frames)`, frames (B, 3, T', H, W) in [-1, 1].
    The pipeline's latents are left as they are."""
    def callback(pipe, step: int, timestep, kwargs: dict) -> dict:
        if (step + 1) % every == 0 or step + 1 == getattr(pipe, "num_timesteps", step + 1):
            show(step, decode_latents(vae, pipe, kwargs["latents"], num_frames, height, width))
        return {}
    return callback
