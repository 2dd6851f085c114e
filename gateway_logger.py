"""LiteLLM ``CustomLogger`` that writes every gateway call (success or failure) to PostgreSQL.

Named in config.yaml as ``litellm_settings: callbacks: gateway_logger.proxy_handler_instance``. Each
call becomes one ``requests`` row and one linked ``responses`` row, built from the models of
``db_init.py`` (the only schema).

Why it is shaped this way: LiteLLM runs callbacks on its event loop, and part of every request on the
loop's default thread pool. A database write on either stalls the whole gateway when PostgreSQL is
slow or frozen. So the callback only captures references and hands them over; a writer thread turns
them into rows and writes them in batches (one multi-row ``INSERT ... ON CONFLICT (request_id) DO
NOTHING`` per table, one transaction per batch), so a replay never duplicates. One exception:
LiteLLM retries a failed attempt inside the same call (same call id, ``x-litellm-attempted-retries``),
so a failure event can precede the success the client got; that success replaces the failure's rows
(``rows_replaced``), never the other way round. Rows that cannot be written now wait in JSONL spool
files on disk, replayed once the database is back. A row is never lost unseen: every row that will not
reach the database is counted in ``rows_dropped`` and said in the journal.

What bounds a loss, and why (issue 11):

* **Loss window.** Rows wait in memory only while the database takes writes, at most one flush interval
  (then they are written). While the database is away, or a write has run past ``STALL_MS`` (a frozen
  server), a spooler thread writes every row to the spool as it arrives (a stalled batch is copied there
  too), and a syncer thread fsyncs it right after: a slow disk delays only the durability against a power
  loss, not the write that makes a row survive a kill. So a SIGKILL or OOM kill loses at most the rows of
  the last flush interval, plus those LiteLLM has answered but not yet handed over (a power loss: those
  and the last fsync's). Measured through the real proxy,
  open loop at 40 requests/s, default settings, SIGKILL of the proxy's process group, a new proxy on the
  same spool (tests/test_logger_reliability.py, 2 shared cores, loaded): PostgreSQL up, three runs:
  120 answered / 116 written / 4 lost, 110 / 104 / 6, 106 / 99 / 7; every lost row answered at most
  120-170 ms before the kill: the durability lag (the flush interval, LiteLLM's lag between an answer and
  its callback, one write). PostgreSQL stopped, four runs: 120 / 120 / 0, 280 / 280 / 0, 278 / 278 / 0,
  108 / 106 / 2 (those 2 answered 1 and 23 ms before the kill: LiteLLM had not handed them over yet).
* **Supervision.** Each thread's turn runs under a guard: an unexpected error is said once per kind,
  counted (``writer_errors``), and the loop goes on after a backoff; rows in hand go back to the spool,
  a segment that keeps failing is quarantined. A spool segment with unreadable lines (not UTF-8, not
  JSON, torn by a crash) has its readable rows spooled again and is moved whole to ``quarantine/``
  (counted, named in the journal); it never blocks the segments behind it. ``writer_alive`` and
  ``writer_heartbeat_seconds`` tell a scraper that the writer runs and turns.
* **Poison input.** Memory and batches have byte budgets; a document (payload or content) above
  ``DOCUMENT_MAX_BYTES`` is stored cut: ``{"gateway_logger": {"document_cut": {"original_bytes",
  "sha256", "kept_bytes"}}, "head": "<its first bytes>"}`` (sizes and digest of its compact JSON, UTF-8).
  A batch that fails while the database answers (a row error, a constraint failing at COMMIT, a
  statement timeout) is split in halves down to single rows; a single row is retried without its
  documents, and if that fails too it goes to ``dead-letter/`` in the spool directory (counted as
  rejected, dead-lettered and dropped, said); the rows behind it flow on.
* **Full or unwritable spool.** A failed append leaves no torn line; it is said once per episode, rows
  that fit nowhere (memory full too) are counted as dropped, and the spool is tried again every second;
  ``spool writable again`` ends the episode.
* **Signals.** The SIGTERM/SIGINT handler only sets a flag (then hands the signal to uvicorn): the
  interrupted thread may hold any lock, so flushing there can deadlock. uvicorn then stops accepting,
  lets the calls in flight finish, runs LiteLLM's lifespan shutdown, restores the handlers it found and
  raises the signal again, so the process dies of it without atexit. The flush therefore runs inside
  LiteLLM's shutdown (its ``proxy_shutdown_event`` is wrapped: LiteLLM has no hook): LiteLLM's logging
  worker hands over the last callbacks, then the writer writes everything (spools it, database away)
  while the loop only awaits. Measured (open loop at 40/s, every 5th call 1 s slow, SIGTERM 2 s in):
  PostgreSQL up: 80 answered (8 in flight at the signal), all 80 rows in the database when the process
  has exited; PostgreSQL stopped: 84 answered, all 84 in the spool, written once it was back.
* **Several workers** (``litellm --num_workers N``): one spool directory, no race (a segment is created
  under a hidden name, flock'ed, then renamed into view); one metrics view, prometheus_client's
  multiprocess mode in a directory per gateway run (see ``enable_multiprocess`` for why); each worker
  says at start its pid and the worker count.
* **What runs is what was signed.** At start each worker says, and exports as ``build_info``, the
  sha256 of the code it loaded (this file, db_init.py, and ``code_sha256`` = sha256 of what
  ``sha256sum gateway_logger.py db_init.py`` prints) and the versions of LiteLLM, SQLAlchemy, psycopg2,
  prometheus_client and Python.

Database URL: ``general_settings.gateway_logger_db_url`` of the proxy config (``os.environ/NAME``
references are resolved), else the environment variable ``POC1_DB_URL``.

Settings (environment variables ``POC1_LOGGER_<NAME>``, defaults in brackets):

* ``QUEUE_MAX`` [10000] rows held in memory at most (beyond: the spool).
* ``QUEUE_MAX_BYTES`` [64 MiB] bytes of rows held in memory at most (about; beyond: the spool).
* ``BATCH_MAX`` [500] rows per INSERT/transaction (also rows per spool segment file).
* ``BATCH_MAX_BYTES`` [8 MiB] bytes per transaction (also per spool segment: it is replayed as one).
* ``DOCUMENT_MAX_BYTES`` [1 MiB] a payload or content document larger than this is stored cut.
* ``FLUSH_INTERVAL_MS`` [100] longest wait for a batch to fill before it is written.
* ``STALL_MS`` [1000] a database operation running longer sends the rows in memory to the spool.
* ``SPOOL_DIR`` [/var/tmp/poc1-gateway-logger-<uid>] spool directory (created 0700; holds request
  payloads; also ``quarantine/`` and ``dead-letter/``). Segments are tagged with a hash of the database
  URL, so a spool is only ever replayed into the database it was meant for.
* ``SPOOL_MAX_ROWS`` [100000] rows kept on disk at most (all workers); beyond, rows are dropped.
* ``WRITE_TIMEOUT_S`` [10] watchdog: a database operation running longer (a frozen server still ACKs
  TCP, so keepalives do not notice) gets its sockets shut down and is retried.
* ``SHUTDOWN_TIMEOUT_S`` [10] time the final flush may take; what is left is spooled. (The stop takes
  LiteLLM's ``GRACEFUL_SHUTDOWN_TIMEOUT`` [30 s] for calls in flight, then this.)
* ``METRICS_PORT`` [9464] Prometheus metrics on 127.0.0.1:<port>; empty = off.
* ``METRICS_DIR`` [/dev/shm/poc1-gateway-logger-<uid>] prometheus_client's multiprocess files, one
  directory per gateway run (memory-backed: a full disk under an mmap is a SIGBUS). A set
  ``$PROMETHEUS_MULTIPROC_DIR`` is used instead.
* ``TEST_DELAY_MS`` [0] TEST ONLY: sleeps this long inside every batch transaction, to imitate a slow
  database (caps throughput at batch max * 1000 / delay rows/s). Never set it in production.

Journal lines (stderr, own handler, survive LiteLLM reconfiguring logging; never a secret, never a
traceback): ``starting (pid P, one of N workers (supervisor pid S); ...)``, ``build: gateway_logger.py=...
db_init.py=... code_sha256=... litellm=... ...``, ``metrics on http://127.0.0.1:<port>/metrics (...)``,
``database connection established: <masked url> server=PostgreSQL <version> ...``, ``database
connection lost: <one-line cause>``, ``database connection restored: <masked url> ...``, ``rows dropped:
N so far (<why>)``, ``row <id> can never be written (<cause>); kept in <file>``, ``spool segment <name>:
N unreadable line(s) dropped; the segment was moved whole to <path> ...``, ``spool write failed in <dir>:
<cause>; ...``, ``spool writable again in <dir> ...``, ``unexpected error in the <thread> <type> at
<file:line function>: <message> (said once per kind ...)``, ``signal SIGTERM: stopping once ...``,
``stopped at the gateway's shutdown ...``.

Metrics (``gateway_logger_*``; HELP texts in ``METRIC_HELP``): counters ``<name>_total`` (``COUNTERS``),
gauges (``GAUGE_MODES``), the histogram ``batch_write_seconds`` and ``build_info{code_sha256, litellm,
sqlalchemy, psycopg2, prometheus_client, python} 1``. With several workers the port serves their
combination, without per-worker labels: counters and the histogram summed (a worker that died still
counts), gauges as ``GAUGE_MODES`` says (e.g. ``connected``, ``writer_alive`` and the heartbeat are
the minimum over the running workers, ``workers`` their number).
"""
from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import fcntl
import functools
import hashlib
import hmac
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import secrets
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # importing litellm must never dial out

