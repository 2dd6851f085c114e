"""Monitoring hooks for scheduled runs: a Prometheus textfile for node_exporter's textfile collector, and
a Nagios-style one-line status with its exit code (as testinfra and Goss offer).

Why from the manifest: the figures a dashboard shows are then the ones the signed bundle holds, and a
run that wrote no manifest still reports its verdict (NO-GO) and time, so an alert on a stale
``poc1_acceptance_last_run_timestamp_seconds`` or on ``poc1_acceptance_verdict{verdict="NO-GO"} == 1``
works either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from prometheus_client import CollectorRegistry, Gauge, generate_latest, write_to_textfile

from evidence_writers import verdict as rule
from tools import exit_codes

TEXTFILE_NAME = "poc1_acceptance.prom"
OUTCOMES = ("passed", "failed", "error", "skipped", "not_run")
ALARM_KINDS = ("overhead", "versions")
OK, WARNING, CRITICAL, UNKNOWN = (exit_codes.NAGIOS_OK, exit_codes.NAGIOS_WARNING, exit_codes.NAGIOS_CRITICAL,
                                  exit_codes.NAGIOS_UNKNOWN)
LABEL = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
LINE_CHARS = 400


@dataclass
class Status:
    """What one run concluded, as monitoring sees it."""

    target: str
    verdict: str
    run_id: str | None = None
    cause: str | None = None
    manifest: Mapping[str, Any] | None = None
    alarms: list[tuple[str, str]] = field(default_factory=list)  # (kind, text) of a regression run
    regression: bool = False  # a scheduled run: its alarm gauges are written too
    finished: float = field(default_factory=time.time)


def _details(manifest: Mapping[str, Any] | None, check: str) -> Mapping[str, Any]:
    for c in (manifest or {}).get("checks") or []:
        if c.get("id") == check:
            return c.get("details") or {}
    return {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def registry_of(status: Status) -> CollectorRegistry:
    reg = CollectorRegistry()
    t = status.target
    verdict = Gauge(
        "poc1_acceptance_verdict",
        "Verdict of the last acceptance run (1 = the current one)",
        ["target", "verdict"],
        registry=reg,
    )
    for v in rule.VERDICTS:
        verdict.labels(t, v).set(1 if status.verdict == v else 0)
    Gauge(
        "poc1_acceptance_last_run_timestamp_seconds",
        "When the last acceptance run finished (Unix time)",
        ["target"],
        registry=reg,
    ).labels(t).set(status.finished)
    Gauge(
        "poc1_acceptance_run_info", "Run id of the last acceptance run", ["target", "run_id"], registry=reg
    ).labels(t, status.run_id or "none").set(1)
    manifest = status.manifest or {}
    decision = rule.decide_manifest(manifest) if manifest else None
    if decision is not None:
        outcomes = {c.get("id"): c.get("outcome") for c in manifest.get("checks") or []}
        check = Gauge(
            "poc1_acceptance_check_outcome",
            "Outcome of each registered check (1 = this outcome)",
            ["target", "check", "outcome"],
            registry=reg,
        )
        waived = Gauge(
            "poc1_acceptance_check_waived",
            "1 when the check's failure is covered by a waiver",
            ["target", "check"],
            registry=reg,
        )
        for cid in rule.required_of(manifest):
            now = outcomes.get(cid) or "not_run"
            for o in OUTCOMES:
                check.labels(t, cid, o).set(1 if now == o else 0)
            waived.labels(t, cid).set(1 if cid in decision.waived else 0)
    d = _details(manifest, "overhead")
    added, ci = _number(d.get("added_p95_ms")), d.get("added_p95_ci_ms")
    if added is not None:
        g = Gauge(
            "poc1_acceptance_overhead_added_p95_seconds",
            "Added client latency p95 of DB logging (check 6), point and 95% CI bounds",
            ["target", "bound"],
            registry=reg,
        )
        g.labels(t, "point").set(added / 1000)
        if isinstance(ci, list) and len(ci) == 2 and all(_number(v) is not None for v in ci):
            g.labels(t, "low").set(ci[0] / 1000)
            g.labels(t, "high").set(ci[1] / 1000)
    cap = d.get("capacity_added_ms")
    if isinstance(cap, Mapping) and all(_number(cap.get(k)) is not None for k in ("point", "low", "high")):
        g = Gauge(
            "poc1_acceptance_capacity_added_per_request_seconds",
            "Gateway time added per logged request at saturation (check 6), point and 95% CI bounds",
            ["target", "bound"],
            registry=reg,
        )
        for bound, key in (("point", "point"), ("low", "low"), ("high", "high")):
            g.labels(t, bound).set(cap[key] / 1000)
    lag = _number(d.get("durability_lag_p95_ms"))
    if lag is not None:
        Gauge(
            "poc1_acceptance_durability_lag_p95_seconds",
            "Answer-to-row lag p95 (check 6)",
            ["target"],
            registry=reg,
        ).labels(t).set(lag / 1000)
    rps = d.get("throughput_rps") or {}
    if any(_number(v) is not None for v in rps.values()):
        g = Gauge(
            "poc1_acceptance_throughput_requests_per_second",
            "Throughput at fixed concurrency (check 6), logging on and off",
            ["target", "arm"],
            registry=reg,
        )
        for arm, v in rps.items():
            if _number(v) is not None:
                g.labels(t, arm).set(v)
    if status.regression:
        alarm = Gauge(
            "poc1_acceptance_regression_alarm",
            "1 when a scheduled run raised this alarm",
            ["target", "kind"],
            registry=reg,
        )
        kinds = {k for k, _ in status.alarms}
        for kind in ALARM_KINDS:
            alarm.labels(t, kind).set(1 if kind in kinds else 0)
    return reg


def prometheus_text(status: Status) -> str:
    return generate_latest(registry_of(status)).decode()


def write_textfile(path: Path, status: Status) -> Path:
    """Atomically (prometheus_client writes a temporary file and renames it); a directory gets
    ``poc1_acceptance.prom`` inside it. The collector reads only ``*.prom`` files."""
    target = path / TEXTFILE_NAME if path.is_dir() else path
    write_to_textfile(str(target), registry_of(status))
    return target


def nagios(status: Status) -> tuple[str, int]:
    """(one line, exit code): OK for GO, WARNING for GO with waivers or a regression alarm, CRITICAL for
    NO-GO (a run that could not judge is NO-GO too)."""
    manifest = status.manifest or {}
    decision = rule.decide_manifest(manifest) if manifest else None
    if status.verdict == rule.GO and not status.alarms:
        code = OK
    elif rule.is_go(status.verdict):
        code = WARNING
    else:
        code = CRITICAL
    text = f"{status.verdict}"
    if decision is not None:
        text += f": {decision.basis}"
    if status.cause and status.verdict == rule.NO_GO:
        text += f"; cause: {status.cause}"
    for kind, alarm in status.alarms:
        text += f"; {kind} alarm: {alarm}"
    text += f" (run {status.run_id or 'none'}, target {status.target})"
    text = " ".join(text.split())
    if len(text) > LINE_CHARS:
        text = text[: LINE_CHARS - 3] + "..."
    perf = []
    if decision is not None:
        n = decision.total
        perf += [
            f"checks_passed={len(decision.passed)};;;0;{n}",
            f"checks_waived={len(decision.waived)};;;0;{n}",
            f"checks_failed={len(decision.failed) + len(decision.not_run)};;;0;{n}",
        ]
    added = _number(_details(manifest, "overhead").get("added_p95_ms"))
    if added is not None:
        perf.append(f"overhead_added_p95={added}ms")
    line = f"POC1 ACCEPTANCE {LABEL[code]} - {text}" + (f" | {' '.join(perf)}" if perf else "")
    return line, code


def unknown(target: str, cause: str) -> tuple[str, int]:
    """The line for a run that could not start at all (bad settings, another run holds the lock)."""
    return f"POC1 ACCEPTANCE UNKNOWN - {' '.join(cause.split())} (target {target})", UNKNOWN
