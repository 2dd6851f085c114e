"""LiteLLM ``CustomLogger`` that writes every gateway call (success or failure) to PostgreSQL.

Named in config.yaml as ``litellm_settings: callbacks: gateway_logger.proxy_handler_instance``. Each
call becomes one ``requests`` row and one linked ``responses`` row, built from the models of
``db_init.py`` (the only schema).

Why it is shaped this way: LiteLLM runs callbacks on its event loop, and part of every request on the
loop's default thread pool. A database write on either stalls the whole gateway when PostgreSQL is
slow or frozen. So the callback only captures references and puts them on a bounded in-memory queue;
one dedicated writer thread turns them into rows and writes them in batches (one multi-row
``INSERT ... ON CONFLICT (request_id) DO NOTHING`` per table, one transaction per batch), so a replay
never duplicates. One exception: LiteLLM retries a failed attempt inside the same call (same call id,
``x-litellm-attempted-retries``), so a failure event can precede the success the client got; that
success replaces the failure's rows (``rows_replaced``), never the other way round. When PostgreSQL
is down or frozen rows wait: in the queue, then (queue full) in JSONL spool files on disk, which the
writer replays once the database is back. Rows are lost only past ``queue max + batch max (in flight)
+ spool max rows``, and then counted and logged.

Database URL: ``general_settings.gateway_logger_db_url`` of the proxy config (``os.environ/NAME``
references are resolved), else the environment variable ``POC1_DB_URL``.

Settings (environment variables, defaults in brackets):

* ``POC1_LOGGER_QUEUE_MAX`` [10000] rows held in memory while the writer is busy or the DB is away.
* ``POC1_LOGGER_BATCH_MAX`` [500] rows per INSERT/transaction (also rows per spool segment file).
* ``POC1_LOGGER_FLUSH_INTERVAL_MS`` [100] longest wait for a batch to fill before it is written.
* ``POC1_LOGGER_SPOOL_DIR`` [/var/tmp/poc1-gateway-logger-<uid>] spool directory (created 0700;
  holds request payloads). Segments are tagged with a hash of the database URL, so a spool is only
  ever replayed into the database it was meant for.
* ``POC1_LOGGER_SPOOL_MAX_ROWS`` [100000] rows kept on disk at most; beyond that rows are dropped
  (counted in ``rows_dropped`` and logged).
* ``POC1_LOGGER_WRITE_TIMEOUT_S`` [10] watchdog: a database operation running longer (a frozen
  server still ACKs TCP, so keepalives do not notice) gets its sockets shut down and is retried.
* ``POC1_LOGGER_SHUTDOWN_TIMEOUT_S`` [10] time the exit flush may take; what is left is spooled.
* ``POC1_LOGGER_METRICS_PORT`` [9464] Prometheus metrics on 127.0.0.1:<port> (``gateway_logger_*``:
  rows written/spooled/dropped, queue depth, batch write latency histogram, connection state, pool
  checkouts and new connections, see ``METRIC_HELP``); empty = off.
* ``POC1_LOGGER_TEST_DELAY_MS`` [0] TEST ONLY: sleeps this long inside every batch transaction, to
  imitate a slow database (caps throughput at batch max * 1000 / delay rows/s). Never set it in
  production.

Journal lines (stderr, own handler, survive LiteLLM reconfiguring logging):
``gateway_logger: database connection established: <masked url> server=PostgreSQL <version> ...``,
``gateway_logger: database connection lost: <one-line cause>``,
``gateway_logger: database connection restored: <masked url> ...``.
"""
from __future__ import annotations

import atexit
import base64
import bisect
import fcntl
import hashlib
import hmac
import itertools
import json
import logging
import math
import os
import queue
import secrets
import signal
import socket
import struct
import sys
import threading
import time
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


