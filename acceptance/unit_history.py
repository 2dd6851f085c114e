"""Did the gateway's unit restart while the suite ran, or since the previous run? (check 1)

A unit that crash-loops or was restarted is still ``active (running)`` when a check looks, so the
state alone signs off a gateway that lost its in-memory rows and connections in between. Three
readings decide: one at the start of this session (taken before the first check), one by check 1 at
the end (it runs last), and the previous run's end reading, kept in a small JSON state file beside the
evidence directory (``--unit-state``).

What counts: systemd's ``InvocationID`` changes on every start of the unit; ``NRestarts`` counts the
automatic restarts (``Restart=on-failure``) since the last manual start. A host that itself restarted
since the previous run (PID 1's ``UserspaceTimestamp`` changed: a reboot, or a rebuilt lab host) is
noted, not failed: its unit had to start again.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from acceptance import systemd
from fixtures.host import Host
from tools.files import atomic_write

PROPS = ("InvocationID", "ActiveEnterTimestamp", "NRestarts", "ActiveState", "SubState")


@dataclass(frozen=True)
class UnitReading:
    unit: str
    invocation_id: str
    active_enter: float | None
    n_restarts: int | None
    host_started: float | None
    run_id: str = ""

    @classmethod
    def read(cls, session: Host, unit: str, run_id: str = "") -> "UnitReading":
        props, _ = session.service(unit).show(PROPS)
        host = session.run("systemctl show --timestamp=unix -p UserspaceTimestamp --value 2>/dev/null "
                           "|| systemctl show -p UserspaceTimestamp --value")
        nr = props.get("NRestarts", "")
        return cls(unit, props.get("InvocationID", ""), systemd.epoch(props.get("ActiveEnterTimestamp")),
                   int(nr) if nr.isdigit() else None, systemd.epoch(host.stdout.strip()), run_id)


def state_path(option: str | None, evidence_dir: Path, group: str) -> Path:
    return Path(option) if option else evidence_dir.parent / f"unit-state-{group}.json"


def load_previous(path: Path, host: str) -> UnitReading | None:
    try:
        doc = json.loads(path.read_text())
        return UnitReading(**doc[host])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(path: Path, host: str, reading: UnitReading) -> None:
    """Atomically; other hosts' readings in the file are kept."""
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = {}
    doc[host] = asdict(reading)
    atomic_write(path, json.dumps(doc, indent=2))


def _when(epoch: float | None) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds") if epoch else "unknown"


def judge(now: UnitReading, start: UnitReading | str | None, previous: UnitReading | None,
          where: str) -> tuple[list[str], list[str]]:
    """(causes, notes): why the unit's history fails check 1, and what is only worth saying."""
    causes, notes = [], []
    unit = f"{now.unit} on {where}"
    if now.n_restarts:
        causes.append(f"{unit} restarted itself {now.n_restarts} time(s) since its last start by hand "
                      f"(NRestarts={now.n_restarts}; current start {_when(now.active_enter)}): it crashed")
    if isinstance(start, UnitReading):
        if start.invocation_id != now.invocation_id:
            causes.append(f"{unit} restarted during this run (started {_when(start.active_enter)} at the "
                          f"run's start, {_when(now.active_enter)} at its end)")
    elif isinstance(start, str):
        notes.append(f"no reading at the run's start ({start}): a restart during the run cannot be ruled out")
    before = start if isinstance(start, UnitReading) else now  # the unit as this run found it
    if previous is None:
        notes.append("no previous run recorded for this host: restarts before this run are not judged")
    elif previous.host_started != before.host_started:
        notes.append(f"the host itself restarted since the previous run {previous.run_id} (its systemd "
                     f"started {_when(previous.host_started)}, now {_when(before.host_started)})")
    elif previous.invocation_id != before.invocation_id:
        causes.append(f"{unit} restarted since the previous run {previous.run_id} (started "
                      f"{_when(previous.active_enter)} then, {_when(before.active_enter)} now)")
    return causes, notes
