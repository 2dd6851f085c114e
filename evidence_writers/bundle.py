"""The evidence directory of one run: cleaned at start, every artifact recorded with its hash, and a
manifest.json that describes exactly the files beside it (plus the files made from it or after it:
the completion summary, the report, JUnit XML, SHA256SUMS and the attestation, sealed by SHA256SUMS).

Why the marker file: the directory is emptied at the start of a run, so the bundle only ever empties a
directory it made itself (or an empty one), never a directory someone pointed it at by mistake.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evidence_writers.redaction import Redactor
from evidence_writers.writers import Document, JsonWriter, TextWriter, Written, writer_for

MANIFEST = "manifest.json"
SUMMARY = "POC_COMPLETION_SUMMARY.md"
MARKER = ".poc1-evidence"
KEEP = {".gitkeep", MARKER}
REPORT, JUNIT, BENCH_JSON, VALIDATION = "report.html", "junit.xml", "pytest_benchmark.json", "validation.json"
SUMS, STATEMENT, UNSIGNED = "SHA256SUMS", "attestation.intoto.json", "attestation.UNSIGNED.txt"
SIGNATURE = STATEMENT + ".sig"
#: written after manifest.json (so not in its artifact list): by write_manifest, pytest-html, JUnit,
#: tools/validate.py and evidence_writers/seal.py; every one of them is covered by SHA256SUMS
AFTER_MANIFEST = {SUMMARY, REPORT, JUNIT, BENCH_JSON, VALIDATION, SUMS, STATEMENT, SIGNATURE, UNSIGNED}


class EvidenceDirError(RuntimeError):
    """The evidence directory cannot be used (one line)."""


@dataclass
class ArtifactRecord:
    """One file of the bundle, as the manifest lists it (``outcome`` is its check's outcome)."""

    path: str
    sha256: str
    size: int
    check: str
    outcome: str | None
    time: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size, "check": self.check,
                "outcome": self.outcome, "time": self.time}


class EvidenceBundle:
    """Writes artifacts through the redacting writers and keeps the records for the manifest."""

    def __init__(self, directory: Path, redactor: Redactor) -> None:
        self.directory = directory
        self.redactor = redactor
        self.records: dict[str, ArtifactRecord] = {}

    def prepare(self) -> None:
        """Create the directory, or remove the previous run's files from it."""
        d = self.directory
        if d.exists() and not d.is_dir():
            raise EvidenceDirError(f"evidence dir {d} exists and is not a directory")
        if d.is_dir():
            entries = [p for p in d.iterdir() if p.name not in KEEP]
            if entries and not (d / MARKER).exists():
                raise EvidenceDirError(
                    f"evidence dir {d} is not empty and was not made by this suite (no {MARKER}); "
                    f"refusing to clean it")
            for p in entries:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        d.mkdir(parents=True, exist_ok=True)
        (d / MARKER).write_text("made by the POC-1 acceptance suite; emptied at the start of each run\n")

    @staticmethod
    def _check_name(name: str) -> None:
        if (not name or "/" in name or "\\" in name or name.startswith(".") or name == MANIFEST
                or name in AFTER_MANIFEST):
            raise ValueError(f"artifact name must be a plain file name the bundle does not reserve: {name!r}")

    def write(self, name: str, kind: str, content: Any, *, check: str,
              outcome: str | None = None) -> ArtifactRecord:
        self._check_name(name)
        written = writer_for(kind, self.redactor).write(self.directory / name, content)
        return self._record(name, written, check, outcome)

    def write_document(self, doc: Document, outcome: str, cause: str | None) -> ArtifactRecord:
        return self.write(doc.name, doc.kind, doc.content(outcome, cause), check=doc.check, outcome=outcome)

    def _record(self, name: str, written: Written, check: str, outcome: str | None) -> ArtifactRecord:
        rec = ArtifactRecord(path=name, sha256=written.sha256, size=written.size, check=check,
                             outcome=outcome, time=written.time)
        self.records[name] = rec
        return rec

    def write_manifest(self, manifest: dict[str, Any]) -> Path:
        """manifest.json, then the completion summary rendered from the file as written (redacted, JSON
        round-tripped), so that rendering the file again gives the same bytes."""
        from evidence_writers import summary

        path = self.directory / MANIFEST
        JsonWriter(self.redactor).write(path, manifest)
        written = json.loads(path.read_text(encoding="utf-8"))
        TextWriter(self.redactor).write(self.directory / SUMMARY, summary.render(written))
        return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_bundle(directory: Path) -> list[str]:
    """Every way the files on disk disagree with manifest.json (empty list = the bundle is intact)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        return [f"{MANIFEST}: unreadable: {exc}"]
    problems: list[str] = []
    listed = set()
    for art in manifest.get("artifacts", []):
        listed.add(art["path"])
        p = directory / art["path"]
        if not p.is_file():
            problems.append(f"{art['path']}: listed but missing")
            continue
        if p.stat().st_size != art["size"]:
            problems.append(f"{art['path']}: size {p.stat().st_size} != manifest {art['size']}")
        if sha256_file(p) != art["sha256"]:
            problems.append(f"{art['path']}: sha256 differs from manifest")
    for p in directory.iterdir():
        beside = KEEP | AFTER_MANIFEST | {MANIFEST}
        if p.is_file() and p.name not in beside and p.name not in listed:
            problems.append(f"{p.name}: present but not in the manifest")
    return problems