class Settings(NamedTuple):
    """The logger's settings (a NamedTuple, not a dataclass: LiteLLM loads this file without
    registering it in sys.modules, which dataclasses need)."""

    queue_max: int = 10_000
    batch_max: int = 500
    flush_interval_ms: int = 100
    spool_dir: str = ""
    spool_max_rows: int = 100_000
    write_timeout_s: float = 10.0
    shutdown_timeout_s: float = 10.0
    metrics_port: int | None = 9464
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
            if name == "spool_dir":
                values[name] = raw
                continue
            if name == "metrics_port" and raw == "":
                values[name] = None
                continue
            try:
                number = float(raw) if name.endswith("_s") else int(raw)
                if number < 0 or (name in ("queue_max", "batch_max") and number < 1):
                    raise ValueError
            except ValueError:
                say(f"setting {var}={raw!r} is not a valid number; using the default {default}")
                continue
            values[name] = number
        values.update(overrides)
        settings = cls(**values)
        return settings if settings.spool_dir else settings._replace(spool_dir=_default_spool_dir())


SETTINGS_ENV = {
    "queue_max": "POC1_LOGGER_QUEUE_MAX",
    "batch_max": "POC1_LOGGER_BATCH_MAX",
    "flush_interval_ms": "POC1_LOGGER_FLUSH_INTERVAL_MS",
    "spool_dir": "POC1_LOGGER_SPOOL_DIR",
    "spool_max_rows": "POC1_LOGGER_SPOOL_MAX_ROWS",
    "write_timeout_s": "POC1_LOGGER_WRITE_TIMEOUT_S",
    "shutdown_timeout_s": "POC1_LOGGER_SHUTDOWN_TIMEOUT_S",
    "metrics_port": "POC1_LOGGER_METRICS_PORT",
    "test_delay_ms": "POC1_LOGGER_TEST_DELAY_MS",
}


