"""The regression history: one JSON line per finished scheduled run, in ``POC-1/runs/history.jsonl``.

Why a separate module: the runner appends to it, the trend page reads it, and the regression alarm
compares a new run with it; all three must agree on the record's shape and on what "baseline" means.

A line is written exactly once, at the end of a run, by rewriting the file into a temporary sibling and
renaming it over the original (atomic on POSIX): a run that dies mid-way can never leave half a line.
"""
from __future__ import annotations

import json
import os
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from acceptance.registry import CHECKS
from tools.files import atomic_write

HISTORY_NAME = "history.jsonl"
#: the suite's checks in their order (acceptance/registry.py is the one list)
CHECK_IDS: tuple[str, ...] = tuple(c.id for c in CHECKS)


def check_columns(records: "list[RunRecord]") -> list[str]:
    """The registry's checks, then any other id an older run recorded (a check since renamed/removed)."""
    seen = {c for r in records for c in r.checks}
    return [*CHECK_IDS, *sorted(seen - set(CHECK_IDS))]


@dataclass
class Overhead:
    """Added latency of DB logging (ms), as measured by the suite's overhead check."""

    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


@dataclass
class Alarm:
    """One reason a run is flagged: ``kind`` is ``overhead`` or ``versions``."""

    kind: str
    text: str


@dataclass
class Baseline:
    """What a run's overhead p95 was compared with, and where that figure came from."""

    p95_ms: float | None
    source: str
    runs: list[str] = field(default_factory=list)


@dataclass
class RunRecord:
    """One history line."""

    run_id: str
    folder: str
    time: str
    finished: str
    target: str
    verdict: str
    checks: dict[str, str]
    overhead: Overhead
    versions_digest: str | None
    versions: dict[str, Any]
    exit_code: int
    alarms: list[Alarm] = field(default_factory=list)
    baseline: Baseline | None = None
    cause: str | None = None

    @property
    def flagged(self) -> bool:
        return bool(self.alarms)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunRecord":
        base = d.get("baseline")
        return cls(
            run_id=str(d["run_id"]),
            folder=str(d.get("folder", "")),
            time=str(d["time"]),
            finished=str(d.get("finished", "")),
            target=str(d.get("target", "")),
            verdict=str(d["verdict"]),
            checks=dict(d.get("checks") or {}),
            overhead=Overhead(**(d.get("overhead") or {})),
            versions_digest=d.get("versions_digest"),
            versions=dict(d.get("versions") or {}),
            exit_code=int(d.get("exit_code", 0)),
            alarms=[Alarm(**a) for a in d.get("alarms") or []],
            baseline=Baseline(**base) if base else None,
            cause=d.get("cause"),
        )


def read_history(path: Path) -> list[RunRecord]:
    """Every well-formed line, oldest first. A malformed line (hand-edited file) is skipped, not fatal."""
    if not path.exists():
        return []
    records: list[RunRecord] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(RunRecord.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return records


def append_record(path: Path, record: RunRecord) -> None:
    """Append one line atomically: old content + the line go to a temp file that replaces the original."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    # 0644: no secret in the history; readable by whoever reads the trend page
    atomic_write(path, old + record.to_json().encode() + b"\n", 0o644, fsync=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------------------------------
# baseline and alarms


@dataclass(frozen=True)
class AlarmPolicy:
    """When a run counts as a regression.

    Overhead: p95 worse than the baseline by more than ``threshold_pct`` percent *and* by more than
    ``threshold_ms`` (the absolute floor keeps sub-millisecond jitter from paging anyone). The baseline
    is a pinned file when one exists, else the median p95 of the last ``window`` GO runs of the same
    target that were not themselves flagged for overhead (so a regression is never absorbed silently:
    accepting it means pinning a new baseline). Fewer than ``min_runs`` such runs: no overhead alarm yet.
    """

    threshold_pct: float = 50.0
    threshold_ms: float = 1.0
    window: int = 5
    min_runs: int = 3


def load_pinned_baseline(path: Path | None) -> Baseline | None:
    """A pinned baseline file: ``{"p95_ms": 2.1, "note": "..."}``."""
    if path is None or not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    p95 = data.get("p95_ms")
    if not isinstance(p95, (int, float)):
        raise ValueError(f"pinned baseline {path} has no numeric p95_ms")
    note = f" ({data['note']})" if data.get("note") else ""
    return Baseline(float(p95), f"pinned file {path.name}{note}", [str(r) for r in data.get("runs", [])])


def rolling_baseline(history: list[RunRecord], target: str, policy: AlarmPolicy) -> Baseline:
    eligible = [
        r for r in history
        if r.target == target and r.verdict == "GO" and r.overhead.p95_ms is not None
        and not any(a.kind == "overhead" for a in r.alarms)
    ][-policy.window:]
    if len(eligible) < policy.min_runs:
        return Baseline(None, f"none yet ({len(eligible)} of {policy.min_runs} GO runs needed)",
                        [r.run_id for r in eligible])
    median = statistics.median(r.overhead.p95_ms for r in eligible)  # type: ignore[misc]
    return Baseline(round(float(median), 3), f"median p95 of the last {len(eligible)} GO runs",
                    [r.run_id for r in eligible])


def overhead_alarm(p95_ms: float | None, baseline: Baseline, policy: AlarmPolicy) -> Alarm | None:
    if p95_ms is None or baseline.p95_ms is None:
        return None
    worse_ms = p95_ms - baseline.p95_ms
    worse_pct = 100.0 * worse_ms / baseline.p95_ms if baseline.p95_ms > 0 else float("inf")
    if worse_ms > policy.threshold_ms and worse_pct > policy.threshold_pct:
        return Alarm("overhead", (
            f"overhead p95 {p95_ms:.3f} ms is {worse_ms:+.3f} ms ({worse_pct:+.0f}%) against the baseline "
            f"{baseline.p95_ms:.3f} ms ({baseline.source}); threshold +{policy.threshold_pct:g}% "
            f"and +{policy.threshold_ms:g} ms"))
    return None


def previous_of_target(history: list[RunRecord], target: str) -> RunRecord | None:
    for r in reversed(history):
        if r.target == target:
            return r
    return None


def versions_alarm(digest: str | None, versions: dict[str, Any], previous: RunRecord | None) -> Alarm | None:
    if previous is None or not digest or not previous.versions_digest or digest == previous.versions_digest:
        return None
    changed = version_changes(previous.versions, versions)
    detail = "; ".join(changed) if changed else "components not itemised"
    return Alarm("versions", (
        f"versions lock changed since run {previous.run_id} "
        f"({previous.versions_digest[:12]} -> {digest[:12]}): {detail}"))


# --------------------------------------------------------------------------------------------------
# what changed between consecutive runs (for the trend page)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in sorted(d.items()):
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if not isinstance(v, str) else v
    return out


_HASH = re.compile(r"^[0-9a-f]{32,}$")


def _short(value: str | None) -> str:
    """A sha1/sha256 shown as its first 12 hex digits (enough to tell two apart, readable in a line)."""
    if value is None:
        return "(none)"
    return value[:12] if _HASH.match(value) else value


def version_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flat(old), _flat(new)
    return [f"{k}: {_short(a.get(k))} -> {_short(b.get(k))}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def changes(prev: RunRecord | None, cur: RunRecord) -> list[str]:
    """Human-readable differences from the previous run: verdict, flipped checks, changed versions."""
    if prev is None:
        return []
    out: list[str] = []
    if prev.verdict != cur.verdict:
        out.append(f"verdict {prev.verdict} -> {cur.verdict}")
    for check in sorted(set(prev.checks) | set(cur.checks)):
        before, after = prev.checks.get(check, "(absent)"), cur.checks.get(check, "(absent)")
        if before != after:
            out.append(f"check {check}: {before} -> {after}")
    if prev.versions_digest != cur.versions_digest:
        itemised = version_changes(prev.versions, cur.versions)
        if itemised:
            out.extend(f"version {c}" for c in itemised)
        else:
            out.append("versions lock digest changed")
    if prev.target != cur.target:
        out.append(f"target {prev.target} -> {cur.target}")
    return out
