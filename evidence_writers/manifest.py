"""manifest.json: the contract later consumers (HTML report, scheduled runs, trend page) read.

Keys: run_id, started, finished, target, hosts, verdict, checks, artifacts, versions, versions_digest
(plus missing_checks and not_run: which checks had no implementation / were not run; required_checks: the
registry the verdict was judged against; waivers: the waiver file, applied and ignored entries). Keep them.
``checks`` is the list of the run's ``CheckResult``s (evidence_writers/result.py) as they are, the rest
the run's facts. The verdict is evidence_writers/verdict.py's rule, the only one.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Sequence

from evidence_writers import verdict as rule
from evidence_writers import waivers as waiver_file
from evidence_writers.bundle import ArtifactRecord
from evidence_writers.result import CheckResult
from evidence_writers.result import outcomes as outcomes_of

SCHEMA_VERSION = 1


def versions_digest(versions: dict[str, Any]) -> str:
    canonical = json.dumps(versions, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_manifest(
    *, run_id: str, started: str, finished: str, target: str, hosts: dict[str, str],
    checks: Sequence[CheckResult], required: Sequence[str], missing: Sequence[str],
    artifacts: Iterable[ArtifactRecord], versions: dict[str, Any], extra: dict[str, Any] | None = None,
    waivers: waiver_file.WaiverFile | None = None, titles: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``required`` (implemented) and ``missing`` (not implemented) together are the registry: the verdict
    needs every one of them passed (or a failure waived). ``waivers``: None = the configured file
    (``POC1_WAIVERS``, else POC-1/waivers.yml), so every run, however started, applies the same waivers.
    ``titles`` names checks that did not run (default: the registry's titles)."""
    from acceptance import registry

    registered = sorted(dict.fromkeys([*required, *missing]), key=lambda c: registry.ORDER.get(c, 99))
    if waivers is None:
        waivers = waiver_file.load(waiver_file.configured_path())
    outcomes = outcomes_of(checks)
    waived = waiver_file.manifest_section(waivers, outcomes, registered, started)
    decision = rule.decide(outcomes, registered, [w["check"] for w in waived["applied"]])
    not_run = [cid for cid in required if cid not in outcomes]
    names = {**{c.id: c.title for c in registry.CHECKS}, **(titles or {}), **{c.id: c.title for c in checks}}
    manifest: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "started": started,
        "finished": finished,
        "target": target,
        "hosts": dict(hosts),
        "verdict": decision.verdict,
        "verdict_basis": decision.basis + (f"; not implemented: {', '.join(missing)}" if missing else ""),
        "verdict_rule": rule.RULE,
        "required_checks": [{"id": cid, "title": names.get(cid, cid)} for cid in registered],
        "missing_checks": list(missing),
        "not_run": not_run,
        "waivers": waived,
        "checks": [c.as_dict() for c in checks],
        "artifacts": [a.as_dict() for a in artifacts],
        "versions": versions,
        "versions_digest": versions_digest(versions),
    }
    if extra:
        manifest.update(extra)
    return manifest