try:
    import db_init
except ImportError:  # loaded by LiteLLM from beside config.yaml, without that directory on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import db_init

import psycopg2
import sqlalchemy
from sqlalchemy import Engine, delete, event, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, StatementError

try:
    from litellm.integrations.custom_logger import CustomLogger
except ImportError:  # the writer is usable (and testable) without LiteLLM
    CustomLogger = object  # type: ignore[misc,assignment]

Request, Response = db_init.Request, db_init.Response

# --------------------------------------------------------------------------------------------------
# journal lines


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (the journal under systemd, a capture in tests)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _make_log() -> logging.Logger:
    log = logging.getLogger("gateway_logger")
    log.setLevel(logging.INFO)
    log.propagate = False  # LiteLLM's own handlers/levels must neither swallow nor duplicate these lines
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    return log


_log = _make_log()


def say(message: str) -> None:
    """One journal line. Re-asserts the handler: dictConfig(disable_existing_loggers) may have run."""
    _log.disabled = False
    _make_log().info("gateway_logger: %s", message)


class RateLimitedSay:
    """At most one line per ``every`` seconds for a repeating condition (drops, rejected rows)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every, self._last = every, -math.inf
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.every:
                return
            self._last = now
        say(message)



# --------------------------------------------------------------------------------------------------
# settings and counters


def _default_spool_dir() -> str:
    return f"/var/tmp/poc1-gateway-logger-{os.getuid()}"


def _default_metrics_dir() -> str:
    # memory-backed on purpose: prometheus_client mmaps these files, and a full disk under an mmap is a SIGBUS
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return f"{base}/poc1-gateway-logger-{os.getuid()}"


class Settings(NamedTuple):
    """The logger's settings (a NamedTuple, not a dataclass: LiteLLM loads this file without
    registering it in sys.modules, which dataclasses need)."""

    queue_max: int = 10_000
    queue_max_bytes: int = 64 << 20
    batch_max: int = 500
    batch_max_bytes: int = 8 << 20
    document_max_bytes: int = 1 << 20
    flush_interval_ms: int = 100
    stall_ms: int = 1000
    spool_dir: str = ""
    spool_max_rows: int = 100_000
    write_timeout_s: float = 10.0
    shutdown_timeout_s: float = 10.0
    metrics_port: int | None = 9464
    metrics_dir: str = ""
    test_delay_ms: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **overrides: Any) -> "Settings":
        """Settings from the environment; a malformed value is named in one line and the default kept."""
        values: dict[str, Any] = {}
        for name, default in cls._field_defaults.items():
            var = SETTINGS_ENV[name]
            raw = env.get(var)
            if raw is None:
                continue
            raw = raw.strip()
            if name in ("spool_dir", "metrics_dir"):
                values[name] = raw
                continue
            if name == "metrics_port" and raw == "":
                values[name] = None
                continue
            try:
                number = float(raw) if name.endswith("_s") else int(raw)
                if number < 0 or (name in _AT_LEAST_ONE and number < 1):
                    raise ValueError
            except ValueError:
                say(f"setting {var}={raw!r} is not a valid number; using the default {default}")
                continue
            values[name] = number
        values.update(overrides)
        settings = cls(**values)
        if not settings.spool_dir:
            settings = settings._replace(spool_dir=_default_spool_dir())
        return settings if settings.metrics_dir else settings._replace(metrics_dir=_default_metrics_dir())


SETTINGS_ENV = {name: f"POC1_LOGGER_{name.upper()}" for name in Settings._fields}
_AT_LEAST_ONE = ("queue_max", "queue_max_bytes", "batch_max", "batch_max_bytes", "document_max_bytes")

#: what each metric means (its HELP line). Counters count since the logger started; with several workers,
#: the metrics port serves their sum (gauges: the mode named in ``GAUGE_MODES``)
METRIC_HELP = {
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
    "pool_checkouts": "connections taken from the SQLAlchemy pool (one per transaction or probe)",
    "pool_connects": "new database connections opened by the pool (a checkout that could not reuse one)",
    "watchdog_fired": "database operations that ran past the write timeout and had their sockets closed",
    "connection_losses": "times the database connection was lost",
    "writer_errors": "unexpected errors in the writer's threads (each kind said once; the loop goes on)",
    "spool_segments_quarantined": "unreadable spool segments moved whole to the quarantine directory",
    "spool_lines_unreadable": "spool lines that could not be read (lost; their segment is quarantined)",
    "spool_write_failures": "episodes of a spool that could not be written (disk full, read-only, ...)",
    "queue_depth": "calls waiting in memory",
    "queue_bytes": "bytes of the rows waiting in memory (about)",
    "spool_rows": "rows waiting in the on-disk spool",
    "in_flight": "rows being written to the database or the spool",
    "connected": "1 while the database takes writes (every worker), else 0",
    "writer_alive": "1 while the writer and spooler threads run (every worker), else 0",
    "writer_heartbeat_seconds": "Unix time of the writer loop's last turn (the oldest of the workers)",
    "heartbeat_stale_after_seconds": "a heartbeat older than this means the writer is stuck",
    "workers": "gateway worker processes with a running logger",
    "batch_seconds_max": "longest batch write so far, seconds",
    "start_time_seconds": "when the newest worker's logger started (Unix time): its counters started from 0",
    "queue_max": "setting POC1_LOGGER_QUEUE_MAX",
    "queue_max_bytes": "setting POC1_LOGGER_QUEUE_MAX_BYTES",
    "spool_max_rows": "setting POC1_LOGGER_SPOOL_MAX_ROWS",
    "build_info": "code this worker loaded (sha256 of its files) and the package versions; value 1",
}
COUNTERS = ("rows_received", "rows_written", "rows_replaced", "rows_duplicate", "rows_spooled",
            "rows_replayed", "rows_rejected", "rows_degraded", "rows_dead_lettered", "rows_dropped",
            "documents_cut", "batches", "batch_failures", "batch_splits", "pool_checkouts", "pool_connects",
            "watchdog_fired", "connection_losses", "writer_errors", "spool_segments_quarantined",
            "spool_lines_unreadable", "spool_write_failures")
#: how the metrics port combines a gauge over the workers (prometheus_client multiprocess modes; live* =
#: workers that are running)
GAUGE_MODES = {
    "queue_depth": "livesum", "queue_bytes": "livesum", "in_flight": "livesum", "workers": "livesum",
    "spool_rows": "livemax",  # one directory, counted by each worker
    "connected": "livemin", "writer_alive": "livemin", "writer_heartbeat_seconds": "livemin",
    "heartbeat_stale_after_seconds": "livemax", "batch_seconds_max": "max", "start_time_seconds": "livemax",
    "queue_max": "livemax", "queue_max_bytes": "livemax", "spool_max_rows": "livemax",
}
BUILD_LABELS = ("code_sha256", "litellm", "sqlalchemy", "psycopg2", "prometheus_client", "python")


class Stats:
    """The writer's counters and gauges as prometheus_client metrics (not registered anywhere: a process
    serves them itself, and tests run many writers side by side). In the gateway, prometheus_client runs in
    multiprocess mode, so the same objects also write to the files the metrics port sums over all workers.
    ``snapshot()`` is this process's view, for tests and tools."""

    #: upper bounds (seconds) of the batch write latency histogram; loopback p50 of a batch is ~3 ms
    BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def name(n: str) -> str:
            return f"gateway_logger_{n}"

        self.counters = {n: Counter(name(n), METRIC_HELP[n], registry=None) for n in COUNTERS}
        self.gauge_metrics = {n: Gauge(name(n), METRIC_HELP[n], multiprocess_mode=mode, registry=None)
                              for n, mode in GAUGE_MODES.items()}
        self.batch_seconds = Histogram(name("batch_write_seconds"),
                                       "time of one write transaction (batch), seconds",
                                       buckets=self.BATCH_BUCKETS, registry=None)
        self.build_info = Gauge(name("build_info"), METRIC_HELP["build_info"], BUILD_LABELS,
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

    def count_written(self, written: "Written") -> None:
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
# --------------------------------------------------------------------------------------------------
# from a LiteLLM callback to plain, storable rows

#: keys LiteLLM injects into the request body (``metadata`` carries headers and key details)
INJECTED_BODY_KEYS = frozenset({"metadata", "litellm_metadata", "litellm_call_id", "litellm_trace_id",
                                "proxy_server_request", "secret_fields"})
#: keys whose values are credentials wherever they appear in a payload
SECRET_KEYS = frozenset({"authorization", "proxy-authorization", "api_key", "api-key", "x-api-key",
                         "apikey", "password", "client_secret", "secret", "access_token",
                         "refresh_token", "azure_ad_token", "aws_secret_access_key", "cookie",
                         "x-litellm-api-key"})
MAX_DEPTH = 40
NO_KEY, INVALID_KEY = "none", "invalid"
#: LiteLLM's (nginx's) status for a request whose client went away before the answer was complete
CLIENT_CLOSED = 499


def _limits(model: type) -> dict[str, int]:
    return {c.name: c.type.length for c in model.__table__.columns if getattr(c.type, "length", None)}


LIMITS = {"request": _limits(Request), "response": _limits(Response)}


def clean_text(s: str) -> str:
    """PostgreSQL rejects NUL in text and JSONB, and psycopg2 cannot encode lone surrogates."""
    if s.isascii():
        return s.replace("\x00", "\ufffd") if "\x00" in s else s
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = s.encode("utf-8", "replace").decode("utf-8")
    return s


def jsonable(obj: Any, depth: int = 0, size: list[int] | None = None) -> Any:
    """A storable copy: JSON types only, clean strings, no NaN/inf (JSONB rejects them), secrets masked.

    ``size`` (a one-item list) accumulates about how many bytes the copy takes as JSON: the byte budgets
    need it, and counting while copying is cheaper than serializing again."""
    if obj is None or isinstance(obj, (bool, int, float)):
        if size is not None:
            size[0] += 8
        if isinstance(obj, float) and not math.isfinite(obj):
            return str(obj)
        return obj
    if isinstance(obj, str):
        text = clean_text(obj)
        if size is not None:
            size[0] += 2 + (len(text) if text.isascii() else len(text.encode("utf-8")))
        return text
    if depth >= MAX_DEPTH:
        return jsonable(str(obj)[:200], depth, size)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in list(obj.items()):
            key = jsonable(str(k), depth, size)
            out[key] = "***" if key.lower() in SECRET_KEYS and v else jsonable(v, depth + 1, size)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        if size is not None:
            size[0] += 2 + len(obj)
        return [jsonable(v, depth + 1, size) for v in list(obj)]
    if isinstance(obj, datetime):
        return jsonable(obj.isoformat(), depth, size)
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        try:
            return jsonable(dump(), depth + 1, size)
        except Exception:
            pass
    return jsonable(str(obj), depth, size)


def _int(value: Any) -> int | None:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if -(2**31) <= n < 2**31 else None


def _epoch(value: Any) -> float | None:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    return None


def _cost(value: Any) -> str | None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return f"{value:.12f}".rstrip("0").rstrip(".") or "0"


#: where the pre-call hook puts the gateway's own id of an HTTP request (LiteLLM carries the request's
#: metadata through retries and into every callback of that request)
REQUEST_ID_KEY = "poc1_gateway_request_id"
#: the response header that tells the client that id (the suite finds its own rows by it)
REQUEST_ID_HEADER = "x-poc1-request-id"
#: per process: signs the ids this process issued, so a client that puts a value under
#: REQUEST_ID_KEY in its own request metadata cannot make two calls one row
_ID_KEY = secrets.token_bytes(32)


def _id_tag(nonce: str) -> str:
    return hmac.new(_ID_KEY, nonce.encode(), hashlib.sha256).hexdigest()[:16]


def new_request_id() -> str:
    """``gw-<32 hex random>-<16 hex tag>``: unique per HTTP request, unguessable, checkable here."""
    nonce = secrets.token_hex(16)
    return f"gw-{nonce}-{_id_tag(nonce)}"


def issued_request_id(value: Any) -> str | None:
    """``value`` if this process issued it, else None (absent, or put there by a client)."""
    if not isinstance(value, str) or len(value) != 52 or not value.startswith("gw-"):
        return None
    nonce, tag = value[3:35], value[36:]
    return value if hmac.compare_digest(_id_tag(nonce), tag) else None


def _request_metadata(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    md = (kwargs.get("litellm_params") or {}).get("metadata")
    return md if isinstance(md, Mapping) else {}


def _asked_upstream_usage(kwargs: Mapping[str, Any]) -> bool:
    """Whether the provider was asked for a usage chunk (LiteLLM asks on its own for chat streams)."""
    options = (kwargs.get("optional_params") or {}).get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


def capture(kwargs: Mapping[str, Any], failed: bool) -> dict[str, Any]:
    """What the callback keeps: references only (cheap: it runs on LiteLLM's event loop)."""
    litellm_params = kwargs.get("litellm_params") or {}
    server_request = litellm_params.get("proxy_server_request") or {}
    md = _request_metadata(kwargs)
    return {
        "slo": kwargs.get("standard_logging_object") or {},
        "body": server_request.get("body") if isinstance(server_request, Mapping) else None,
        "exception": kwargs.get("exception") if failed else None,
        "failed": failed,
        "call_id": kwargs.get("litellm_call_id"),
        "request_id": issued_request_id(md.get(REQUEST_ID_KEY)),
        "attempted_retries": md.get("attempted_retries"),
        "client_disconnected": md.get("client_disconnected") is True,
        "upstream_usage_asked": _asked_upstream_usage(kwargs),
        "model": kwargs.get("model"),
        "received": time.time(),
    }


def status_of(captured: Mapping[str, Any]) -> int:
    """The HTTP status the client got, as LiteLLM maps it (uncoded auth failures answer 401; a client that
    left a stream midway is LiteLLM's 499, whichever event reports it)."""
    slo = captured.get("slo") or {}
    if captured.get("client_disconnected") or \
            _int((slo.get("error_information") or {}).get("error_code")) == CLIENT_CLOSED:
        return CLIENT_CLOSED
    if not captured.get("failed"):
        return 200
    exc = captured.get("exception")
    for attr in ("status_code", "code"):
        code = _int(getattr(exc, attr, None))
        if code and 100 <= code <= 599:
            return code
    code = _int((slo.get("error_information") or {}).get("error_code"))
    if code and 100 <= code <= 599:
        return code
    if not (slo.get("metadata") or {}).get("user_api_key_hash"):
        return 401  # never authenticated: LiteLLM turns such a bare exception into 401
    return 500


def _api_key_marker(captured: Mapping[str, Any], status: int) -> str:
    """LiteLLM's key hash for an authenticated call; a fixed marker otherwise (never the raw key)."""
    key_hash = ((captured.get("slo") or {}).get("metadata") or {}).get("user_api_key_hash")
    if not key_hash:
        return NO_KEY
    exc_type = getattr(captured.get("exception"), "type", "") or ""
    exc_type = str(getattr(exc_type, "value", exc_type))  # ProxyErrorTypes is an enum
    if status in (401, 403) or exc_type in ("auth_error", "no_db_connection"):
        return INVALID_KEY
    return str(key_hash)


#: LiteLLM's flag on a chat stream whose client asked for no usage: LiteLLM then asks the provider itself
#: (sets ``stream_options.include_usage``) and strips the usage chunk from what the client gets
STRIP_USAGE_KEY = "_litellm_strip_stream_usage"


def client_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body as the client sent it: without LiteLLM's own keys, and without the usage request LiteLLM
    added to it (the log must not say the client asked for usage it never got). A client's explicit
    ``include_usage: false`` is not told apart from its absence."""
    out = {k: v for k, v in body.items() if k not in INJECTED_BODY_KEYS}
    options = out.get("stream_options")
    if out.pop(STRIP_USAGE_KEY, None) is True and isinstance(options, Mapping):
        options = {k: v for k, v in options.items() if k != "include_usage"}
        if options:
            out["stream_options"] = options
        else:
            del out["stream_options"]
    return out


def _payload(captured: Mapping[str, Any], size: list[int] | None = None) -> Any:
    body = captured.get("body")
    if isinstance(body, Mapping):
        return jsonable(client_body(body), size=size)
    slo = captured.get("slo") or {}  # auth failures come without the body: rebuild it from the payload
    rebuilt: dict[str, Any] = {"model": slo.get("model_group") or captured.get("model") or slo.get("model")}
    if slo.get("messages") is not None:
        rebuilt["messages"] = slo.get("messages")
    rebuilt.update(slo.get("model_parameters") or {})
    return jsonable(rebuilt, size=size)


def _float32_bytes(vector: Any) -> bytes | None:
    """An embedding as little-endian float32 bytes, from a float list or its base64 form."""
    try:
        if isinstance(vector, str):
            raw = base64.b64decode(vector, validate=True)
            return raw if len(raw) % 4 == 0 else None
        if isinstance(vector, list) and all(isinstance(v, (int, float)) for v in vector):
            return struct.pack(f"<{len(vector)}f", *vector)
    except (ValueError, OverflowError, struct.error):
        pass
    return None


def summarize_embeddings(response: Any) -> Any:
    """An embedding answer without its vectors: each becomes its ``dimensions`` and ``float32_sha256``
    (sha256 of the vector as little-endian float32: the same for a float list and its base64 form).
    Whole vectors are kilobytes per input (1536 floats at OpenAI) and thousands of inputs per call: too
    big for every row and for the spool; the digest still tells which vector the client got."""
    data = response.get("data") if isinstance(response, Mapping) else None
    if not isinstance(data, list) or response.get("object") != "list":
        return response
    items = []
    for item in data:
        raw = _float32_bytes(item.get("embedding")) if isinstance(item, Mapping) else None
        if raw is None:
            items.append(item)
            continue
        items.append({**{k: v for k, v in item.items() if k != "embedding"}, "dimensions": len(raw) // 4,
                      "float32_sha256": hashlib.sha256(raw).hexdigest()})
    return {**response, "data": items}


def _content(captured: Mapping[str, Any], size: list[int] | None = None) -> Any:
    slo = captured.get("slo") or {}
    if not captured.get("failed"):
        doc = jsonable(summarize_embeddings(slo.get("response")), size=size)
    else:
        info = slo.get("error_information") or {}
        exc = captured.get("exception")
        doc = jsonable(size=size, obj={"error": {
            "message": slo.get("error_str") or info.get("error_message") or (str(exc) if exc else None),
            "class": info.get("error_class") or (type(exc).__name__ if exc else None),
            "code": info.get("error_code") or None,
            "type": getattr(getattr(exc, "type", None), "value", getattr(exc, "type", None)),
            "llm_provider": info.get("llm_provider") or None,
        }})
    notes = call_notes(captured)
    if notes and isinstance(doc, dict):
        doc[NOTES_KEY] = notes
    elif notes:
        doc = {"response": doc, NOTES_KEY: notes}
    return doc


#: the key of the logger's own facts in a response's content document (no column fits them)
NOTES_KEY = "gateway_logger"


def call_notes(captured: Mapping[str, Any]) -> dict[str, Any]:
    """Facts about how the call went that the seed's columns cannot hold: a stream's time to first
    token and where its usage came from, the attempts LiteLLM made, a client that left midway."""
    slo = captured.get("slo") or {}
    notes: dict[str, Any] = {}
    if slo.get("stream") is True or (captured.get("body") or {}).get("stream") is True:
        start, first = _epoch(slo.get("startTime")), _epoch(slo.get("completionStartTime"))
        notes["stream"] = True
        if start is not None and first is not None and not captured.get("failed"):
            notes["time_to_first_token_ms"] = round((first - start) * 1000, 1)
        if not captured.get("failed"):
            # the provider's usage chunk arrives last: a stream that ran to its end, asked for it, had it
            complete = captured.get("upstream_usage_asked") and not captured.get("client_disconnected")
            notes["usage_source"] = "provider" if complete else "counted"
    retries = _int(captured.get("attempted_retries"))
    if retries:
        notes["attempts"] = retries + 1
    if captured.get("client_disconnected"):
        notes["client_disconnected"] = True
    return notes


def _scalars(values: dict[str, Any]) -> dict[str, Any]:
    """Column values made storable one by one (a column named api_key is not a secret to mask)."""
    return {k: jsonable(v) for k, v in values.items()}


def _truncate(values: dict[str, Any], table: str) -> dict[str, Any]:
    for name, limit in LIMITS[table].items():
        v = values.get(name)
        if isinstance(v, str):
            values[name] = clean_text(v)[:limit]
    return values


def normalize(captured: Mapping[str, Any]) -> dict[str, Any]:
    """A captured call as one JSON-safe record {request, response}: what is queued, spooled, written."""
    return normalize_sized(captured)[0]


#: bytes a row takes beyond its two documents (columns, keys), for the byte budgets
ROW_OVERHEAD = 512
#: room left in a cut document for its marker, so that it stays within the limit
CUT_OVERHEAD = 1024


def normalize_sized(captured: Mapping[str, Any],
                    document_max: int | None = None) -> tuple[dict[str, Any], int]:
    """``normalize`` plus the record's approximate size in bytes; a document (payload or content) larger
    than ``document_max`` is stored cut (``cut_document``)."""
    slo = captured.get("slo") or {}
    md = slo.get("metadata") or {}
    body = captured.get("body") if isinstance(captured.get("body"), Mapping) else {}
    status = status_of(captured)
    start, end = _epoch(slo.get("startTime")), _epoch(slo.get("endTime"))
    response = slo.get("response") if isinstance(slo.get("response"), Mapping) else {}
    call_id = slo.get("litellm_call_id") or captured.get("call_id") or ""
    req = _scalars({
        # one row per HTTP request: the id the pre-call hook gave it; a call that failed before the hook
        # (authentication) is one event, so a fresh id is as good
        "request_id": captured.get("request_id") or new_request_id(),
        "call_id": storable_call_id(str(call_id)),
        "route": md.get("user_api_key_request_route"),
        "model": slo.get("model_group") or body.get("model") or captured.get("model") or slo.get("model"),
        "status_code": status,
        "user_id": slo.get("end_user") or md.get("user_api_key_user_id"),
        "api_key": _api_key_marker(captured, status),
        "start_time": start,
        "end_time": end if end is not None else captured.get("received"),
    })
    payload_size, content_size = [0], [0]
    req["payload"] = _payload(captured, payload_size)
    tokens = {name: _int(slo.get(name)) for name in ("prompt_tokens", "completion_tokens", "total_tokens")}
    cost = slo.get("response_cost")
    if not tokens["total_tokens"] and (counted := count_stream_usage(captured)) is not None:
        tokens, cost = counted
    resp = _scalars({
        "latency_ms": _int(round((end - start) * 1000)) if start is not None and end is not None else None,
        **tokens,
        "cost": _cost(cost),
        "response_model": response.get("model") or slo.get("model"),
    })
    resp["content"] = _content(captured, content_size)
    for part, key, size in ((req, "payload", payload_size), (resp, "content", content_size)):
        if document_max is not None and size[0] > document_max:
            part[key] = cut_document(part[key], document_max)
            size[0] = min(size[0], document_max)
    record = {"request": _truncate(req, "request"), "response": _truncate(resp, "response")}
    return record, payload_size[0] + content_size[0] + ROW_OVERHEAD


#: marks a document stored cut: {"gateway_logger": {"document_cut": {...}}, "head": "<its first bytes>"}
CUT_KEY = "document_cut"


def is_cut(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get(NOTES_KEY), dict) and CUT_KEY in doc[NOTES_KEY]


def cut_document(doc: Any, limit: int) -> Any:
    """A document too big for a row (a prompt full of base64 images, say): its head, its size and the sha256
    of the whole, all of its compact JSON (UTF-8), so the row keeps what was sent as a fingerprint instead of
    megabytes that would swell every batch past the statement timeout and every spool segment."""
    raw = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(raw) <= limit:  # the estimate was high: it fits
        return doc
    head = raw[:max(0, limit - CUT_OVERHEAD)].decode("utf-8", "ignore")
    notes = doc.get(NOTES_KEY) if isinstance(doc, dict) and isinstance(doc.get(NOTES_KEY), dict) else {}
    cut = {"original_bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
           "kept_bytes": len(head.encode())}
    return {NOTES_KEY: {**notes, CUT_KEY: cut}, "head": head}


def _answer_text(response: Any) -> str:
    """The text of an answer's choices (a chat message's content or a completion's text)."""
    choices = response.get("choices") if isinstance(response, Mapping) else None
    texts = []
    for choice in choices if isinstance(choices, list) else []:
        message = choice.get("message") if isinstance(choice, Mapping) else None
        text = message.get("content") if isinstance(message, Mapping) else None
        text = choice.get("text") if text is None and isinstance(choice, Mapping) else text
        texts.append(text if isinstance(text, str) else "")
    return "".join(texts)


def count_stream_usage(captured: Mapping[str, Any]) -> tuple[dict[str, int], float | None] | None:
    """Tokens and cost of a finished stream that LiteLLM reports as zero tokens: a text-completion stream
    whose client asked for no usage (LiteLLM asks the provider only for chat streams, and does not count
    these). Counted with LiteLLM's tokenizer, as LiteLLM counts a chat stream cut short; None if not such
    a stream, or LiteLLM (already loaded in the gateway; never imported here) is not there."""
    slo = captured.get("slo") or {}
    body = captured.get("body") if isinstance(captured.get("body"), Mapping) else {}
    litellm = sys.modules.get("litellm")
    streamed = slo.get("stream") is True or body.get("stream") is True
    if captured.get("failed") or litellm is None or not streamed:
        return None
    model = str(slo.get("model") or body.get("model") or "")
    prompt = body.get("prompt")
    try:
        if isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(p, str) for p in prompt)):
            prompt_tokens = int(litellm.token_counter(model=model, text=prompt))
        elif isinstance(body.get("messages"), list):
            prompt_tokens = int(litellm.token_counter(model=model, messages=body["messages"]))
        else:
            return None
        completion_tokens = int(litellm.token_counter(model=model, text=_answer_text(slo.get("response")),
                                                      count_response_tokens=True))
    except Exception:
        return None
    try:
        cost: float | None = sum(litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens,
                                                        completion_tokens=completion_tokens))
    except Exception:  # a model without a price: tokens, but no cost
        cost = None
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}, cost


