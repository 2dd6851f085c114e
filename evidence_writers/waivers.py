"""Waivers, the InSpec way: ``POC-1/waivers.yml`` maps a check id to who accepted its failure, why, and
until when.

    overhead:
      justification: "shared CI runner; re-measured on the real lab before production"
      approved_by: "J. Doe (platform lead)"
      expires: 2026-12-31

Why these rules: a waiver accepts a *measured* shortfall for a bounded time, with a name on it. So an
entry missing a field, naming a check the registry does not have, past its expiry date (valid through
that day, UTC, judged on the run's start date), or covering a check that passed, did not run, was
skipped or errored is ignored, and the manifest, report and summary say why. A broken file never stops a
run: it applies no waiver (the verdict can only get stricter) and says so.

The file is the one named by ``POC1_WAIVERS``, else ``POC-1/waivers.yml`` of the repository.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATH = REPO / "POC-1" / "waivers.yml"
ENV = "POC1_WAIVERS"
FIELDS = ("justification", "approved_by", "expires")


@dataclass(frozen=True)
class Waiver:
    check: str
    justification: str
    approved_by: str
    expires: str  # ISO date, valid through that day (UTC)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class WaiverFile:
    """What the file held: well-formed entries, and one line per entry (or file) that was not."""

    path: str | None
    sha256: str | None
    entries: list[Waiver] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)


def configured_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env[ENV]) if env.get(ENV) else DEFAULT_PATH


def _date(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    try:
        return dt.date.fromisoformat(str(value).strip()).isoformat()
    except ValueError:
        return None


def parse(data: Any) -> tuple[list[Waiver], list[dict[str, str]]]:
    """Entries of a loaded YAML document (None: an empty or all-comment file)."""
    if data is None:
        return [], []
    if not isinstance(data, Mapping):
        return [], [{"check": "*", "reason": "the file is not a mapping of check id -> waiver: ignored"}]
    entries, problems = [], []
    for cid, body in data.items():
        cid = str(cid)
        if not isinstance(body, Mapping):
            problems.append({"check": cid, "reason": "entry is not a mapping: ignored"})
            continue
        missing = [f for f in FIELDS if not str(body.get(f) or "").strip()]
        if missing:
            problems.append({"check": cid, "reason": f"entry lacks {', '.join(missing)}: ignored"})
            continue
        expires = _date(body["expires"])
        if expires is None:
            problems.append(
                {"check": cid, "reason": f"expires {body['expires']!r} is not a date (YYYY-MM-DD): ignored"}
            )
            continue
        entries.append(
            Waiver(cid, str(body["justification"]).strip(), str(body["approved_by"]).strip(), expires)
        )
    return entries, problems


def load(path: Path) -> WaiverFile:
    """Never raises: an absent file is "no waivers"; an unreadable one is a problem line."""
    if not path.exists():
        return WaiverFile(str(path), None)
    try:
        raw = path.read_bytes()
        data = yaml.safe_load(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return WaiverFile(
            str(path),
            None,
            [],
            [{"check": "*", "reason": f"{path.name} unreadable ({first}): no waiver applied"}],
        )
    entries, problems = parse(data)
    return WaiverFile(str(path), hashlib.sha256(raw).hexdigest(), entries, problems)


def apply(
    entries: Sequence[Waiver], outcomes: Mapping[str, str | None], registered: Sequence[str], run_date: str
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(applied, ignored): the entries that excuse a failed check of this run, and why each other does not."""
    applied: list[dict[str, str]] = []
    ignored: list[dict[str, str]] = []
    for w in entries:
        outcome = outcomes.get(w.check)
        if w.check not in registered:
            reason = "unknown check (not in the registry): ignored"
        elif w.expires < run_date:
            reason = f"expired on {w.expires} (run of {run_date}): ignored"
        elif outcome is None:
            reason = "the check did not run: a waiver cannot stand in for a check that did not run"
        elif outcome == "passed":
            reason = "not needed: the check passed"
        elif outcome != "failed":
            reason = f"the check did not judge (outcome {outcome}): only a measured failure can be waived"
        else:
            applied.append(w.as_dict())
            continue
        ignored.append({"check": w.check, "reason": reason})
    return applied, ignored


def run_date(started: str | None) -> str:
    """The UTC date a run started on (its ISO timestamp's date); today if the timestamp is unreadable."""
    try:
        stamp = dt.datetime.fromisoformat(str(started))
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(dt.timezone.utc)
        return stamp.date().isoformat()
    except ValueError:
        return dt.datetime.now(dt.timezone.utc).date().isoformat()


def manifest_section(
    wf: WaiverFile | None, outcomes: Mapping[str, str | None], registered: Sequence[str], started: str
) -> dict[str, Any]:
    """The manifest's ``waivers``: the file, every entry as read, applied ones, ignored ones with reasons."""
    wf = wf or WaiverFile(None, None)
    date = run_date(started)
    applied, ignored = apply(wf.entries, outcomes, registered, date)
    return {
        "file": wf.path,
        "sha256": wf.sha256,
        "judged_on": date,
        "entries": [w.as_dict() for w in wf.entries],
        "applied": applied,
        "ignored": [*wf.problems, *ignored],
    }


def entries_of(section: Mapping[str, Any]) -> list[Waiver]:
    """The entries a manifest recorded (for re-deriving applied/ignored when verifying)."""
    out = []
    for e in section.get("entries") or []:
        if isinstance(e, Mapping) and all(k in e for k in ("check", *FIELDS)):
            out.append(
                Waiver(str(e["check"]), str(e["justification"]), str(e["approved_by"]), str(e["expires"]))
            )
    return out
