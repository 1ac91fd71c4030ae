"""Result tables the commands print (rich), built from what the pipelines return."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.table import Table

from turbovaed.io import InputError


def _table(title: str, columns: tuple[str, ...], first_left: bool = False) -> Table:
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if first_left and i == 0 else "right")
    return table


def _properties(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title)
    table.add_column("property")
    table.add_column("value", justify="right")
    for k, v in rows:
        table.add_row(k, v)
    return table


def ladder_table() -> Table:
    from turbovaed.presets import ladder_rows

    table = _table("student presets: nano (CPU-sized), base (~TAEHV MACs), turbo (Turbo-VAED layout); mini is for "
                   "tests", ("preset", "params (M)", "GMACs/frame 512x512", "GMACs/frame 720p", "720p as"), True)
    for r in ladder_rows():
        table.add_row(r["preset"], f"{r['params'] / 1e6:.2f}", f"{r['gmacs_512']:.2f}", f"{r['gmacs_720p']:.2f}",
                      r["size_720p"])
    return table


def student_table(target: str, size: tuple[int, int], frames: int) -> Table:
    """Parameters, compression, frame rule and MACs of a student (checkpoint or preset) at one output size."""
    from turbovaed.decode import resolve_student
    from turbovaed.student import StudentDecoder, count_macs

    config, _, source = resolve_student(target)
    (h, w), r = size, config.spatial_ratio
    if h % r or w % r:
        raise InputError(f"size {h}x{w} must be a multiple of {r}")
    latent = (config.latents_for(frames), h // r, w // r)
    with torch.device("meta"):
        params = StudentDecoder(config).num_parameters()
    macs = count_macs(config, latent)
    rule = f"1+k latents -> 1+{config.temporal_ratio}k frames" if config.first_frame else \
        f"k latents -> {config.temporal_ratio}k frames"
    return _properties(f"student {source}", [
        ("parameters", f"{params / 1e6:.2f} M"), ("latent channels", str(config.latent_channels)),
        ("compression (t, h, w)", f"{config.temporal_ratio} x {r} x {r}"), ("frame rule", rule),
        ("temporal padding", config.temporal_padding), ("input latents (C, T, h, w)", str((config.latent_channels,
                                                                                          *latent))),
        ("output (T, H, W)", str((frames, h, w))), ("GMACs per decode", f"{macs / 1e9:.2f}"),
        ("GMACs per output frame", f"{macs / 1e9 / frames:.3f}")])


def decoder_table(path: Path, variant: str | None, sizes: dict[str, tuple[int, int]] | None = None) -> Table:
    from turbovaed import decoders

    d = decoders.load(path, variant).describe(sizes)
    return _properties(f"decoder {path}", [
        ("family / variant", f"{d['family']} / {d['variant']}"), ("decodes latents of", d["decodes"]),
        ("parameters", f"{d['params']:,}"),
        *((f"GMACs per output frame, {k}", f"{v:.2f}") for k, v in d["gmacs_per_frame"].items()),
        ("frame rule", d["frame_rule"]), ("spatial ratio", f"{d['spatial_ratio']}x"), ("input", d["latents"]),
        ("output", d["output"]), ("weights sha256", d["sha256"][:16]),
        ("file tensors not used by the decoder", str(d["skipped_tensors"])), *(("note", n) for n in d["notes"])])


def quality_table(report: dict) -> Table:
    """Teacher, student and per-frame bicubic on the held-out clips, each with its gain over bicubic."""
    m = report["mean"]
    table = _table(f"quickstart: distilled student on {report.get('eval_set', 'held-out clips')} "
                   f"({len(report['clips'])} windows); started from {report.get('init', 'random initialisation')}",
                   ("model", "params", "PSNR dB", "vs bicubic dB", "SSIM", "MS-SSIM"))
    gain = lambda v: f"{v - m['bicubic_psnr']:+.2f}"  # noqa: E731
    table.add_row("reference teacher", f"{report['teacher_decoder_params']:,}", f"{m['teacher_psnr']:.2f}",
                  gain(m["teacher_psnr"]), f"{m['teacher_ssim']:.4f}", f"{m['teacher_msssim']:.4f}")
    table.add_row("student (EMA)", f"{report['student_params']:,}", f"{m['student_psnr']:.2f}",
                  gain(m["student_psnr"]), f"{m['student_ssim']:.4f}", f"{m['student_msssim']:.4f}")
    table.add_row("per-frame bicubic (baseline)", "-", f"{m['bicubic_psnr']:.2f}", "0.00", "-", "-")
    return table


def eval_table(report: dict, title: str) -> Table:
    table = _table(title, ("clip", "bicubic PSNR", "teacher PSNR", "student PSNR", "student SSIM", "student MS-SSIM",
                           "student vs teacher", "student vs bicubic"))
    for r in report["clips"] + [{"video": "mean", "start": "", **report["mean"]}]:
        vs_bicubic = f"{r['student_psnr'] - r['bicubic_psnr']:+.2f}" if "student_psnr" in r else "-"
        table.add_row(f"{r['video']} {r['start']}", f"{r['bicubic_psnr']:.2f}", f"{r['teacher_psnr']:.2f}", *(
            f"{r[k]:.{p}f}" if k in r else "-" for k, p in (("student_psnr", 2), ("student_ssim", 4),
                                                             ("student_msssim", 4), ("student_vs_teacher_psnr", 2))),
                      vs_bicubic)
    return table


def deployment_table(markdown: str, size: str, title: str) -> Table:
    """The report's deployment table (markdown) at one size, each cell cut to its FPS and how it was got: what a
    terminal can show of it."""
    lines = [line.strip().strip("|").split("|") for line in markdown.strip().splitlines()]
    header = [c.strip().removesuffix(" FPS") for c in lines[0]]
    table = _table(title, (header[0], *header[2:]), first_left=True)
    for row in lines[2:]:
        cells = [c.strip() for c in row]
        if cells[1].startswith(size):
            table.add_row(cells[0], *(c.split(" ")[0] + (" est." if "(est" in c else " bound" if "bound" in c else "")
                                      for c in cells[2:]))
    return table


def markdown_table(markdown: str, title: str) -> Table:
    """A pipe table from a report (markdown) as a terminal table."""
    lines = [line.strip().strip("|").split("|") for line in markdown.strip().splitlines()]
    table = _table(title, tuple(c.strip() for c in lines[0]), first_left=True)
    for row in lines[2:]:
        table.add_row(*(c.strip() for c in row))
    return table


def _delegated(ops: dict) -> str:
    return f"{ops['delegated']} / {ops['delegated'] + ops['not_delegated']}" if "delegated" in ops else \
        f"- / {ops.get('total', '-')}"


def artifacts_table(manifests: list[dict], title: str) -> Table:
    """One row per exported artifact: its precision, size, PSNR against the fp32 reference and delegation."""
    table = _table(title, ("artifact", "precision", "bytes", "PSNR vs fp32", "status", "delegated / total ops"))
    for m in manifests:
        n = m["numerics"]
        table.add_row(f"{m['name']}/{m['artifact']}", m["precision"], f"{m['bytes']:,}",
                      f"{n['psnr_db']:.1f} dB" if "psnr_db" in n else "not run", n["status"], _delegated(m["ops"]))
    return table


def host_table(records: list, title: str) -> Table:
    """Measured host records, fastest first, each with its ratio to the eager student of the same input;
    failed runs last, with their error."""
    table = _table(title, ("artifact", "runtime", "precision", "median ms", "p10-p90 ms", "fps", "first load ms",
                           "first call ms", "peak MB", "vs eager"))
    ok = [r for r in records if r.status == "ok"]
    eager = {tuple(r.input_shape): r.latency.median_ms for r in ok if r.runtime == "pytorch"}
    num = lambda v, f="{:.0f}": "-" if v is None else f.format(v)  # noqa: E731
    for r in sorted(ok, key=lambda r: r.latency.median_ms):
        base = eager.get(tuple(r.input_shape))
        table.add_row(r.artifact, r.runtime, r.precision, f"{r.latency.median_ms:.1f}",
                      f"{r.latency.p10_ms:.1f}-{r.latency.p90_ms:.1f}", f"{r.fps:.1f}", num(r.first_load_ms),
                      num(r.first_inference_ms, "{:.1f}"), num(r.peak_memory_mb), f"{r.latency.median_ms / base:.2f}x"
                      if base else "-")
    for r in records:
        if r.status != "ok":
            table.add_row(r.artifact, r.runtime, r.precision, "failed", r.error[:60], *["-"] * 5)
    return table
