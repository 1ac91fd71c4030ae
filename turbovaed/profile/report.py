"""`turbovaed report`: one markdown + HTML page from the artifacts' manifests and the profile records:
a Turbo-VAED-style table (decoder params, compression, quality, FPS per device), the artifact table,
plots (latency per device and precision; quality vs artifact size) and side-by-side frames (ground
truth, per-frame bicubic, teacher, student fp32, int8, int4). Measurements and estimates are always labelled apart."""

from __future__ import annotations

import html
import json
import random
from pathlib import Path

import torch

from turbovaed import data, teachers
from turbovaed.export.core import ExportRecipe, backend_module
from turbovaed.io import InputError, atomic_dir
from turbovaed.metrics import bicubic
from turbovaed.profile import calibration
from turbovaed.profile.devices import Unit, load_catalog
from turbovaed.profile.host import find_manifests
from turbovaed.profile.schema import RESULTS_DIR, Record, load_all
from turbovaed.recipes import build
from turbovaed.student import StudentConfig, StudentDecoder

PRECISION_ORDER = ["fp32", "fp16", "int8", "int8-dynamic", "int4", "palettize4"]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _student_quality(manifest: dict) -> dict:
    metrics = Path(manifest["student"]["checkpoint"]) / "metrics.json"
    try:
        m = json.loads(metrics.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    mean = m.get("mean", {})  # written by the trainer's held-out evaluation
    return {k: mean[f"student_{k}"] for k in ("psnr", "ssim") if isinstance(mean.get(f"student_{k}"), (int, float))}


def _rank(r: Record) -> tuple:
    """A measurement beats an estimate, a calibrated estimate beats a bare roofline; then the fastest."""
    return r.source != "estimate", bool(r.estimate.get("calibration")) or r.source != "estimate", r.fps


def best_records(records: list[Record], key) -> dict:
    """The best record per key(record), by _rank."""
    best: dict = {}
    for r in records:
        k = key(r)
        if k not in best or _rank(r) > _rank(best[k]):
            best[k] = r
    return best


def _tag(r: Record) -> str:
    if r.source != "estimate":
        return ""
    return " (est.)" if r.estimate.get("calibration") else " (roofline bound)"


def headline(manifests: list[dict], records: list[Record], devices: list[str]) -> str:
    """The Turbo-VAED-style table: one row per student, FPS per device (best precision), quality."""
    rows = []
    for sha in sorted({m["student"]["sha256"] for m in manifests}):  # students by their weights, not folder names
        m = next(x for x in manifests if x["student"]["sha256"] == sha)
        ckpt = m["student"]["checkpoint"]
        cfg, q = m["student"]["config"], _student_quality(m)
        best = best_records([r for r in records if r.model_sha256 == sha and "stream" not in r.notes],
                            key=lambda r: r.device)
        cells = []
        for d in devices:
            r = best.get(d)
            cells.append("-" if r is None else f"{r.fps:.1f}{_tag(r)} {r.runtime} {r.precision} on {r.compute_unit}")
        s, t = m["frame_rule"]["spatial_ratio"], m["frame_rule"]["temporal_ratio"]
        rows.append([Path(ckpt).name, f"{m['student']['params'] / 1e6:.2f}M", f"{s}x{s}x{t}, {cfg['latent_channels']} ch",
                     f"{q['psnr']:.2f}" if "psnr" in q else "-", f"{q['ssim']:.3f}" if "ssim" in q else "-", *cells])
    return _md_table(["student", "params", "compression", "PSNR dB", "SSIM", *[f"{d} FPS" for d in devices]], rows)


DEPLOYMENT_SIZES = {"512x512": (512, 512), "480p": (480, 848), "720p": (720, 1280)}  # (H, W); 848 = 16:9 in /16
DEPLOYMENT_LATENT_FRAMES = 5  # 1 + 4 latents: 17 frames for a 4x temporal, first-frame student


# Rungs users deploy, estimated beside every student: a small student's FPS is not what a phone decoder of a real
# teacher reaches.
DEPLOYED_PRESETS = ("wan21-nano", "wan21-base")


def deployment_table(manifests: list[dict], catalog: dict, fits: dict,
                     deployed: tuple[str, ...] = DEPLOYED_PRESETS) -> str:
    """Turbo-VAED-style device table: each student's estimated FPS at 512^2, 480p and 720p per device, the
    fastest calibrated estimate over its exported runtimes/precisions (with its leave-one-out error), and
    where a uncalibrated unit's roofline bound is faster, that bound beside it. The `deployed` preset rungs follow,
    estimated for the same runtimes and precisions, so a toy student's figure stands beside a deployable one."""
    from turbovaed import presets

    rows, exported = [], []
    for sha in sorted({m["student"]["sha256"] for m in manifests}):
        ms = [m for m in manifests if m["student"]["sha256"] == sha and "stream" not in m]
        if ms:
            exported = exported or ms
            rows += _deployment_rows(Path(ms[0]["student"]["checkpoint"]).name,
                                     StudentConfig.from_dict(ms[0]["student"]["config"]), ms, catalog, fits)
    for name in deployed if exported else ():
        family, size = presets.parse_preset(name)
        config = presets.student_config(teachers.get_spec(family), size=size)
        rows += _deployment_rows(f"{name} (preset, {family} latents)", config, exported, catalog, fits)
    return _md_table(["student", "decode", *[f"{d} FPS" for d in catalog]], rows)


def _deployment_rows(label: str, cfg: StudentConfig, ms: list[dict], catalog: dict, fits: dict) -> list[list[str]]:
    """One row per deployment size: per device, the fastest estimate over the runtimes / precisions of `ms`."""
    from turbovaed.profile.estimate import costs_of, device_estimates

    t, s = DEPLOYMENT_LATENT_FRAMES, cfg.spatial_ratio
    frames = cfg.frames_for(t)
    rows = []
    for size, (h, w) in DEPLOYMENT_SIZES.items():
        costs = costs_of(cfg, (t, -(-h // s), -(-w // s)))
        cells = []
        for dev in catalog.values():
            cal, bound = None, None
            for m in ms:
                for unit, est in device_estimates(dev, costs, m["backend"], m["precision"], fits).items():
                    fps = frames / est["seconds"]
                    cand = (fps, f"{m['backend']} {m['precision']} on {unit}", est["calibration"])
                    if est["calibration"] and (cal is None or fps > cal[0]):
                        cal = cand
                    elif not est["calibration"] and (bound is None or fps > bound[0]):
                        bound = cand
            cell = (f"{cal[0]:.1f} {cal[1]} (est., LOO {cal[2]['worst_leave_one_out_ratio']:.1f}x)" if cal and
                    cal[2]["worst_leave_one_out_ratio"] else f"{cal[0]:.1f} {cal[1]} (est.)" if cal else "-")
            if bound and (cal is None or bound[0] > cal[0]):
                cell += f"; <= {bound[0]:.0f} {bound[1]} (roofline bound)"
            cells.append(cell)
        rows.append([label, f"{size} x {frames} frames", *cells])
    return rows


def artifact_table(manifests: list[dict]) -> str:
    fp32 = {m["student"]["checkpoint"]: m["bytes"] for m in manifests if m["precision"] == "fp32" and "stream" not in m}
    rows = []
    for m in sorted(manifests, key=lambda m: (m["backend"], PRECISION_ORDER.index(m["precision"]), m["name"])):
        n = m["numerics"]
        base = fp32.get(m["student"]["checkpoint"])
        rows.append([m["name"], m["backend"], m["precision"], f"{m['bytes']:,}", f"{m['bytes'] / base:.2f}x" if base else "-",
                     f"{n['psnr_db']:.1f}" if "psnr_db" in n else "not run", n["status"], m["numerics"]["verified_by"]])
    return _md_table(["artifact", "backend", "precision", "bytes", "vs fp32", "PSNR vs fp32 dB", "status", "verified by"],
                     rows)


def latency_table(records: list[Record]) -> str:
    rows = [[r.device, r.source, r.artifact, r.runtime, r.precision, r.compute_unit, f"{r.latency.median_ms:.1f}",
             f"{r.latency.p10_ms:.1f}-{r.latency.p90_ms:.1f}" if r.source != "estimate" else "-", f"{r.fps:.1f}"]
            for r in sorted(records, key=lambda r: (r.device, r.source, r.latency.median_ms))]
    return _md_table(["device", "source", "artifact", "runtime", "precision", "unit", "median ms", "p10-p90 ms", "FPS"], rows)


def profiled_host(records: list[Record], catalog: dict) -> dict:
    """{"host": the catalog's host entry with the CPU peaks the profile run measured} (from its host
    estimate records), or {} when no profile run estimated the host."""
    from dataclasses import replace

    est = next((r.estimate for r in records if r.device == "host" and r.source == "estimate"), None)
    if not est or "host" not in catalog:
        return {}
    unit = Unit(bandwidth_gbs=est["bandwidth_gbs"], peak_gflops_fp32=est["peak_gflops"], source=est["unit_source"])
    return {"host": replace(catalog["host"], units={"cpu": unit})}


def calibration_table(rows: list[dict] | None = None) -> str:
    """Every calibration point: measured, the all-points fit, and the fit without that point (LOO)."""
    rows = calibration.leave_one_out() if rows is None else rows
    return _md_table(["class", "net", "input", "device", "runtime", "ops", "roofline ms", "measured ms", "fit ms",
                      "leave-one-out ms", "LOO / measured", "source"],
                     [[r["class"], r["net"], r["point"].split()[1], r["device"], r["runtime"], str(r["ops"]),
                       f"{r['roofline_ms']:.3f}", f"{r['measured_ms']:.3f}", f"{r['fit_ms']:.3f}",
                       f"{r['loo_ms']:.3f}" if r["loo_ms"] is not None else "-",
                       f"{r['loo_ratio']:.2f}" if r["loo_ratio"] else "-", r["source"].split(" (")[0]] for r in rows])


def host_check(records: list[Record]) -> tuple[str, list[float]]:
    """Host measurement vs the host estimate per artifact: how the calibration transfers to the student's own
    graphs (it never saw them). Returns the table and the ratios of the calibrated estimates."""
    est = {(r.artifact, tuple(r.input_shape)): r for r in records if r.source == "estimate" and r.device == "host"}
    rows, ratios = [], []
    for r in records:
        e = est.get((r.artifact, tuple(r.input_shape)))
        if r.source == "measured-host" and e is not None:
            ratio = r.latency.median_ms / e.latency.median_ms
            cal = e.estimate.get("calibration")
            if cal:
                ratios.append(ratio)
            rows.append([r.artifact, r.precision, f"{r.latency.median_ms:.2f}", f"{e.latency.median_ms:.2f}",
                         cal["class"] if cal else "none: roofline bound", f"{ratio:.2f}x"])
    return _md_table(["artifact", "precision", "measured ms", "estimate ms", "calibration", "measured / estimate"],
                     rows), ratios


def _axes(figsize: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def _save(fig, ax, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(records: list[Record], path: Path) -> None:
    best = best_records([r for r in records if "stream" not in r.notes], key=lambda r: (r.device, r.precision))
    devices = sorted({d for d, _ in best})
    precisions = [p for p in PRECISION_ORDER if any(p == q for _, q in best)]
    fig, ax = _axes((max(8, 1.2 * len(devices)), 4.5))
    width = 0.8 / max(1, len(precisions))
    for i, p in enumerate(precisions):
        for j, d in enumerate(devices):
            if (d, p) not in best:
                continue
            r = best[(d, p)]
            ax.bar(j + i * width, r.latency.median_ms, width, color=f"C{i}", hatch="//" if r.source == "estimate" else "",
                   edgecolor="black", linewidth=0.4, label=p if j == min(jj for jj, dd in enumerate(devices)
                                                                        if (dd, p) in best) else None)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(devices))], devices, rotation=25, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("latency per decode call, ms (log)")
    _save(fig, ax, "Decode latency per device and precision (hatched = roofline estimate, solid = measured)", path)


def plot_quality_size(manifests: list[dict], path: Path) -> None:
    fig, ax = _axes((7, 4.5))
    for i, backend in enumerate(sorted({m["backend"] for m in manifests})):
        pts = [(m["bytes"] / 1024, min(m["numerics"]["psnr_db"], 80.0), m["precision"]) for m in manifests
               if m["backend"] == backend and "psnr_db" in m["numerics"]]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=backend, color=f"C{i}")
            for x, y, p in pts:
                ax.annotate(p, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("artifact size, KiB (log)")
    ax.set_ylabel("PSNR vs fp32 student, dB (capped at 80)")
    _save(fig, ax, "Quality vs artifact size", path)


def side_by_side(manifests: list[dict], path: Path, video: Path | None) -> tuple[Path, str] | None:
    """Ground truth, per-frame bicubic, teacher, student fp32, int8, int4 on one clip the student never trained on (or the
    given video): the student decoded through the int8 / int4 artifacts themselves (ONNX Runtime or
    ExecuTorch), where one runs here. Returns the image and a line saying which clip and why."""
    from turbovaed.evaluate import never_trained_on

    plain = [m for m in manifests if "stream" not in m]
    if not plain:
        return None
    base = plain[0]
    if video is None:
        pool = data.real_clips()
        held, why = never_trained_on(base["student"]["checkpoint"], pool)
        if not held:
            return None
        video, about = held[0], f"`{held[0].name}`, {why}"
    else:
        about = f"`{Path(video).name}` (given with --video)"
    r = base["recipe"]
    teacher = teachers.load(r["teacher"], r.get("teacher_path"), tiny=r.get("teacher_tiny", False))
    student = StudentDecoder.from_pretrained(base["student"]["checkpoint"]).eval()
    shape = base["inputs"][0]["shape"]
    frames = student.config.frames_for(shape[2])
    h, w = base["outputs"][0]["shape"][3:]
    clip, _ = data.sample_clip(video, frames, (h, w), random.Random(0), resize=min(h, w))
    z = teacher.encode(clip[None])
    rows = {"ground truth": clip, "bicubic (per frame)": bicubic(clip[None], teacher.spec.spatial)[0],
            "teacher": teacher.decode(z)[0]}
    with torch.no_grad():
        rows["student"] = student(z)[0]
    for precision in ("int8", "int4"):
        for m in plain:
            if m["precision"] != precision or m["backend"] not in ("onnx", "executorch") or m["inputs"][0]["shape"] != shape:
                continue
            options = build(ExportRecipe, m["recipe"]).options
            run = backend_module(m["backend"]).runner(m["_dir"] / m["artifact"], options=options)
            if run is not None:
                rows[f"{precision} ({ {'executorch': 'ET', 'onnx': 'ORT'}[m['backend']]})"] = run(z.contiguous())[0][0]
                break
    return data.save_comparison(path, rows), about


def write_report(exports: Path, out_dir: Path, results: Path | None = None, video: Path | None = None) -> dict:
    """Write report.md, report.html, plots and frames into out_dir (atomically); return their paths."""
    manifests = [m for m in find_manifests(exports) if "student" in m]  # decoder files: `profile` measures them
    if not manifests:
        raise InputError(f"{exports} holds no student artifacts: the report covers distilled students (decoder "
                         "files are measured by `turbovaed profile`)")
    catalog = load_catalog()
    records = load_all(results or RESULTS_DIR, set(catalog))
    students = {m["student"]["sha256"] for m in manifests}
    records = [r for r in records if r.model_sha256 in students]  # a same-named older student never merges in
    failed = [r for r in records if r.status != "ok"]
    records = [r for r in records if r.status == "ok"]
    if not records:
        raise InputError(f"no profile records for these artifacts: run `turbovaed profile {exports}` first")
    devices = ["host"] + [d for d in sorted(catalog) if d != "host"]
    with atomic_dir(out_dir) as tmp:
        plot_latency(records, tmp / "latency.png")
        plot_quality_size(manifests, tmp / "quality_vs_size.png")
        frames = side_by_side(manifests, tmp / "frames.png", video)
        top = headline(manifests, records, devices)
        fits = calibration.fits(catalog=catalog)
        deploy = deployment_table(manifests, {**catalog, **profiled_host(records, catalog)}, fits)
        check_md, ratios = host_check(records)
        sections = [
            "# turbovaed report",
            "Measured = timed on that device (`measured-host`: this machine, interleaved runs; `measured-device-app`: "
            "imported from a device app). `(est.)` = estimate: the roofline from the catalog's spec sheet "
            "(profiles/devices) through the unit's calibration (per-call + per-layer cost + a roofline factor, fitted on "
            "measured conv nets: profiles/calibration); `(roofline bound)` = a unit with no calibration points yet "
            "(phone GPUs, the Neural Engine): a lower bound on latency. Neither is a measurement.",
            "## Students", top,
            "## Students at deployment sizes (estimated)", deploy,
            "Per device: the fastest calibrated estimate over the exported runtimes and precisions, with the worst "
            "leave-one-out error of its calibration class; a faster uncalibrated roofline bound is shown beside it. "
            f"The `{'`, `'.join(DEPLOYED_PRESETS)}` rows are student presets of the same design for Wan 2.1 latents "
            "(16 channels, 8x spatial), estimated for the same runtimes and precisions: what a deployed decoder costs. "
            "A student of a small teacher (like the quickstart's) is a toy beside them: its FPS say little about a "
            "phone. "
            "`host` is this machine, its peaks measured now. Measured figures are in the Students table and below.",
            "## Calibration (leave-one-out)", calibration_table(),
            "## Artifacts", artifact_table(manifests),
            "## Latency", "![latency](latency.png)", latency_table(records),
            "## Estimate vs measurement (this host)", check_md,
            f"Measured / calibrated estimate on this host, for the student's own artifacts (the calibration never saw "
            f"them): {min(ratios):.2f}x to {max(ratios):.2f}x: the error a device estimate carries beyond the "
            "calibration table's." if ratios else
            "No host measurement matches a host estimate yet: run `turbovaed profile` on these artifacts.",
            "## Quality vs size", "![quality vs size](quality_vs_size.png)",
        ]
        if failed:
            sections += ["## Failed runs", _md_table(["device", "artifact", "runtime", "error"],
                                                     [[r.device, r.artifact, r.runtime, r.error] for r in failed])]
        if frames:
            sections += ["## Side-by-side frames", "Rows: ground truth, per-frame bicubic upscaling of the ground truth "
                         "downsampled by the teacher's spatial factor (the baseline), teacher, student fp32 and the "
                         "student through its "
                         f"int8 / int4 artifacts. Clip: {frames[1]}.", "![frames](frames.png)"]
        md = "\n\n".join(sections) + "\n"
        (tmp / "report.md").write_text(md)
        (tmp / "report.html").write_text(_html(md))
    return {"markdown": out_dir / "report.md", "html": out_dir / "report.html", "table": top, "host_ratios": ratios,
            "deployment": deploy}


def _html(markdown: str) -> str:
    """Minimal markdown -> HTML for headings, tables, images and paragraphs (what the report uses)."""
    body = []
    for block in markdown.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        if lines[0].startswith("#"):
            level = len(lines[0]) - len(lines[0].lstrip("#"))
            body.append(f"<h{level}>{html.escape(lines[0][level:].strip())}</h{level}>")
        elif lines[0].startswith("|"):
            rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if not line.startswith("|---")]
            head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif lines[0].startswith("!["):
            alt, src = lines[0][2:].split("](")
            body.append(f'<img alt="{html.escape(alt)}" src="{html.escape(src.rstrip(")"))}">')
        else:
            body.append(f"<p>{html.escape(' '.join(lines))}</p>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>turbovaed report</title><style>{style}</style>" \
           f"</head><body>{''.join(body)}</body></html>\n"