def storable_call_id(call_id: str) -> str:
    """The call id as the column takes it. LiteLLM accepts client ids up to the column's length; a longer
    one (never seen) keeps its head and gets its sha256 appended, so two such ids never become one."""
    if len(call_id) <= db_init.CALL_ID_MAX:
        return call_id
    digest = hashlib.sha256(call_id.encode("utf-8", "replace")).hexdigest()
    return f"{call_id[:db_init.CALL_ID_MAX - 72]}...sha256:{digest}"


def degrade(record: Mapping[str, Any], cause: str) -> dict[str, Any]:
    """The same row with the documents replaced: keeps the fact of the call when its body cannot be stored."""
    marker = {"gateway_logger": f"document not storable: {clean_text(cause)[:300]}"}
    req = {k: (clean_text(v) if isinstance(v, str) else v) for k, v in record["request"].items()}
    resp = {k: (clean_text(v) if isinstance(v, str) else v) for k, v in record["response"].items()}
    req["payload"], resp["content"] = marker, marker
    for name in ("status_code", "latency_ms", "prompt_tokens", "completion_tokens", "total_tokens"):
        for part in (req, resp):
            if name in part:
                part[name] = _int(part[name]) if name != "status_code" else (_int(part[name]) or 0)
    return {"request": _truncate(req, "request"), "response": _truncate(resp, "response")}


