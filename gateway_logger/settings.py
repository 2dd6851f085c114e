"""The logger's settings: one frozen dataclass, ``Settings``. Each field declares, once, its type, its
default, its bounds and what it means; the environment (``POC1_LOGGER_<NAME>``) is parsed from that
declaration, and the settings section of the package's docstring is written from it (``describe``)."""
from __future__ import annotations

import math
import os
import tempfile
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from gateway_logger.journal import say

#: the environment variable of field ``name`` is ENV_PREFIX + NAME
ENV_PREFIX = "POC1_LOGGER_"


def _default_spool_dir() -> str:
    return f"/var/tmp/poc1-gateway-logger-{os.getuid()}"


def _default_metrics_dir() -> str:
    # memory-backed on purpose: prometheus_client mmaps these files, and a full disk under an mmap is a SIGBUS
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return f"{base}/poc1-gateway-logger-{os.getuid()}"


def setting(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, minimum: float | None = None,
            maximum: float | None = None, shown: str | None = None, doc: str) -> Any:
    """A field of ``Settings``: its default (or the ``factory`` that makes it: an empty value means the
    default too), the bounds of a number (inclusive), how the default reads in the docs (``shown``) and
    what the setting means (``doc``)."""
    meta = {"minimum": minimum, "maximum": maximum, "shown": shown, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """The logger's settings; ``Settings.from_env()`` reads them from ``POC1_LOGGER_*``."""

    queue_max: int = setting(10_000, minimum=1, doc="rows held in memory at most (beyond: the spool).")
    queue_max_bytes: int = setting(64 << 20, minimum=1, shown="64 MiB",
                                   doc="bytes of rows held in memory at most (about; beyond: the spool).")
    batch_max: int = setting(500, minimum=1,
                             doc="rows per INSERT/transaction (also rows per spool segment file).")
    batch_max_bytes: int = setting(
        8 << 20, minimum=1, shown="8 MiB",
        doc="bytes per transaction (also per spool segment: it is replayed as one).")
    document_max_bytes: int = setting(1 << 20, minimum=1, shown="1 MiB",
                                      doc="a payload or content document larger than this is stored cut.")
    flush_interval_ms: int = setting(100, minimum=0,
                                     doc="the idle writer's and the spooler's housekeeping interval (a row "
                                         "never waits for it: an idle writer writes it at once, a busy one "
                                         "takes everything that arrived with its next batch).")
    stall_ms: int = setting(1000, minimum=0,
                            doc="a database operation running longer sends the rows in memory to the spool.")
    spool_dir: str = setting(
        factory=_default_spool_dir, shown="/var/tmp/poc1-gateway-logger-<uid>",
        doc="spool directory (created 0700; holds request payloads; also ``quarantine/`` and "
            "``dead-letter/``). Segments are tagged with a hash of the database URL, so a spool is only "
            "ever replayed into the database it was meant for.")
    spool_max_rows: int = setting(100_000, minimum=0,
                                  doc="rows kept on disk at most (all workers); beyond, rows are dropped.")
    write_timeout_s: float = setting(
        10.0, minimum=0, doc="watchdog: a database operation running longer (a frozen server still ACKs "
                             "TCP, so keepalives do not notice) gets its sockets shut down and is retried.")
    shutdown_timeout_s: float = setting(
        10.0, minimum=0, doc="time the final flush may take; what is left is spooled. (The stop takes "
                             "LiteLLM's ``GRACEFUL_SHUTDOWN_TIMEOUT`` [30 s] for calls in flight, then "
                             "this.)")
    metrics_port: int | None = setting(9464, minimum=0, maximum=65535,
                                       doc="Prometheus metrics on 127.0.0.1:<port>; empty (or 0) = off.")
    metrics_dir: str = setting(
        factory=_default_metrics_dir, shown="/dev/shm/poc1-gateway-logger-<uid>",
        doc="prometheus_client's multiprocess files, one directory per gateway run (memory-backed: a full "
            "disk under an mmap is a SIGBUS). A set ``$PROMETHEUS_MULTIPROC_DIR`` is used instead.")
    test_delay_ms: int = setting(
        0, minimum=0, doc="TEST ONLY: sleeps this long before every batch's write, to imitate a slow "
                          "database (caps throughput at batch max * 1000 / delay rows/s). Never set it in "
                          "production.")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value == "" and f.default_factory is not MISSING:  # empty: the default
                object.__setattr__(self, f.name, f.default_factory())
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and _out_of_bounds(f, value):
                raise ValueError(f"setting {f.name}={value!r}: not {_expected(f)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **overrides: Any) -> Settings:
        """Settings from the environment, then ``overrides``; a malformed value is named in one line and the
        default kept."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(env_var(f.name))
            if raw is None:
                continue
            try:
                values[f.name] = _parse(f, raw.strip())
            except ValueError:
                say(f"setting {env_var(f.name)}={raw.strip()!r} is not a valid number ({_expected(f)}); "
                    f"using the default {_default(f)}")
        values.update(overrides)
        return cls(**values)


def env_var(name: str) -> str:
    """The environment variable of a setting: ``queue_max`` -> ``POC1_LOGGER_QUEUE_MAX``."""
    return ENV_PREFIX + name.upper()


def _kind(f: Field) -> tuple[type, bool]:
    """(the value's type, whether None is allowed), from the field's annotation."""
    hint = typing.get_type_hints(Settings)[f.name]
    args = typing.get_args(hint)
    if not args:
        return hint, False
    return next(a for a in args if a is not type(None)), type(None) in args


def _parse(f: Field, raw: str) -> Any:
    """One environment value as the field declares it; ValueError if it is not such a value."""
    kind, optional = _kind(f)
    if optional and raw == "":
        return None
    if kind is str:
        return raw  # empty: __post_init__ puts the default
    number = kind(raw)  # int("1.5") and float("x") raise ValueError
    if not math.isfinite(number) or _out_of_bounds(f, number):
        raise ValueError(raw)
    return number


def _out_of_bounds(f: Field, number: float) -> bool:
    low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
    return (low is not None and number < low) or (high is not None and number > high)


def _expected(f: Field) -> str:
    kind, optional = _kind(f)
    what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
    low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
    if low is not None and high is not None:
        what += f" from {low:g} to {high:g}"
    elif low is not None:
        what += f" >= {low:g}"
    elif high is not None:
        what += f" <= {high:g}"
    return what + (", or empty" if optional else "")


def _default(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def describe() -> list[str]:
    """The settings as the docs list them: one line per setting, from the declaration above."""
    lines = []
    for f in fields(Settings):
        default = f.metadata.get("shown") or _default(f)
        kind, _ = _kind(f)
        bound = f" ({_expected(f)})" if kind is not str else ""
        lines.append(f"* ``{env_var(f.name)}`` [{default}]{bound} {f.metadata['doc']}")
    return lines
