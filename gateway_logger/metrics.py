"""The logger's metrics, as prometheus_client objects: what each one is (declared once, below) and
``Stats``, the counters, gauges and histogram one writer updates and reads back.

Names are ``gateway_logger_<name>``: counters ``<name>_total``, gauges, the histogram
``batch_write_seconds`` and ``build_info{code_sha256, litellm, sqlalchemy, psycopg2, prometheus_client,
python} 1``. In the gateway prometheus_client runs in multiprocess mode (``metrics_port``), so these same
objects also write to the files the metrics port combines over all workers: counters and the histogram
summed (a worker that died still counts), each gauge by its mode below."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway_logger.rows import Written

#: every counter and what it counts (its HELP line), since the logger started
COUNTER_HELP = {
    "rows_received": "calls handed to the logger",
    "rows_written": "rows inserted into the database",
    "rows_replaced": "failure rows replaced by the later success of the same call (LiteLLM retried it)",
    "rows_duplicate": "rows already in the database with that outcome (replays), not written again",
    "rows_spooled": "rows put in the on-disk spool (database away or stalled, memory budget reached)",
    "rows_replayed": "spooled rows written after the database came back",
    "rows_rejected": "rows the database refused even without their documents (kept in the dead-letter file)",
    "rows_degraded": "rows stored without their documents (payload/content not storable)",
    "rows_dead_lettered": "rows that can never be written, kept in the dead-letter file (also dropped)",
    "rows_dropped": "rows that will not reach the database: memory and spool full or unwritable, or "
                    "dead-lettered",
    "documents_cut": "documents (payload or content) stored cut, with their size and sha256",
    "batches": "write transactions",
    "batch_failures": "write transactions that failed because the database was away",
    "batch_splits": "failing batches split in two because the database was there (poison input)",
    "pool_checkouts": "connections taken for a database operation (a probe, a batch): from the SQLAlchemy "
                      "pool, or the writer's own connection kept from batch to batch",
    "pool_connects": "new database connections opened by the pool (a checkout that could not reuse one)",
    "watchdog_fired": "database operations that ran past the write timeout and had their sockets closed",
    "connection_losses": "times the database connection was lost",
    "writer_errors": "unexpected errors in the writer's threads (each kind said once; the loop goes on)",
    "spool_segments_quarantined": "unreadable spool segments moved whole to the quarantine directory",
    "spool_lines_unreadable": "spool lines that could not be read (lost; their segment is quarantined)",
    "spool_write_failures": "episodes of a spool that could not be written (disk full, read-only, ...)",}
#: every gauge: how the metrics port combines it over the workers (a prometheus_client multiprocess mode;
#: live* = over the workers that are running) and what it says (its HELP line)
GAUGES: dict[str, tuple[str, str]] = {
    "queue_depth": ("livesum", "calls waiting in memory"),
    "queue_bytes": ("livesum", "bytes of the rows waiting in memory (about)"),
    "spool_rows": ("livemax", "rows waiting in the on-disk spool"),  # one directory, counted by each worker
    "in_flight": ("livesum", "rows being written to the database or the spool"),
    "connected": ("livemin", "1 while the database takes writes (every worker), else 0"),
    "writer_alive": ("livemin", "1 while the writer and spooler threads run (every worker), else 0"),
    "writer_heartbeat_seconds": ("livemin",
                                 "Unix time of the writer loop's last turn (the oldest of the workers)"),
    "heartbeat_stale_after_seconds": ("livemax", "a heartbeat older than this means the writer is stuck"),
    "workers": ("livesum", "gateway worker processes with a running logger"),
    "writer_cpu_seconds": ("livesum", "CPU seconds (user + system) the writer threads of the running workers "
                                      "have used: the logger's cost in the gateway's processes"),
    "batch_seconds_max": ("max", "longest batch write so far, seconds"),
    "start_time_seconds": ("livemax", ("when the newest worker's logger started (Unix time): its counters "
                                       "started from 0")),
    "queue_max": ("livemax", "setting POC1_LOGGER_QUEUE_MAX"),
    "queue_max_bytes": ("livemax", "setting POC1_LOGGER_QUEUE_MAX_BYTES"),
    "spool_max_rows": ("livemax", "setting POC1_LOGGER_SPOOL_MAX_ROWS"),
}
BUILD_HELP = "code this worker loaded (sha256 of its files) and the package versions; value 1"
BUILD_LABELS = ("code_sha256", "litellm", "sqlalchemy", "psycopg2", "prometheus_client", "python")

COUNTERS = tuple(COUNTER_HELP)
GAUGE_MODES = {name: mode for name, (mode, _) in GAUGES.items()}
METRIC_HELP = {**COUNTER_HELP, **{name: text for name, (_, text) in GAUGES.items()}, "build_info": BUILD_HELP}


def metric_name(name: str) -> str:
    return f"gateway_logger_{name}"


class Stats:
    """The writer's counters and gauges as prometheus_client metrics (not registered anywhere: a process
    serves them itself, and tests run many writers side by side). In the gateway, prometheus_client runs in
    multiprocess mode, so the same objects also write to the files the metrics port sums over all workers.
    ``snapshot()`` is this process's view, for tests and tools."""

    #: upper bounds (seconds) of the batch write latency histogram; loopback p50 of a batch is ~3 ms
    BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        name = metric_name
        self.counters = {n: Counter(name(n), text, registry=None) for n, text in COUNTER_HELP.items()}
        self.gauge_metrics = {n: Gauge(name(n), text, multiprocess_mode=mode, registry=None)
                              for n, (mode, text) in GAUGES.items()}
        self.batch_seconds = Histogram(name("batch_write_seconds"),
                                       "time of one write transaction (batch), seconds",
                                       buckets=self.BATCH_BUCKETS, registry=None)
        # the durability lag in its two parts: LiteLLM's (the call's end to the callback handing it over,
        # its logging worker's queue under load) and the logger's (hand-over to the committed write)
        self.handover_seconds = Histogram(
            name("handover_seconds"), "a call's end (LiteLLM's endTime) to its hand-over to the logger "
            "(LiteLLM's share of the durability lag), seconds", buckets=self.BATCH_BUCKETS, registry=None)
        self.write_lag_seconds = Histogram(
            name("write_lag_seconds"), "a call's hand-over to the logger to the commit of its row (the "
            "logger's share of the durability lag), seconds", buckets=self.BATCH_BUCKETS, registry=None)
        self.build_info = Gauge(name("build_info"), BUILD_HELP, BUILD_LABELS,
                                multiprocess_mode="livemax", registry=None)
        self._lock = threading.Lock()
        self.started = time.time()
        self.batch_seconds_last = self._batch_max = 0.0
        self.connected = False
        #: live values of the gauges this process computes (queue depth, ...), read by ``push_gauges``
        self.gauges: dict[str, Callable[[], float]] = {}
        self.set_gauge("start_time_seconds", self.started)

    def add(self, name: str, n: int = 1) -> None:
        if n:
            self.counters[name].inc(n)

    def count_written(self, written: Written) -> None:
        self.add("rows_written", written.inserted)
        self.add("rows_replaced", written.replaced)
        self.add("rows_duplicate", written.duplicate)

    def observe_batch(self, seconds: float) -> None:
        self.add("batches")
        self.batch_seconds.observe(seconds)
        with self._lock:
            self.batch_seconds_last = seconds
            if seconds > self._batch_max:
                self._batch_max = seconds
                self.set_gauge("batch_seconds_max", seconds)

    def observe_lags(self, records: list[dict[str, Any]], committed: float) -> None:
        """Both parts of the durability lag of the rows just committed (a row replayed from the spool
        counts with its whole wait; a row without a hand-over time, spooled by an older logger, not)."""
        for r in records:
            received = r.get("received")
            if isinstance(received, float):
                self.write_lag_seconds.observe(max(0.0, committed - received))
                end = r["request"].get("end_time")
                if isinstance(end, float) and end < received:  # equal: no endTime, the row took its hand-over time
                    self.handover_seconds.observe(received - end)

    def set_gauge(self, name: str, value: float) -> None:
        self.gauge_metrics[name].set(value)

    def push_gauges(self) -> None:
        """Copy the live gauges into the metrics (the metrics port of another worker reads only those)."""
        self.set_gauge("connected", 1 if self.connected else 0)
        for name, gauge in self.gauges.items():
            try:
                self.set_gauge(name, gauge())
            except Exception:
                self.set_gauge(name, -1)

    @staticmethod
    def _sample(metric: Any, suffix: str = "") -> float:
        for family in metric.collect():
            for sample in family.samples:
                if sample.name == family.name + suffix:
                    return float(sample.value)
        return 0.0

    def value(self, name: str) -> float:
        if name in self.counters:
            return self._sample(self.counters[name], "_total")
        return self._sample(self.gauge_metrics[name])

    def __getitem__(self, name: str) -> int:
        return int(self.value(name))

    def snapshot(self) -> dict[str, Any]:
        """Counters (ints), live gauges, the batch histogram (cumulative buckets, sum, max, last)."""
        snap: dict[str, Any] = {name: self[name] for name in COUNTERS}
        buckets = [s.value for f in self.batch_seconds.collect() for s in f.samples
                   if s.name.endswith("_bucket")]
        snap.update(batch_seconds_sum=self._sample(self.batch_seconds, "_sum"), batch_seconds_buckets=buckets,
                    batch_seconds_max=self.value("batch_seconds_max"),
                    batch_seconds_last=self.batch_seconds_last, connected=self.connected,
                    started=self.started)
        for name, gauge in self.gauges.items():
            try:
                snap[name] = gauge()
            except Exception:
                snap[name] = -1
        return snap