class Stats:
    """The writer's counters in one place; ``snapshot()`` is what metrics exporters read."""

    COUNTERS = ("rows_received", "rows_written", "rows_replaced", "rows_duplicate", "rows_spooled",
                "rows_replayed", "rows_rejected", "rows_degraded", "rows_dropped", "batches",
                "batch_failures", "pool_checkouts", "pool_connects", "watchdog_fired", "connection_losses")
    #: upper bounds (seconds) of the batch write latency histogram; loopback p50 of a batch is ~3 ms
    BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)
        self.started = time.time()
        self.batch_seconds_sum = 0.0
        self.batch_seconds_max = 0.0
        self.batch_seconds_last = 0.0
        self._batch_hist = [0] * (len(self.BATCH_BUCKETS) + 1)  # per bucket, the last one is +Inf
        self.connected = False
        self.gauges: dict[str, Callable[[], int]] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._c[name] += n

    def count_written(self, written: "Written") -> None:
        with self._lock:
            self._c["rows_written"] += written.inserted
            self._c["rows_replaced"] += written.replaced
            self._c["rows_duplicate"] += written.duplicate

    def observe_batch(self, seconds: float) -> None:
        with self._lock:
            self._c["batches"] += 1
            self.batch_seconds_sum += seconds
            self.batch_seconds_last = seconds
            self.batch_seconds_max = max(self.batch_seconds_max, seconds)
            self._batch_hist[bisect.bisect_left(self.BATCH_BUCKETS, seconds)] += 1

    def __getitem__(self, name: str) -> int:
        return self._c[name]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snap: dict[str, Any] = dict(self._c)
            snap.update(batch_seconds_sum=self.batch_seconds_sum, batch_seconds_max=self.batch_seconds_max,
                        batch_seconds_last=self.batch_seconds_last, connected=self.connected,
                        batch_seconds_buckets=list(itertools.accumulate(self._batch_hist)),
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


def jsonable(obj: Any, depth: int = 0) -> Any:
    """A storable copy: JSON types only, clean strings, no NaN/inf (JSONB rejects them), secrets masked."""
    if obj is None or isinstance(obj, (bool, int)):
        return obj
    if isinstance(obj, str):
        return clean_text(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if depth >= MAX_DEPTH:
        return clean_text(str(obj)[:200])
    if isinstance(obj, Mapping):
        out = {}
        for k, v in list(obj.items()):
            key = clean_text(str(k))
            out[key] = "***" if key.lower() in SECRET_KEYS and v else jsonable(v, depth + 1)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in list(obj)]
    if isinstance(obj, datetime):
        return obj.isoformat()
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        try:
            return jsonable(dump(), depth + 1)
        except Exception:
            pass
    return clean_text(str(obj))


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


def _payload(captured: Mapping[str, Any]) -> Any:
    body = captured.get("body")
    if isinstance(body, Mapping):
        return jsonable(client_body(body))
    slo = captured.get("slo") or {}  # auth failures come without the body: rebuild it from the payload
    rebuilt: dict[str, Any] = {"model": slo.get("model_group") or captured.get("model") or slo.get("model")}
    if slo.get("messages") is not None:
        rebuilt["messages"] = slo.get("messages")
    rebuilt.update(slo.get("model_parameters") or {})
    return jsonable(rebuilt)


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


def _content(captured: Mapping[str, Any]) -> Any:
    slo = captured.get("slo") or {}
    if not captured.get("failed"):
        doc = jsonable(summarize_embeddings(slo.get("response")))
    else:
        info = slo.get("error_information") or {}
        exc = captured.get("exception")
        doc = jsonable({"error": {
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
    req["payload"] = _payload(captured)
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
    resp["content"] = _content(captured)
    return {"request": _truncate(req, "request"), "response": _truncate(resp, "response")}


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


class Spool:
    """JSONL segment files of normalized records; bounded by ``max_rows``; replayed oldest first.

    The segment being appended to is flock'ed, so a second process sharing the directory never
    replays a live file; closed segments may be replayed by anyone (ON CONFLICT makes that safe).
    """

    def __init__(self, directory: str, max_rows: int, segment_rows: int, db_tag: str) -> None:
        self.dir = Path(directory)
        self.max_rows, self.segment_rows, self.db_tag = max_rows, segment_rows, db_tag
        self._lock = threading.Lock()
        self._file: Any = None
        self._file_rows = 0
        self._seq = 0
        self.rows = 0
        self.usable = True
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.rows = sum(self._count(p) for p in self._segments())
        except OSError as exc:
            self.usable = False
            say(f"spool directory {self.dir} unusable ({exc.strerror or exc}); rows beyond the queue "
                "will be dropped and counted")

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob(f"spool-{self.db_tag}-*.jsonl"))  # names start with time_ns: oldest first

    @staticmethod
    def _count(path: Path) -> int:
        try:
            with open(path, "rb") as f:
                return sum(1 for line in f if line.strip())
        except OSError:
            return 0

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Append as many as fit; returns how many were written."""
        if not self.usable:
            return 0
        written = 0
        with self._lock:
            try:
                for record in records:
                    if self.rows >= self.max_rows:
                        break
                    if self._file is None:
                        self._open_segment()
                    self._file.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
                    self._file_rows += 1
                    self.rows += 1
                    written += 1
                    if self._file_rows >= self.segment_rows:
                        self._close_segment()
                if self._file is not None:
                    self._file.flush()
            except OSError as exc:
                say(f"spool write failed in {self.dir}: {exc.strerror or exc}")
        return written

    def _open_segment(self) -> None:
        self._seq += 1
        name = f"spool-{self.db_tag}-{time.time_ns()}-{os.getpid()}-{self._seq}.jsonl"
        fd = os.open(self.dir / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._file = os.fdopen(fd, "w", encoding="utf-8")
        self._file_rows = 0

    def _close_segment(self) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the flock: the segment becomes replayable
            self._file = None

    def close(self) -> None:
        with self._lock:
            self._close_segment()

    def take(self) -> tuple[Path, int, list[dict[str, Any]]] | None:
        """The oldest closed segment: (path, lock fd, records). This process's live segment is closed
        first, so its rows become replayable."""
        if not self.usable or self.rows <= 0:
            return None
        with self._lock:
            self._close_segment()
        for path in self._segments():
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # live segment of this or another process
                continue
            records, bad = [], 0
            with open(fd, "r", encoding="utf-8", closefd=False) as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        bad += 1  # a torn last line after a crash
            if bad:  # they can never be written: take them off the count now, and say so
                with self._lock:
                    self.rows = max(0, self.rows - bad)
                say(f"spool segment {path.name}: {bad} unreadable line(s) dropped")
            return path, fd, records
        return None

    def done(self, path: Path, fd: int, count: int) -> None:
        try:
            path.unlink()
        except OSError:
            pass
        os.close(fd)
        with self._lock:
            self.rows = max(0, self.rows - count)

    @staticmethod
    def release(fd: int) -> None:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# the writer


class _Outage(Exception):
    """The database cannot take writes now (down, frozen, refusing): rows must wait."""


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


class Writer:
    """The one thread that writes: bounded queue in, batched transactions out, spool in between."""

    RETRY_MIN_S, RETRY_MAX_S = 0.25, 2.0

    def __init__(self, settings: Settings, stats: Stats | None = None,
                 url: str | Callable[[], str | None] | None = None) -> None:
        self.settings = settings
        self.stats = stats or Stats()
        self._url_source = url
        self.url: str | None = None
        self.engine: Engine | None = None
        self.spool: Spool | None = None
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=settings.queue_max)
        self._pending: list[dict[str, Any]] = []
        self._pending_queue_items = 0  # how many queue items _pending came from (for task_done)
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by submit when a full batch waits, and by stop
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._deadline: float | None = None
        self._raw_conns: dict[int, Any] = {}
        self._conns_lock = threading.Lock()
        self._state = "unknown"  # unknown -> up/down; "established" is said once, later "restored"
        self._state_lock = threading.Lock()  # the watchdog thread also declares the connection lost
        self._ever_up = False
        self._down_since = 0.0
        self._server = ""
        self._say_drop = RateLimitedSay()
        self._say_reject = RateLimitedSay()
        self.stats.gauges.update(queue_depth=self.queue.qsize, spool_rows=lambda: self.spool.rows if self.spool else 0,
                                 in_flight=lambda: len(self._pending))

    # -- public ---------------------------------------------------------------------------------

    def start(self) -> "Writer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gateway-logger-writer", daemon=True)
            self._thread.start()
            self._watchdog = threading.Thread(target=self._watch, name="gateway-logger-watchdog", daemon=True)
            self._watchdog.start()
        return self

    def submit(self, item: dict[str, Any], normalized: bool = False) -> None:
        """Never blocks, never raises: queue, else spool, else count as dropped."""
        self.stats.add("rows_received")
        if not self._stop.is_set():
            try:
                self.queue.put_nowait(item if not normalized else {"normalized": item})
                if self.queue.qsize() >= self.settings.batch_max:
                    self._wake.set()
                return
            except queue.Full:
                pass
        self._overflow([item if normalized else self._normalize(item)], "queue full")

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Until the writer has its URL, spool and first probe behind it. Before that, rows beyond the
        queue have no spool to go to and are dropped (counted)."""
        return self._ready.wait(timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (or rejected); for tests and tools."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spool_rows = self.spool.rows if self.spool else 0
            if self.queue.unfinished_tasks == 0 and not self._pending and spool_rows == 0 \
                    and self._ready.is_set():
                return True
            time.sleep(0.02)
        return False

    def stop(self, timeout: float | None = None) -> None:
        """Write what can be written in time, spool the rest, close. Safe to call more than once."""
        timeout = self.settings.shutdown_timeout_s if timeout is None else timeout
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # stuck on a frozen server past the timeout: keep the rows on disk
                self._spool_leftovers("writer still blocked at shutdown")
        else:
            self._spool_leftovers("writer never started")
        if self.spool is not None:
            self.spool.close()

    # -- thread bodies --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._setup()
        finally:
            self._ready.set()
        retry = self.RETRY_MIN_S
        segment: tuple[Path, int, list[dict[str, Any]]] | None = None
        while True:
            if self._stop.is_set():
                if segment is not None:  # its rows are still in the file: leave them there
                    Spool.release(segment[1])
                    self._pending, segment = [], None
                self._drain_at_stop()
                break
            if self.engine is None:  # no usable URL: everything goes to the spool
                self._collect(block=True)
                self._overflow(self._take_pending(), "no database configured")
                continue
            if self._state != "up":
                if self._stop.wait(retry):
                    continue
                retry = min(retry * 2, self.RETRY_MAX_S)
                if not self._probe():
                    continue
            retry = self.RETRY_MIN_S
            if not self._pending:
                if segment is None and self.spool and self.spool.rows and self.queue.qsize() < self.settings.batch_max:
                    segment = self.spool.take()
                    if segment is not None:
                        self._pending, self._pending_queue_items = segment[2], 0
                        if not self._pending:  # empty file
                            self.spool.done(segment[0], segment[1], 0)
                            segment = None
                        continue
                self._collect(block=True)
                continue
            try:
                self._write(self._pending)
            except _Outage:
                if segment is not None:  # the rows stay in their file; do not hold them twice
                    Spool.release(segment[1])
                    self._pending, segment = [], None
                continue
            if segment is not None and self.spool is not None:
                self.stats.add("rows_replayed", len(segment[2]))
                self.spool.done(segment[0], segment[1], len(segment[2]))
                segment = None
            else:
                for _ in range(self._pending_queue_items):
                    self.queue.task_done()
            self._pending, self._pending_queue_items = [], 0
        if self.engine is not None:
            self.engine.dispose()

    def _collect(self, block: bool) -> None:
        """Fill ``_pending`` from the queue (up to batch max).

        The writer does not wake per row: it sleeps a flush interval (or until ``submit`` sees a full
        batch waiting) and then drains. Waking per row would make it contend for the GIL with
        LiteLLM's event loop on every request.
        """
        if block and self.queue.qsize() < self.settings.batch_max:
            self._wake.wait(self.settings.flush_interval_ms / 1000.0)
        self._wake.clear()
        items: list[dict[str, Any]] = []
        while len(items) < self.settings.batch_max:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        self._pending = [it["normalized"] if "normalized" in it else self._normalize(it) for it in items]
        self._pending_queue_items = len(items)

    def _take_pending(self) -> list[dict[str, Any]]:
        rows = self._pending
        for _ in range(self._pending_queue_items):
            self.queue.task_done()
        self._pending, self._pending_queue_items = [], 0
        return rows

    def _drain_at_stop(self) -> None:
        deadline = time.monotonic() + max(0.0, self.settings.shutdown_timeout_s - 1.0)
        while time.monotonic() < deadline and self.engine is not None:
            if not self._pending:
                self._collect(block=False)
                if not self._pending:
                    break
            if self._state != "up" and not self._probe():
                break
            try:
                self._write(self._pending)
            except _Outage:
                break
            self._take_pending()
        self._spool_leftovers("shutdown")

    def _spool_leftovers(self, why: str) -> None:
        rows = self._take_pending()
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            rows.append(item["normalized"] if "normalized" in item else self._normalize(item))
            self.queue.task_done()
        if rows:
            self._overflow(rows, why)
            say(f"{why}: {len(rows)} row(s) not yet written were moved to the spool {self.settings.spool_dir}")

    # -- setup, probing, state lines ------------------------------------------------------------

    def _setup(self) -> None:
        self.url = self._resolve_url()
        self.spool = Spool(self.settings.spool_dir, self.settings.spool_max_rows, self.settings.batch_max,
                           spool_tag(self.url))
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

    def _probe(self) -> bool:
        """Reach the database and say so on a state change."""
        assert self.engine is not None
        self._arm()
        try:
            with self.engine.connect() as conn:
                version, db, user = conn.execute(select(
                    func.current_setting("server_version"), func.current_database(), func.current_user()
                )).one()
        except Exception as exc:
            self._down(exc)
            return False
        finally:
            self._disarm()
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
            waiting = self.queue.qsize() + len(self._pending) + (self.spool.rows if self.spool else 0)
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
        if dispose and self.engine is not None:
            try:
                self.engine.dispose()  # drop pooled sockets of a restarted/frozen server
            except Exception:
                pass

    # -- watchdog: a frozen server must not hang the writer ---------------------------------------

    def _on_connect(self, dbapi_conn: Any, record: Any) -> None:
        self.stats.add("pool_connects")
        with self._conns_lock:
            self._raw_conns[id(dbapi_conn)] = dbapi_conn

    def _on_close(self, dbapi_conn: Any, record: Any) -> None:
        with self._conns_lock:
            self._raw_conns.pop(id(dbapi_conn), None)

    def _arm(self) -> None:
        self._deadline = time.monotonic() + self.settings.write_timeout_s

    def _disarm(self) -> None:
        self._deadline = None

    def _watch(self) -> None:
        while not (self._stop.is_set() and (self._thread is None or not self._thread.is_alive())):
            time.sleep(0.2)
            deadline = self._deadline
            if deadline is None or time.monotonic() < deadline:
                continue
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

    # -- writing ---------------------------------------------------------------------------------

    def _normalize(self, captured: dict[str, Any]) -> dict[str, Any]:
        try:
            return normalize(captured)
        except Exception as exc:  # never lose the fact of the call to a surprising payload
            slo = captured.get("slo") or {}
            call_id = storable_call_id(str(slo.get("litellm_call_id") or captured.get("call_id") or ""))
            record = {"request": {"request_id": captured.get("request_id") or new_request_id(),
                                  "call_id": call_id, "status_code": 0, "end_time": captured.get("received")},
                      "response": {}}
            return degrade(record, f"{type(exc).__name__}: {exc}")

    def _overflow(self, records: list[dict[str, Any]], why: str) -> None:
        if not records:
            return
        spooled = self.spool.append(records) if self.spool is not None else 0
        if spooled:
            self.stats.add("rows_spooled", spooled)
        lost = len(records) - spooled
        if lost:
            self.stats.add("rows_dropped", lost)
            self._say_drop(f"rows dropped: {self.stats['rows_dropped']} so far ({why}; queue max "
                           f"{self.settings.queue_max} and spool max {self.settings.spool_max_rows} rows reached)")

    def _insert(self, records: list[dict[str, Any]]) -> "Written":
        """One transaction: multi-row INSERT of requests (ON CONFLICT DO NOTHING, RETURNING id), then
        the upgrade of earlier failures by later successes of the same calls, then the responses."""
        assert self.engine is not None
        chosen = outcome_per_call(records)
        req_params = []
        for r in chosen.values():
            p = dict(r["request"])
            p.setdefault("call_id", p["request_id"])  # spooled before migration 0002: request_id was the call id
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
        """Write a batch; isolate bad rows; raise _Outage (rows kept) if the database is the problem."""
        self._arm()
        t0 = time.perf_counter()
        try:
            written = self._insert(records)
        except Exception as exc:
            if not _is_row_error(exc):
                self.stats.add("batch_failures")
                self._down(exc)
                raise _Outage from exc
            self._write_one_by_one(records, exc)
            return
        finally:
            self._disarm()
        self.stats.observe_batch(time.perf_counter() - t0)
        self.stats.count_written(written)
        self._up()

    def _write_one_by_one(self, records: list[dict[str, Any]], batch_exc: BaseException) -> None:
        done = 0
        try:
            for record in records:
                for attempt, candidate in enumerate((record, None)):
                    if candidate is None:
                        candidate = degrade(record, db_init.one_line_cause(batch_exc, self.url))
                    self._arm()
                    try:
                        written = self._insert([candidate])
                    except Exception as exc:
                        if not _is_row_error(exc):
                            self._down(exc)
                            raise _Outage from exc
                        batch_exc = exc
                        if attempt == 1:
                            self.stats.add("rows_rejected")
                            self.stats.add("rows_dropped")
                            self._say_reject(f"row {record['request'].get('request_id')} rejected by the "
                                             f"database and dropped: {db_init.one_line_cause(exc, self.url)}")
                        continue
                    finally:
                        self._disarm()
                    self.stats.count_written(written)
                    if attempt == 1:
                        self.stats.add("rows_degraded")
                        self._say_reject(f"row {record['request'].get('request_id')} stored without its "
                                         f"documents: {db_init.one_line_cause(batch_exc, self.url)}")
                    break
                done += 1
        except _Outage:
            del records[:done]  # the rest stays pending (ON CONFLICT makes a retry of done rows harmless)
            raise
        self.stats.add("batches")
        self._up()


# --------------------------------------------------------------------------------------------------
# metrics (optional): the stats as Prometheus metrics on 127.0.0.1 only


#: what each metric means (its HELP line); counters are per process, since its start
METRIC_HELP = {
    "rows_received": "calls handed to the logger",
    "rows_written": "rows inserted into the database",
    "rows_replaced": "failure rows replaced by the later success of the same call (LiteLLM retried it)",
    "rows_duplicate": "rows already in the database with that outcome (replays), not written again",
    "rows_spooled": "rows put in the on-disk spool (queue full or database away)",
    "rows_replayed": "spooled rows written after the database came back",
    "rows_rejected": "rows the database refused even without their documents (also counted as dropped)",
    "rows_degraded": "rows stored without their documents (payload/content not storable)",
    "rows_dropped": "rows lost: queue and spool full, spool unusable, or rejected",
    "batches": "write transactions",
    "batch_failures": "write transactions that failed because the database was away",
    "pool_checkouts": "connections taken from the SQLAlchemy pool (one per transaction or probe)",
    "pool_connects": "new database connections opened by the pool (a checkout that could not reuse one)",
    "watchdog_fired": "database operations that ran past the write timeout and had their sockets closed",
    "connection_losses": "times the database connection was lost",
    "queue_depth": "calls waiting in memory",
    "spool_rows": "rows waiting in the on-disk spool",
    "in_flight": "rows of the batch being written",
    "connected": "1 while the database takes writes, else 0",
    "batch_seconds_max": "longest batch write so far, seconds",
    "start_time_seconds": "when this logger started (Unix time): counters restart from 0 then",
    "queue_max": "setting POC1_LOGGER_QUEUE_MAX",
    "spool_max_rows": "setting POC1_LOGGER_SPOOL_MAX_ROWS",
}


def serve_metrics(stats: Stats, port: int, settings: Settings | None = None) -> bool:
    """Prometheus text on http://127.0.0.1:<port>/metrics (loopback only: read it on the host)."""
    try:
        from prometheus_client import start_http_server
        from prometheus_client.core import (CollectorRegistry, CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
    except ImportError:
        say("prometheus-client not installed; metrics not served")
        return False

    def gauge(name: str, value: float) -> Any:
        return GaugeMetricFamily(f"gateway_logger_{name}", METRIC_HELP.get(name, name), value=value)

    class _Collector:
        def collect(self) -> Iterable[Any]:
            snap = stats.snapshot()
            for name in Stats.COUNTERS:
                yield CounterMetricFamily(f"gateway_logger_{name}", METRIC_HELP[name], value=snap[name])
            yield HistogramMetricFamily(
                "gateway_logger_batch_write_seconds", "time of one write transaction (batch), seconds",
                buckets=[*zip([str(b) for b in Stats.BATCH_BUCKETS], snap["batch_seconds_buckets"]),
                         ("+Inf", snap["batch_seconds_buckets"][-1])],
                sum_value=snap["batch_seconds_sum"])
            yield gauge("batch_seconds_max", snap["batch_seconds_max"])
            yield gauge("connected", 1 if snap["connected"] else 0)
            yield gauge("start_time_seconds", snap["started"])
            for name in stats.gauges:
                yield gauge(name, snap[name])
            if settings is not None:
                yield gauge("queue_max", settings.queue_max)
                yield gauge("spool_max_rows", settings.spool_max_rows)

    registry = CollectorRegistry()
    registry.register(_Collector())
    try:
        start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        say(f"metrics not served on 127.0.0.1:{port}: {exc.strerror or exc}")
        return False
    say(f"metrics on http://127.0.0.1:{port}/metrics")
    return True


# --------------------------------------------------------------------------------------------------
# the LiteLLM callback


_WRITERS: list[Writer] = []


@atexit.register
def _flush_at_exit() -> None:
    for writer in list(_WRITERS):
        try:
            writer.stop()
        except Exception as exc:  # never a traceback wall at exit
            say(f"flush at exit failed: {type(exc).__name__}: {exc}")


_chained_signals: dict[int, Any] = {}


def _flush_on_signal(signum: int, frame: Any) -> None:
    """Flush (bounded by the shutdown timeout), then hand the signal to whoever had it before.

    Needed because uvicorn, after its graceful shutdown, restores the default SIGTERM disposition and
    re-raises the signal: the process then dies without running atexit. Rows of calls that finish
    after this point go straight to the spool.
    """
    say(f"signal {signal.Signals(signum).name}: flushing {sum(w.queue.qsize() for w in _WRITERS)} queued row(s)")
    _flush_at_exit()
    previous = _chained_signals.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def _install_signal_flush() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(signum)
        if current is _flush_on_signal or current == signal.SIG_IGN:
            continue
        try:
            signal.signal(signum, _flush_on_signal)
        except (ValueError, OSError):
            continue
        _chained_signals[signum] = current


#: set to 1 only for check 6's control listener (acceptance/overhead_control.py)
DISABLED_ENV = "POC1_LOGGER_DISABLED"


class GatewayLogger(CustomLogger):  # type: ignore[misc,valid-type]
    """Captures each call on LiteLLM's loop and hands it to the writer thread."""

    def __init__(self, settings: Settings | None = None, db_url: str | None = None, **kwargs: Any) -> None:
        if CustomLogger is not object:
            super().__init__(**kwargs)
        self.settings = settings or Settings.from_env()
        self.stats = Stats()
        self._db_url = db_url
        self._writer: Writer | None = None
        self._lock = threading.Lock()
        self._say_capture = RateLimitedSay()
        #: off only for check 6's control listener: the same gateway build, writing no rows
        self.enabled = os.environ.get(DISABLED_ENV, "").strip() not in ("1", "true", "yes")
        if not self.enabled:
            say(f"disabled ({DISABLED_ENV}=1): this gateway process writes no rows (a control listener for "
                "check 6, never the production gateway)")
        elif "litellm.proxy.proxy_server" in sys.modules:  # inside the gateway: connect (and say so) at start
            self.start()

    @property
    def writer(self) -> Writer:
        return self._writer or self.start()

    def start(self) -> Writer:
        with self._lock:
            if self._writer is None:
                say(f"starting (pid {os.getpid()}, queue max {self.settings.queue_max}, batch max "
                    f"{self.settings.batch_max}, spool {self.settings.spool_dir} max "
                    f"{self.settings.spool_max_rows} rows)")
                self._writer = Writer(self.settings, self.stats, self._db_url).start()
                _WRITERS.append(self._writer)
                if "litellm.proxy.proxy_server" in sys.modules:
                    _install_signal_flush()
                if self.settings.metrics_port:
                    serve_metrics(self.stats, int(self.settings.metrics_port), self.settings)
            return self._writer

    def _submit(self, kwargs: Mapping[str, Any], failed: bool) -> None:
        try:
            self.writer.submit(capture(kwargs, failed))
        except Exception as exc:  # the gateway must never fail because of its logger
            self.stats.add("rows_dropped")
            self._say_capture(f"a call could not be captured and was dropped: {type(exc).__name__}: {exc}")

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        if self.enabled:
            self._submit(kwargs, False)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        if self.enabled:
            self._submit(kwargs, True)

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any) -> dict:
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
        request_id = issued_request_id((data.get("metadata") or {}).get(REQUEST_ID_KEY)) if self.enabled else None
        return {REQUEST_ID_HEADER: request_id} if request_id else None


proxy_handler_instance = GatewayLogger()
