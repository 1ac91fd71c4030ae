"""The profile record: one measurement (or estimate) of one artifact on one device x runtime x precision.

Shaped after Qualcomm AI Hub's perf tables and LiteRT's benchmark_model output. Records are JSON; the device
apps write the same schema. `source` keeps measurements and estimates apart: measured-host,
measured-device-app or estimate. The field list with meanings is in profiles/README.md."""

from __future__ import annotations

import json
import os
import statistics
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from turbovaed.io import InputError, atomic_file

SCHEMA_VERSION = 2
SOURCES = ("measured-host", "measured-device-app", "estimate")
STATUSES = ("ok", "failed")
# Under the working directory (the repository root in a checkout, where the committed records live).
RESULTS_DIR = Path(os.environ.get("TURBOVAED_PROFILES", "profiles")) / "results"


@dataclass
class Latency:
    median_ms: float
    p10_ms: float
    p90_ms: float

    @classmethod
    def from_times_ms(cls, times: list[float]) -> Latency:
        """Median and p10 / p90 (inclusive quantiles) of timed runs; the band never leaves out the median."""
        q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
        med = statistics.median(times)
        return cls(med, min(q[0], med), max(q[-1], med))


@dataclass
class Ops:
    delegated: Optional[int] = None  # ops running in the accelerator delegate / compute unit
    total: Optional[int] = None

    @classmethod
    def from_manifest(cls, ops: dict) -> Ops:
        """From an export manifest's op counts (delegated + not_delegated, or total)."""
        if "delegated" in ops:
            return cls(ops["delegated"], ops["delegated"] + ops.get("not_delegated", 0))
        return cls(None, ops.get("total"))


@dataclass
class Record:
    model: str  # the student (checkpoint folder name or preset)
    model_sha256: str  # of the student's weights ("" for a preset with random weights)
    artifact: str  # export recipe name, or "eager" for PyTorch
    artifact_sha256: str
    device: str  # id in profiles/devices/
    runtime: str  # pytorch | executorch | onnxruntime | litert | coreml | onnxruntime-web
    runtime_version: str
    precision: str  # fp32 | fp16 | int8 | int8-dynamic | int4 | palettize4
    compute_unit: str  # cpu | gpu | ane | npu | wasm | webgpu (+ delegate, e.g. cpu/xnnpack)
    input_shape: list[int]  # latents (B, C, T, h, w) per call
    frames: int  # output frames per call
    latency: Optional[Latency]  # None only for a failed run
    fps: Optional[float]
    source: str
    status: str = "ok"  # ok | failed (failed runs are recorded too, with the error)
    error: str = ""
    precision_meaning: str = ""  # weights/activations, e.g. "W8A8 static", "W4A16 weight-only"
    runs: int = 0  # timed runs (0 for estimates)
    warmup: int = 0
    threads: Optional[int] = None
    first_load_ms: Optional[float] = None  # load in a fresh process (incl. weight packing / compilation)
    warm_load_ms: Optional[float] = None  # a second load in the same process (runtime and files warm)
    first_inference_ms: Optional[float] = None  # the first call after loading (lazy allocations, JIT)
    peak_memory_mb: Optional[float] = None
    memory_method: str = ""  # how peak_memory_mb was measured on this runtime
    hw_model: Optional[str] = None  # e.g. getprop ro.product.model, or the host's CPU
    soc: Optional[str] = None
    os_version: Optional[str] = None
    ops: Ops = field(default_factory=Ops)
    estimate: dict[str, Any] = field(default_factory=dict)  # roofline inputs, for source = estimate only
    notes: str = ""
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return asdict(self)


def _check(value: Any, hint: Any, where: str) -> Any:
    """Validate (and build nested dataclasses for) one field; InputError names the field."""
    origin = get_origin(hint)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        return _check(value, next(a for a in get_args(hint) if a is not type(None)), where)
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        if not isinstance(value, dict):
            raise InputError(f"profile record field '{where}' must be an object, got {type(value).__name__}")
        return _build(hint, value, where + ".")
    if origin is list:
        (item,) = get_args(hint)
        if not isinstance(value, list):
            raise InputError(f"profile record field '{where}' must be a list, got {type(value).__name__}")
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"profile record field '{where}' must be an object, got {type(value).__name__}")
        return value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise InputError(f"profile record field '{where}' must be {hint.__name__}, got {value!r}")
    return float(value) if hint is float else value