def _ts(epoch: Any) -> datetime | None:
    return datetime.fromtimestamp(epoch, timezone.utc) if isinstance(epoch, (int, float)) else None


#: HTTP statuses from here on are failures (a 4xx/5xx answer, or 0 for a row rebuilt after an error)
FAILED_FROM = 400


def _succeeded(request: Mapping[str, Any]) -> bool:
    status = request.get("status_code")
    return isinstance(status, int) and 0 < status < FAILED_FROM


def outcome_per_call(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One record per call id: the first, unless a later one is the success of a call first logged as
    failed (a retried attempt). Two records for one id in one INSERT would link two responses to it."""
    chosen: dict[str, dict[str, Any]] = {}
    for r in records:
        rid = r["request"]["request_id"]
        kept = chosen.get(rid)
        if kept is None or (_succeeded(r["request"]) and not _succeeded(kept["request"])):
            chosen[rid] = r
    return chosen


class Written(NamedTuple):
    """What one transaction did with its records."""

    inserted: int
    replaced: int  #: failures of earlier events replaced by this success
    duplicate: int  #: already logged with this outcome (a replay), or repeated within the batch



# --------------------------------------------------------------------------------------------------
# the on-disk spool


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


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


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
                    self._counts[self._live] = (self._live_size, self._live_rows)
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
                    self._say_sync(f"spool fsync failed in {self.dir}: {_strerror(exc)}")
                finally:
                    os.close(fd)
            if directory:
                dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            self._say_sync(f"spool fsync failed in {self.dir}: {_strerror(exc)}")

    def close(self) -> None:
        with self._lock:
            self._retire_live()
        self.sync()

    def _fail(self, exc: OSError) -> None:
        if self._failing is None:
            self._dropped_before = self.stats["rows_dropped"]
            self.stats.add("spool_write_failures")
            say(f"spool write failed in {self.dir}: {_strerror(exc)}; rows that do not fit in memory are "
                "dropped (counted in gateway_logger_rows_dropped_total) until it can be written again")
        self._failing, self._failed_at = _strerror(exc), time.monotonic()
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
            if self._live:
                counts[self._live] = (self._live_size, self._live_rows)
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
                    say(f"spool segment {name} cannot be read ({_strerror(exc)}); skipped")
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
                    f"{_strerror(exc)}")
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
            say(f"spool segment {segment.path.name} could not be moved aside ({_strerror(exc)}) after {why}")
        else:
            self.stats.add("spool_segments_quarantined")
            say(f"spool segment {segment.path.name} moved whole to {target / segment.path.name} after {why}; "
                f"its {len(segment.records)} row(s) are not replayed")
        finally:
            os.close(segment.fd)
        self.refresh()

    def done(self, segment: Segment) -> None:
        """The segment's rows are in the database: remove it."""
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


# --------------------------------------------------------------------------------------------------
# the writer


class _Outage(Exception):
    """The database cannot take writes now (down, frozen, refusing): these rows must wait."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(rows)} row(s) not written")
        self.rows = rows


_ROW_ERROR_CLASSES = ("22", "23")  # SQLSTATE classes that belong to one row's data


def _is_row_error(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return False
        code = getattr(exc.orig, "pgcode", None) or ""
        return code[:2] in _ROW_ERROR_CLASSES
    if isinstance(exc, StatementError):  # raised before the server saw it (encoding, JSON)
        return True
    return isinstance(exc, (ValueError, TypeError, UnicodeError))


def resolve_db_url() -> str | None:
    """``general_settings.gateway_logger_db_url`` of the running proxy, else ``$POC1_DB_URL``."""
    proxy = sys.modules.get("litellm.proxy.proxy_server")
    value = ((getattr(proxy, "general_settings", None) or {}).get("gateway_logger_db_url")
             if proxy is not None else None)
    if isinstance(value, str) and value.startswith("os.environ/"):
        value = os.environ.get(value.split("/", 1)[1])
    return value or os.environ.get(db_init.URL_ENV) or None


#: libpq keepalives: a vanished host (not a frozen process: its kernel still ACKs) is noticed in ~25 s
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
              "tcp_user_timeout": 20_000}


def _origin(exc: BaseException) -> str:
    """Where an exception came from, as ``file:line function`` (its innermost frame): one line, no wall."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} {last.name}"


class Writer:
    """Rows from the event loop to PostgreSQL, through memory and, when needed, the on-disk spool.

    Four threads. The *writer* takes what the loop handed over (``submit``), normalizes it, keeps it in
    memory within the byte budget and writes batches; it replays the spool when the database is back. The
    *spooler* wakes every flush interval (at once for each row while the database is away): it moves the
    rows in memory to the spool while the database is away or a write has stalled (so a kill loses at
    most the last flush interval), exports the gauges and the heartbeat. The *syncer* fsyncs the spool as
    soon as rows were appended. The *watchdog* shuts the sockets of a database operation that runs past
    the write timeout (a frozen server). A turn of any of them that fails unexpectedly is said once per
    kind, counted, and the loop goes on after a backoff.
    """

    RETRY_MIN_S, RETRY_MAX_S = 0.25, 2.0
    ERROR_BACKOFF_MAX_S = 5.0
    #: an unexpected error this often with the same spool segment in hand: the segment is quarantined
    SUSPECT_AFTER = 3

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
        self._wake = threading.Event()  # writer: a full batch waits, or stop
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

    def start(self) -> "Writer":
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
            elif self.signalled or len(self._inbox) >= self.settings.batch_max:
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

    # -- supervision ------------------------------------------------------------------------------

    def _supervised(self, where: str, turn: Callable[[], bool]) -> None:
        """Run ``turn`` until it returns False; an unexpected error ends the turn, never the loop."""
        while True:
            try:
                if not turn():
                    return
                self._errors_in_row[where] = 0
            except Exception as exc:
                self._unexpected(where, exc)
                n = self._errors_in_row[where] = self._errors_in_row[where] + 1
                # stopping: the writer gets a few more turns to drain; stop() spools whatever is left
                backoff = min(self.ERROR_BACKOFF_MAX_S, 0.05 * 2 ** n)
                if self._stop.wait(backoff) and (where != "writer" or n >= 3):
                    return

    def _unexpected(self, where: str, exc: BaseException) -> None:
        """Said once per kind (where, type, origin), counted; rows in hand are put back on disk."""
        self.stats.add("writer_errors")
        kind = f"{where} {type(exc).__name__} at {_origin(exc)}"
        if kind not in self._kinds_said:
            self._kinds_said.add(kind)
            say(f"unexpected error in the {kind}: {clean_text(str(exc))[:300]} (said once per kind, counted "
                "in gateway_logger_writer_errors_total; the loop goes on)")
        if where == "writer":
            self._settle_after_error()

    def _settle_after_error(self) -> None:
        """The batch in hand when a writer turn failed: a spool segment is released (quarantined if it keeps
        coming back with errors), rows from memory go to the spool; so nothing is lost and nothing blocks."""
        segment = self._pending_segment
        if segment is not None:
            name = segment.path.name
            self._suspects[name] = self._suspects.get(name, 0) + 1
            if self._suspects[name] >= self.SUSPECT_AFTER and self.spool is not None:
                self._suspects.pop(name)
                self.spool.quarantine_whole(segment, f"{self.SUSPECT_AFTER} unexpected errors replaying it")
            else:
                Spool.release(segment)
        elif self._pending and not self._pending_copied:
            self._overflow(list(self._pending), "unexpected error")
        self._clear_pending()

    # -- the writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._setup()
        except Exception as exc:
            self._unexpected("setup", exc)
        finally:
            self._ready.set()
        self._supervised("writer", self._turn)
        if self.engine is not None:
            with contextlib.suppress(Exception):
                self.engine.dispose()

    def _turn(self) -> bool:
        self._beat = time.time()
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
                    self._wake.wait(self._interval)  # batches, not a wake-up per row (GIL: the loop)
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
        except _Outage as out:
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
            except _Outage:
                break
            self._clear_pending()
        self._spool_leftovers("shutdown")

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

    # -- the spooler thread -----------------------------------------------------------------------

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
            if time.monotonic() - getattr(self, "_refreshed", 0.0) >= 1.0:
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

    # -- setup, probing, state lines ------------------------------------------------------------

    def _setup(self) -> None:
        self.url = self._resolve_url()
        self.spool = Spool(self.settings.spool_dir, self.settings.spool_max_rows, self.settings.batch_max,
                           spool_tag(self.url), self.stats, self.settings.batch_max_bytes)
        if not self.url:
            say(f"no database URL (general_settings.gateway_logger_db_url or {db_init.URL_ENV}); "
                "rows go to the spool and are dropped past its bound")
            return
        try:
            url = make_url(self.url)
            if url.get_backend_name() != "postgresql":
                raise ValueError(f"backend {url.get_backend_name()} is not PostgreSQL")
            self.engine = db_init.make_engine(
                url, application_name="gateway_logger", pool_size=2, max_overflow=0, pool_timeout=10,
                connect_args=dict(KEEPALIVES))
        except Exception as exc:
            say(f"database URL unusable ({type(exc).__name__}: {db_init.one_line_cause(exc, self.url)}); "
                "rows go to the spool")
            self.engine = None
            return
        event.listen(self.engine, "connect", self._on_connect)
        event.listen(self.engine, "close", self._on_close)
        event.listen(self.engine, "checkout", lambda *a: self.stats.add("pool_checkouts"))
        if self.spool.rows:
            say(f"{self.spool.rows} spooled row(s) found in {self.settings.spool_dir}; replaying them")
        self._probe()

    def _resolve_url(self) -> str | None:
        source = self._url_source
        if isinstance(source, str):
            return source
        if callable(source):
            return source()
        proxy = sys.modules.get("litellm.proxy.proxy_server")
        if proxy is not None:
            # the proxy creates its callbacks before it reads general_settings: wait for them briefly
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not getattr(proxy, "general_settings", None):
                if self._stop.wait(0.05):
                    break
        return resolve_db_url()

    def _server_facts(self) -> Any:
        assert self.engine is not None
        self._arm()
        try:
            with self.engine.connect() as conn:
                return conn.execute(select(func.current_setting("server_version"), func.current_database(),
                                           func.current_user())).one()
        finally:
            self._disarm()

    def _probe(self) -> bool:
        """Reach the database and say so on a state change."""
        try:
            version, db, user = self._server_facts()
        except Exception as exc:
            self._down(exc)
            return False
        host = make_url(self.url).host if self.url else "?"
        self._server = f"server=PostgreSQL {str(version).split()[0]} host={host} db={db} user={user}"
        self._up()
        return True

    def _up(self) -> None:
        with self._state_lock:
            if self._state == "up":
                return
            self._say_up()
            self._ever_up, self._state = True, "up"
        self.stats.connected = True

    def _say_up(self) -> None:
        masked = db_init.mask_url(self.url or "")
        if not self._ever_up:
            say(f"database connection established: {masked} {self._server}")
        else:
            waiting = (len(self._inbox) + len(self._backlog) + len(self._pending)
                       + (self.spool.rows if self.spool else 0))
            say(f"database connection restored: {masked} {self._server} "
                f"after {time.monotonic() - self._down_since:.1f}s; rows waiting={waiting}")

    def _down(self, exc: BaseException, dispose: bool = True) -> None:
        with self._state_lock:
            if self._state == "down":
                return
            if self._state == "up":
                self.stats.add("connection_losses")
            say(f"database connection lost: {db_init.one_line_cause(exc, self.url)}")
            self._state, self._down_since = "down", time.monotonic()
        self.stats.connected = False
        self._spool_wake.set()  # the rows in memory go to disk now
        if dispose and self.engine is not None:
            with contextlib.suppress(Exception):
                self.engine.dispose()  # drop pooled sockets of a restarted/frozen server

    # -- watchdog: a frozen server must not hang the writer ---------------------------------------

    def _on_connect(self, dbapi_conn: Any, record: Any) -> None:
        self.stats.add("pool_connects")
        with self._conns_lock:
            self._raw_conns[id(dbapi_conn)] = dbapi_conn

    def _on_close(self, dbapi_conn: Any, record: Any) -> None:
        with self._conns_lock:
            self._raw_conns.pop(id(dbapi_conn), None)

    def _arm(self) -> None:
        self._beat = time.time()
        self._op_started = now = time.monotonic()
        self._deadline = now + self.settings.write_timeout_s

    def _disarm(self) -> None:
        self._deadline = self._op_started = None

    def _watch(self) -> None:
        self._supervised("watchdog", self._watch_turn)

    def _watch_turn(self) -> bool:
        if self._stop.is_set() and self.stopped:
            return False
        time.sleep(0.2)
        deadline = self._deadline
        if deadline is None or time.monotonic() < deadline:
            return True
        self._deadline = None
        self.stats.add("watchdog_fired")
        # a frozen server still ACKs TCP; SQLAlchemy's pre-ping may then reconnect silently, so the
        # loss is declared here, and the next successful write says "restored"
        self._down(TimeoutError(f"no answer within {self.settings.write_timeout_s:g}s (server frozen "
                                "or unreachable); its sockets were closed to retry"), dispose=False)
        with self._conns_lock:
            conns = list(self._raw_conns.values())
        for conn in conns:
            try:
                if getattr(conn, "closed", 1):
                    continue
                fd = conn.fileno()
                with socket.socket(fileno=os.dup(fd)) as s:
                    s.shutdown(socket.SHUT_RDWR)
            except Exception:
                pass
        return True

    # -- writing ---------------------------------------------------------------------------------

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

    def _reachable(self) -> bool:
        """Whether the database answers right now (after a failed write: is it the batch, or the server?)."""
        try:
            self._server_facts()
        except Exception:
            return False
        return True

    def _data_problem(self, exc: BaseException) -> bool:
        """A failed write is the rows' fault when the server named their data (SQLSTATE 22/23), or when it
        still answers a probe (a constraint that fails at COMMIT, a statement timeout on a huge batch); it
        is an outage when the connection broke and the server does not answer."""
        if _is_row_error(exc):
            return True
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return False
        return self._reachable()
    def _insert(self, records: list[dict[str, Any]]) -> "Written":
        """One transaction: multi-row INSERT of requests (ON CONFLICT DO NOTHING, RETURNING id), then
        the upgrade of earlier failures by later successes of the same calls, then the responses."""
        assert self.engine is not None
        chosen = outcome_per_call(records)
        req_params = []
        for r in chosen.values():
            p = dict(r["request"])
            p.setdefault("call_id", p["request_id"])  # spooled before migration 0002: request_id = call id
            p["start_time"], p["end_time"] = _ts(p.get("start_time")), _ts(p.get("end_time"))
            req_params.append(p)
        stmt = (pg_insert(Request).on_conflict_do_nothing(index_elements=[Request.request_id])
                .returning(Request.id, Request.request_id))
        with self.engine.begin() as conn:
            if self.settings.test_delay_ms:  # TEST ONLY (see module docstring). Before the first statement,
                # so the transaction (and created_at = now()) starts after it: the lag is visible in the rows.
                time.sleep(self.settings.test_delay_ms / 1000.0)
            ids = {rid: pk for pk, rid in conn.execute(stmt, req_params).all()}
            # rare path: a call already logged; a success replaces a failure logged for it before
            successes = [p for p in req_params if p["request_id"] not in ids and _succeeded(p)]
            replaced = self._replace_failures(conn, successes) if successes else {}
            resp_params = [dict(chosen[rid]["response"], request_id_fk=pk)
                           for rid, pk in (*ids.items(), *replaced.items())]
            if resp_params:
                conn.execute(pg_insert(Response), resp_params)
        return Written(len(ids), len(replaced), len(records) - len(ids) - len(replaced))

    @staticmethod
    def _replace_failures(conn: Any, successes: list[dict[str, Any]]) -> dict[str, int]:
        """LiteLLM retries inside one call: the failed attempt's event can come first, under the same
        call id, then the success the client got. Upgrade such rows (request_id -> id) and drop the
        failure's response row; a row already logged as a success is left as it is."""
        stmt = pg_insert(Request)
        columns = [c for c in successes[0] if c != "request_id"]
        stmt = (stmt.on_conflict_do_update(
            index_elements=[Request.request_id], set_={c: stmt.excluded[c] for c in columns},
            where=(Request.status_code >= FAILED_FROM) & (stmt.excluded.status_code < FAILED_FROM))
            .returning(Request.id, Request.request_id))
        replaced = {rid: pk for pk, rid in conn.execute(stmt, successes).all()}
        if replaced:
            conn.execute(delete(Response).where(Response.request_id_fk.in_(list(replaced.values()))))
        return replaced

    def _write(self, records: list[dict[str, Any]]) -> None:
        """Write a batch in one transaction. If it fails while the database answers, it is the rows: split
        it in two and write each half the same way, down to single rows (``_write_alone``), so one poison
        row costs O(log n) transactions and never holds up the rows behind it. Raises _Outage with the rows
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
                self._down(exc)
                raise _Outage(records) from exc
            if len(records) == 1:
                self._write_alone(records[0], exc)
                return
            self.stats.add("batch_splits")
            half = len(records) // 2
            try:
                self._write(records[:half])
            except _Outage as out:
                raise _Outage(out.rows + records[half:]) from None
            self._write(records[half:])
            return
        self._disarm()
        self.stats.observe_batch(time.perf_counter() - t0)
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
                self._down(again)
                raise _Outage([record]) from again
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



# --------------------------------------------------------------------------------------------------
# metrics: the stats as Prometheus metrics on 127.0.0.1 only, one view of every worker

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_RUN_DIR = re.compile(r"run-(\d+)-(\d+)$")
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db$")


def worker_count() -> int:
    """``litellm --num_workers`` (the CLI puts it in NUM_WORKERS, which its workers inherit)."""
    try:
        return max(1, int(os.environ.get("NUM_WORKERS", "1")))
    except ValueError:
        return 1


def _process_start(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with the pid, it names one process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def metrics_run_dir(base: str) -> Path:
    """This gateway run's directory for prometheus_client's multiprocess files, shared by its workers:
    named after the process that started them (uvicorn's supervisor; with one worker, the CLI process
    itself) and its start time. Directories of runs whose process is gone are removed: only names of that
    pattern, in our own 0700 directory, and only their .db files (rmdir fails on anything else)."""
    leader = os.getppid() if worker_count() > 1 else os.getpid()
    root = Path(base)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    run = root / f"run-{leader}-{_process_start(leader) or 0}"
    for old in root.iterdir():
        match = _RUN_DIR.match(old.name)
        if match and old != run and _process_start(int(match[1])) != match[2]:
            for f in old.glob("*.db"):
                with contextlib.suppress(OSError):
                    f.unlink()
            with contextlib.suppress(OSError):
                old.rmdir()
    run.mkdir(mode=0o700, exist_ok=True)
    return run


def enable_multiprocess(settings: Settings) -> Path | None:
    """prometheus_client's multiprocess mode for a gateway worker (before its first metric is made): each
    worker's metrics live in mmap'd files of the run directory, and the worker that holds the metrics port
    serves the sum. Why this rather than a port per worker: one scrape (check 8) sees the whole gateway,
    counters of a worker that died still count, and another worker takes the port over if its holder dies.
    ``$PROMETHEUS_MULTIPROC_DIR``, when set, is used as it is (LiteLLM empties it at start)."""
    configured = os.environ.get(_MULTIPROC_ENV)
    try:
        path = Path(configured) if configured else metrics_run_dir(settings.metrics_dir)
        probe = path / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        say(f"metrics directory unusable ({_strerror(exc)}); this worker serves its own metrics only")
        return None
    os.environ[_MULTIPROC_ENV] = str(path)
    global _MULTIPROCESS_DIR
    _MULTIPROCESS_DIR = path
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):  # imported before: switch it now
        values.ValueClass = values.MultiProcessValue()
    return path


#: this process's multiprocess directory, once enabled
_MULTIPROCESS_DIR: Path | None = None


def _retire_metrics() -> None:
    """A worker that stops leaves the live gauges (its counters stay counted)."""
    if _MULTIPROCESS_DIR is not None:
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(os.getpid(), str(_MULTIPROCESS_DIR))


def _mark_dead_workers(path: Path) -> None:
    """Drop the live gauges of workers that died (a SIGKILL runs no exit hook); counters stay counted."""
    from prometheus_client import multiprocess

    pids = {int(m[1]) for f in path.glob("gauge_live*_*.db") if (m := _LIVE_GAUGE_FILE.search(f.name))}
    for pid in pids - {os.getpid()}:
        if not _pid_alive(pid):
            with contextlib.suppress(OSError):
                multiprocess.mark_process_dead(pid, str(path))


class _Collector:
    """What /metrics serves: this process's metrics, or (multiprocess) the sum over the run's workers."""

    def __init__(self, stats: Stats, multiprocess_dir: Path | None) -> None:
        self.stats, self.dir = stats, multiprocess_dir

    def collect(self) -> Iterable[Any]:
        self.stats.push_gauges()
        if self.dir is None:
            metrics = [*self.stats.counters.values(), *self.stats.gauge_metrics.values(),
                       self.stats.batch_seconds, self.stats.build_info]
            families = [family for metric in metrics for family in metric.collect()]
        else:
            from prometheus_client.multiprocess import MultiProcessCollector

            _mark_dead_workers(self.dir)
            families = [f for f in MultiProcessCollector(None, path=str(self.dir)).collect()
                        if f.name.startswith("gateway_logger_")]
        for family in families:
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


def serve_metrics(stats: Stats, port: int, settings: Settings | None = None,
                  multiprocess_dir: Path | None = None, quiet: bool = False) -> bool:
    """Prometheus text on http://127.0.0.1:<port>/metrics (loopback only: read it on the host)."""
    from prometheus_client import start_http_server
    from prometheus_client.core import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats, multiprocess_dir))
    try:
        start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        if not quiet:
            say(f"metrics not served on 127.0.0.1:{port}: {_strerror(exc)}"
                + ("; another worker of this gateway serves every worker's metrics there, or this one takes "
                   "over when that worker is gone (tried every 5 s)" if multiprocess_dir else ""))
        return False
    whose = "every worker of this gateway, summed" if multiprocess_dir else "this process"
    say(f"metrics on http://127.0.0.1:{port}/metrics ({whose})")
    return True


