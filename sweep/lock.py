"""One driver per sweep: a lock in the sweep's results folder, held while it runs.

A second ``sweep run`` (or ``--resume``) of the same sweep while one runs would share its Ray Tune state, its
Optuna study and its parent run, and corrupt all three; it is refused in one line that names the running one. The
lock is the kernel's (``flock``): a driver killed with -9 leaves nothing to clean up. (On a network file system
where ``flock`` is not shared between machines, two machines are not kept apart by it.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sweep.errors import SweepError

LOCK_FILE = ".running"


def acquire(root: Path, name: str) -> int:
    """Take sweep ``name``'s lock in ``root`` (its file descriptor: closing it releases the lock); refuse at once
    when another process holds it."""
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SweepError(f"sweep '{name}' is running already ({_holder(path)}); wait for it to end") from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    return fd


@contextmanager
def held() -> Iterator[list[int]]:
    """A place for the locks a block takes (:func:`acquire`); all released when it ends."""
    fds: list[int] = []
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"process {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError):
        return f"its lock is {path}"
