"""Check 1: the gateway's systemd unit is active (running), and did not restart during the run or since
the previous run (acceptance/unit_history.py). It runs last (acceptance/registry.py: RUN_ORDER).

Artifact service_status.txt: ``systemctl status <unit> | head -n 20`` as the runbook shows it, the
machine-readable ``systemctl show`` properties, the parsed state, memory and uptime, and the unit's
start at the run's start, now and at the previous run's end.
"""
from __future__ import annotations

import pytest

from acceptance import systemd, unit_history
from acceptance.spec import CheckSpec
from evidence_writers.result import CheckResult
from fixtures.context import Hosts, RunContext
from fixtures.errors import CheckFailure
from fixtures.inventory import Target

CHECK = CheckSpec("service_status", "litellm-gateway service is active (running)",
                  order=1, artifacts=("service_status.txt",), run_last=2)
pytestmark = CHECK.mark

PROPS = ("LoadState", "ActiveState", "SubState", "Result", "MainPID", "NRestarts", "MemoryCurrent",
         "ActiveEnterTimestamp", "ExecMainStartTimestamp", "InvocationID", "FragmentPath")


def test_service_status(request: pytest.FixtureRequest, unit_baseline: object, target: Target, hosts: Hosts,
                        run: RunContext, evidence: CheckResult) -> None:
    doc = evidence.text("service_status.txt")
    unit = str(target.vars["gateway_service"])
    gw = target.gateway
    doc.add(f"# {unit} on gateway {gw.address} (inventory group {target.group})")
    session = hosts.gateway

    status = session.service(unit).status(lines=20)
    doc.section(f"systemctl status {unit} | head -n 20", status.stdout or status.stderr)

    props, shown = session.service(unit).show(PROPS)
    doc.section(f"systemctl show {unit}", shown.transcript())

    now = session.run("date +%s")
    started = systemd.epoch(props.get("ActiveEnterTimestamp"))
    uptime_s = float(now.stdout.strip()) - started if started and now.ok else None
    memory = systemd.human_bytes(props.get("MemoryCurrent"))
    memory_source = "MemoryCurrent"
    pid = props.get("MainPID", "0")
    if memory is None and pid not in ("", "0"):
        rss = session.run(f"awk '/^VmRSS:/ {{print $2}}' /proc/{int(pid)}/status")
        if rss.ok and rss.stdout.strip().isdigit():
            memory, memory_source = systemd.human_bytes(int(rss.stdout.strip()) * 1024), "VmRSS of MainPID"

    workers = None
    if pid.isdigit() and pid != "0":
        spawned = session.run(f"ps --ppid {int(pid)} -o args= | grep -c 'multiprocessing.spawn' || true")
        if spawned.ok and spawned.stdout.strip().isdigit():
            workers = int(spawned.stdout.strip()) or 1  # none spawned: the main process serves itself
    parsed = {
        "unit": unit,
        "load_state": props.get("LoadState"),
        "active_state": props.get("ActiveState"),
        "sub_state": props.get("SubState"),
        "result": props.get("Result"),
        "main_pid": int(pid) if pid.isdigit() else None,
        "n_restarts": int(props["NRestarts"]) if props.get("NRestarts", "").isdigit() else None,
        "memory": memory,
        "memory_source": memory_source if memory else None,
        "uptime": systemd.human_duration(uptime_s),
        "uptime_s": round(uptime_s, 1) if uptime_s is not None else None,
        "invocation_id": props.get("InvocationID") or None,
        "workers": workers,
    }
    evidence.details.update(parsed)
    doc.section("parsed", [f"{k}: {v}" for k, v in parsed.items()])

    history_causes: list[str] = []
    if props.get("LoadState") != "not-found":
        now_reading = unit_history.UnitReading.read(session, unit, run.run_id)
        start = unit_baseline
        path = unit_history.state_path(request.config.getoption("unit_state"), run.evidence_dir, target.group)
        previous = unit_history.load_previous(path, gw.name)
        history_causes, notes = unit_history.judge(now_reading, start, previous, f"gateway {gw.address}")
        if now_reading.invocation_id:
            unit_history.save(path, gw.name, now_reading)
        history = {"at_run_start": start if isinstance(start, str) else getattr(start, "__dict__", None),
                   "now": now_reading.__dict__, "previous_run": previous.__dict__ if previous else None,
                   "state_file": str(path), "notes": notes}
        evidence.details["history"] = history
        doc.section("restarts (NRestarts, InvocationID at the run's start, now, and at the previous run)",
                    [f"{k}: {v}" for k, v in history.items()])

    if props.get("LoadState") == "not-found":
        raise CheckFailure(f"unit {unit} not found on gateway {gw.address}")
    if (props.get("ActiveState"), props.get("SubState")) != ("active", "running"):
        raise CheckFailure(
            f"{unit} on gateway {gw.address} is {props.get('ActiveState')} ({props.get('SubState')}), "
            f"expected active (running); Result={props.get('Result')}, NRestarts={props.get('NRestarts')}")
    if history_causes:
        raise CheckFailure("; ".join(history_causes))
