"""One writer per work folder. Each rank of a run holds an exclusive lock on its own file in WORK/.lock/ for as
long as it runs: a second run on the same folder (a `--resume` started while workers of the first still train,
after only `torchrun` was killed) is refused with the holder's name before it does anything. The lock is the
kernel's (flock): it goes with its process, kill -9 included, so a dead run's lock is simply taken over."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
from pathlib import Path
from typing import TextIO

from turbovaed.io import TurboVAEDError

_held: dict[Path, TextIO] = {}


class RunLockedError(TurboVAEDError):
    """Another live run writes into the same work folder."""


def acquire(work: Path, rank: int) -> None:
    """Take this rank's lock on `work` (kept until `release`), or refuse naming the run that holds it."""
    path = work / ".lock" / f"rank-{rank}"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (held open: the lock lives as long as the file descriptor)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise RunLockedError(f"{work} is in use by another live run ({_describe(holder)}): wait for it to end, or "
                             "stop all of its processes first (killing torchrun alone leaves its workers "
                             "running)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "rank": rank,
                             "job": os.environ.get("TORCHELASTIC_RUN_ID", ""),
                             "since": datetime.datetime.now().isoformat(timespec="seconds")}))
    handle.flush()
    _held[work] = handle


def release(work: Path) -> None:
    """Drop this rank's lock; a work folder that holds nothing but locks (a run refused before any work) goes."""
    handle = _held.pop(work, None)
    if handle is not None:
        handle.close()
        if work.is_dir() and {p.name for p in work.iterdir()} == {".lock"}:
            shutil.rmtree(work, ignore_errors=True)


def _describe(holder: str) -> str:
    try:
        h = json.loads(holder)
        return f"pid {h['pid']} on {h['host']}, rank {h['rank']}, since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