# --------------------------------------------------------------------------------------------------
# what runs is what was signed: the code this process loaded, and its package versions

#: the files whose sha256 the logger reports (in this order in ``code_sha256``)
CODE_FILES = ("gateway_logger.py", "db_init.py")


def _file_sha256(path: str | Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable: {_strerror(exc)}"


def code_sha256(digests: Mapping[str, str]) -> str:
    """One digest for the code: sha256 of what ``sha256sum gateway_logger.py db_init.py`` prints."""
    return hashlib.sha256("".join(f"{digests[n]}  {n}\n" for n in CODE_FILES).encode()).hexdigest()


#: hashed as this module is imported: the code that was loaded, not whatever the files hold later
LOADED_SHA256 = {"gateway_logger.py": _file_sha256(__file__), "db_init.py": _file_sha256(db_init.__file__)}


def build_info() -> dict[str, str]:
    """The labels of ``gateway_logger_build_info``: the code digest and the versions of what it runs on."""
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    return {"code_sha256": code_sha256(LOADED_SHA256), "litellm": version("litellm"),
            "sqlalchemy": sqlalchemy.__version__, "psycopg2": psycopg2.__version__.split()[0],
            "prometheus_client": version("prometheus-client"), "python": platform.python_version()}


# --------------------------------------------------------------------------------------------------
# stopping: atexit, signals, LiteLLM's shutdown


_WRITERS: list[Writer] = []


@atexit.register
def _flush_at_exit() -> None:
    for writer in list(_WRITERS):
        try:
            writer.stop()
        except Exception as exc:  # never a traceback wall at exit
            say(f"flush at exit failed: {type(exc).__name__}: {exc}")
    _retire_metrics()


_chained_signals: dict[int, Any] = {}


def _on_signal(signum: int, frame: Any) -> None:
    """Only records the signal, then hands it on (to uvicorn, which begins its graceful shutdown).

    Nothing is flushed here: the interrupted thread may hold any lock (logging's, the spool's, a queue's),
    so work in a handler can deadlock. The writers only stop waiting for their flush interval; the final
    flush runs in LiteLLM's shutdown, on the event loop, after the calls in flight have finished."""
    for writer in _WRITERS:
        writer.signalled.append(signum)
    previous = _chained_signals.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def _install_signal_flag() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(signum)
        if current is _on_signal or current == signal.SIG_IGN:
            continue
        try:
            signal.signal(signum, _on_signal)
        except (ValueError, OSError):
            continue
        _chained_signals[signum] = current


async def _flush_at_shutdown() -> None:
    """Runs on the event loop as LiteLLM shuts down, after uvicorn and LiteLLM let the calls in flight
    finish: let LiteLLM's logging worker hand us their callbacks, then let the writer threads write (or
    spool) every row. The loop only waits (asyncio.sleep); the database work stays in the writer thread."""
    writers = [w for w in _WRITERS if not w.stopped]
    if not writers:
        return
    loop = asyncio.get_running_loop()
    budget = max(w.settings.shutdown_timeout_s for w in writers)
    deadline = loop.time() + budget
    try:
        from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

        await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), timeout=budget / 2)
    except Exception as exc:  # TimeoutError, or a LiteLLM without it: go on with what we have
        say(f"shutdown: LiteLLM's logging worker did not hand over every call ({type(exc).__name__})")
    for w in writers:
        w.begin_stop()
    while not all(w.stopped for w in writers) and loop.time() < deadline:
        await asyncio.sleep(0.02)
    for w in writers:
        w.stop(timeout=0)  # spools what a writer still blocked holds; closes the spool
        say(f"stopped at the gateway's shutdown (pid {os.getpid()}): nothing left in memory; "
            f"{w.spool.refresh() if w.spool else 0} row(s) wait in the spool")
    _retire_metrics()


