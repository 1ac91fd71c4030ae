"""Calibrating the roofline on measured devices.

A roofline is a lower bound: it knows nothing of the per-call cost of a runtime (graph launch, delegate
hand-off, cache flushes) nor of the per-layer dispatch that dominates small depthwise/pointwise graphs. Per
calibration class (a compute unit kind and the dtype it computes in) we fit

    seconds = per_call + per_op * ops + k * roofline        (all three >= 0; ops = operators dispatched)

(k < 1 where the spec-sheet peak or bandwidth understates the unit: on-chip reuse of activations, int8 dot
products counted at the fp32 peak.)

by least squares on relative error, over points of known conv nets measured on catalog devices: Qualcomm
AI Hub's published perf tables for the Snapdragon NPUs (points.toml, each with its source) and
`benchmarks/calibrate_host.py`'s measurements of the same nets on a host CPU (host-cpu.json). Layers and
rooflines of those nets come from the same tracer as the student's (estimate.traced_costs), so a point and a
student estimate are counted alike. `leave_one_out` refits without each point in turn and predicts it: that
table is the error a device estimate carries. Classes with no points (phone GPUs, the Neural Engine: no
published per-layer-known measurements were in reach) stay uncalibrated rooflines, labelled so."""

from __future__ import annotations

import itertools
import json
import os
import tomllib
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from turbovaed.io import InputError
from turbovaed.profile.devices import Device, Unit, load_catalog
from turbovaed.profile.estimate import calibration_class, relus_fused, roofline, traced_costs  # noqa: F401 - re-exported
from turbovaed.resources import data_dir

POINTS_DIR = data_dir("calibration")
# Points measured by `turbovaed profile calibrate` on the user's own devices, under the working directory.
LOCAL_DIR = Path(os.environ.get("TURBOVAED_PROFILES", "profiles")) / "calibration"
BITS = {"int8": (8, 8), "fp16": (16, 16), "fp32": (32, 32)}


# ---- the calibration nets: known conv models whose published timings we fit on ----------------------------

class Add(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Nearest(nn.Module):
    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


class PlainSR(nn.Module):
    """Plain super-resolution net: 3x3 convs at input resolution, a conv to 3*s*s channels, depth-to-space.
    QuickSRNet (Berger et al. 2023; aimet-model-zoo QuickSRNetBase: Hardtanh, optional 1x1 anchor conv added
    before the shuffle) and Real-ESRGAN's SRVGGNetCompact (PReLU, nearest-upsampled input added after)."""

    def __init__(self, channels: int, layers: int, scale: int, act: str, anchor: bool = False,
                 upsampled_skip: bool = False) -> None:
        super().__init__()
        widths = [3] + [channels] * (layers + 1)
        body = []
        for cin, cout in itertools.pairwise(widths):
            body += [nn.Conv2d(cin, cout, 3, padding=1), nn.PReLU(cout) if act == "prelu" else nn.Hardtanh(0.0, 1.0)]
        self.body = nn.Sequential(*body)
        self.last = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        self.anchor = nn.Conv2d(3, 3 * scale * scale, 1) if anchor else None
        self.add = Add()
        self.shuffle = nn.PixelShuffle(scale)
        self.up = Nearest(scale) if upsampled_skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.last(self.body(x))
        if self.anchor is not None:
            y = self.add(y, self.anchor(x))
        y = self.shuffle(y)
        return self.add(y, self.up(x)) if self.up is not None else y


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [nn.Conv2d(cin, hidden, 1), nn.ReLU6()] if expand != 1 else []
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden), nn.ReLU6(), nn.Conv2d(hidden, cout, 1)]
        self.block = nn.Sequential(*layers)
        self.add = Add() if stride == 1 and cin == cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add(x, self.block(x)) if self.add is not None else self.block(x)


