"""Long videos with flat memory: chunked streaming decode (the student's causal `step`), optional spatial
tiling with overlap blending for frames larger than memory allows (1080p and up), and the loop behind
`turbovaed decode --stream` that writes frames to the mp4 as they are produced."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from collections.abc import Callable
from pathlib import Path

import torch

from turbovaed.data import VideoWriter
from turbovaed.io import InputError, LatentFile
from turbovaed.student import StreamState, StudentConfig, StudentDecoder, check_latents
from turbovaed.teachers import LatentNorm


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` latent pixels covering `size`, neighbours sharing >= `overlap`."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def _ramp(length: int, before: int, after: int) -> torch.Tensor:
    """Blend weights along one axis of a tile: linear ramps over the pixels shared with each neighbour,
    complementary to the neighbour's ramp (so overlapping weights sum to 1 where exactly two tiles meet)."""
    w = torch.ones(length)
    if before:
        w[:before] = (torch.arange(before) + 0.5) / before
    if after:
        w[length - after:] = torch.minimum(w[length - after:], (after - torch.arange(after) - 0.5) / after)
    return w


def decode_tiled(run: Callable[[torch.Tensor, int], torch.Tensor], z: torch.Tensor, tile: int, overlap: int,
                 ratio: int) -> torch.Tensor:
    """Decode latents (B, C, T, h, w) tile by tile: `run(z_tile, tile_index)` decodes one tile (the index
    lets a streaming caller keep one state per tile); outputs are blended with linear ramps."""
    if tile < 1 or not 0 <= overlap < tile:
        raise InputError(f"tiles need tile >= 1 and 0 <= overlap < tile (got tile={tile}, overlap={overlap})")
    h, w = z.shape[3:]
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = weight = None
    for i, y in enumerate(rows):
        for j, x in enumerate(cols):
            th, tw = min(tile, h), min(tile, w)
            frames = run(z[:, :, :, y:y + th, x:x + tw], i * len(cols) + j)
            if out is None:
                out = frames.new_zeros(*frames.shape[:3], h * ratio, w * ratio)
                weight = frames.new_zeros(1, 1, 1, h * ratio, w * ratio)
            wy = _ramp(th * ratio, (rows[i - 1] + th - y) * ratio if i else 0,
                       (y + th - rows[i + 1]) * ratio if i + 1 < len(rows) else 0)
            wx = _ramp(tw * ratio, (cols[j - 1] + tw - x) * ratio if j else 0,
                       (x + tw - cols[j + 1]) * ratio if j + 1 < len(cols) else 0)
            mask = (wy[:, None] * wx[None, :]).to(frames.dtype)
            ys, xs = slice(y * ratio, (y + th) * ratio), slice(x * ratio, (x + tw) * ratio)
            out[..., ys, xs] += frames * mask
            weight[..., ys, xs] += mask
    return out / weight


def return_freed_memory(threshold: int = 4 << 20) -> bool:
    """Make glibc serve allocations >= `threshold` bytes with mmap and give them back when freed.

    glibc raises its mmap threshold (up to 32 MB) after each large free, after which a stream's
    tens-of-MB activations come from the heap, fragment it, and stay in RSS: at 720p about 0.1-0.2 GB
    of the peak. A fixed threshold turns that off. No-op (False) without glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc and libc.mallopt(-3, threshold))  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class Streamer:
    """Eager streaming decode, one StreamState per spatial tile (one tile when `tile` is 0).

    Runs channels-last (NDHWC): PyTorch's CPU Conv3d then skips its layout reorders, which at 720p saves
    about 80 MB of peak memory and ~20% of the time. This converts `model`'s weights in place (same values)."""

    def __init__(self, model: StudentDecoder, tile: int = 0, overlap: int = 2) -> None:
        self.model, self.tile, self.overlap = model.eval().to(memory_format=torch.channels_last_3d), tile, overlap
        self.states: dict[int, StreamState] = {}
        return_freed_memory()

    def _step(self, z: torch.Tensor, k: int) -> torch.Tensor:
        frames, self.states[k] = self.model.step(z.contiguous(memory_format=torch.channels_last_3d),
                                                 self.states.get(k))
        return frames

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Frames for the next latent chunk (B, C, n, h, w)."""
        if not self.tile:
            return self._step(z, 0)
        return decode_tiled(self._step, z, self.tile, self.overlap, self.model.config.spatial_ratio)

    def close(self) -> None:
        for state in self.states.values():
            state.close()


class ArtifactStreamer:
    """Streams through an exported step graph (an artifact whose manifest has `stream`) with its runtime
    here (ExecuTorch, ONNX Runtime or LiteRT), following the manifest's calling protocol."""

    def __init__(self, folder: Path) -> None:
        from turbovaed.export.core import ExportRecipe, backend_module
        from turbovaed.recipes import build

        try:
            manifest = json.loads((Path(folder) / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"{folder} is not an exported artifact (no readable manifest.json): {err}") from err
        if "stream" not in manifest:
            raise InputError(f"{folder} holds a whole-clip graph; export a recipe with shape.stream_chunk for streaming")
        self.run = backend_module(manifest["backend"]).runner(Path(folder) / manifest["artifact"],
                                                              options=build(ExportRecipe, manifest["recipe"]).options)
        if self.run is None:
            raise InputError(f"{manifest['backend']} artifacts do not run on this machine")
        self.shape = manifest["inputs"][0]["shape"]
        self.chunk = manifest["stream"]["chunk_latent_frames"]
        self.drop = manifest["stream"]["first_chunk_drop_frames"]
        self.states = [torch.zeros(i["shape"]) for i in manifest["inputs"][2:]]
        self.first = True
        # a graph exported with input_latents = "normalized" folds de-normalisation in: feed it normalised chunks
        self.norm = LatentNorm.from_dict(manifest["latent_normalisation"]) \
            if manifest.get("input_latents", "raw") == "normalized" else None
        self.norm_dict = manifest["latent_normalisation"]
        self.position = 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if list(z.shape) != self.shape:
            raise InputError(f"this artifact takes latent chunks of shape {self.shape}, got {list(z.shape)} "
                             "(export it for this size and chunk)")
        check_latents(z, StudentConfig(latent_channels=self.shape[1]))
        if self.norm is not None:
            z = self.norm.normalize(z, start=self.position)
        self.position += z.shape[2]
        frames, *self.states = self.run(z.float().contiguous(), torch.ones(1) if self.first else torch.zeros(1),
                                        *self.states)
        if self.first:
            frames, self.first = frames[:, :, self.drop:], False
        return frames

    def close(self) -> None:
        self.states = []


def stream_to_video(streamer: Streamer | ArtifactStreamer, source: LatentFile, out: Path, chunk: int, fps: float = 24.0,
                    progress: Callable[[int, int], None] | None = None,
                    to_raw: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> int:
    """Decode a latents file chunk by chunk into an mp4; only one chunk of latents and frames is ever in
    memory. `to_raw(chunk, first_frame_index)` de-normalises generator latents. Returns the number of
    frames written; an error leaves no mp4 behind."""
    if chunk < 1:
        raise InputError(f"--chunk must be >= 1 latent frame, got {chunk}")
    with VideoWriter(out, fps) as writer:
        for start in range(0, source.frames, chunk):
            z = source.read(start, start + chunk)
            writer.write(streamer(to_raw(z, start) if to_raw else z)[0])
            if progress:
                progress(min(start + chunk, source.frames), source.frames)
    streamer.close()
    return writer.frames