def _hook_shutdown() -> None:
    """Have ``_flush_at_shutdown`` run in LiteLLM's shutdown. Why there: on SIGTERM uvicorn stops accepting,
    waits for the open connections, runs the app's lifespan shutdown (LiteLLM's ``proxy_shutdown_event``),
    then restores the signal handlers it found and raises the signal again, so the process dies of it
    without running atexit: the lifespan shutdown is the last code that runs. LiteLLM has no hook for it,
    so the module global it calls is wrapped."""
    proxy = sys.modules.get("litellm.proxy.proxy_server")
    original = getattr(proxy, "proxy_shutdown_event", None)
    if original is None:
        say("LiteLLM has no proxy_shutdown_event: rows of calls that end during a shutdown are only as safe "
            "as the loss window (one flush interval)")
        return
    if getattr(original, "_gateway_logger_flush", False):
        return

    @functools.wraps(original)
    async def proxy_shutdown_event(*args: Any, **kwargs: Any) -> Any:
        try:
            return await original(*args, **kwargs)
        finally:
            await _flush_at_shutdown()

    proxy_shutdown_event._gateway_logger_flush = True  # type: ignore[attr-defined]
    proxy.proxy_shutdown_event = proxy_shutdown_event  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------------
# the LiteLLM callback


#: set to 1 only for check 6's control listener (acceptance/overhead_control.py)
DISABLED_ENV = "POC1_LOGGER_DISABLED"


