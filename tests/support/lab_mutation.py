"""Break the embedded lab's gateway on purpose by running a changed logger, and put the repository's back.

The logger is a package (gateway_logger/); a change (``Mutation``) is Python appended to one of its
modules, the one that holds the code it changes: it can rebind anything that module defines or imports,
and it runs when the package is imported, before the callback's instance exists. The whole package is
written to the gateway host (the repository's files, that one changed) and the unit restarted; the undo
writes the repository's package back and restarts again. Used by the tests that assert the right check
fails with the right cause.
"""
from __future__ import annotations

import json
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from tests.support.acceptance_run import ROOT
from tests.support.lab_unit import wait_gateway_answers

PACKAGE = "gateway_logger"
LOGGER_ON_GATEWAY = f"/opt/litellm/{PACKAGE}"
UNIT = "litellm-gateway"
GATEWAY_PYTHON = "/opt/litellm/venv/bin/python"
MARK = "\n\n# --- fault injected by tests/support/lab_mutation.py ---\n"


@dataclass(frozen=True)
class Mutation:
    """``code`` appended to ``module`` (a file of the package, e.g. ``writer.py``)."""

    module: str
    code: str


def repo_logger() -> dict[str, str]:
    """The repository's logger package: file name -> text (every ``*.py`` directly in it, as deployed)."""
    return {p.name: p.read_text() for p in sorted((ROOT / PACKAGE).glob("*.py")) if p.is_file()}


def mutated_logger(*mutations: Mutation) -> dict[str, str]:
    """The repository's package with each mutation appended to its module."""
    files = repo_logger()
    for m in mutations:
        if m.module not in files:
            raise ValueError(f"{PACKAGE}/{m.module} is not a module of the package ({', '.join(files)})")
        files[m.module] += MARK + m.code
    return files


#: runs on the gateway host as root: the package from a JSON object on stdin (file name -> text), written
#: beside the old one and swapped in by two renames, so the unit never starts on half of it; the single
#: module the package replaced goes too (a lab built before it: a module beside a package is ignored, but
#: it must not linger)
INSTALL = r"""
import contextlib, json, os, shutil, sys
target = sys.argv[1]
with contextlib.suppress(FileNotFoundError):
    os.unlink(target + ".py")
files = json.load(sys.stdin)
new, old = target + ".new", target + ".old"
for d in (new, old):
    shutil.rmtree(d, ignore_errors=True)
os.mkdir(new, 0o755)
for name, text in files.items():
    with open(os.path.join(new, name), "w") as f:
        f.write(text)
    os.chmod(os.path.join(new, name), 0o644)
if os.path.isdir(target):
    os.rename(target, old)
os.rename(new, target)
shutil.rmtree(old, ignore_errors=True)
"""


def deploy_logger(files: Mapping[str, str]) -> None:
    """Write the package ``files`` (name -> text) as the gateway's logger, restart the unit, wait for it."""
    import lab

    lab.exec("gateway", f"{GATEWAY_PYTHON} -c {shlex.quote(INSTALL)} {shlex.quote(LOGGER_ON_GATEWAY)}",
             input=json.dumps(dict(files)))
    lab.systemctl("gateway", "restart", UNIT, check=True, timeout=90)
    wait_gateway_answers()


@contextmanager
def patched_logger(*mutations: Mutation) -> Iterator[None]:
    """The gateway runs the repository's logger with ``mutations`` while the block runs."""
    deploy_logger(mutated_logger(*mutations))
    try:
        yield
    finally:
        deploy_logger(repo_logger())


#: the logger's success callback holds LiteLLM's event loop for 30 ms per call (a blocking write, say)
BLOCKS_EVENT_LOOP = Mutation("callback.py", """
import time as _poc1_time

_poc1_success = GatewayLogger.async_log_success_event


async def _poc1_blocking_success(self, *args, **kwargs):
    _poc1_time.sleep(0.030)
    await _poc1_success(self, *args, **kwargs)


GatewayLogger.async_log_success_event = _poc1_blocking_success
""")

#: the logger forgets every streamed call (a logger that only knows plain calls)
DROPS_STREAMS = Mutation("callback.py", """
_poc1_submit = GatewayLogger._submit


def _poc1_drop_streams(self, kwargs, failed):
    if (kwargs.get("standard_logging_object") or {}).get("stream"):
        return
    _poc1_submit(self, kwargs, failed)


GatewayLogger._submit = _poc1_drop_streams
""")

#: the writer thread ends at its next turn: a BaseException escapes the supervisor's ``except Exception``
#: (patched where each turn looks it up, so it works whether or not the thread already runs)
DEAD_WRITER = Mutation("writer.py", """
def _poc1_dead_ingest(self):
    raise SystemExit("poc1 test: the writer thread dies")


Writer._ingest = _poc1_dead_ingest
""")

#: one line added to the package's entry module: it runs and logs as before, and it is not what is signed
STALE_CODE = Mutation("__init__.py", "POC1_FAULT_STALE_CODE = True  # not the repository's file\n")
