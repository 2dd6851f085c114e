"""The on-disk spool: JSONL segment files of normalized records, shared by every worker of a gateway (and
its later runs), replayed oldest first; unreadable segments go to ``quarantine/``, rows that can never be
written to ``dead-letter/``."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy.engine import make_url

import db_init
from gateway_logger.journal import RateLimitedSay, say, strerror
from gateway_logger.metrics import Stats


def spool_tag(url: str | None) -> str:
    """Names a spool's target database in its file names: a hash of backend, user, host, port and
    database only (not the password; not the query, so switching sslmode keeps the spool replayable)."""
    if not url:
        return hashlib.sha256(b"none").hexdigest()[:12]
    try:
        u = make_url(url)
        backend = u.get_backend_name()
        port = u.port or (5432 if backend == "postgresql" else None)  # libpq's default, said or not
        target = "|".join(str(part or "") for part in (backend, u.username, u.host, port, u.database))
    except Exception:  # an unusable URL gets no database either; its rows wait under their own tag
        target = db_init.mask_url(url)
    return hashlib.sha256(target.encode()).hexdigest()[:12]


class Segment(NamedTuple):
    """A spool segment taken for replay: flock'ed through ``fd`` until ``done`` or ``release``."""

    path: Path
    fd: int
    records: list[dict[str, Any]]


def _is_record(value: Any) -> bool:
    req = value.get("request") if isinstance(value, dict) else None
    return (isinstance(req, dict) and isinstance(req.get("request_id"), str)
            and isinstance(value.get("response"), dict))


