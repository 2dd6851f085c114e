"""The writer: rows from LiteLLM's event loop to PostgreSQL, through memory and, when needed, the on-disk
spool. ``Writer`` is put together from the mixins of this package (``supervision``, ``spooling``,
``batches``, ``connection``); this module holds its state, its public face and the writer thread."""
from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

import db_init
from gateway_logger.batches import Batches
from gateway_logger.calls import new_request_id
from gateway_logger.connection import Connection
from gateway_logger.database import Outage
from gateway_logger.documents import is_cut
from gateway_logger.journal import RateLimitedSay
from gateway_logger.metrics import Stats
from gateway_logger.rows import ROW_OVERHEAD, degrade, normalize_sized, storable_call_id
from gateway_logger.settings import Settings
from gateway_logger.spool import Segment, Spool
from gateway_logger.spooling import Spooling
from gateway_logger.supervision import Supervision


class Writer(Supervision, Spooling, Batches, Connection):
    """Rows from the event loop to PostgreSQL, through memory and, when needed, the on-disk spool.

    Four threads. The *writer* takes what the loop handed over (``submit`` wakes it: group commit),
    normalizes it, keeps it in memory within the byte budget and writes it at once, in one batch with
    whatever else arrived while it was busy; it replays the spool when the database is back. The
    *spooler* wakes every flush interval (at once for each row while the database is away): it moves the
    rows in memory to the spool while the database is away or a write has stalled (so a kill loses at
    most the write in progress), exports the gauges and the heartbeat. The *syncer* fsyncs the spool as
    soon as rows were appended. The *watchdog* shuts the sockets of a database operation that runs past
    the write timeout (a frozen server). A turn of any of them that fails unexpectedly is said once per
    kind, counted, and the loop goes on after a backoff.
    """

    RETRY_MIN_S, RETRY_MAX_S = 0.25, 2.0

    def __init__(self, settings: Settings, stats: Stats | None = None,
                 url: str | Callable[[], str | None] | None = None) -> None:
        self.settings = settings
        self.stats = stats or Stats()
        self._url_source = url
        self.url: str | None = None
        self.engine: Engine | None = None
        self.spool: Spool | None = None
        self._interval = settings.flush_interval_ms / 1000.0
        # memory: what the loop handed over (deque appends/pops are atomic), then normalized rows with sizes
        self._inbox: deque[dict[str, Any]] = deque()
        self._backlog: deque[tuple[dict[str, Any], int]] = deque()
        self._backlog_bytes = 0
        self._in_hand = 0  # rows taken from memory and not yet in the backlog, the spool or the database
        self._lock = threading.Lock()  # backlog, _in_hand, the batch in flight
        self._pending: list[dict[str, Any]] = []  # the batch being written
        self._pending_segment: Segment | None = None  # ... when it is a spool segment being replayed
        self._pending_copied = False  # the spooler put a copy of it in the spool (a stalled write)
        self._suspects: dict[str, int] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()  # writer: a row arrived (group commit), or stop
        self._spool_wake = threading.Event()  # spooler: a row arrived while the database is away, or stop
        self._sync_wake = threading.Event()  # syncer: rows were appended to the spool
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._spooler: threading.Thread | None = None
        self._syncer: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._deadline: float | None = None
        self._op_started: float | None = None
        self._raw_conns: dict[int, Any] = {}
        self._kept: Any = None  # the writer thread's connection for its batches (Batches._connection)
        self._conns_lock = threading.Lock()
        self._state = "unknown"  # unknown -> up/down; "established" is said once, later "restored"
        self._state_lock = threading.Lock()  # the watchdog thread also declares the connection lost
        self._ever_up = False
        self._down_since = 0.0
        self._server = ""
        self._retry = self.RETRY_MIN_S
        self._beat = time.time()
        self._kinds_said: set[str] = set()
        self._errors_in_row = {"writer": 0, "spooler": 0, "syncer": 0, "watchdog": 0}
        self._say_drop = RateLimitedSay()
        self._say_reject = RateLimitedSay()
        self._signal_said = False
        #: set by a signal handler (only a flag: see _on_signal); the threads stop waiting for the interval
        self.signalled: list[int] = []
        #: called by the spooler thread every flush interval (e.g. to take the metrics port over)
        self.on_tick: list[Callable[[], None]] = []
        self.stats.gauges.update(
            queue_depth=lambda: len(self._inbox) + len(self._backlog),
            queue_bytes=lambda: self._backlog_bytes,
            spool_rows=lambda: self.spool.rows if self.spool else 0,
            in_flight=lambda: len(self._pending) + self._in_hand,
            writer_alive=lambda: int(self.alive), writer_heartbeat_seconds=lambda: self._beat)
        self.stats.set_gauge("heartbeat_stale_after_seconds", self.stale_after_s)
        for name in ("queue_max", "queue_max_bytes", "spool_max_rows"):
            self.stats.set_gauge(name, getattr(settings, name))

    # -- public ---------------------------------------------------------------------------------

    @property
    def stale_after_s(self) -> float:
        """The longest a healthy writer goes between two turns: a write or probe cut by the watchdog
        (write timeout), a connect timeout, a backoff; a heartbeat older than this is a stuck writer."""
        return 2 * self.settings.write_timeout_s + db_init.CONNECT_TIMEOUT_S + self.RETRY_MAX_S

    @property
    def alive(self) -> bool:
        return all(t is not None and t.is_alive() for t in (self._thread, self._spooler, self._syncer))

    def start(self) -> Writer:
        if self._thread is None:
            def thread(name: str, target: Callable[[], None]) -> threading.Thread:
                started = threading.Thread(target=target, name=f"gateway-logger-{name}", daemon=True)
                started.start()
                return started

            self._thread = thread("writer", self._run)
            self._spooler = thread("spooler", self._spool_run)
            self._syncer = thread("syncer", self._sync_run)
            self._watchdog = thread("watchdog", self._watch)
        return self

    def submit(self, item: dict[str, Any], normalized: bool = False) -> None:
        """Never blocks on the database, never raises: memory, else the spool (written now, fsync'd by the
        syncer thread), else counted as dropped. Runs on LiteLLM's event loop."""
        self.stats.add("rows_received")
        entry = {"normalized": item} if normalized else item
        held = len(self._inbox) + len(self._backlog) + self._in_hand
        if not self._stop.is_set() and held < self.settings.queue_max:
            self._inbox.append(entry)
            if self._state != "up":
                self._spool_wake.set()  # to disk now, not in a flush interval: the loss window
            else:  # group commit: an idle writer writes it now; a busy one takes it with its next batch
                self._wake.set()
            return
        self._overflow([self._normalize_entry(entry)[0]], "queue full", sync=self._stop.is_set())

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Until the writer has its URL, spool and first probe behind it. Before that, rows beyond the
        memory bound have no spool to go to and are dropped (counted)."""
        return self._ready.wait(timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (or rejected); for tests and tools."""
        deadline = time.monotonic() + timeout
        while True:
            spool_rows = self.spool.refresh() if self.spool else 0
            with self._lock:
                held = len(self._inbox) + len(self._backlog) + self._in_hand + len(self._pending)
            if held == 0 and spool_rows == 0 and self._ready.is_set():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def stop(self, timeout: float | None = None) -> None:
        """Write what can be written in time, spool the rest, close. Safe to call more than once."""
        timeout = self.settings.shutdown_timeout_s if timeout is None else timeout
        self.begin_stop()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None:
            self._spool_leftovers("writer never started")
        else:  # stuck on a frozen server past the timeout, or gone: keep what is left on disk
            blocked = self._thread.is_alive()
            self._spool_leftovers("writer still blocked at shutdown" if blocked else "shutdown")
        for thread in (self._spooler, self._syncer):
            if thread is not None:
                thread.join(1.0)
        if self.spool is not None:
            self.spool.close()

    def begin_stop(self) -> None:
        """Ask the threads to finish (write what they can, spool the rest); returns at once."""
        self._stop.set()
        for event_ in (self._wake, self._spool_wake, self._sync_wake):
            event_.set()

    @property
    def stopped(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    # -- the writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._setup()
        except Exception as exc:
            self._unexpected("setup", exc)
        finally:
            self._ready.set()
        self._supervised("writer", self._turn)
        self._drop_connection()
        if self.engine is not None:
            with contextlib.suppress(Exception):
                self.engine.dispose()

    def _turn(self) -> bool:
        self._beat = time.time()
        self.stats.set_gauge("writer_cpu_seconds", time.thread_time())
        if self._stop.is_set():
            self._drain_at_stop()
            return False
        if self.engine is None:  # no usable URL: the spooler puts everything on disk
            self._stop.wait(self._interval)
            return True
        if self._state != "up":
            if self._stop.wait(self._retry):
                return True
            self._retry = min(self._retry * 2, self.RETRY_MAX_S)
            if self._probe():
                self._retry = self.RETRY_MIN_S
            return True
        if not self._pending:
            if len(self._inbox) + len(self._backlog) < self.settings.batch_max and self._take_segment():
                pass
            else:
                waiting = len(self._inbox) + len(self._backlog)
                if waiting < self.settings.batch_max and not (self.signalled and waiting):
                    # idle: until a row arrives (submit wakes it) or the housekeeping interval ends
                    self._wake.wait(self._interval)
                self._wake.clear()
                self._ingest()
                if not self._take_batch():
                    return True
        self._write_pending()
        return True

    def _normalize_entry(self, entry: dict[str, Any]) -> tuple[dict[str, Any], int]:
        if "normalized" in entry:
            record = entry["normalized"]
            return record, len(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
        try:
            record, size = normalize_sized(entry, self.settings.document_max_bytes)
        except Exception as exc:  # never lose the fact of the call to a surprising payload
            slo = entry.get("slo") or {}
            call_id = storable_call_id(str(slo.get("litellm_call_id") or entry.get("call_id") or ""))
            record = {"request": {"request_id": entry.get("request_id") or new_request_id(),
                                  "call_id": call_id, "status_code": 0, "end_time": entry.get("received")},
                      "response": {}}
            return degrade(record, f"{type(exc).__name__}: {exc}"), ROW_OVERHEAD
        cuts = is_cut(record["request"].get("payload")) + is_cut(record["response"].get("content"))
        self.stats.add("documents_cut", cuts)
        return record, size

    def _normalize(self, captured: dict[str, Any]) -> dict[str, Any]:
        return self._normalize_entry(captured)[0]

    def _ingest(self) -> None:
        """Normalize what the loop handed over (off the loop), keep it in memory within the row and byte
        budgets; what does not fit goes to the spool."""
        over: list[dict[str, Any]] = []
        while True:
            with self._lock:
                if not self._inbox:
                    break
                entry = self._inbox.popleft()
                self._in_hand += 1
            record, size = self._normalize_entry(entry)
            if "received" in entry:  # for the lag metrics (a top-level key: no column reads it)
                record["received"] = entry["received"]
            with self._lock:
                self._in_hand -= 1
                fits = not self._backlog or (len(self._backlog) < self.settings.queue_max and
                                             self._backlog_bytes + size <= self.settings.queue_max_bytes)
                if fits:
                    self._backlog.append((record, size))
                    self._backlog_bytes += size
                else:
                    self._in_hand += 1
                    over.append(record)
        if over:
            try:
                self._overflow(over, "memory budget reached")
            finally:
                with self._lock:
                    self._in_hand -= len(over)

    def _take_batch(self) -> bool:
        """The next batch from memory: up to batch max rows and batch max bytes (at least one row)."""
        with self._lock:
            rows: list[dict[str, Any]] = []
            size = 0
            while self._backlog and len(rows) < self.settings.batch_max:
                record, n = self._backlog[0]
                if rows and size + n > self.settings.batch_max_bytes:
                    break
                self._backlog.popleft()
                self._backlog_bytes -= n
                rows.append(record)
                size += n
            self._pending, self._pending_segment, self._pending_copied = rows, None, False
        return bool(rows)

    def _take_segment(self) -> bool:
        if self.spool is None or self.spool.rows <= 0:
            return False
        segment = self.spool.take()
        if segment is None:
            return False
        with self._lock:
            self._pending, self._pending_segment, self._pending_copied = segment.records, segment, False
        return True

    def _clear_pending(self) -> None:
        with self._lock:
            self._pending, self._pending_segment, self._pending_copied = [], None, False

    def _write_pending(self) -> None:
        segment = self._pending_segment
        try:
            self._write(self._pending)
        except Outage as out:
            if segment is not None:  # the rows stay in their file
                Spool.release(segment)
            elif not self._pending_copied:
                self._overflow(out.rows, "database away")
            self._clear_pending()
            return
        if segment is not None and self.spool is not None:
            self.stats.add("rows_replayed", len(segment.records))
            self._suspects.pop(segment.path.name, None)
            self.spool.done(segment)
        self._clear_pending()

    def _drain_at_stop(self) -> None:
        deadline = time.monotonic() + max(0.0, self.settings.shutdown_timeout_s - 1.0)
        if self._pending_segment is not None:  # its rows are still in the file: leave them there
            Spool.release(self._pending_segment)
            self._clear_pending()
        while time.monotonic() < deadline and self.engine is not None:
            self._ingest()
            if not self._pending and not self._take_batch():
                break
            if self._state != "up" and not self._probe():
                break
            try:
                self._write(self._pending)
            except Outage:
                break
            self._clear_pending()
        self._spool_leftovers("shutdown")
