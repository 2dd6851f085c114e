"""Reading a unit's state over SSH: ``systemctl show`` parsed into a dict, plus formatting helpers.

Why ``show`` and not the text of ``status``: ``status`` is for humans (and goes into the artifact as
such); the pass/fail decision is made on the machine-readable properties.
"""
from __future__ import annotations

import shlex

from fixtures.ssh import CommandResult, SshSession

UNSET = {"", "[not set]", "18446744073709551615", "infinity"}


def parse_show(stdout: str) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def show(session: SshSession, unit: str, props: tuple[str, ...]) -> tuple[dict[str, str], CommandResult]:
    """Properties of ``unit`` with timestamps as ``@<epoch>`` (systemd >= 248), else as printed."""
    base = f"systemctl show {shlex.quote(unit)} --no-pager -p {','.join(props)}"
    res = session.run(f"{base} --timestamp=unix")
    if res.rc != 0 and "timestamp" in res.stderr:
        res = session.run(base)
    return parse_show(res.stdout), res


def epoch(value: str | None) -> float | None:
    """``@1700000000`` → 1700000000.0; anything else → None."""
    if value and value.startswith("@"):
        try:
            return float(value[1:])
        except ValueError:
            return None
    return None


def human_bytes(value: str | int | None) -> str | None:
    if value is None or str(value) in UNSET:
        return None
    n = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return None


def human_duration(seconds: float | None) -> str | None:
    if seconds is None or seconds < 0:
        return None
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = ([f"{d}d"] if d else []) + ([f"{h}h"] if h or d else []) + [f"{m}min", f"{s}s"]
    return " ".join(parts)