class MobileNetV2(nn.Module):
    """MobileNet-v2 1.0 (Sandler et al. 2018) with batch norms folded into conv biases, as deployed."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self) -> None:
        super().__init__()
        layers, cin = [nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU6()], 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


NETS = {  # AI Hub's configurations: 4x super-resolution of 128x128 inputs; MobileNet-v2 at 224x224
    "quicksrnet-small": lambda: PlainSR(32, 2, 4, "hardtanh"),
    "quicksrnet-medium": lambda: PlainSR(32, 5, 4, "hardtanh"),
    "quicksrnet-large": lambda: PlainSR(64, 11, 4, "hardtanh", anchor=True),
    "real-esrgan-general-x4v3": lambda: PlainSR(64, 32, 4, "prelu", upsampled_skip=True),
    "mobilenet-v2": MobileNetV2,
}
NET_PASSES = {"Add": 3, "PixelShuffle": 2, "PReLU": 2, "Nearest": lambda m: lambda x, y: x.numel() + y.numel(),
              "AdaptiveAvgPool2d": lambda m: lambda x, y: x.numel()}


SIZES = {"mobilenet-v2": (224, 112)}  # others: AI Hub's 128x128 and smaller


def sizes(name: str, smallest: int = 32) -> list[int]:
    return [s for s in SIZES.get(name, (128, 64, 32)) if s >= smallest]


def seeded_net(name: str) -> nn.Module:
    """A calibration net with variance-preserving weights: default init shrinks activations layer after layer
    into denormal floats, which real weights do not produce and which are ~10x slower on x86."""
    torch.manual_seed(0)
    model = NETS[name]().eval()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def export_net(name: str, chw: tuple[int, int, int], backend: str, precision: str, out: Path) -> Path:
    """The net exported by our own backend (the convert() our artifacts go through); returns the artifact."""
    from turbovaed.export.core import backend_module
    from turbovaed.export.recipe import ConvertOptions

    out.mkdir(parents=True)
    calib = [(torch.rand(1, *chw),) for _ in range(4)]
    info = backend_module(backend).convert(seeded_net(name), calib[0], ConvertOptions(precision), calib, out,
                                           (["x"], ["y"]))
    return out / info["artifact"]


@cache
def net_costs(name: str, input_chw: tuple[int, int, int]):
    """Per-layer costs of one call of a calibration net on a (C, H, W) input, counted like the student's."""
    if name not in NETS:
        raise InputError(f"calibration point names an unknown net {name!r} (known: {', '.join(NETS)})")
    with torch.device("meta"):
        model = NETS[name]()
        costs = traced_costs(model, torch.empty(1, *input_chw), NET_PASSES)
    # the published points come from runtimes that fuse a conv's ReLU (TFLite, Core ML, ONNX Runtime, QNN)
    return relus_fused(costs, fused=True)


# ---- points and fits ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    net: str
    input: tuple[int, int, int]  # (C, H, W)
    device: str  # catalog id, or "host" with the unit's measured peaks in `unit_spec`
    unit: str  # npu | cpu | gpu | ane
    compute: str  # int8 | fp16 | fp32: what the unit computes in
    runtime: str
    ms: float
    source: str
    unit_spec: Unit | None = None  # the unit as measured with the point (host points), else the catalog's

    @property
    def label(self) -> str:
        return f"{self.net} {'x'.join(map(str, self.input[1:]))} {self.device} {self.unit} {self.compute} {self.runtime}"


def load_points(*directories: Path) -> list[Point]:
    """Every calibration point: points.toml (published, each with its source), host-cpu.json (measured by
    benchmarks/calibrate_host.py, with the host's measured peaks) and the points `turbovaed profile calibrate`
    measured on the user's devices (LOCAL_DIR). Default: the packaged folder and LOCAL_DIR."""
    folders = {Path(d).resolve(): Path(d) for d in (directories or (POINTS_DIR, LOCAL_DIR)) if Path(d).is_dir()}
    raw = []
    for directory in folders.values():
        for path in sorted([*directory.glob("*.toml"), *directory.glob("*.json")], key=lambda f: (f.suffix != ".toml", f.name)):
            try:
                data = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
            except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
                raise InputError(f"calibration points file {path} does not parse: {err}") from err
            raw += [(path, p) for p in data.get("points", [])]
    points = []
    for path, p in raw:
        try:
            spec = p.pop("unit_spec", None)
            points.append(Point(**{**p, "input": tuple(p["input"])}, unit_spec=Unit(**spec) if spec else None))
        except (TypeError, KeyError) as err:
            raise InputError(f"calibration point in {path} is invalid ({err}): {p}") from err
        if points[-1].compute not in BITS:
            raise InputError(f"calibration point in {path} has compute {points[-1].compute!r}; use one of {list(BITS)}")
    return points


def features(point: Point, catalog: dict[str, Device]) -> tuple[int, float]:
    """(dispatched ops, roofline seconds) of a point, on its unit."""
    unit = point.unit_spec
    if unit is None:
        if point.device not in catalog or point.unit not in catalog[point.device].units:
            raise InputError(f"calibration point {point.label}: no unit {point.unit!r} for {point.device!r} in the catalog")
        unit = catalog[point.device].units[point.unit]
    est = roofline(net_costs(point.net, point.input), unit, *BITS[point.compute])
    return est["ops"], est["roofline_seconds"]


