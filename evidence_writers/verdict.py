"""The one verdict rule: GO only when every registered check ran and passed; a failed check that a valid
waiver covers makes it "GO with waivers"; anything else is NO-GO.

Why the registry and not "the checks that have a module": the registry (acceptance/registry.py) is the
list of success criteria a sign-off promises. A criterion with no implementation, or one that did not
run, was not measured, and an unmeasured criterion cannot be signed as met. The manifest, the HTML report,
the completion summary, tools/validate.py, tools/regression.py and tools/verify.py all call ``decide``;
none of them judges on its own.

Why only "failed" can be waived: a waiver accepts a measured shortfall (InSpec's waived control still
runs). A check that did not run, was skipped, or errored before judging has no measurement to accept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

GO, GO_WITH_WAIVERS, NO_GO = "GO", "GO with waivers", "NO-GO"
VERDICTS = (GO, GO_WITH_WAIVERS, NO_GO)
WAIVABLE = "failed"
RULE = (
    "GO only when every registered check ran and passed; a failed check covered by a valid waiver "
    "gives GO with waivers; a check that did not run, was skipped or errored is always NO-GO"
)


@dataclass(frozen=True)
class Decision:
    """A verdict with the check ids behind it, each list in the order of ``required``."""

    verdict: str
    passed: tuple[str, ...]
    waived: tuple[str, ...]
    failed: tuple[str, ...]  # ran and did not pass (failed, errored, skipped), not waived
    not_run: tuple[str, ...]  # required, no outcome recorded
    total: int

    @property
    def basis(self) -> str:
        """One line: how many passed, and what kept it from a plain GO."""
        parts = [f"{len(self.passed)} of {self.total} registered checks passed"]
        if self.waived:
            parts.append(f"waived: {', '.join(self.waived)}")
        if self.failed:
            parts.append(f"failed: {', '.join(self.failed)}")
        if self.not_run:
            parts.append(f"not run: {', '.join(self.not_run)}")
        return "; ".join(parts)


def is_go(verdict: str | None) -> bool:
    """GO or GO with waivers: the run may be signed."""
    return verdict in (GO, GO_WITH_WAIVERS)


def decide(
    outcomes: Mapping[str, str | None], required: Sequence[str], waived: Iterable[str] = ()
) -> Decision:
    """The rule. ``outcomes``: check id -> outcome of every check that ran (plus any not required, which
    must pass too); ``waived``: ids a valid waiver covers (only a "failed" outcome can be waived)."""
    waivers = set(waived)
    order = list(dict.fromkeys([*required, *outcomes]))
    passed, excused, failed, not_run = [], [], [], []
    for cid in order:
        outcome = outcomes.get(cid)
        if outcome is None:
            not_run.append(cid)
        elif outcome == "passed":
            passed.append(cid)
        elif outcome == WAIVABLE and cid in waivers:
            excused.append(cid)
        else:
            failed.append(cid)
    if not order or failed or not_run:
        verdict = NO_GO
    else:
        verdict = GO_WITH_WAIVERS if excused else GO
    return Decision(verdict, tuple(passed), tuple(excused), tuple(failed), tuple(not_run), len(order))


def required_of(manifest: Mapping[str, Any]) -> list[str]:
    """The checks this run had to pass: as the manifest recorded them, else the registry of this suite."""
    recorded = manifest.get("required_checks")
    if isinstance(recorded, list) and recorded:
        return [str(c["id"] if isinstance(c, Mapping) else c) for c in recorded]
    from acceptance import registry

    return [c.id for c in registry.CHECKS]


def waived_of(manifest: Mapping[str, Any]) -> list[str]:
    waivers = manifest.get("waivers")
    applied = waivers.get("applied") if isinstance(waivers, Mapping) else None
    return [str(w.get("check")) for w in applied or [] if isinstance(w, Mapping)]


def decide_manifest(manifest: Mapping[str, Any]) -> Decision:
    """The rule applied to a manifest's checks, required list and applied waivers (what verify re-derives)."""
    outcomes = {
        str(c.get("id")): c.get("outcome") for c in manifest.get("checks") or [] if isinstance(c, Mapping)
    }
    return decide(outcomes, required_of(manifest), waived_of(manifest))
