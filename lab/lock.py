"""One lab command at a time: an flock on a file in the cache (the kernel drops it when its holder dies,
so a lock file left by a killed run never blocks)."""
from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from lab import layout
from lab.errors import LabError


TIMEOUT_ENV = "POC1_LAB_LOCK_TIMEOUT_S"  # how long to wait for another lab command (default 900 s)


@contextmanager
def held(timeout: float | None = None) -> Iterator[None]:
    if timeout is None:
        timeout = float(os.environ.get(TIMEOUT_ENV) or 900)
    layout.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                if time.monotonic() > deadline:
                    raise LabError(f"another lab command (pid {holder}) still holds {layout.LOCK_FILE} "
                                   f"after {timeout:.0f} s") from None
                if not told:
                    print(f"lab: waiting for another lab command (pid {holder})", flush=True)
                    told = True
                time.sleep(1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock
