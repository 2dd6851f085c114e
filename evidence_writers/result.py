"""The one shape of a check's result, from the moment the check starts to the page that shows it.

Why one type: the fixture ``evidence`` hands a check its ``CheckResult``; the check adds documents and
details; the acceptance plugin writes the documents and sets outcome, cause, artifacts and duration; the
manifest lists ``as_dict()`` of each; the report, the summary, verify and the scheduled runs read them back
with ``from_dict``/``of_manifest``. Nothing reshapes it on the way. The verdict over a list of them is
evidence_writers/verdict.py's ``decide``, the only rule.
"""
from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from evidence_writers.writers import Document

#: how an outcome is shown to a signer (None: the check did not run)
SHOWN = {"passed": "PASS", "failed": "FAIL", "error": "FAIL", "skipped": "SKIPPED", None: "NOT RUN"}
NOT_RUN_CAUSE = "the check did not run"


def host_artifact(name: str, host: str) -> str:
    """One gateway host's copy of an artifact in a fleet run: ``chat_call.json`` -> ``chat_call.gw-2.json``
    (the bundle holds plain file names only)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", host).strip(".") or "host"
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.{safe}.{ext}" if dot and stem else f"{name}.{safe}"


@dataclass
class CheckResult:
    """What one check concluded (outcome, one-line cause), what it wrote and measured, how long it took."""

    id: str
    title: str
    #: passed / failed / error / skipped; None while it runs, or when it did not run
    outcome: str | None = None
    cause: str | None = None
    #: names of its files in the bundle, in the order the check made them
    artifacts: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    #: small parsed facts beside the artifacts (e.g. ActiveState, latency, call id)
    details: dict[str, Any] = field(default_factory=dict)
    #: the artifacts being assembled, written when the check ends (never in the manifest)
    documents: dict[str, Document] = field(default_factory=dict, repr=False, compare=False)
    #: a fleet run: the gateway host this part of the check is about (its artifacts carry its name)
    host: str | None = field(default=None, repr=False, compare=False)

    def artifact_name(self, name: str) -> str:
        """The bundle's name of the check's artifact ``name`` (per host in a fleet run)."""
        return host_artifact(name, self.host) if self.host else name

    # -- while the check runs --------------------------------------------------------------------------
    def _open(self, name: str, kind: str) -> Document:
        name = self.artifact_name(name)
        doc = self.documents.get(name)
        if doc is None:
            doc = self.documents[name] = Document(name=name, kind=kind, check=self.id)
        return doc

    def text(self, name: str) -> Document:
        return self._open(name, "text")

    def json(self, name: str) -> Document:
        return self._open(name, "json")

    def sql(self, name: str) -> Document:
        return self._open(name, "sql")

    def binary(self, name: str) -> Document:
        return self._open(name, "binary")

    def adopt(self, doc: Document) -> None:
        """A document made elsewhere for this check (e.g. by a session fixture) becomes its artifact."""
        if self.host and host_artifact("a.b", self.host)[1:-1] not in doc.name:  # not yet this host's name
            doc.name = self.artifact_name(doc.name)
        self.documents[doc.name] = doc

    # -- as the manifest holds it ----------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "title": self.title, "outcome": self.outcome, "cause": self.cause,
               "artifacts": list(self.artifacts), "duration_s": round(self.duration_s, 3)}
        if self.details:
            out["details"] = dict(self.details)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CheckResult":
        """A manifest's check entry (any schema this suite ever wrote: absent keys take their defaults)."""
        return cls(id=str(d.get("id")), title=str(d.get("title") or d.get("id")), outcome=d.get("outcome"),
                   cause=d.get("cause"), artifacts=[str(a) for a in d.get("artifacts") or []],
                   duration_s=float(d.get("duration_s") or 0.0), details=dict(d.get("details") or {}))

    def shown(self, waived: Collection[str] = ()) -> str:
        """PASS / FAIL / SKIPPED / NOT RUN, or WAIVED for a failure the verdict excused."""
        return "WAIVED" if self.id in waived else SHOWN.get(self.outcome, "FAIL")


def of_manifest(manifest: Mapping[str, Any]) -> list[CheckResult]:
    """Every check the run had to pass, in the manifest's order, then any other it recorded: each as
    recorded (its artifacts completed from the manifest's file list), or NOT RUN if it has no entry."""
    from evidence_writers.verdict import required_of

    recorded = {str(c.get("id")): CheckResult.from_dict(c) for c in manifest.get("checks") or []
                if isinstance(c, Mapping)}
    titles = {str(c.get("id")): str(c.get("title")) for c in manifest.get("required_checks") or []
              if isinstance(c, Mapping) and c.get("title")}
    if not titles:
        from acceptance import registry

        titles = {c.id: c.title for c in registry.CHECKS}
    results = []
    for cid in dict.fromkeys([*required_of(manifest), *recorded]):
        result = recorded.get(cid) or CheckResult(cid, titles.get(cid, cid), cause=NOT_RUN_CAUSE)
        for art in manifest.get("artifacts") or []:
            listed = isinstance(art, Mapping) and art.get("check") == cid
            if listed and art.get("path") not in result.artifacts:
                result.artifacts.append(str(art["path"]))
        results.append(result)
    return results


def outcomes(results: Collection[CheckResult]) -> dict[str, str | None]:
    """check id -> outcome of every check that ran: what ``verdict.decide`` judges."""
    return {r.id: r.outcome for r in results if r.outcome is not None}
