"""One lab command at a time: the run lock of tools/runlock.py (an flock the kernel drops when its holder
dies, so a lock file left by a killed run never blocks) on a file in the cache, waited for."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from lab import layout
from lab.errors import LabError
from tools.polling import poll_until
from tools.runlock import try_lock

TIMEOUT_ENV = "POC1_LAB_LOCK_TIMEOUT_S"  # how long to wait for another lab command (default 900 s)


def _holder() -> str:
    try:
        return layout.LOCK_FILE.read_text(errors="replace").strip() or "?"
    except OSError:
        return "?"


@contextmanager
def held(timeout: float | None = None) -> Iterator[None]:
    if timeout is None:
        timeout = float(os.environ.get(TIMEOUT_ENV) or 900)
    layout.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    told: list[str] = []

    def attempt() -> int | None:
        fd = try_lock(layout.LOCK_FILE, str(os.getpid()), mode=0o600)
        if fd is None and not told:
            told.append(_holder())
            print(f"lab: waiting for another lab command (pid {told[0]})", flush=True)
        return fd

    got, fd = poll_until(attempt, lambda fd: fd is not None, timeout=timeout, interval=1.0)
    if not got or fd is None:
        raise LabError(f"another lab command (pid {_holder()}) still holds {layout.LOCK_FILE} "
                       f"after {timeout:.0f} s")
    try:
        yield
    finally:
        os.close(fd)  # releases the flock
