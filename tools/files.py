"""Writing a file so that a reader never sees half of it: a temp file beside it, then one rename.

Why one helper: the evidence writers, the run history, the trend page, the unit history and the bundle's
tarball all need the same guarantee (a killed run leaves the old file or the new one, never a torn one).
The logger's spool (gateway_logger/spool.py) keeps its own: it is deployed alone on the gateway.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: Path, mode: int = 0o644, *, fsync: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` (with ``mode``) when the block ends without an error; on an
    error the temp file is removed and ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644, *, fsync: bool = False) -> None:
    """``data`` (str as UTF-8) as the whole new content of ``path``, atomically."""
    with atomic_file(path, mode, fsync=fsync) as out:
        out.write(data.encode("utf-8") if isinstance(data, str) else data)
