"""Decoding as the CLI offers it, behind one validated request: latents from a file (any layout, raw or a
pipeline's normalised output) or a video encoded by a teacher, decoded by a teacher, a student (whole, mobile
form, tiled, or streamed chunk by chunk), an exported step graph, or a decoder file people already use.
`DecodeRequest.check()` refuses every bad combination with one clear error before any work; `run` returns
what was written. `progress(done, total)` follows a streamed decode."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from turbovaed import data, presets, teachers
from turbovaed.io import InputError, LatentFile
from turbovaed.stream import ArtifactStreamer, Streamer, decode_tiled, stream_to_video
from turbovaed.student import StudentConfig, StudentDecoder, check_fits, check_latents


@dataclass
class DecodeRequest:
    out: Path
    latents: Path | None = None
    video: Path | None = None
    teacher: str | None = None
    teacher_path: Path | None = None
    tiny_teacher: bool = False
    student: str | None = None
    mobile: bool = False
    frames: int = 17
    size: tuple[int, int] = (256, 256)
    fps: float = 24.0
    stream: bool = False
    chunk: int = 1
    artifact: Path | None = None
    tile: int = 0
    overlap: int = 2
    layout: str | None = None
    normalized: bool | None = None
    decoder: Path | None = None
    variant: str | None = None

    def check(self) -> None:
        """One clear error for any combination that cannot run; nothing is read or written before it."""
        if self.out.suffix.lower() != ".mp4":
            raise InputError(f"--out must be an .mp4 path, got {self.out}")
        if self.decoder is not None:
            if self.latents is None or any(x is not None for x in (self.video, self.student, self.teacher,
                                                                   self.artifact)) or self.tile:
                raise InputError("--decoder decodes --latents FILE on its own (no --video, --student, --teacher, "
                                 "--artifact or --tile; --stream for a causal decoder)")
            return
        if (self.latents is None) == (self.video is None):
            raise InputError("give exactly one of --latents FILE or --video FILE")
        if self.student is None and self.teacher is None and self.artifact is None:
            raise InputError("give --student CHECKPOINT and/or --teacher NAME (or --stream --artifact DIR)")
        if self.artifact is not None and not self.stream:
            raise InputError("--artifact decodes through an exported step graph and needs --stream")
        if self.video is not None and self.normalized:
            raise InputError("--normalized describes --latents; a --video is encoded to raw latents by the teacher")
        if self.stream and (self.latents is None or (self.student is None) == (self.artifact is None)
                            or self.teacher is not None or self.mobile):
            raise InputError("--stream decodes --latents FILE with --student CHECKPOINT or --artifact STREAM_EXPORT "
                             "(one of them, no teacher)")
        if self.stream and self.artifact is not None and self.tile:
            raise InputError("--tile needs --student (an exported step graph has one fixed latent size)")


def resolve_student(target: str) -> tuple[StudentConfig, StudentDecoder | None, str]:
    """A checkpoint folder (config + weights) or a preset name (teacher family, optionally '-mini')."""
    path = Path(target)
    if path.is_dir() or path.suffix or "/" in target:
        model = StudentDecoder.from_pretrained(path)
        return model.config, model, f"checkpoint {path}"
    try:
        name, size = presets.parse_preset(target)
    except InputError as err:
        raise InputError(f"{target!r} is not a checkpoint folder, and {err}") from None
    return presets.student_config(teachers.get_spec(name), size=size), None, f"preset {target}"


def trained_student(target: str) -> tuple[StudentConfig, StudentDecoder]:
    config, model, _ = resolve_student(target)
    if model is None:
        raise InputError(f"--student must be a checkpoint folder (a preset has no trained weights): {target}")
    return config, model


def student_latent_norm(checkpoint: str) -> dict | None:
    """The teacher's latent statistics a distilled student carries (latent_norm.json), if any."""
    path = Path(checkpoint) / "latent_norm.json"
    return json.loads(path.read_text()) if path.is_file() else None


def denormalizer(stats: dict | None, what: str):
    """(normalized chunk, index of its first latent frame) -> raw latents, from a teacher's statistics."""
    if stats is None:
        raise InputError(f"--normalized needs the teacher's latent statistics and {what} carries none (distilled "
                         "before students kept latent_norm.json): add --teacher NAME, or pass raw latents")
    return teachers.LatentNorm.from_dict(stats).to_raw


def open_latents(r: DecodeRequest) -> tuple[LatentFile | None, bool | None]:
    """The latent file (if any) and whether it holds normalised latents: the flag, else its metadata, else None
    (unsaid: raw for students and teachers, the decoder's own convention for a decoder file)."""
    if r.latents is None:
        return None, None
    source = LatentFile(r.latents, layout=r.layout)
    stated = source.stated_normalized()
    if None not in (r.normalized, stated) and r.normalized != stated:
        raise InputError(f"{r.latents} states in its metadata that its latents are "
                         f"{'normalized' if stated else 'raw'}, but --{'normalized' if r.normalized else 'raw'} was given")
    return source, stated if r.normalized is None else r.normalized


def run(r: DecodeRequest, say: Callable[[str], None] = lambda line: None,
        progress: Callable[[int, int | None], None] = lambda done, total: None) -> str:
    """Decode as requested and write the mp4 (and, whole-clip, a .png comparison); returns what was written."""
    r.check()
    source, normalized = open_latents(r)
    if r.decoder is not None:
        return with_decoder_file(r, source, normalized, say)
    if r.stream:
        return streamed(r, source, bool(normalized), progress)
    return whole(r, source, bool(normalized), say)


def with_decoder_file(r: DecodeRequest, source: LatentFile, normalized: bool | None, say) -> str:
    from turbovaed import decoders

    loaded = decoders.load(r.decoder, r.variant)
    if r.stream:  # causal decoders only (the step says so otherwise); one latent frame in memory at a time
        v = loaded.variant
        decoders.check_convention(loaded, normalized)
        source.check_channels(v.latent_channels, f"decoder {v.name}")
        n = stream_to_video(decoders.DecoderStreamer(loaded), source, r.out, 1, r.fps,
                            to_raw=lambda z, start: decoders.as_decoder_takes(loaded, z, normalized))
        return f"wrote {r.out} ({n} frames, streamed one latent frame at a time by {v.name} from {r.decoder.name})"
    t0 = time.perf_counter()
    frames = decoders.decode_file(loaded, source, normalized)
    say(f"{loaded.variant.name}: {time.perf_counter() - t0:.2f} s")
    data.write_video(r.out, frames, r.fps)
    return (f"wrote {r.out} ({frames.shape[1]} frames {frames.shape[2]}x{frames.shape[3]}, decoded by "
            f"{loaded.variant.name} from {r.decoder.name})")


def streamed(r: DecodeRequest, source: LatentFile, normalized: bool, progress) -> str:
    chunk = r.chunk
    if r.artifact is not None:
        streamer = ArtifactStreamer(r.artifact)
        chunk = streamer.chunk
        channels, what, stats = streamer.shape[1], f"artifact {r.artifact}", streamer.norm_dict
    else:
        config, model = trained_student(r.student)
        streamer = Streamer(model, r.tile, r.overlap)
        channels, what, stats = config.latent_channels, f"student {r.student}", student_latent_norm(r.student)
    source.check_channels(channels, what)
    to_raw = denormalizer(stats, what) if normalized else None
    n = stream_to_video(streamer, source, r.out, chunk, r.fps, progress=progress, to_raw=to_raw)
    return (f"wrote {r.out} ({n} frames, streamed {chunk} latent frame(s) per step"
            f"{f', {r.tile}-latent tiles' if r.tile else ''}{f' through {r.artifact}' if r.artifact else ''})")


def whole(r: DecodeRequest, source: LatentFile | None, normalized: bool, say) -> str:
    te = teachers.load(r.teacher, r.teacher_path, tiny=r.tiny_teacher) if r.teacher else None
    config, model = trained_student(r.student) if r.student is not None else (None, None)
    rows: dict[str, torch.Tensor] = {}
    if r.video is not None:
        if te is None:
            raise InputError("--video needs --teacher to encode it")
        nframes = te.spec.frames_for(max(1, round((r.frames - 1) / te.spec.temporal) + 1))
        if nframes != r.frames:
            raise InputError(f"{r.frames} frames break the {te.spec.name} frame rule; try {nframes}")
        clip, _ = data.sample_clip(r.video, r.frames, r.size, random.Random(0), resize=min(r.size))
        rows["ground truth"] = clip
        z = te.encode(clip[None])
    else:
        if te is not None:
            source.check_channels(te.latent_channels, f"teacher {te.spec.name}")
        if config is not None:
            source.check_channels(config.latent_channels, f"student {r.student}")
        z = source.read()
        if normalized:
            stats = te.norm.to_dict() if te is not None else student_latent_norm(r.student)
            z = denormalizer(stats, f"student {r.student}")(z, 0)
    results = {}
    if te is not None:
        t0 = time.perf_counter()
        rows["teacher"] = results["teacher"] = te.decode(z)[0]
        say(f"teacher {te.spec.name}: {time.perf_counter() - t0:.2f} s")
    if model is not None:
        net = model.to_mobile().eval() if r.mobile else model.eval()
        check_latents(z, config)
        if not r.tile:
            check_fits(config, tuple(z.shape[2:]), z.shape[0], f"decoding {tuple(z.shape)} latents as one clip",
                       "decode with --stream --chunk 1 (flat memory over time) and/or --tile 48 (spatial tiles)")
        t0 = time.perf_counter()
        with torch.no_grad():
            decoded = decode_tiled(lambda zt, _: net(zt), z, r.tile, r.overlap, config.spatial_ratio) if r.tile \
                else net(z)
            rows["student"] = results["student"] = decoded[0]
        say(f"student ({'mobile' if r.mobile else 'reference'} form): {time.perf_counter() - t0:.2f} s")
    main = results.get("student", results.get("teacher"))
    data.write_video(r.out, main, r.fps)
    png = data.save_comparison(r.out.with_suffix(".png"), rows)
    return f"wrote {r.out} ({main.shape[1]} frames {main.shape[2]}x{main.shape[3]}) and {png}"