class GatewayLogger(CustomLogger):  # type: ignore[misc,valid-type]
    """Captures each call on LiteLLM's loop and hands it to the writer thread."""

    METRICS_RETRY_S = 5.0

    def __init__(self, settings: Settings | None = None, db_url: str | None = None, **kwargs: Any) -> None:
        if CustomLogger is not object:
            super().__init__(**kwargs)
        self.settings = settings or Settings.from_env()
        in_gateway = "litellm.proxy.proxy_server" in sys.modules
        #: off only for check 6's control listener: the same gateway build, writing no rows
        self.enabled = os.environ.get(DISABLED_ENV, "").strip() not in ("1", "true", "yes")
        self._multiprocess_dir = enable_multiprocess(self.settings) if in_gateway and self.enabled else None
        self.stats = Stats()
        self._db_url = db_url
        self._writer: Writer | None = None
        self._lock = threading.Lock()
        self._say_capture = RateLimitedSay()
        self._serving = False
        self._metrics_tried = -math.inf
        self._metrics_lock = threading.Lock()
        if not self.enabled:
            say(f"disabled ({DISABLED_ENV}=1): this gateway process writes no rows (a control listener for "
                "check 6, never the production gateway)")
        elif in_gateway:  # inside the gateway: connect (and say so) at start
            self.start()

    @property
    def writer(self) -> Writer:
        return self._writer or self.start()

    def start(self) -> Writer:
        with self._lock:
            if self._writer is None:
                n = worker_count()
                role = f"one of {n} workers (supervisor pid {os.getppid()})" if n > 1 else "the only worker"
                s = self.settings
                say(f"starting (pid {os.getpid()}, {role}; queue max {s.queue_max} rows / "
                    f"{s.queue_max_bytes} bytes, batch max {s.batch_max} rows / {s.batch_max_bytes} bytes, "
                    f"documents cut past {s.document_max_bytes} bytes, spool {s.spool_dir} max "
                    f"{s.spool_max_rows} rows)")
                info = build_info()
                files = " ".join(f"{name}={digest}" for name, digest in LOADED_SHA256.items())
                say(f"build: {files} " + " ".join(f"{k}={v}" for k, v in info.items()))
                self.stats.build_info.labels(**info).set(1)
                self.stats.set_gauge("workers", 1)
                self._writer = Writer(self.settings, self.stats, self._db_url)
                self._writer.on_tick.append(self._keep_metrics_served)
                self._writer.start()
                _WRITERS.append(self._writer)
                if "litellm.proxy.proxy_server" in sys.modules:
                    _install_signal_flag()
                    _hook_shutdown()
                self._keep_metrics_served()
            return self._writer

    def _keep_metrics_served(self) -> None:
        """Serve the metrics port, or try again later: with several workers, the one holding it may die."""
        with self._metrics_lock:
            if self._serving or not self.settings.metrics_port:
                return
            if time.monotonic() - self._metrics_tried < self.METRICS_RETRY_S:
                return
            quiet = self._metrics_tried > -math.inf
            self._metrics_tried = time.monotonic()
            self._serving = serve_metrics(self.stats, int(self.settings.metrics_port), self.settings,
                                          self._multiprocess_dir, quiet=quiet)

    def _submit(self, kwargs: Mapping[str, Any], failed: bool) -> None:
        try:
            self.writer.submit(capture(kwargs, failed))
        except Exception as exc:  # the gateway must never fail because of its logger
            self.stats.add("rows_dropped")
            self._say_capture(f"a call could not be captured and was dropped: {type(exc).__name__}: {exc}")

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        if self.enabled:
            self._submit(kwargs, False)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        if self.enabled:
            self._submit(kwargs, True)

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict,
                                  call_type: Any) -> dict:
        """Gives the HTTP request its own id before LiteLLM calls the model: LiteLLM keeps this
        metadata through its retries and hands it to every callback of the request, so retried
        attempts stay one row and two requests never share one (whatever call id the client sent)."""
        if self.enabled:
            metadata = data.get("metadata")
            if not isinstance(metadata, dict):
                metadata = data["metadata"] = {}
            metadata[REQUEST_ID_KEY] = new_request_id()
        return data

    async def async_post_call_response_headers_hook(self, data: dict, user_api_key_dict: Any, response: Any,
                                                    request_headers: Any = None,
                                                    litellm_call_info: Any = None) -> dict[str, str] | None:
        """Tells the client its row: ``x-poc1-request-id`` (also on errors LiteLLM answers itself)."""
        metadata = data.get("metadata") or {}
        request_id = issued_request_id(metadata.get(REQUEST_ID_KEY)) if self.enabled else None
        return {REQUEST_ID_HEADER: request_id} if request_id else None


proxy_handler_instance = GatewayLogger()
