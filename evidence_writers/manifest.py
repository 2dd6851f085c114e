"""manifest.json: the contract later consumers (HTML report, scheduled runs, trend page) read.

Keys: run_id, started, finished, target, hosts, verdict, checks, artifacts, versions, versions_digest
(plus missing_checks and not_run: which checks had no implementation / were not run). Keep them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from evidence_writers.bundle import ArtifactRecord

SCHEMA_VERSION = 1


@dataclass
class CheckRecord:
    """The per-check outcome record: what a check concluded, in one line, and what it wrote."""

    id: str
    title: str
    outcome: str
    cause: str | None = None
    artifacts: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    #: small parsed facts a check reports beside its artifacts (e.g. ActiveState, latency, call id)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "title": self.title, "outcome": self.outcome, "cause": self.cause,
               "artifacts": list(self.artifacts), "duration_s": round(self.duration_s, 3)}
        if self.details:
            out["details"] = dict(self.details)
        return out


def versions_digest(versions: dict[str, Any]) -> str:
    canonical = json.dumps(versions, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def verdict(checks: Sequence[CheckRecord], required: Iterable[str]) -> tuple[str, list[str]]:
    """GO only if every required check ran and passed; returns (verdict, required checks that did not run).

    ``required`` are the checks that have an implementation in this suite; checks of the registry that
    have none yet are listed separately as missing_checks and do not block the verdict.
    """
    ran = {c.id: c for c in checks}
    not_run = [cid for cid in required if cid not in ran]
    ok = bool(ran) and not not_run and all(c.outcome == "passed" for c in checks)
    return ("GO" if ok else "NO-GO"), not_run


def build_manifest(
    *, run_id: str, started: str, finished: str, target: str, hosts: dict[str, str],
    checks: Sequence[CheckRecord], required: Sequence[str], missing: Sequence[str],
    artifacts: Iterable[ArtifactRecord], versions: dict[str, Any], extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    decision, not_run = verdict(checks, required)
    manifest: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "started": started,
        "finished": finished,
        "target": target,
        "hosts": dict(hosts),
        "verdict": decision,
        "verdict_basis": (f"{sum(c.outcome == 'passed' for c in checks)} of {len(required)} implemented "
                          f"checks passed" + (f"; not implemented: {', '.join(missing)}" if missing else "")
                          + (f"; not run: {', '.join(not_run)}" if not_run else "")),
        "missing_checks": list(missing),
        "not_run": not_run,
        "checks": [c.as_dict() for c in checks],
        "artifacts": [a.as_dict() for a in artifacts],
        "versions": versions,
        "versions_digest": versions_digest(versions),
    }
    if extra:
        manifest.update(extra)
    return manifest
