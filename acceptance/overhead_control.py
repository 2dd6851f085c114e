"""Check 6's control arm: the same gateway build on the same host, without the logger.

Why: a client cannot keep a call out of the log (config.yaml sets ``global_disable_no_log_param``), so
the unlogged arm can no longer be ``"no-log": true`` requests to the gateway itself. Instead the check
starts the control listener (``deploy/litellm-gateway-control.service``: same venv and config.yaml minus
its ``callbacks``, its own port) over SSH, sends both arms interleaved in the same seconds — logged to the
gateway, unlogged to the control — and stops it afterwards, whatever happened. Why no logger at all rather
than the logger with its writes off: anything the logger's code costs before it would check such a switch
(a blocking callback, say) would then slow both arms alike and vanish from the difference.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from evidence_writers.redaction import clip
from fixtures.errors import CheckFailure, one_line
from fixtures.host import Host
from fixtures.inventory import Target
from tools.polling import poll_until

DEFAULT_UNIT = "litellm-gateway-control"
#: LiteLLM starts in ~8-10 s on the lab's two cores; beyond this the control is broken, not slow
START_TIMEOUT_S = 90.0
PROPS = ("LoadState", "ActiveState", "SubState", "FragmentPath", "ExecStart", "MainPID", "Result")


@dataclass
class Control:
    """The running control listener as the artifact records it."""

    unit: str
    url: str
    started_in_s: float
    props: dict[str, str]

    def as_dict(self) -> dict[str, object]:
        return {"unit": self.unit, "url": self.url, "started_in_s": round(self.started_in_s, 2),
                "fragment_path": self.props.get("FragmentPath"), "exec_start": self.props.get("ExecStart"),
                "main_pid": self.props.get("MainPID")}


def unit_of(target: Target) -> str:
    return str(target.vars.get("gateway_control_service", DEFAULT_UNIT))


def url_of(target: Target) -> str:
    url = target.vars.get("gateway_control_url")
    if not url:
        raise CheckFailure(f"inventory group {target.group}: no gateway_control_url (the control listener "
                           "of check 6, deploy/litellm-gateway-control.service)")
    return str(url).rstrip("/")


def _wait_ready(host: Host, unit: str, url: str, deadline: float) -> None:
    with httpx.Client(timeout=httpx.Timeout(3.0, connect=2.0), trust_env=False) as client:
        def answer() -> str | None:
            """None once it answers; else what was seen (or the one-line cause if it exited)."""
            try:
                if client.get(f"{url}/health/liveliness").status_code == 200:
                    return None
                last = "liveliness not 200"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}"
            active = host.run("systemctl is-active %s", unit)
            if active.stdout.strip() in ("failed", "inactive"):
                journal = host.service(unit).journal(lines=3)
                raise CheckFailure(one_line(f"control listener {unit} on {host.name} exited while "
                                            f"starting: {clip(journal.stdout.strip(), 300, keep='tail')}"))
            return last

        ready, last = poll_until(answer, lambda seen: seen is None, timeout=deadline - time.monotonic(),
                                 interval=0.5)
    if not ready:
        raise CheckFailure(f"control listener {unit} at {url}: not answering within {START_TIMEOUT_S:g} s "
                           f"({last})")


@contextmanager
def running(host: Host, target: Target) -> Iterator[Control]:
    """Start the control listener, wait until it answers, yield it; always stop it afterwards."""
    unit, url = unit_of(target), url_of(target)
    props, _ = host.service(unit).show(PROPS)
    if props.get("LoadState") == "not-found":
        raise CheckFailure(f"control listener {unit} is not installed on {host.name} "
                           "(install deploy/litellm-gateway-control.service, see POC-1/RUNBOOK.md)")
    t0 = time.monotonic()
    try:
        started = host.service(unit).start(timeout=30)
        if not started.ok:
            raise CheckFailure(one_line(f"systemctl start {unit} on {host.name}: "
                                        f"{started.stderr.strip() or f'exit {started.rc}'}"))
        _wait_ready(host, unit, url, t0 + START_TIMEOUT_S)
        props, _ = host.service(unit).show(PROPS)
        yield Control(unit, url, time.monotonic() - t0, props)
    finally:
        try:
            host.service(unit).stop(timeout=30)
        except CheckFailure:
            pass  # the check's own cause matters more; RuntimeMaxSec stops it anyway