def _build(cls: type, data: dict, prefix: str = ""):
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"profile record has unknown field '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = _check(data[f.name], hints[f.name], prefix + f.name)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise InputError(f"profile record is missing field '{prefix}{f.name}'")
    return cls(**kwargs)


def upgrade(data: dict) -> dict:
    """Schema 1 -> 2: `load_ms` became `first_load_ms`; schema-1 host memory came from a shared process."""
    if data.get("schema_version") != 1:
        return data
    data = {k: v for k, v in data.items() if k != "load_ms"} | {"first_load_ms": data.get("load_ms"),
                                                                 "schema_version": 2}
    if data.get("source") == "measured-host" and data.get("peak_memory_mb") is not None:
        data["memory_method"] = "RSS growth in a profiling process shared with other artifacts (schema 1)"
    return data


def validate(data: dict, devices: set[str] | None = None) -> Record:
    """A Record from JSON data, or one InputError naming the first bad field."""
    if not isinstance(data, dict):
        raise InputError(f"a profile record must be a JSON object, got {type(data).__name__}")
    record = _build(Record, upgrade(data))
    if record.source not in SOURCES:
        raise InputError(f"profile record field 'source' must be one of {SOURCES}, got {record.source!r}")
    if record.status not in STATUSES:
        raise InputError(f"profile record field 'status' must be one of {STATUSES}, got {record.status!r}")
    if record.schema_version != SCHEMA_VERSION:
        raise InputError(f"profile record field 'schema_version' is {record.schema_version}; this turbovaed reads "
                         f"1 and {SCHEMA_VERSION}")
    if record.status == "failed":
        if not record.error:
            raise InputError("profile record with status 'failed' must say why in field 'error'")
        return _check_device(record, devices)
    lat = record.latency
    if lat is None or record.fps is None:
        raise InputError("profile record fields 'latency' and 'fps' are required unless status is 'failed'")
    if not 0 < lat.p10_ms <= lat.median_ms <= lat.p90_ms:
        raise InputError(f"profile record field 'latency' needs 0 < p10_ms <= median_ms <= p90_ms, got {asdict(lat)}")
    if record.frames < 1 or record.fps <= 0:
        raise InputError("profile record fields 'frames' and 'fps' must be positive")
    if record.source == "estimate" and not record.estimate:
        raise InputError("profile record with source 'estimate' must carry its roofline inputs in field 'estimate'")
    if record.source != "estimate" and record.runs < 1:
        raise InputError("profile record field 'runs' must be >= 1 for a measurement")
    return _check_device(record, devices)


def _check_device(record: Record, devices: set[str] | None) -> Record:
    if devices is not None and record.device not in devices:
        raise InputError(f"profile record field 'device' is {record.device!r}, not in the device catalog "
                         f"(profiles/devices: {', '.join(sorted(devices))})")
    return record


def save(records: list[Record], name: str, results_dir: Path = RESULTS_DIR) -> Path:
    """Append a batch of records as one JSON file under profiles/results/ (atomic)."""
    path = Path(results_dir) / f"{name}.json"
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps([r.to_dict() for r in records], indent=1))
    return path


def load_all(results_dir: Path = RESULTS_DIR, devices: set[str] | None = None) -> list[Record]:
    """Every record under results_dir, each validated; a bad file is an InputError naming the file."""
    out = []
    for path in sorted(Path(results_dir).glob("*.json")):
        out += load_file(path, devices)
    return out


def load_file(path: Path, devices: set[str] | None = None) -> list[Record]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not a readable JSON profile record file: {err}") from err
    items = data if isinstance(data, list) else [data]
    records = []
    for i, item in enumerate(items):
        try:
            records.append(validate(item, devices))
        except InputError as err:
            raise InputError(f"{path} record {i}: {err}") from err
    return records
