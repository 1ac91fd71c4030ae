"""A quiet terminal: while a command runs, everything written to file descriptors 1 and 2 — third-party
Python warnings, progress bars, absl/oneDNN banners, converters' progress trees, native C++ log lines —
goes to a log file in the command's output folder, and turbovaed's own lines (`say`, the CLI's rich
consoles, progress bars built with `console()`) keep the terminal. `-v/--verbose` leaves everything live.

Redirecting at the descriptor level is what catches native writers (ExecuTorch's cpuinfo, Core AI's
runtime): they never see Python's sys.stdout."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from rich.console import Console

_terminal: dict[str, TextIO] = {}  # "out" / "err" -> the real terminal streams while capturing


class _Stream:
    """A file-like proxy to the terminal's stdout or stderr: the real one while capturing, else sys's."""

    def __init__(self, which: str):
        self.which = which

    def _target(self) -> TextIO:
        return _terminal.get(self.which) or (sys.stdout if self.which == "out" else sys.stderr)

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    def fileno(self) -> int:
        return self._target().fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._target(), "encoding", "utf-8")


STDOUT, STDERR = _Stream("out"), _Stream("err")


def console(stderr: bool = True, **kwargs) -> Console:
    """A rich console that writes to the terminal even while third-party output is captured."""
    return Console(file=STDERR if stderr else STDOUT, **kwargs)


def say(message: str) -> None:
    """One of turbovaed's own status lines (stderr: results stay alone on stdout)."""
    print(message, file=STDERR, flush=True)


class Captured:
    """Where the captured output ended up (None while capturing, or when nothing was written)."""

    path: Path | None = None


@contextlib.contextmanager
def capture(log: Path | None, verbose: bool = False) -> Iterator[Captured]:
    """Send fd 1 and 2 to a temporary log for the duration; turbovaed's own output keeps the terminal. On
    success a non-empty log is appended to `log` (the command's output folder); after a failure it stays in
    the temp folder, so a failed command leaves nothing in its output folder. Nested captures, `verbose` or
    no `log` leave everything as it is."""
    result = Captured()
    if verbose or log is None or _terminal:
        yield result
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    fd, name = tempfile.mkstemp(prefix="turbovaed-", suffix=".log")
    saved = {"out": os.dup(1), "err": os.dup(2)}
    ok = False
    try:
        for which, target in (("out", 1), ("err", 2)):
            stream = sys.stdout if which == "out" else sys.stderr
            real = _fileno(stream) == target  # a stand-in stream (e.g. a test's buffer) never reaches the fd
            _terminal[which] = os.fdopen(os.dup(saved[which]), "w", buffering=1) if real else stream
            os.dup2(fd, target)
        yield result
        ok = True
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for which, target in (("out", 1), ("err", 2)):
            os.dup2(saved[which], target)
            os.close(saved[which])
            term = _terminal.pop(which, None)
            if term is not None and term not in (sys.stdout, sys.stderr):
                term.close()
        os.close(fd)
        result.path = _keep(Path(name), log if ok else None)


def _keep(temp: Path, log: Path | None) -> Path | None:
    """An empty capture is deleted; a successful one is appended to `log`; a failed one stays where it is."""
    if temp.stat().st_size == 0:
        temp.unlink()
        return None
    if log is None:
        return temp
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as sink:
        sink.write(temp.read_bytes())
    temp.unlink()
    return log


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
