"""`profile` (host, device, calibrate, import): latency measured here, on a phone or a Mac, and estimates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from turbovaed.cli.base import Results, app, logged, out
from turbovaed.cli.tables import host_table
from turbovaed.io import InputError


class HostByDefault(TyperGroup):
    """`turbovaed profile DIR` means `turbovaed profile host DIR` (the everyday case keeps its short form)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["host", *args]
        return super().parse_args(ctx, args)


profile_app = typer.Typer(cls=HostByDefault, no_args_is_help=True, help="Measure artifacts here, on a phone or a "
                          "Mac, calibrate estimates, import device-app records.")
app.add_typer(profile_app, name="profile")
Runs = Annotated[int, typer.Option(help="timed runs per artifact (after warm-up)")]
Warmup = Annotated[int, typer.Option(help="untimed warm-up runs")]
Threads = Annotated[int, typer.Option(help="CPU threads for every runtime")]
Serial = Annotated[Optional[str], typer.Option(help="adb serial (several phones attached)")]
RunnerDir = Annotated[str, typer.Option(help="folder on the phone holding benchmark_model / executor_runner")]


@profile_app.command("host")
@logged(lambda a: a["results"] or Path("profiles"))
def profile_host(artifacts: Annotated[Path, typer.Argument(help="artifacts folder (from `turbovaed export`)")],
                 runs: Runs = 10, warmup: Warmup = 2, threads: Threads = 2, results: Results = None) -> None:
    """Time every artifact with a runtime here (isolated processes, interleaved runs) beside the eager model,
    and estimate every catalog device."""
    from turbovaed.profile import schema
    from turbovaed.profile.host import profile

    if runs < 2 or warmup < 0:
        raise InputError("--runs must be >= 2 (for p10/p90) and --warmup >= 0")
    result = profile(artifacts, runs, warmup, threads, results or schema.RESULTS_DIR)
    out.print(host_table(result["measured"], f"host latency ({threads} threads, {runs} interleaved runs)"))
    for line in result["skipped"]:
        out.print(f"skipped {line}")
    out.print(f"wrote {len(result['measured'])} measurements and {len(result['estimates'])} estimates: "
              + ", ".join(str(f) for f in result["files"]))


@profile_app.command("device")
@logged(lambda a: a["results"] or Path("profiles"))
def profile_device_cmd(artifact: Annotated[Path, typer.Argument(help="one artifact folder")],
                       device: Annotated[str, typer.Option(help="the device's id in profiles/devices")],
                       unit: Annotated[str, typer.Option(help="phones: cpu (XNNPACK) or gpu (LiteRT GPU delegate); "
                                                              "Core ML / Core AI on a Mac: ane, gpu or cpu")] = "cpu",
                       serial: Serial = None, runs: Runs = 20, warmup: Warmup = 5, threads: Threads = 4,
                       runner_dir: RunnerDir = "/data/local/tmp", results: Results = None) -> None:
    """Measure one artifact on an Android phone over adb, or (Core ML / Core AI) on this Mac."""
    from turbovaed.profile import schema
    from turbovaed.profile.device import profile_device
    from turbovaed.profile.devices import get_device

    get_device(device)
    record = profile_device(artifact, device, serial, unit, runs, warmup, threads, runner_dir)
    path = schema.save([record], f"device-{device}-{record.artifact}-{record.record_id}", results or schema.RESULTS_DIR)
    out.print(f"{record.artifact} on {record.hw_model} ({record.soc}, {record.os_version}), {record.compute_unit}: "
              f"median {record.latency.median_ms:.2f} ms, first load {record.first_load_ms:.0f} ms, first call "
              f"{record.first_inference_ms:.1f} ms -> {path}")


@profile_app.command("calibrate")
@logged(lambda a: Path("profiles"))
def profile_calibrate(device: Annotated[str, typer.Option(help="the device's id in profiles/devices")],
                      unit: Annotated[str, typer.Option(help="cpu or gpu (phones); ane, gpu or cpu (--coreml)")] = "cpu",
                      coreml: Annotated[bool, typer.Option(help="time Core ML packages on this Mac instead of "
                                                                "LiteRT on a phone")] = False,
                      nets: Annotated[Optional[str], typer.Option(help="comma-separated calibration nets "
                                                                       "(default: all)")] = None,
                      serial: Serial = None, runs: Runs = 20, warmup: Warmup = 5, threads: Threads = 4,
                      runner_dir: RunnerDir = "/data/local/tmp") -> None:
    """Time the calibration nets on your phone (or Mac) and write calibration points the estimates use."""
    from turbovaed.profile import calibration
    from turbovaed.profile.device import calibrate_device
    from turbovaed.profile.devices import get_device

    get_device(device)
    path = calibrate_device(device, unit, serial, runs, warmup, threads, runner_dir,
                            nets.split(",") if nets else None, coreml=coreml)
    out.print(f"wrote calibration points for {device} {unit}: {path}")
    for row in calibration.leave_one_out():
        if row["device"] == device:
            loo = f"{row['loo_ms']:.3f} ms ({row['loo_ratio']:.2f}x)" if row["loo_ms"] else "-"
            out.print(f"  {row['point']}: measured {row['measured_ms']:.3f} ms, leave-one-out {loo} [{row['class']}]")


@profile_app.command("import")
def profile_import(record: Annotated[Path, typer.Argument(help="a record JSON written by a device app")],
                   results: Results = None) -> None:
    """Add a device app's record to the profile records."""
    from turbovaed.profile import schema
    from turbovaed.profile.devices import load_catalog

    records = schema.load_file(record, set(load_catalog()))
    for r in records:
        if r.source != "measured-device-app":
            raise InputError(f"{record}: imported records must have source 'measured-device-app', got {r.source!r}")
    path = schema.save(records, f"import-{record.stem}-{records[0].record_id}", results or schema.RESULTS_DIR)
    out.print(f"imported {len(records)} record(s) into {path}")
