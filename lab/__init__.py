"""The embedded two-host lab: `python -m lab up|down|status`, and small hooks for fault-injection tests.

    import lab
    lab.up()                                   # idempotent; returns a LabDescription
    lab.exec("gateway", "systemctl stop standin-model")   # nsenter into the container, no SSH
    lab.systemctl("db", "is-active", "postgresql@17-main")
    lab.set_link("db", up=False)               # cut the db host off the lab network
    lab.set_tls(False)                         # litellm_user allowed in clear text, gateway without TLS
"""
from __future__ import annotations

import subprocess
from collections.abc import Sequence

from lab import layout, machine, network
from lab.errors import LabError
from lab.lifecycle import LabDescription, describe, down, is_up, set_tls, status, up

__all__ = ["LabDescription", "LabError", "describe", "down", "exec", "is_up", "set_link", "set_tls", "status",
           "systemctl", "tls_state", "up"]


def _host(name: str) -> layout.Host:
    """Any host a lab of any size has (not only this process's ``POC1_LAB_GATEWAYS``: a test that rebuilt
    the lab with more gateways reaches them in-process); one that is not running says so (machine.exec_)."""
    for host in layout.ALL_HOSTS:
        if host.name == name:
            return host
    raise LabError(f"no lab host named {name!r} (hosts: {', '.join(h.name for h in layout.ALL_HOSTS)})")


def exec(host: str, cmd: str | Sequence[str], *, input: str | None = None, timeout: float = 60,  # noqa: A001
         check: bool = True, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command inside a lab host as root (or ``user``); a string goes through ``sh -c``."""
    argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    return machine.exec_(_host(host), argv, input=input, timeout=timeout, check=check, user=user)


def systemctl(host: str, *args: str, check: bool = False, timeout: float = 60) -> str:
    """``systemctl ARGS`` inside a host; returns its stdout stripped (e.g. the unit's state)."""
    return machine.exec_(_host(host), ["systemctl", *args], check=check, timeout=timeout).stdout.strip()


def set_link(host: str, up: bool) -> None:  # noqa: A002 (mirrors `ip link set up`)
    """Cut or restore a host's link to the lab network (runner side of its veth)."""
    network.set_link(_host(host), up)


def tls_state() -> str:
    """"on" (litellm_user only over TLS, the logger on verify-full), "off", or what is mixed."""
    from lab import provision

    return provision.tls_state()
