"""The writer's spooler and syncer threads (a mixin of ``Writer``: the state it uses is made in
``Writer.__init__``). The *spooler* wakes every flush interval, and at once for each row while the
database is away: it moves the rows in memory to the spool while the database is away or a write has
stalled (so a kill loses at most the last flush interval), copies a stalled batch there too, and
exports the gauges and the heartbeat. The *syncer* fsyncs the spool as soon as rows were appended, so a
slow disk delays only the durability against a power loss."""
from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from gateway_logger.journal import say
from gateway_logger.metrics import Stats
from gateway_logger.settings import Settings
from gateway_logger.spool import Segment, Spool


class Spooling:
    """Memory to disk: ``_spill``, ``_copy_stalled_batch``, ``_spool_leftovers``; the spooler and syncer
    turns."""

    settings: Settings
    stats: Stats
    spool: Spool | None
    engine: Engine | None
    signalled: list[int]
    on_tick: list[Callable[[], None]]
    _state: str
    _op_started: float | None
    _interval: float
    _inbox: deque[dict[str, Any]]
    _backlog: deque[tuple[dict[str, Any], int]]
    _backlog_bytes: int
    _in_hand: int
    _lock: threading.Lock
    _pending: list[dict[str, Any]]
    _pending_segment: Segment | None
    _pending_copied: bool
    _stop: threading.Event
    _ready: threading.Event
    _spool_wake: threading.Event
    _sync_wake: threading.Event
    _signal_said: bool
    _refreshed: float = 0.0  #: when the spooler last counted the spool's rows on disk

    def _spool_leftovers(self, why: str) -> None:
        """Everything still in memory (and the batch in flight, unless it is on disk already) to the spool."""
        with self._lock:
            rows = [] if self._pending_segment is not None or self._pending_copied else list(self._pending)
            self._pending_copied = self._pending_copied or bool(rows)
            rows += [record for record, _ in self._backlog]
            self._backlog.clear()
            self._backlog_bytes = 0
            entries = list(self._inbox)
            self._inbox.clear()
        rows += [self._normalize_entry(e)[0] for e in entries]
        if rows:
            self._overflow(rows, why, sync=True)
            say(f"{why}: {len(rows)} row(s) not yet written were moved to the spool "
                f"{self.settings.spool_dir}")

    def _away(self) -> bool:
        """The rows in memory belong on disk now: no database, or it is away, or a write has stalled."""
        started = self._op_started
        stalled = started is not None and time.monotonic() - started > self.settings.stall_ms / 1000.0
        return self.engine is None or self._state != "up" or stalled

    def _spool_run(self) -> None:
        self._ready.wait()
        self._supervised("spooler", self._spool_turn)

    def _spool_turn(self) -> bool:
        if not (self._inbox and self._away()):
            self._spool_wake.wait(self._interval)
        self._spool_wake.clear()
        if self.signalled and not self._signal_said:
            self._signal_said = True
            say(f"signal {signal.Signals(self.signalled[0]).name}: stopping once the gateway has finished "
                f"its calls; {len(self._inbox) + len(self._backlog)} row(s) in memory")
        finished = self._stop.is_set() and self.stopped
        if self.spool is not None:
            if self._away():
                self._spill()
                self._copy_stalled_batch()
            if time.monotonic() - self._refreshed >= 1.0:
                self._refreshed = time.monotonic()
                self.spool.refresh()  # other workers' segments, and those of a worker that died
        self.stats.push_gauges()
        for hook in self.on_tick:
            hook()
        return not finished

    def _sync_run(self) -> None:
        self._ready.wait()
        self._supervised("syncer", self._sync_turn)

    def _sync_turn(self) -> bool:
        """fsync what was appended, apart from the appends themselves: a slow disk (an fsync can take
        hundreds of ms) then delays only the durability against a power loss, never the writes that make
        rows survive a kill of the process."""
        finished = self._stop.is_set() and self.stopped
        self._sync_wake.wait(self._interval)
        self._sync_wake.clear()
        if self.spool is not None:
            self.spool.sync()
        return not finished

    def _spill(self) -> None:
        """Memory to the spool (fsync'd). What the spool cannot take now (full, failing) stays in memory,
        and is dropped only when memory is full too."""
        assert self.spool is not None
        if self.spool.failing and time.monotonic() - self.spool._failed_at < Spool.RETRY_S:
            self._ingest_only()
            return
        if self.spool.full:
            self._ingest_only()
            return
        with self._lock:
            entries = list(self._inbox)
            self._inbox.clear()
            rows = [record for record, _ in self._backlog]
            sizes = [size for _, size in self._backlog]
            self._backlog.clear()
            self._backlog_bytes = 0
            self._in_hand += len(entries) + len(rows)
        for entry in entries:
            record, size = self._normalize_entry(entry)
            rows.append(record)
            sizes.append(size)
        try:
            spooled = self.spool.append(rows, sync=False)
            self.stats.add("rows_spooled", spooled)
            self._sync_wake.set()
            with self._lock:  # what did not fit goes back to memory, oldest first
                self._backlog.extendleft(reversed(list(zip(rows[spooled:], sizes[spooled:]))))
                self._backlog_bytes += sum(sizes[spooled:])
        finally:
            with self._lock:
                self._in_hand -= len(rows)
        self._trim_memory()

    def _ingest_only(self) -> None:
        self._ingest()
        self._trim_memory()

    def _trim_memory(self) -> None:
        """Past the memory bound with nowhere to go: drop the newest rows (counted, said)."""
        with self._lock:
            extra = len(self._backlog) - self.settings.queue_max
            dropped = [self._backlog.pop() for _ in range(max(0, extra))]
            self._backlog_bytes -= sum(size for _, size in dropped)
        if dropped:
            self._count_dropped(len(dropped), "memory full and the spool cannot take rows")

    def _copy_stalled_batch(self) -> None:
        """A write that has stalled holds its batch in memory only: put a copy in the spool (a replay of
        rows that did get written is a duplicate, skipped by ON CONFLICT)."""
        started = self._op_started
        if started is None or time.monotonic() - started <= self.settings.stall_ms / 1000.0:
            return
        with self._lock:
            if self._pending_copied or self._pending_segment is not None or not self._pending:
                return
            rows, self._pending_copied = list(self._pending), True
        assert self.spool is not None
        spooled = self.spool.append(rows, sync=False)
        self.stats.add("rows_spooled", spooled)
        self._sync_wake.set()
        if spooled < len(rows):
            with self._lock:
                self._pending_copied = False
