"""What one finished suite run left in its evidence directory, as the scheduled runner judges it.

Why apart from tools/regression.py: reading a bundle (the verdict by the one rule, validate's refusal,
check 6's added latency) is what history and alarms depend on; the runner only schedules and records.
Reads manifests of any schema this suite wrote (``CheckResult.from_dict``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evidence_writers import verdict as rule
from evidence_writers.result import CheckResult
from tools.history import Overhead

CAUSE_CHARS = 200


def _number(value: Any) -> float | None:
    if isinstance(value, dict):  # {"point": .., "low": .., "high": ..}
        value = value.get("point", value.get("value"))
    return round(float(value), 3) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_overhead(evidence_dir: Path) -> Overhead:
    """p50/p95/p99 of the *added* latency from check 6's JSON artifact (its name: the registry; absent:
    all None)."""
    from acceptance.registry import BY_ID

    path = evidence_dir / next(a for a in BY_ID["overhead"].artifacts if a.endswith(".json"))
    if not path.exists():
        return Overhead()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return Overhead()
    added = data.get("added_ms") or data.get("added") or data.get("overhead_ms") or data
    if isinstance(added, dict) and isinstance(added.get("shift"), dict):
        added = added["shift"]
    if not isinstance(added, dict):
        return Overhead()
    return Overhead(*(_number(added.get(k, added.get(f"{k}_ms"))) for k in ("p50", "p95", "p99")))


@dataclass
class BundleFacts:
    run_id: str | None
    verdict: str
    checks: dict[str, str]
    versions: dict[str, Any]
    versions_digest: str | None
    cause: str | None
    manifest: dict[str, Any] | None = None


def read_validation(evidence_dir: Path) -> dict[str, Any] | None:
    """validation.json as tools.validate wrote it (None: absent or unreadable, e.g. another producer)."""
    try:
        doc = json.loads((evidence_dir / "validation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("verdict") in rule.VERDICTS else None


def read_bundle(evidence_dir: Path, suite_rc: int, log_path: Path) -> BundleFacts:
    """The run's verdict: the one rule over the manifest's checks, then the verdict validate gave (its
    refusal wins), else NO-GO when the suite failed although its manifest says GO."""
    path = evidence_dir / "manifest.json"
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        tail = _last_line(log_path)
        what = "no manifest.json" if isinstance(exc, OSError) else "an unreadable manifest.json"
        return BundleFacts(None, rule.NO_GO, {}, {}, None,
                           f"the suite wrote {what} (exit {suite_rc})" + (f": {tail}" if tail else ""))
    recorded = [CheckResult.from_dict(c) for c in m.get("checks") or [] if isinstance(c, dict)]
    checks = {r.id: str(r.outcome) for r in recorded}
    failed = [f"{r.id}: {_clip(str(r.cause))}" for r in recorded if r.outcome != "passed" and r.cause]
    verdict, cause = rule.decide_manifest(m).verdict, "; ".join(failed) or None
    if m.get("verdict") != verdict:
        cause = f"manifest.json records {m.get('verdict')!r} but the rule gives {verdict}"
        verdict = rule.NO_GO
    validation = read_validation(evidence_dir)
    if validation is not None and not rule.is_go(validation["verdict"]):
        if validation.get("cause"):
            cause = f"validate refused the bundle: {validation['cause']}" + (f"; {cause}" if cause else "")
        verdict = rule.NO_GO
    elif validation is None and rule.is_go(verdict) and suite_rc != 0:
        tail = _last_line(log_path)
        verdict = rule.NO_GO
        cause = f"the suite exited {suite_rc} although its manifest says GO" + (f": {tail}" if tail else "")
    return BundleFacts(m.get("run_id"), verdict, checks, m.get("versions") or {}, m.get("versions_digest"),
                       cause, m)


def _clip(text: str) -> str:
    return text if len(text) <= CAUSE_CHARS else text[:CAUSE_CHARS - 3] + "..."


def _last_line(path: Path) -> str:
    """The suite's last ERROR line (pytest's usage errors say what is wrong), else its last line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return _clip((errors or lines or [""])[-1])
