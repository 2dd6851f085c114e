"""A fleet: several gateway hosts behind one database, signed off by one run with one verdict.

Why per host inside one check (and not one check per host): the registry, the manifest, the verdict and
every reader of old bundles know the closeout pack's nine checks; a fleet adds rows, not checks. Each check
that concerns a gateway (``CheckSpec.gateways == "each"``) runs once per gateway host as its own pytest test
(id = the host's name), writes that host's artifacts (``chat_call.<host>.json``) and folds into the check's
one result: failed if any host failed, its cause naming each failing host, ``details["hosts"]`` holding
every host's part (the report shows a row per host).

Check 6 (``gateways == "one"``) runs on one named gateway host (group var ``overhead_gateway``, default the
first): it is a 50 s A/B benchmark of the logger's added latency, a property of the build and the config
that check 9 (code identity) and the unit's config prove identical on every host; running it on each host
one after the other would add ~50 s per host, and on all at once it would measure the hosts' contention for
the one database, not the logger's cost.
"""
from __future__ import annotations

from typing import Mapping

from acceptance import registry
from evidence_writers.redaction import clip
from evidence_writers.result import CheckResult
from fixtures.inventory import Target


def gateways_of(cid: str | None, target: Target) -> list[str]:
    """The gateway hosts check ``cid`` runs on."""
    spec = registry.BY_ID.get(cid or "")
    if spec is not None and spec.gateways == "one":
        return [target.overhead_gateway]
    return [g.name for g in target.gateways]


def part_host(cid: str, target: Target, gateway: str) -> str | None:
    """The host whose part of check ``cid`` this is (None: the check's result is not split by host)."""
    spec = registry.BY_ID.get(cid)
    return gateway if target.fleet and spec is not None and spec.gateways == "each" else None


def fold(whole: CheckResult, part: CheckResult, severity: Mapping[str, int], limit: int) -> CheckResult:
    """``part`` (one host's) into ``whole`` (the check's): outcome the worst of the hosts', cause each failing
    host's own, artifacts all hosts', the parts in ``details["hosts"]`` in run order."""
    hosts: dict[str, dict] = whole.details.setdefault("hosts", {})
    hosts[str(part.host)] = {"outcome": part.outcome, "cause": part.cause, "artifacts": list(part.artifacts),
                             "duration_s": round(part.duration_s, 3), "details": dict(part.details)}
    outcomes = [h["outcome"] or "error" for h in hosts.values()]
    whole.outcome = max(outcomes, key=lambda o: severity.get(o, 3))
    failing = [f"{name}: {h['cause'] or h['outcome']}" for name, h in hosts.items() if h["outcome"] != "passed"]
    whole.cause = clip("; ".join(failing), limit) if whole.outcome != "passed" else None
    whole.artifacts = [*whole.artifacts, *(a for a in part.artifacts if a not in whole.artifacts)]
    whole.duration_s += part.duration_s
    return whole
