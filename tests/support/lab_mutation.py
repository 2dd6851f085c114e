"""Break the embedded lab's gateway on purpose by running a changed logger, and put the repository's back.

The change is Python appended to the repository's gateway_logger.py (it can rebind anything the module
defines), written to the gateway host and the unit restarted; the undo writes the repository's file back
and restarts again. Used by the tests that assert the right check fails with the right cause.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.acceptance_run import ROOT
from tests.support.lab_unit import wait_gateway_answers

LOGGER_ON_GATEWAY = "/opt/litellm/gateway_logger.py"
UNIT = "litellm-gateway"


def deploy_logger(code: str) -> None:
    import lab

    lab.exec("gateway", f"cat > {LOGGER_ON_GATEWAY}", input=code)
    lab.systemctl("gateway", "restart", UNIT, check=True, timeout=90)
    wait_gateway_answers()


def repo_logger() -> str:
    return (ROOT / "gateway_logger.py").read_text()


@contextmanager
def patched_logger(extra: str) -> Iterator[None]:
    """The gateway runs the repository's logger plus ``extra`` while the block runs."""
    deploy_logger(repo_logger() + "\n\n# --- fault injected by tests/support/lab_mutation.py ---\n" + extra)
    try:
        yield
    finally:
        deploy_logger(repo_logger())


#: the logger's success callback holds LiteLLM's event loop for 30 ms per call (a blocking write, say)
BLOCKS_EVENT_LOOP = """
import time as _poc1_time

_poc1_success = GatewayLogger.async_log_success_event


async def _poc1_blocking_success(self, *args, **kwargs):
    _poc1_time.sleep(0.030)
    await _poc1_success(self, *args, **kwargs)


GatewayLogger.async_log_success_event = _poc1_blocking_success
"""

#: the logger forgets every streamed call (a logger that only knows plain calls)
DROPS_STREAMS = """
_poc1_submit = GatewayLogger._submit


def _poc1_drop_streams(self, kwargs, failed):
    if (kwargs.get("standard_logging_object") or {}).get("stream"):
        return
    _poc1_submit(self, kwargs, failed)


GatewayLogger._submit = _poc1_drop_streams
"""

#: the writer thread ends at its next turn: a BaseException escapes the supervisor's ``except Exception``
#: (patched where each turn looks it up: the thread is already running when this code is appended)
DEAD_WRITER = """
def _poc1_dead_ingest(self):
    raise SystemExit("poc1 test: the writer thread dies")


Writer._ingest = _poc1_dead_ingest
"""
