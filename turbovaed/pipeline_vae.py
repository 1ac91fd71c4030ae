"""A distilled student as `pipe.vae` of a diffusers video pipeline (WanPipeline, LTXPipeline, HunyuanVideoPipeline,
...): the pipeline denoises as usual and decodes through the student.

Pipelines read their VAE's config and attributes, then call `vae.decode(latents, return_dict=False)[0]` on raw
latents (they undo the normalisation themselves) and expect (B, 3, T, H, W) in [-1, 1]:
- Wan: `config.latents_mean / latents_std / z_dim` and `config.scale_factor_temporal / scale_factor_spatial`;
- LTX: `latents_mean / latents_std` as tensors, `config.scaling_factor`, `config.timestep_conditioning`,
  `spatial_compression_ratio / temporal_compression_ratio`;
- Hunyuan: `config.scaling_factor`, `spatial_compression_ratio / temporal_compression_ratio`.
The student carries its teacher's statistics (latent_norm.json), so one object serves all of them.

For `output_type="latent"` results, `raw_latents` turns what a pipeline returned (normalised; LTX packs them to
(B, S, D)) into what a decoder takes, through the pipeline's own unpacking."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput

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
        # LTX's pipeline reads these as tensors; Wan's reads the config lists
        self.register_buffer("latents_mean", torch.tensor(latents_mean or [0.0] * z_dim), persistent=False)
        self.register_buffer("latents_std", torch.tensor(latents_std or [1.0] * z_dim), persistent=False)
        self.spatial_compression_ratio, self.temporal_compression_ratio = scale_factor_spatial, scale_factor_temporal
        self.tile = 0

    @classmethod
    def _wrap(cls, decoder: torch.nn.Module, channels: int, spatial: int, temporal: int, norm: LatentNorm,
              source: str) -> StudentVAE:
        if norm.mean is not None and len(norm.mean) != channels:
            raise InputError(f"{source}: per-frame latent statistics (Cosmos) have no diffusers VAE equivalent")
        vae = cls(channels, spatial, temporal, norm.mean, norm.std, norm.scale, source=source)
        vae.decoder = decoder.float().eval()
        return vae.eval()

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
    def from_decoder_file(cls, path: str | Path, like, variant: str | None = None) -> StudentVAE:
        """A decoder file (turbovaed.decoders.load) as a pipeline VAE; `like` is the pipeline's own VAE, whose
        statistics the pipeline keeps using to undo its normalisation."""
        from turbovaed import decoders

        loaded = decoders.load(path, variant)
        v = loaded.variant
        return cls._wrap(loaded.canonical(), v.latent_channels, v.spatial_ratio,
                         getattr(like, "temporal_compression_ratio", None) or like.config.scale_factor_temporal,
                         pipeline_norm(like, v.latent_channels), f"{path} ({v.name})")

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


def raw_latents(pipe, latents: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
    """What `pipe(..., output_type="latent")` returned -> raw latents (B, C, T, h, w) for any decoder: LTX's packed
    (B, S, D) unpacked by the pipeline's own `_unpack_latents` with its transformer's patch sizes, then the
    normalisation undone with the pipeline VAE's statistics (as the pipeline itself does before decoding)."""
    vae = pipe.vae
    t = (num_frames - 1) // vae.temporal_compression_ratio + 1 if hasattr(vae, "temporal_compression_ratio") \
        else (num_frames - 1) // vae.config.scale_factor_temporal + 1
    s = getattr(vae, "spatial_compression_ratio", None) or vae.config.scale_factor_spatial
    if latents.dim() == 3:
        if not hasattr(pipe, "_unpack_latents"):
            raise InputError(f"{type(pipe).__name__} returned packed (B, S, D) latents and has no _unpack_latents")
        latents = pipe._unpack_latents(latents, t, height // s, width // s, pipe.transformer_spatial_patch_size,
                                       pipe.transformer_temporal_patch_size)
    if latents.dim() != 5:
        raise InputError(f"expected (B, C, T, h, w) or packed (B, S, D) latents, got shape {tuple(latents.shape)}")
    return pipeline_norm(vae, latents.shape[1]).to_raw(latents.float())
