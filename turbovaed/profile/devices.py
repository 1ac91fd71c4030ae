"""The device catalog (profiles/devices/*.toml): peak compute and memory bandwidth per compute unit,
each with its source, for the roofline estimates."""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from turbovaed.io import InputError
from turbovaed.resources import data_dir

CATALOG_DIR = data_dir("devices")


@dataclass
class Unit:
    bandwidth_gbs: float
    source: str
    peak_gflops_fp32: float | None = None
    peak_gflops_fp16: float | None = None
    peak_tops_int8: float | None = None

    def peak_gflops(self, precision: str) -> float:
        """Peak for a precision, falling back to the next wider type the unit reports."""
        order = {"fp32": ["fp32", "fp16"], "fp16": ["fp16", "fp32"]}.get(precision, ["int8", "fp16", "fp32"])
        for p in order:
            v = self.peak_tops_int8 * 1000 if p == "int8" and self.peak_tops_int8 else getattr(self, f"peak_gflops_{p}", None)
            if v:
                return v
        raise InputError(f"compute unit reports no peak for {precision}")


@dataclass
class Device:
    id: str
    name: str
    soc: str
    memory_gb: float
    runtimes: list[str]
    units: dict[str, Unit]
    notes: str = ""
    path: Path = field(default=Path(), repr=False)


def load_catalog(directory: Path = CATALOG_DIR) -> dict[str, Device]:
    devices = {}
    for path in sorted(Path(directory).glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text())
            units = {k: Unit(**v) for k, v in data.pop("units").items()}
            device = Device(**data, units=units, path=path)
        except (tomllib.TOMLDecodeError, TypeError, KeyError) as err:
            raise InputError(f"device catalog entry {path} is invalid: {err}") from err
        if device.id != path.stem:
            raise InputError(f"device catalog entry {path} has id {device.id!r}; the id must equal the file name")
        devices[device.id] = device
    return devices


def get_device(device_id: str, catalog: dict[str, Device] | None = None) -> Device:
    catalog = load_catalog() if catalog is None else catalog
    if device_id not in catalog:
        raise InputError(f"device {device_id!r} is not in the catalog ({', '.join(sorted(catalog))})")
    return catalog[device_id]


def measure_host(threads: int, seconds: float = 2.0) -> tuple[float, float]:
    """(fp32 GFLOPS of a large matmul, GB/s of a large copy) on this machine with `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    src, dst = torch.empty(64 * 2**20 // 4), torch.empty(64 * 2**20 // 4)

    def rate(fn, work: float) -> float:
        fn()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        return work * n / (time.perf_counter() - t0)

    gflops = rate(lambda: torch.mm(a, b), 2 * 2048**3 / 1e9)
    gbs = rate(lambda: dst.copy_(src), 2 * src.numel() * 4 / 1e9)  # read + write
    return gflops, gbs


def host_identity() -> dict:
    """hw_model / soc / os_version of this machine for its records."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"hw_model": platform.node() or "host", "soc": cpu, "os_version": f"{platform.system()} {platform.release()}"}


def measured_host(threads: int, catalog: dict[str, Device]) -> Device:
    """The catalog's `host` entry with its CPU peak and bandwidth measured now, on the machine that runs the
    profile (the committed host.toml describes one VM, not the user's machine)."""
    from dataclasses import replace

    gflops, gbs = measure_host(threads)
    ident = host_identity()
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    unit = Unit(bandwidth_gbs=gbs, peak_gflops_fp32=gflops,
                source=f"measured {when} UTC by `turbovaed profile` on this machine ({ident['hw_model']}, {threads} threads): "
                       f"2048^2 fp32 matmul {gflops:.0f} GFLOPS, 64 MiB copy {gbs:.1f} GB/s (read+write)")
    base = catalog["host"]
    return replace(base, name=f"this machine ({ident['hw_model']})", soc=ident["soc"],
                   units={"cpu": unit}, notes="measured when profiling; see the unit source")
