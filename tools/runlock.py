"""A non-blocking run lock: an flock on a file, released by the kernel when its holder dies, so a
lock file left behind by a killed run never blocks the next one."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


def try_lock(path: Path, note: str, mode: int = 0o644) -> int | None:
    """The held lock's fd (keep it open for the run), or None when another process holds it.

    ``note`` is written into the file so a refused run can say who holds the lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{note}\n".encode())
    return fd
