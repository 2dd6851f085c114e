"""A child process in its own process group, stopped as a group: the one killer of the runner's tools.

Why a group: validate runs pytest, which runs SSH, httpx and chromium children; regression runs validate.
A timeout or a Ctrl-C must stop every descendant, not only the child, and must not leave it to finish
(or hang) on its own.
"""
from __future__ import annotations

import os
import signal
import subprocess

TIMED_OUT = 124  # what timeout(1) exits with: the child was stopped at its deadline
#: SIGTERM, then SIGKILL, each followed by this many seconds of grace
STOP_STEPS = ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))


def stop_group(proc: subprocess.Popen, steps: tuple[tuple[int, float], ...] = STOP_STEPS) -> None:
    """Signal the child's whole process group, step by step, until the child has exited."""
    for sig, grace in steps:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_or_stop(proc: subprocess.Popen, timeout: float,
                 steps: tuple[tuple[int, float], ...] = STOP_STEPS) -> int:
    """The child's exit code, or ``TIMED_OUT`` after stopping its group at ``timeout``; any exception
    (KeyboardInterrupt included) stops the group before it propagates."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc, steps)
        return TIMED_OUT
    except BaseException:
        stop_group(proc, steps)
        raise
