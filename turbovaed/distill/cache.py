"""The teacher-latent cache of a distillation run: the teacher encodes each training clip once (posterior
mean and log-variance, its decode, the frames as uint8), written in per-rank shards that resume, carry the
identity of the data, settings and teacher they were made for, and are read memory-mapped."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from turbovaed.data import ClipSampler, _quantize, to_uint8
from turbovaed.io import CheckpointError, atomic_file, listing


class _Clips(torch.utils.data.Dataset):
    """Clips by global index as uint8 (decoded in DataLoader workers while the teacher encodes)."""

    def __init__(self, sampler: ClipSampler, indices: list[int]) -> None:
        self.sampler, self.indices = sampler, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        clip, source = self.sampler.clip(self.indices[k])
        return self.indices[k], torch.from_numpy(to_uint8(clip)).permute(3, 0, 1, 2), json.dumps(source)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def _columns(rows: list[tuple]) -> list[tuple]:
    """Collate (index, frames, source) rows into columns (module level: picklable for spawn/forkserver)."""
    return list(zip(*rows))


CACHE_VERSION = 3
VIDEOS_FILE = "videos.json"  # path -> [size, mtime_ns] of the videos a generation was made from


class LatentCache:
    """Teacher latents (posterior mean and log-variance), their source frames and the teacher's decode,
    in safetensors shards written once and resumable.

    Each rank fills its own part in parallel (clip i belongs to rank i % world), writing DIR/part-RRR.json
    and its shards; nobody waits on anybody. A shard is written to a temp file and renamed, so an
    interrupted run loses at most the shard in progress. Items are read by memory-mapped slices: one
    item costs its own bytes, never a whole shard. Shards hold `latents` and `logvar` (N, C, T, h, w)
    float32 (logvar absent for teachers without a posterior), `frames` and `teacher` (N, 3, T', H, W)
    uint8 (the teacher's decode quantised like a video frame: <= 1/255 of full range)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        if (self.dir / "index.json").is_file():
            raise CheckpointError(f"latent cache {self.dir} was written by an older turbovaed; remove it")
        self.parts: dict[int, dict] = {}
        for p in sorted(self.dir.glob("part-*.json")):
            try:
                part = json.loads(p.read_text())
                if part.get("version") != CACHE_VERSION:
                    raise CheckpointError(f"latent cache {self.dir} was written by another turbovaed version "
                                          f"({part.get('version')}, now {CACHE_VERSION}): pass --rebuild-cache or remove it")
                if not all(isinstance(s["file"], str) and isinstance(s["items"], list) for s in part["shards"]):
                    raise ValueError("malformed shard list")
                self.parts[int(p.stem.split("-")[1])] = part
            except (ValueError, KeyError, TypeError) as err:
                raise CheckpointError(f"latent cache part {p} is corrupt ({err}); remove {self.dir}") from err
        self._where = {i: (s["file"], k) for part in self.parts.values() for s in part["shards"]
                       for k, i in enumerate(s["items"])}
        self._handles: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __getstate__(self) -> dict:  # DataLoader workers open their own memory maps
        return {**self.__dict__, "_handles": {}}

    def items(self, rank: int = 0, world: int = 1, count: int | None = None, first: int = 0) -> list[int]:
        """Global indices this rank trains on (its own part: i % world == rank) in [first, first + count), sorted."""
        return sorted(i for i in self._where if i % world == rank and i >= first and (count is None or i < first + count))

    def replacements(self) -> tuple[int, list[str]]:
        """(clips whose video failed and was replaced, the failing videos) over every part written."""
        bad = sorted({v for part in self.parts.values() for v in part.get("bad_videos", [])})
        return sum(part.get("replaced", 0) for part in self.parts.values()), bad

    def check_identity(self, identity: dict, videos: dict[str, list[int]] | None = None) -> None:
        """Refuse a cache made for other data, settings or another teacher: one clear error naming what differs,
        and, where `videos` (path -> [size, mtime_ns]) is given, the video files that changed since."""
        for r, part in self.parts.items():
            made = part.get("identity", {})
            if made != identity:
                diff = sorted(k for k in {*made, *identity} if made.get(k) != identity.get(k))
                raise CheckpointError(
                    f"latent cache {self.dir} (part {r}) was made for other data or another teacher "
                    f"(differs in: {', '.join(diff)}; cached {({k: made.get(k) for k in diff})}, now "
                    f"{({k: identity.get(k) for k in diff})}){self._changed_videos(videos)}: pass --rebuild-cache "
                    "to rebuild it, or use another folder")

    def record_videos(self, videos: dict[str, list[int]]) -> None:
        """Keep the videos' sizes and times beside the cache (once per generation), to name changed files later."""
        if not (self.dir / VIDEOS_FILE).is_file():
            self.dir.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.dir / VIDEOS_FILE) as tmp:
                tmp.write_text(json.dumps(videos))

    def _changed_videos(self, videos: dict[str, list[int]] | None) -> str:
        if videos is None or not (self.dir / VIDEOS_FILE).is_file():
            return ""
        try:
            cached = json.loads((self.dir / VIDEOS_FILE).read_text())
        except ValueError:
            return ""
        changed = sorted(p for p in videos if p in cached and cached[p] != videos[p])
        added, gone = sorted(set(videos) - set(cached)), sorted(set(cached) - set(videos))
        groups = (("changed (size or time)", changed), ("new", added), ("gone", gone))
        said = [f"{label} since the cache was made: {listing(names)}" for label, names in groups if names]
        return "; videos " + "; ".join(said) if said else ""

    def fill(self, teacher, sampler: ClipSampler, count: int, rank: int = 0, world: int = 1, shard_size: int = 32,
             batch: int = 4, workers: int = 0, progress=None, first: int = 0, identity: dict | None = None) -> None:
        """Encode this rank's clips first <= i < first + count (i % world == rank) that no earlier run wrote.
        Clips are decoded in `workers` DataLoader processes; the teacher encodes and decodes `batch` at a
        time on its device, in its own dtype. `identity` (data settings, video index digest, teacher
        weights and dtype) is stored and must match on a later fill."""
        identity = {"teacher": teacher.spec.name, "frames": sampler.frames, "size": list(sampler.size),
                    **(identity or {})}
        self.check_identity(identity)
        todo = [i for i in range(first, first + count) if i % world == rank and i not in self._where]
        if not todo:
            return
        part = self.parts.setdefault(rank, {"version": CACHE_VERSION, "identity": identity, "shards": []})
        loader = torch.utils.data.DataLoader(_Clips(sampler, todo), batch_size=batch, num_workers=workers,
                                             worker_init_fn=_one_thread if workers else None, collate_fn=_columns)
        pending: dict[str, list] = {"items": [], "latents": [], "logvar": [], "frames": [], "teacher": [], "src": []}
        for indices, frames, sources in loader:
            with torch.no_grad():
                x = dequantize(torch.stack(frames).to(teacher.device))
                mean, logvar = teacher.encode_posterior(x)
                decoded = teacher.decode(mean)
            pending["items"] += indices
            pending["latents"] += list(mean.float().cpu())
            pending["logvar"] += list(logvar.float().cpu()) if logvar is not None else []
            pending["frames"] += frames
            pending["teacher"] += list(_quantize(decoded).cpu())
            pending["src"] += [json.loads(s) for s in sources]
            while len(pending["items"]) >= shard_size:
                self._write_shard(part, rank, {k: v[:shard_size] for k, v in pending.items()})
                pending = {k: v[shard_size:] for k, v in pending.items()}
            if progress:
                for _ in indices:
                    progress()
        if pending["items"]:
            self._write_shard(part, rank, pending)

    def _write_shard(self, part: dict, rank: int, rows: dict[str, list]) -> None:
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"r{rank:03d}-{len(part['shards']):05d}.safetensors"
        tensors = {k: torch.stack(v).contiguous() for k, v in rows.items() if k not in ("items", "src") and v}
        with atomic_file(self.dir / name) as tmp:
            save_file(tensors, str(tmp), metadata={"sources": json.dumps(rows["src"])})
        part["shards"].append({"file": name, "items": [int(i) for i in rows["items"]]})
        replaced = [r for src in rows["src"] for r in src.get("replaced", [])]
        if replaced:
            part["replaced"] = part.get("replaced", 0) + sum(1 for src in rows["src"] if src.get("replaced"))
            part["bad_videos"] = sorted({*part.get("bad_videos", []), *(r["video"] for r in replaced)})[:1000]
        with atomic_file(self.dir / f"part-{rank:03d}.json") as tmp:
            tmp.write_text(json.dumps(part, indent=1))
        self._where.update({int(i): (name, k) for k, i in enumerate(rows["items"])})

    def read(self, i: int) -> dict[str, torch.Tensor]:
        """Item i as stored (uint8 frames): one memory-mapped slice per tensor."""
        from safetensors import safe_open

        if i not in self._where:
            raise IndexError(i)
        name, k = self._where[i]
        if name not in self._handles:
            try:
                self._handles[name] = safe_open(str(self.dir / name), framework="pt")
            except Exception as err:  # safetensors raises its own error types
                raise CheckpointError(f"latent cache shard {self.dir / name} is unreadable: {err}") from err
        f = self._handles[name]
        return {key: f.get_slice(key)[k:k + 1][0] for key in f.keys()}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """Item i: latents (C, T, h, w) (+ logvar), frames and teacher decode (3, T', H, W) in [-1, 1]."""
        return {k: dequantize(v) if v.dtype == torch.uint8 else v for k, v in self.read(i).items()}


def dequantize(x: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float in [-1, 1] (on whatever device x is)."""
    return x.float().div(127.5).sub(1.0)


