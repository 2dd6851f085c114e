"""Waiting for a condition with a deadline: the one poll loop of the runner-side code.

Why one helper: the lab (boot, gateway ready, TLS sessions, process exit), check 6's control listener and
the tests' undo steps all wait the same way; each words its own one-line cause from the last value seen,
so a timeout always says what was last observed. (The logger's own waits stay in gateway_logger/: it is
deployed alone.)
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(probe: Callable[[], T], done: Callable[[T], bool] = bool, *, timeout: float,
               interval: float = 0.5) -> tuple[bool, T]:
    """Call ``probe`` until ``done(value)`` or ``timeout`` seconds passed (it is called at least once);
    returns (met, the last value). An exception from ``probe`` ends the wait (a probe that can tell the
    wait is hopeless raises its own cause)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return True, value
        if time.monotonic() >= deadline:
            return False, value
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
