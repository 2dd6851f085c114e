"""Stopping: the signal handler (only a flag), the flush inside LiteLLM's shutdown (the last code that runs
after a SIGTERM), and atexit (a plain interpreter exit)."""
from __future__ import annotations

import asyncio
import atexit
import functools
import os
import signal
import sys
import threading
from typing import Any

from gateway_logger.journal import say
from gateway_logger.metrics_port import retire_metrics
from gateway_logger.writer import Writer

#: the writers of this process's loggers (the callback adds its writer when it starts it)
WRITERS: list[Writer] = []


@atexit.register
def _flush_at_exit() -> None:
    for writer in list(WRITERS):
        try:
            writer.stop()
        except Exception as exc:  # never a traceback wall at exit
            say(f"flush at exit failed: {type(exc).__name__}: {exc}")
    retire_metrics()


_chained_signals: dict[int, Any] = {}


def _on_signal(signum: int, frame: Any) -> None:
    """Only records the signal, then hands it on (to uvicorn, which begins its graceful shutdown).

    Nothing is flushed here: the interrupted thread may hold any lock (logging's, the spool's, a queue's),
    so work in a handler can deadlock. The writers only stop waiting for their flush interval; the final
    flush runs in LiteLLM's shutdown, on the event loop, after the calls in flight have finished."""
    for writer in WRITERS:
        writer.signalled.append(signum)
    previous = _chained_signals.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def install_signal_flag() -> None:
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
    writers = [w for w in WRITERS if not w.stopped]
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
    retire_metrics()


def hook_shutdown() -> None:
    """Have ``_flush_at_shutdown`` run in LiteLLM's shutdown. Why there: on SIGTERM uvicorn stops accepting,
    waits for the open connections, runs the app's lifespan shutdown (LiteLLM's ``proxy_shutdown_event``),
    then restores the signal handlers it found and raises the signal again, so the process dies of it
    without running atexit: the lifespan shutdown is the last code that runs. LiteLLM has no hook for it,
    so the module global it calls is wrapped."""
    proxy = sys.modules.get("litellm.proxy.proxy_server")
    original = getattr(proxy, "proxy_shutdown_event", None)
    if original is None:
        say("LiteLLM has no proxy_shutdown_event: rows of calls that end during a shutdown are only as safe "
            "as the loss window (the write in progress)")
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
