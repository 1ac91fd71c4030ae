"""The iOS and Android apps cannot be built here; what can be checked is that the profile records their
code writes are the project's schema: every key they write is a schema field, every required field is
written, and a record with exactly those keys validates."""

import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from turbovaed.profile import schema
from turbovaed.profile.devices import load_catalog

APPS = Path(__file__).resolve().parents[1] / "device_apps"


def schema_keys(cls=schema.Record, prefix="") -> tuple[set[str], set[str]]:
    """(all keys, required keys), nested objects as 'latency.median_ms'."""
    every, required = set(), set()
    for f in fields(cls):
        key = prefix + f.name
        every.add(key)
        if f.default is MISSING and f.default_factory is MISSING:
            required.add(key)
        nested = {"latency": schema.Latency, "ops": schema.Ops}.get(f.name) if not prefix else None
        if nested:
            e, r = schema_keys(nested, key + ".")
            every |= e
            required |= r if key in required else set()
    return every, required


def snake(name: str) -> str:
    """Swift's JSONEncoder.KeyEncodingStrategy.convertToSnakeCase for these names."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def swift_keys() -> set[str]:
    src = (APPS / "ios" / "TurboVAEDDemo" / "Benchmark.swift").read_text()
    body = src[src.index("struct ProfileRecord"):src.index("enum Benchmark")]
    keys, scope = set(), ""
    for line in body.splitlines():
        if m := re.match(r"\s*struct (\w+): Encodable \{(.*)\}", line):  # one-line nested struct
            parent = {"Latency": "latency.", "Ops": "ops."}[m.group(1)]
            keys |= {parent + snake(n) for n in re.findall(r"let (\w+):", m.group(2))}
        elif m := re.match(r"\s*let (\w+):", line):
            keys.add(scope + snake(m.group(1)))
    return keys


def kotlin_keys() -> set[str]:
    src = (APPS / "android" / "app" / "src" / "main" / "java" / "dev" / "turbovaed" / "demo" / "Benchmark.kt").read_text()
    body = src[src.index("return JSONObject()"):]
    keys = set()
    for line in body.splitlines():
        names = re.findall(r'\.put\("(\w+)"', line)
        if not names:
            continue
        if len(names) > 1 or "JSONObject().put" in line:  # .put("latency", JSONObject().put("median_ms", ...)...)
            keys.add(names[0])
            keys |= {f"{names[0]}.{n}" for n in names[1:]}
        else:
            keys.add(names[0])
    return keys


@pytest.mark.parametrize("app,extract", [("ios", swift_keys), ("android", kotlin_keys)])
def test_app_records_match_the_schema(app, extract):
    every, required = schema_keys()
    keys = extract()
    assert keys - every == set(), f"{app} writes keys the schema does not know"
    assert required - keys == set(), f"{app} does not write required fields"
    record: dict = {}
    for key in sorted(keys):  # a record with exactly those keys, typed as the app's code types them
        parent, _, leaf = key.rpartition(".")
        target = record.setdefault(parent, {}) if parent else record
        if leaf in ("latency", "ops"):
            target.setdefault(leaf, {})
            continue
        target[leaf] = {"input_shape": [1, 16, 3, 16, 16], "frames": 9, "runs": 20, "warmup": 3, "threads": 4,
                        "device": "pixel-8" if app == "android" else "iphone-16-pro", "source": "measured-device-app",
                        "median_ms": 20.0, "p10_ms": 18.0, "p90_ms": 25.0, "fps": 450.0, "first_load_ms": 120.0,
                        "first_inference_ms": 30.0, "warm_load_ms": 40.0,
                        "peak_memory_mb": 80.0, "delegated": None, "total": None, "status": "ok"}.get(leaf, "x")
    validated = schema.validate(record, set(load_catalog()))
    assert validated.source == "measured-device-app"


def test_apps_read_the_bundle_files_the_exporter_writes():
    from turbovaed.export.core import BUNDLE_FORMAT

    for path in [APPS / "web" / "app.js", APPS / "ios" / "TurboVAEDDemo" / "AppBundle.swift",
                 APPS / "android" / "app" / "src" / "main" / "java" / "dev" / "turbovaed" / "demo" / "AppBundle.kt"]:
        src = path.read_text()
        assert BUNDLE_FORMAT in src and "bundle.json" in src, path
        assert "reference_frames" in src or path.suffix == ".js", path
        assert "input_latents" in src, path  # each app states which latents it feeds
        assert "streaming step-graph bundle" in src, path  # and refuses streaming bundles it cannot run


def test_android_project_is_buildable_as_committed():
    """What a fresh checkout needs for `./gradlew installDebug`: AndroidX enabled, a wrapper pinned by sha256
    (jar present), and the benchmark reading its settings from intent extras and loading before the timer
    stops (checked as text: no Android SDK here)."""
    import hashlib

    android = APPS / "android"
    assert "android.useAndroidX=true" in (android / "gradle.properties").read_text()
    props = (android / "gradle" / "wrapper" / "gradle-wrapper.properties").read_text()
    assert "gradle-8.13-bin.zip" in props and "distributionSha256Sum=20f1b117" in props
    jar = (android / "gradle" / "wrapper" / "gradle-wrapper.jar").read_bytes()
    assert hashlib.sha256(jar).hexdigest().startswith("81a82aae")  # Gradle 8.13's wrapper jar
    assert (android / "gradlew").stat().st_mode & 0o111
    src = android / "app" / "src" / "main" / "java" / "dev" / "turbovaed" / "demo"
    assert 'getString("sha256")' in (src / "AppBundle.kt").read_text()  # cache keyed by content
    decoders = (src / "Decoders.kt").read_text()
    assert 'loadMethod("forward")' in decoders and "CompiledModel.create" in decoders
    main = (src / "MainActivity.kt").read_text()
    assert all(f'"{extra}"' in main for extra in ("runs", "warmup", "threads", "unit", "benchmark"))