def parse_segment(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """(records, unreadable lines) of a segment's bytes. Line by line and strictly: one bad line (not
    UTF-8, not JSON, torn by a crash) must cost that line, never the segment or the writer."""
    records, bad = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            bad += 1
            continue
        if _is_record(record):
            records.append(record)
        else:
            bad += 1
    return records, bad


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0


class Spool:
    """JSONL segment files of normalized records; bounded by ``max_rows``; replayed oldest first.

    Shared by every worker of a gateway (and its later runs). A segment is created under a hidden name,
    flock'ed, then renamed into view, so no other process can take it before its writer holds the lock;
    it stays locked while it is appended to. A segment taken for replay is locked too, and checked to be
    still the file of that name. Appends are fsync'd by ``sync()``: at once when asked (at shutdown),
    else right after by the writer's syncer thread (neither the event loop nor the spooling may wait for a
    disk). A failing disk is one episode: said once, rows refused (the caller keeps or counts
    them), retried once a second until a write succeeds.
    """

    QUARANTINE, DEAD_LETTER = "quarantine", "dead-letter"
    RETRY_S = 1.0

    def __init__(self, directory: str, max_rows: int, segment_rows: int, db_tag: str,
                 stats: Stats | None = None, segment_bytes: int = 8 << 20) -> None:
        self.dir = Path(directory)
        self.max_rows, self.segment_rows, self.db_tag = max_rows, segment_rows, db_tag
        self.segment_bytes = segment_bytes  #: a segment is replayed as one batch: the batch byte budget
        self.stats = stats or Stats()
        self._lock = threading.Lock()
        self._fd: int | None = None  # the live segment, appended to
        self._live = ""
        self._live_rows = self._live_size = 0
        self._unsynced: list[int] = []  # fds of retired segments not yet fsync'd and closed
        self._dirty = self._dir_dirty = False
        self._seq = 0
        self._counts: dict[str, tuple[int, int]] = {}  # segment name -> (size, rows)
        #: this spool's own segments still on disk -> (size, rows), exact: only ``append`` changes them,
        #: under ``_lock`` (``refresh`` scans without it, so its view of them may be out of date)
        self._own: dict[str, tuple[int, int]] = {}
        self.rows = 0
        self._failing: str | None = None  # cause of the current write-failure episode
        self._failed_at = 0.0
        self._dropped_before = 0
        self._said_skip: set[str] = set()
        self._rescued: set[str] = set()  # unreadable segments whose readable rows are spooled again
        self._say_sync = RateLimitedSay(60.0)
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            self._fail(exc)
        self.refresh()

    # -- appending ------------------------------------------------------------------------------

    def append(self, records: Iterable[dict[str, Any]], sync: bool = True) -> int:
        """Append as many as fit; returns how many were written (0 while the disk fails, until a retry)."""
        records = list(records)
        written = 0
        with self._lock:
            if self._failing and time.monotonic() - self._failed_at < self.RETRY_S:
                return 0
            todo = records[:max(0, self.max_rows - self.rows)]
            lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
                     for r in todo]
            try:
                while written < len(lines):
                    if self._fd is None:
                        self._open_segment()
                    n, size = 0, 0  # as many lines as the segment takes (an empty one takes at least one)
                    while written + n < len(lines):
                        line = len(lines[written + n])
                        if (self._live_rows + n >= self.segment_rows or self._live_size + size + line >
                                self.segment_bytes) and (n or self._live_rows):
                            break
                        size += line
                        n += 1
                    if n == 0:
                        self._retire_live()
                        continue
                    try:
                        _write_all(self._fd, b"".join(lines[written:written + n]))  # type: ignore[arg-type]
                    except OSError:
                        os.ftruncate(self._fd, self._live_size)  # type: ignore[arg-type]  # no torn line left
                        raise
                    written += n
                    self._live_rows += n
                    self._live_size += size
                    self.rows += n
                    self._counts[self._live] = self._own[self._live] = (self._live_size, self._live_rows)
                    self._dirty = True
                    if self._live_rows >= self.segment_rows or self._live_size >= self.segment_bytes:
                        self._retire_live()
            except OSError as exc:
                self._fail(exc)
            else:
                if self._failing and todo:
                    self._recovered()
        if sync and written:
            self.sync()
        return written

    def _open_segment(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # it may have gone, or never been made
        self._seq += 1
        name = f"spool-{self.db_tag}-{time.time_ns()}-{os.getpid()}-{self._seq}.jsonl"
        hidden = self.dir / f".{name}.new"  # not matched by any reader's glob
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(hidden, self.dir / name)  # visible only now, already locked
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                hidden.unlink()
            raise
        self._fd, self._live, self._live_rows, self._live_size = fd, name, 0, 0
        self._dir_dirty = True

    def _retire_live(self) -> None:
        """The live segment is complete: fsync and close it (which releases its lock) in ``sync``."""
        if self._fd is not None:
            self._unsynced.append(self._fd)
            self._fd, self._live = None, ""

    def sync(self) -> None:
        """fsync what was appended (then close retired segments, making them replayable by anyone)."""
        with self._lock:
            fds, self._unsynced = self._unsynced, []
            live = os.dup(self._fd) if self._fd is not None and self._dirty else None
            directory, self._dirty, self._dir_dirty = self._dir_dirty, False, False
        try:
            for fd in fds + ([live] if live is not None else []):
                try:
                    os.fsync(fd)
                except OSError as exc:
                    self._say_sync(f"spool fsync failed in {self.dir}: {strerror(exc)}")
                finally:
                    os.close(fd)
            if directory:
                dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            self._say_sync(f"spool fsync failed in {self.dir}: {strerror(exc)}")

    def close(self) -> None:
        with self._lock:
            self._retire_live()
        self.sync()

    def _fail(self, exc: OSError) -> None:
        if self._failing is None:
            self._dropped_before = self.stats["rows_dropped"]
            self.stats.add("spool_write_failures")
            say(f"spool write failed in {self.dir}: {strerror(exc)}; rows that do not fit in memory are "
                "dropped (counted in gateway_logger_rows_dropped_total) until it can be written again")
        self._failing, self._failed_at = strerror(exc), time.monotonic()
        if self._fd is not None:  # start the next rows in a fresh segment
            self._retire_live()

    def _recovered(self) -> None:
        dropped = self.stats["rows_dropped"] - self._dropped_before
        say(f"spool writable again in {self.dir} (it failed with: {self._failing}); {dropped} row(s) dropped "
            "meanwhile")
        self._failing = None

    @property
    def failing(self) -> bool:
        return self._failing is not None

    @property
    def full(self) -> bool:
        return self.rows >= self.max_rows

    # -- counting and replaying -------------------------------------------------------------------

    def _names(self) -> list[str]:
        prefix = f"spool-{self.db_tag}-"
        try:
            with os.scandir(self.dir) as entries:
                return [e.name for e in entries if e.name.startswith(prefix) and e.name.endswith(".jsonl")]
        except OSError:
            return []

    def refresh(self) -> int:
        """Rows on disk for this database, whoever wrote them (other workers, earlier runs)."""
        counts: dict[str, tuple[int, int]] = {}
        for name in self._names():
            try:
                size = os.stat(self.dir / name).st_size
            except OSError:
                continue
            known = self._counts.get(name)
            if known is not None and known[0] == size:
                counts[name] = known
                continue
            counts[name] = (size, _count_lines(self.dir / name))
        with self._lock:
            # the scan ran without the lock: appends made meanwhile (even whole segments, opened and
            # retired) are missing from it, and counting from it alone let the spool grow past max_rows
            for name, known in list(self._own.items()):
                if name in counts or (self.dir / name).exists():
                    counts[name] = known
                else:  # replayed or moved aside by someone
                    del self._own[name]
            self._counts = counts
            self.rows = sum(rows for _, rows in counts.values())
        return self.rows

    def take(self) -> Segment | None:
        """The oldest segment nobody holds, flock'ed. This process's live segment is closed first, so its
        rows become replayable. A segment with unreadable lines is quarantined on the way (see
        ``_quarantine``) and the next one taken: a bad file never blocks the ones behind it."""
        with self._lock:
            self._retire_live()
        self.sync()
        self.refresh()
        for name in sorted(set(self._counts) - self._rescued):  # names start with time_ns: oldest first
            path = self.dir / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino != os.stat(path).st_ino:  # replayed and removed meanwhile; a new file
                    raise FileNotFoundError(path)
                with open(fd, "rb", closefd=False) as f:
                    data = f.read()
            except OSError as exc:
                os.close(fd)  # live segment of another process, or gone, or unreadable
                if not isinstance(exc, (BlockingIOError, FileNotFoundError)) and name not in self._said_skip:
                    self._said_skip.add(name)
                    say(f"spool segment {name} cannot be read ({strerror(exc)}); skipped")
                continue
            records, bad = parse_segment(data)
            if bad:
                self._quarantine(path, fd, records, bad)
                continue
            if not records:  # empty (a writer killed right after creating it)
                self.done(Segment(path, fd, records))
                continue
            return Segment(path, fd, records)
        return None

    def _quarantine(self, path: Path, fd: int, records: list[dict[str, Any]], bad: int) -> None:
        """Keep the readable rows (appended again, to a fresh segment) and move the file aside whole, for a
        human; if the rows cannot be kept yet (disk failing), the file stays and is tried again later."""
        try:
            if path.name not in self._rescued:
                if records and self.append(records, sync=True) < len(records):
                    raise OSError(f"its {len(records)} readable row(s) could not be spooled again")
                self._rescued.add(path.name)  # never twice, even if it cannot be moved aside
            target = self.dir / self.QUARANTINE
            target.mkdir(mode=0o700, exist_ok=True)
            os.rename(path, target / path.name)
        except OSError as exc:
            if path.name not in self._said_skip:
                self._said_skip.add(path.name)
                say(f"spool segment {path.name}: {bad} unreadable line(s); not moved aside yet: "
                    f"{strerror(exc)}")
            os.close(fd)
            return
        os.close(fd)
        self.stats.add("spool_segments_quarantined")
        self.stats.add("spool_lines_unreadable", bad)
        self.refresh()
        say(f"spool segment {path.name}: {bad} unreadable line(s) dropped; the segment was moved whole to "
            f"{target / path.name} and its {len(records)} readable row(s) go to the database")

    def quarantine_whole(self, segment: Segment, why: str) -> None:
        """A segment that keeps failing for reasons unknown is moved aside as it is, so it blocks nothing."""
        try:
            target = self.dir / self.QUARANTINE
            target.mkdir(mode=0o700, exist_ok=True)
            os.rename(segment.path, target / segment.path.name)
        except OSError as exc:
            say(f"spool segment {segment.path.name} could not be moved aside ({strerror(exc)}) after {why}")
        else:
            self.stats.add("spool_segments_quarantined")
            say(f"spool segment {segment.path.name} moved whole to {target / segment.path.name} after {why}; "
                f"its {len(segment.records)} row(s) are not replayed")
        finally:
            os.close(segment.fd)
        self.refresh()

    def done(self, segment: Segment) -> None:
        """The segment's rows are in the database: remove it."""
        with self._lock:
            self._own.pop(segment.path.name, None)
        with contextlib.suppress(OSError):
            segment.path.unlink()
        os.close(segment.fd)
        self.refresh()

    @staticmethod
    def release(segment: Segment) -> None:
        """Not replayed now (database away): its rows stay in the file, for later or another worker."""
        os.close(segment.fd)

    def dead_letter(self, record: dict[str, Any], cause: str) -> Path:
        """Keep a row that can never be written, with why, fsync'd (raises OSError if that fails too)."""
        target = self.dir / self.DEAD_LETTER
        target.mkdir(mode=0o700, exist_ok=True)
        path = target / f"dead-letter-{self.db_tag}-{os.getpid()}.jsonl"
        line = json.dumps({"at": datetime.now(timezone.utc).isoformat(), "cause": cause, "record": record},
                          ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return path
