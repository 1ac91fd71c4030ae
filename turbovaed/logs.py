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


@contextlib.contextmanager
def capture(log: Path | None, verbose: bool = False) -> Iterator[Path | None]:
    """Send fd 1 and 2 to `log` (appended) for the duration; turbovaed's own output keeps the terminal.
    Nested captures and `verbose` (or no log) leave everything as it is."""
    if verbose or log is None or _terminal:
        yield None
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {"out": os.dup(1), "err": os.dup(2)}
    with open(log, "a", buffering=1) as sink:
        for which, fd in (("out", 1), ("err", 2)):
            stream = sys.stdout if which == "out" else sys.stderr
            real = _fileno(stream) == fd  # a stand-in stream (e.g. a test's buffer) never reaches the fd
            _terminal[which] = os.fdopen(os.dup(saved[which]), "w", buffering=1) if real else stream
            os.dup2(sink.fileno(), fd)
        try:
            yield log
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for which, fd in (("out", 1), ("err", 2)):
                os.dup2(saved[which], fd)
                os.close(saved[which])
                term = _terminal.pop(which)
                if term not in (sys.stdout, sys.stderr):
                    term.close()


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def written(log: Path | None) -> bool:
    """Whether the log holds anything (the CLI names it only then)."""
    return log is not None and log.is_file() and log.stat().st_size > 0
