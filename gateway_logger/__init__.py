"""LiteLLM ``CustomLogger`` that writes every gateway call (success or failure) to PostgreSQL.

Named in config.yaml as ``litellm_settings: callbacks: gateway_logger.proxy_handler_instance``. Each
call becomes one ``requests`` row and one linked ``responses`` row, built from the models of
``db_init.py`` (the only schema). This is a package: LiteLLM loads a callback from beside its config
file only when it is one ``.py`` file, and imports anything else, so the directory that holds
``gateway_logger/`` and ``db_init.py`` must be on ``sys.path`` (the unit sets
``PYTHONPATH=/opt/litellm``).

Why it is shaped this way: LiteLLM runs callbacks on its event loop, and part of every request on the
loop's default thread pool. A database write on either stalls the whole gateway when PostgreSQL is
slow or frozen. So the callback only captures references and hands them over; a writer thread turns
them into rows and writes them in batches, one transaction per batch, so a replay never duplicates.
One exception: LiteLLM retries a failed attempt inside the same call (same call id,
``x-litellm-attempted-retries``), so a failure event can precede the success the client got; that
success replaces the failure's rows (``rows_replaced``), never the other way round. Rows that cannot be
written now wait in JSONL spool files on disk, replayed once the database is back. A row is never lost
unseen: every row that will not reach the database is counted in ``rows_dropped`` and said in the
journal.

What a row costs, and why (issue 14; profiles and figures in POC-1/FINDINGS.md §3):

* **Group commit.** The writer writes as soon as it is free and takes whatever arrived meanwhile: an idle
  writer is woken by the row itself (no flush interval to wait for), a busy one finds a bigger batch
  when its write returns, so batches grow with the load by themselves. The durability lag was the flush
  interval (p50 ~60 ms, p95 ~120 ms at one request at a time); it is now one write.
* **One statement, one round trip.** cProfile of the writer (20,000 calls): a 500-row multi-row INSERT
  through SQLAlchemy cost ~110 µs of the gateway's CPU per call; with group commit a batch is often one
  call, and then the transaction costs most (six round trips with COPY: pre-ping, BEGIN, nextval, two
  COPYs, COMMIT; 380 µs of CPU), each round trip also waiting for the GIL behind a busy event loop
  (py-spy: 30 % of the writer's time in the pre-ping alone). ``bulk`` sends a batch as one statement in
  autocommit (both tables, ``ON CONFLICT (request_id) DO NOTHING``; 248 µs of CPU for a one-call batch);
  the engine has no pre-ping (a connection found broken is replaced and the batch sent again once), and
  the writer keeps its connection from batch to batch (``Batches._connection``: a pool checkout, its
  events and its reset cost a one-call batch 236–298 µs of CPU against 161–203 µs kept). The
  rare success-replaces-failure upgrade is ``database.insert_rows``, in a transaction of its own.
* **No copy of a document that needs none.** Making a document storable (JSON types, clean text, secrets
  masked) walked it in Python: ~50 µs per call. ``documents.storable`` runs the C JSON encoder once
  instead and keeps the document as it is when that pass shows nothing to change (nearly every call);
  anything else still takes the walk.
* **Not another process.** The database work stays on a thread of the gateway's process. Measured at
  saturation (``make bench``): the writer thread uses ~0.5 ms of CPU per request against LiteLLM's own
  ~17.5 ms (3 %), and the capacity ratios are within the run's noise floor; a writer process would need
  every call serialised on the event loop to hand it over, a local queue and a second thing to supervise
  and deploy. What would change this: a capacity ratio logger / do-nothing callback clearly below 0.97,
  or more calls per second than the writer sustains (~4,000 on loopback here).
* **Where the lag comes from** (``handover_seconds``, ``write_lag_seconds``): on a saturated gateway most
  of it is LiteLLM's — its logging worker runs the callback on the same busy event loop (p95 ~90 ms after
  the call ended at 8 saturating clients); the logger's write adds p95 ~50 ms there, ~4 ms when not saturated.

What bounds a loss, and why (issue 11):

* **Loss window.** Rows wait in memory only while the database takes writes, for at most the write in
  progress (group commit; before issue 14 up to one flush interval: the figures below are from then).
  While the database is away, or a write has run past ``STALL_MS`` (a frozen server), a spooler thread
  writes every row to the spool as it arrives (a stalled batch is copied there too), and a syncer thread
  fsyncs it right after: a slow disk delays only the durability against a power loss, not the write that
  makes a row survive a kill. So a SIGKILL or OOM kill loses at most the rows of the write in progress,
  plus those LiteLLM has answered but not yet handed over (a power loss: those and the last fsync's).
  Measured through the real proxy, open loop at 40 requests/s, default settings, SIGKILL of the proxy's
  process group, a new proxy on the same spool (tests/test_logger_reliability.py, 2 shared cores,
  loaded): PostgreSQL up, three runs: 120 answered / 116 written / 4 lost, 110 / 104 / 6, 106 / 99 / 7;
  every lost row answered at most 120-170 ms before the kill: the durability lag (then the flush
  interval, LiteLLM's lag between an answer and its callback, one write). PostgreSQL stopped, four runs:
  120 / 120 / 0, 280 / 280 / 0, 278 / 278 / 0, 108 / 106 / 2 (those 2 answered 1 and 23 ms before the
  kill: LiteLLM had not handed them over yet).
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
  sha256 of the code it loaded and the versions of LiteLLM, SQLAlchemy, psycopg2, prometheus_client and
  Python. The code is every ``*.py`` file directly in ``gateway_logger/`` and ``db_init.py``, named by
  their paths relative to the directory that holds both; ``code_sha256`` = sha256 of what ``sha256sum``
  prints for the package's files sorted by path (byte order), then ``db_init.py``: on the gateway,
  ``cd /opt/litellm && sha256sum $(printf '%s\\n' gateway_logger/*.py | LC_ALL=C sort) db_init.py |
  sha256sum`` (``identity``; acceptance/versions.py computes the same from the repository and the
  gateway for check 9). A file added to, missing from or changed in the package changes it.

Database URL: ``general_settings.gateway_logger_db_url`` of the proxy config (``os.environ/NAME``
references are resolved), else the environment variable ``POC1_DB_URL``.

Settings: environment variables ``POC1_LOGGER_<NAME>``, each declared once (type, default, bounds,
meaning) in ``gateway_logger.settings``; the list below is written from that declaration at import
(``help(gateway_logger)``), defaults in brackets:

{settings}

Journal lines (stderr, own handler, survive LiteLLM reconfiguring logging; never a secret, never a
traceback): ``starting (pid P, one of N workers (supervisor pid S); ...)``, ``build:
gateway_logger/__init__.py=... gateway_logger/batches.py=... (every file of the package) db_init.py=...
code_sha256=... litellm=... ...``, ``metrics on http://127.0.0.1:<port>/metrics (...)``, ``database
connection established: <masked url> server=PostgreSQL <version> ...``, ``database connection lost:
<one-line cause>``, ``database connection restored: <masked url> ...``, ``rows dropped: N so far
(<why>)``, ``row <id> can never be written (<cause>); kept in <file>``, ``spool segment <name>: N
unreadable line(s) dropped; the segment was moved whole to <path> ...``, ``spool write failed in <dir>:
<cause>; ...``, ``spool writable again in <dir> ...``, ``unexpected error in the <thread> <type> at
<file:line function>: <message> (said once per kind ...)``, ``signal SIGTERM: stopping once ...``,
``stopped at the gateway's shutdown ...``.

Metrics (``gateway_logger_*``, prometheus_client ``Counter``/``Gauge``/``Histogram`` objects, declared
with their HELP texts in ``gateway_logger.metrics``): counters ``<name>_total`` (``COUNTER_HELP``),
gauges (``GAUGES``, each with its multiprocess mode), the histogram ``batch_write_seconds`` and
``build_info{code_sha256, litellm, sqlalchemy, psycopg2, prometheus_client, python} 1``. With several
workers the port serves their combination, without per-worker labels: counters and the histogram summed
(a worker that died still counts), gauges by their mode (e.g. ``connected``, ``writer_alive`` and the
heartbeat are the minimum over the running workers, ``workers`` their number). ``Stats`` reads this
process's values back (``stats["rows_dropped"]``, ``snapshot()``) for the writer, tests and tools.

The modules, in the order a call goes through them:

* ``callback``: ``GatewayLogger``, the LiteLLM callback (capture on the loop, pre-call hook, header).
* ``calls``: a call's LiteLLM kwargs -> the captured call; the gateway's request ids.
* ``documents``: payload and content made storable (JSON-safe, secrets masked, embeddings digested, cut).
* ``rows``: a captured call -> one record ``{request, response}`` (columns, truncation, status, tokens).
* ``writer``: ``Writer``, its state, its public face and the writer thread; put together from
  ``supervision`` (guarded turns), ``spooling`` (spooler and syncer threads), ``batches`` (a batch's
  write, split, degrade, dead-letter) and ``connection`` (engine, state lines, watchdog thread).
* ``database``: the URL, outage or row error, the SQL of one batch transaction.
* ``spool``: ``Spool``, the on-disk JSONL segments, quarantine and dead-letter files.
* ``metrics``: the metrics declared, ``Stats``; ``metrics_port``: multiprocess mode, the port.
* ``identity``: ``code_sha256`` and ``build_info``; ``settings``: ``Settings``; ``journal``: ``say``.
* ``shutdown``: the signal flag, the flush in LiteLLM's shutdown, atexit.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # importing litellm must never dial out

try:
    import db_init
except ImportError:  # imported without the directory that holds the package (and db_init.py) on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import db_init

from gateway_logger import journal, settings
from gateway_logger.batches import Batches
from gateway_logger.callback import DISABLED_ENV, GatewayLogger
from gateway_logger.calls import REQUEST_ID_HEADER, REQUEST_ID_KEY, capture, issued_request_id, new_request_id
from gateway_logger.connection import Connection
from gateway_logger.database import KEEPALIVES, Outage, insert_batch, is_row_error, resolve_db_url
from gateway_logger.documents import (
    CUT_KEY,
    INJECTED_BODY_KEYS,
    NOTES_KEY,
    SECRET_KEYS,
    clean_text,
    client_body,
    cut_document,
    is_cut,
    jsonable,
    summarize_embeddings,
)
from gateway_logger.identity import CODE_FILES, LOADED_SHA256, build_info, code_sha256, record_loaded
from gateway_logger.journal import RateLimitedSay, say
from gateway_logger.metrics import (
    BUILD_LABELS,
    COUNTER_HELP,
    COUNTERS,
    GAUGE_MODES,
    GAUGES,
    METRIC_HELP,
    Stats,
)
from gateway_logger.metrics_port import enable_multiprocess, metrics_run_dir, serve_metrics, worker_count
from gateway_logger.rows import (
    CLIENT_CLOSED,
    FAILED_FROM,
    INVALID_KEY,
    LIMITS,
    NO_KEY,
    ROW_OVERHEAD,
    Written,
    call_notes,
    count_stream_usage,
    degrade,
    normalize,
    normalize_sized,
    outcome_per_call,
    status_of,
    storable_call_id,
)
from gateway_logger.settings import Settings
from gateway_logger.shutdown import WRITERS
from gateway_logger.spool import Segment, Spool, parse_segment, spool_tag
from gateway_logger.spooling import Spooling
from gateway_logger.supervision import Supervision
from gateway_logger.writer import Writer

record_loaded()  # every module of the package is loaded now: what identity hashes is what runs
__doc__ = (__doc__ or "").replace("{settings}", "\n".join(settings.describe()))

__all__ = [
    "BUILD_LABELS", "CLIENT_CLOSED", "CODE_FILES", "COUNTERS", "COUNTER_HELP", "CUT_KEY", "DISABLED_ENV",
    "FAILED_FROM", "GAUGES", "GAUGE_MODES", "INJECTED_BODY_KEYS", "INVALID_KEY", "KEEPALIVES", "LIMITS",
    "LOADED_SHA256", "METRIC_HELP", "NOTES_KEY", "NO_KEY", "REQUEST_ID_HEADER", "REQUEST_ID_KEY",
    "ROW_OVERHEAD", "SECRET_KEYS", "WRITERS", "Batches", "Connection", "GatewayLogger", "Outage",
    "RateLimitedSay", "Segment", "Settings", "Spool", "Spooling", "Stats", "Supervision", "Writer",
    "Written", "build_info", "call_notes", "capture", "clean_text", "client_body", "code_sha256",
    "count_stream_usage", "cut_document", "db_init", "degrade", "enable_multiprocess", "insert_batch",
    "is_cut", "is_row_error", "issued_request_id", "journal", "jsonable", "metrics_run_dir",
    "new_request_id", "normalize", "normalize_sized", "outcome_per_call", "parse_segment",
    "proxy_handler_instance", "resolve_db_url", "say", "serve_metrics", "settings", "spool_tag",
    "status_of", "storable_call_id", "summarize_embeddings", "worker_count",
]

#: the instance config.yaml names (``callbacks: gateway_logger.proxy_handler_instance``); inside the
#: gateway it starts its writer at once
proxy_handler_instance = GatewayLogger()