@dataclass(frozen=True)
class Fit:
    cls: str
    per_call_s: float
    per_op_s: float
    k: float  # roofline multiplier
    points: int
    worst_loo_ratio: float | None = None  # max over points of max(est/published, published/est), left out

    def predict(self, ops: int, roofline_seconds: float) -> float:
        return self.per_call_s + self.per_op_s * ops + self.k * roofline_seconds

    def describe(self) -> dict:
        return {"class": self.cls, "per_call_ms": self.per_call_s * 1e3, "per_op_us": self.per_op_s * 1e6,
                "roofline_factor": self.k, "points": self.points,
                "worst_leave_one_out_ratio": self.worst_loo_ratio}


def nnls_relative(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error: min sum(((x @ b) - t) / t)^2, b >= 0, by trying every
    set of active coefficients (three of them: eight solves)."""
    a, y = x / t[:, None], np.ones_like(t)
    best, best_err = np.zeros(x.shape[1]), np.inf
    for mask in itertools.product([False, True], repeat=x.shape[1]):
        if not any(mask):
            continue
        cols = np.flatnonzero(mask)
        b_sub, *_ = np.linalg.lstsq(a[:, cols], y, rcond=None)
        if (b_sub < 0).any():
            continue
        b = np.zeros(x.shape[1])
        b[cols] = b_sub
        err = float(((a @ b - y) ** 2).sum())
        if err < best_err:
            best, best_err = b, err
    return best


def fit_points(cls: str, rows: list[tuple[int, float, float]]) -> Fit:
    """Fit one class from (dispatched ops, roofline seconds, measured seconds) rows."""
    x = np.array([[1.0, ops, roof] for ops, roof, _ in rows])
    t = np.array([measured for *_, measured in rows])
    b = nnls_relative(x, t)
    return Fit(cls, float(b[0]), float(b[1]), float(b[2]), len(rows))


MIN_DEVICE_POINTS = 6  # a device gets a fit of its own (class@device) from this many points of a class (3 terms)


def _rows(points: list[Point], catalog: dict[str, Device]) -> dict[str, list[tuple[Point, int, float]]]:
    """Points per class, plus per class@device where a phone or Mac has enough points of its own."""
    by_cls: dict[str, list] = {}
    for p in points:
        ops, roof = features(p, catalog)
        cls = calibration_class(p.unit, p.compute, p.runtime)
        by_cls.setdefault(cls, []).append((p, ops, roof))
        if p.device != "host":
            by_cls.setdefault(f"{cls}@{p.device}", []).append((p, ops, roof))
    return {cls: rows for cls, rows in by_cls.items() if "@" not in cls or len(rows) >= MIN_DEVICE_POINTS}


def leave_one_out(points: list[Point] | None = None, catalog: dict[str, Device] | None = None) -> list[dict]:
    """Per point: the estimate from the fit on all points of its class, and from the fit without it (what
    an unseen model gets), each divided by the measurement."""
    points, catalog = load_points() if points is None else points, load_catalog() if catalog is None else catalog
    table = []
    for cls, rows in _rows(points, catalog).items():
        full = fit_points(cls, [(n, r, p.ms / 1e3) for p, n, r in rows])
        for i, (p, n, r) in enumerate(rows):
            others = [(n2, r2, p2.ms / 1e3) for j, (p2, n2, r2) in enumerate(rows) if j != i]
            loo = fit_points(cls, others) if len(others) >= 3 else None
            table.append({"class": cls, "point": p.label, "net": p.net, "device": p.device, "unit": p.unit,
                          "compute": p.compute, "runtime": p.runtime, "ops": n, "roofline_ms": r * 1e3,
                          "measured_ms": p.ms, "fit_ms": full.predict(n, r) * 1e3,
                          "loo_ms": loo.predict(n, r) * 1e3 if loo else None, "source": p.source})
    for row in table:
        row["loo_ratio"] = row["loo_ms"] / row["measured_ms"] if row["loo_ms"] is not None else None
    return table


def fits(points: list[Point] | None = None, catalog: dict[str, Device] | None = None) -> dict[str, Fit]:
    """One fit per calibration class, carrying its worst leave-one-out ratio."""
    points, catalog = load_points() if points is None else points, load_catalog() if catalog is None else catalog
    worst: dict[str, float] = {}
    for row in leave_one_out(points, catalog):
        if row["loo_ratio"]:
            worst[row["class"]] = max(worst.get(row["class"], 1.0), row["loo_ratio"], 1 / row["loo_ratio"])
    return {cls: replace(fit_points(cls, [(n, r, p.ms / 1e3) for p, n, r in rows]), worst_loo_ratio=worst.get(cls))
            for cls, rows in _rows(points, catalog).items()}
