"""The logger's journal lines: one line each on stderr (the journal under systemd), through a handler of
its own that survives LiteLLM reconfiguring logging; never a secret, never a traceback."""
from __future__ import annotations

import logging
import math
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any


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


def strerror(exc: OSError) -> str:
    """An OSError in a few words (its strerror), for one journal line."""
    return exc.strerror or str(exc)


def origin(exc: BaseException) -> str:
    """Where an exception came from, as ``file:line function`` (its innermost frame): one line, no wall."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} {last.name}"
