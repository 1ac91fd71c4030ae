"""A quiet terminal: while a command runs, everything written to file descriptors 1 and 2 — third-party
Python warnings, progress bars, absl/oneDNN banners, converters' progress trees, native C++ log lines —
goes to a log file in the command's output folder, and turbovaed's own lines (`say`, the CLI's rich
consoles, progress bars built with `console()`) keep the terminal. `-v/--verbose` leaves everything live.

Redirecting at the descriptor level is what catches native writers (ExecuTorch's cpuinfo, Core AI's
runtime): they never see Python's sys.stdout.

Messages are printed as they are: the consoles interpret no markup (an extra such as `turbovaed[coreai]` or a
shape `[1, 16, 5, 32, 32]` reaches the terminal whole), and ANSI escapes are stripped from every message and
from the log file."""

from __future__ import annotations

import contextlib
import os
import re
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


_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


def plain(text: str) -> str:
    """Text without ANSI escape sequences (some libraries colour their exception messages)."""
    return _ANSI.sub("", text)


def console(stderr: bool = True, **kwargs) -> Console:
    """A rich console that writes to the terminal even while third-party output is captured. It reads no
    markup: styles are given as `style=` or `Text`, so square brackets in a message are printed as they are."""
    return Console(**{"file": STDERR if stderr else STDOUT, "markup": False, **kwargs})


def progress(*columns, disable: bool = False, **kwargs):
    """A rich progress bar on the terminal (transient), or nothing where the output is not a terminal: a log or a
    pipe gets no bar frames or blank lines (the callers print plain progress lines there)."""
    from rich.progress import Progress

    bar_console = console()
    return Progress(*columns, console=bar_console, transient=True, disable=disable or not bar_console.is_terminal,
                    **kwargs)


def say(message: str) -> None:
    """One of turbovaed's own status lines (stderr: results stay alone on stdout)."""
    print(plain(message), file=STDERR, flush=True)


_stage: dict[str, str] = {}


def stage(name: str, detail: str = "") -> None:
    """Announce a stage of the running command (in bold) and remember it, so a failure can say where it stopped."""
    from rich.text import Text

    _stage["now"] = name
    console().print(Text.assemble((name, "bold"), f" {detail}" if detail else ""))


def current_stage() -> str | None:
    return _stage.get("now")


def reset_stage() -> None:
    _stage.pop("now", None)


def complete_outputs(folder: Path, since: float) -> list[str]:
    """What a command wrote into its output folder since `since` (a time.time()), each written whole: every
    writer goes through a temp name and a rename, so a temp name is all a failed step can leave. A folder of
    folders (e.g. exports/) is listed by its children."""
    def new(entries) -> list[Path]:
        return sorted(e for e in entries if not e.name.startswith(".") and e.name != "turbovaed.log"
                      and e.stat().st_mtime >= since)

    found = []
    for entry in new(folder.iterdir()) if folder.is_dir() else []:
        children = new(entry.iterdir()) if entry.is_dir() else []
        if children and all(c.is_dir() for c in children):
            found += [f"{entry.name}/{c.name}/" for c in children]
        else:
            found.append(entry.name + ("/" if entry.is_dir() else ""))
    return found


class Captured:
    """Where the captured output ended up (None while capturing, or when nothing was written)."""

    path: Path | None = None


@contextlib.contextmanager
def capture(log: Path | None, verbose: bool = False) -> Iterator[Captured]:
    """Send fd 1 and 2 to a temporary log for the duration; turbovaed's own output keeps the terminal. A
    non-empty log is appended to `log` (in the command's output folder), after a failure too, so the reason
    stays beside the outputs. Nested captures, `verbose` or no `log` leave everything as it is."""
    result = Captured()
    if verbose or log is None or _terminal:
        yield result
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    fd, name = tempfile.mkstemp(prefix="turbovaed-", suffix=".log")
    saved = {"out": os.dup(1), "err": os.dup(2)}
    try:
        for which, target in (("out", 1), ("err", 2)):
            stream = sys.stdout if which == "out" else sys.stderr
            real = _fileno(stream) == target  # a stand-in stream (e.g. a test's buffer) never reaches the fd
            _terminal[which] = os.fdopen(os.dup(saved[which]), "w", buffering=1) if real else stream
            os.dup2(fd, target)
        yield result
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
        result.path = _keep(Path(name), log)


def _keep(temp: Path, log: Path) -> Path | None:
    """An empty capture is deleted; any other is appended to `log` without ANSI escapes. Where `log` cannot be
    written (its folder is unwritable), the capture stays in the temp folder and that path is returned."""
    if temp.stat().st_size == 0:
        temp.unlink()
        return None
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as sink:
            sink.write(plain(temp.read_text(encoding="utf-8", errors="replace")))
    except OSError:
        return temp
    temp.unlink()
    return log


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
