"""How the writer writes (a mixin of ``Writer``: the state it uses is made in ``Writer.__init__``): a batch
in one transaction; a batch that fails while the database answers is split in halves down to single
rows; a single row is retried without its documents, then dead-lettered; rows the database cannot take
now raise ``Outage``. And ``_overflow``: rows to the spool, or counted as dropped."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

import db_init
from gateway_logger.database import Outage, insert_batch
from gateway_logger.journal import RateLimitedSay, say
from gateway_logger.metrics import Stats
from gateway_logger.rows import Written, degrade
from gateway_logger.settings import Settings
from gateway_logger.spool import Spool


class Batches:
    """``_write`` (split on poison input), ``_write_alone``, ``_dead_letter``, ``_overflow``."""

    settings: Settings
    stats: Stats
    url: str | None
    engine: Engine | None
    spool: Spool | None
    _sync_wake: threading.Event
    _say_drop: RateLimitedSay
    _say_reject: RateLimitedSay
    _arm: Callable[[], None]  # Connection
    _disarm: Callable[[], None]
    _up: Callable[[], None]
    _down: Callable[..., None]
    _data_problem: Callable[[BaseException], bool]
    _state: str
    _kept: Connection | None  #: the writer thread's connection (``_connection``)

    def _insert(self, records: list[dict[str, Any]]) -> Written:
        """One batch; a connection found broken (the server restarted since its last use: the engine has no
        pre-ping) is replaced and the batch sent again once — a replay cannot duplicate."""
        assert self.engine is not None
        try:
            return insert_batch(self.engine, records, self.settings.test_delay_ms, self._connection())
        except DBAPIError as exc:
            if exc.connection_invalidated:
                self._drop_connection()
            if not exc.connection_invalidated or self._state != "up":  # the watchdog declares a frozen server
                raise
        return insert_batch(self.engine, records, self.settings.test_delay_ms, self._connection())

    def _connection(self) -> Connection:
        """The writer thread's connection for the one-statement write, kept from batch to batch: a pool
        checkout per batch (the checkout, its events and the reset at check-in) cost ~10-15 % of the
        writer's CPU at saturation, where batches are small (POC-1/FINDINGS.md §3). Counted as a checkout
        each time it is used, so the metrics' pool reuse still means "operations on a reused connection"."""
        assert self.engine is not None
        conn = self._kept
        if conn is None or conn.closed or conn.invalidated:
            conn = self._kept = self.engine.connect()  # a pool checkout: counted by the engine's event
        else:
            self.stats.add("pool_checkouts")
        return conn

    def _drop_connection(self) -> None:
        """Give the kept connection back (an invalidated one is discarded by the pool): on an outage, and
        when the writer stops. Only from the writer thread, which alone uses it."""
        conn, self._kept = self._kept, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _overflow(self, records: list[dict[str, Any]], why: str, sync: bool = False) -> None:
        """To the spool (fsync'd now, or at once by the syncer); what it cannot take is dropped (counted,
        said)."""
        if not records:
            return
        spooled = self.spool.append(records, sync=sync) if self.spool is not None else 0
        self.stats.add("rows_spooled", spooled)
        self._sync_wake.set()
        if len(records) > spooled:
            self._count_dropped(len(records) - spooled, why)

    def _count_dropped(self, n: int, why: str) -> None:
        self.stats.add("rows_dropped", n)
        self._say_drop(f"rows dropped: {self.stats['rows_dropped']} so far ({why}; queue max "
                       f"{self.settings.queue_max} and spool max {self.settings.spool_max_rows} rows "
                       "reached, or the spool cannot be written)")

    def _write(self, records: list[dict[str, Any]]) -> None:
        """Write a batch in one transaction. If it fails while the database answers, it is the rows: split
        it in two and write each half the same way, down to single rows (``_write_alone``), so one poison
        row costs O(log n) transactions and never holds up the rows behind it. Raises Outage with the rows
        not written when the database is away."""
        if not records:
            return
        self._arm()
        t0 = time.perf_counter()
        try:
            written = self._insert(records)
        except Exception as exc:
            self._disarm()
            if not self._data_problem(exc):
                self.stats.add("batch_failures")
                self._drop_connection()
                self._down(exc)
                raise Outage(records) from exc
            if len(records) == 1:
                self._write_alone(records[0], exc)
                return
            self.stats.add("batch_splits")
            half = len(records) // 2
            try:
                self._write(records[:half])
            except Outage as out:
                raise Outage(out.rows + records[half:]) from None
            self._write(records[half:])
            return
        self._disarm()
        self.stats.observe_batch(time.perf_counter() - t0)
        self.stats.observe_lags(records, time.time())
        self.stats.count_written(written)
        self._up()

    def _write_alone(self, record: dict[str, Any], exc: BaseException) -> None:
        """A row that fails on its own: stored without its documents, else kept in the dead-letter file."""
        cause = db_init.one_line_cause(exc, self.url)
        self._arm()
        try:
            written = self._insert([degrade(record, cause)])
        except Exception as again:
            self._disarm()
            if not self._data_problem(again):
                self.stats.add("batch_failures")
                self._drop_connection()
                self._down(again)
                raise Outage([record]) from again
            self._dead_letter(record, db_init.one_line_cause(again, self.url))
            return
        self._disarm()
        self.stats.count_written(written)
        self.stats.add("rows_degraded")
        self._say_reject(f"row {record['request'].get('request_id')} stored without its documents: {cause}")
        self._up()

    def _dead_letter(self, record: dict[str, Any], cause: str) -> None:
        """Counted as rejected and dropped (it will not reach the database by itself), kept for a human."""
        self.stats.add("rows_rejected")
        self.stats.add("rows_dropped")
        rid = record["request"].get("request_id")
        try:
            assert self.spool is not None
            path = self.spool.dead_letter(record, cause)
        except (OSError, AssertionError) as exc:
            say(f"row {rid} can never be written ({cause}) and could not be kept either: "
                f"{getattr(exc, 'strerror', None) or exc}")
            return
        self.stats.add("rows_dead_lettered")
        self._say_reject(f"row {rid} can never be written ({cause}); kept in {path} "
                         f"({self.stats['rows_dead_lettered']} row(s) there so far)")
