"""Verify an evidence bundle offline: ``python -m tools.verify BUNDLE`` (``make verify BUNDLE=...``).

Why: a reviewer who receives ``POC-1/evidence-<run>.tar.gz`` (as tools.validate packs it) or a bundle
directory needs to know it is the run's, unchanged, and that its GO means what the rule says. Checked,
each failure one line naming the file:

  1. SHA256SUMS: every listed file is there with its digest, and every file is listed;
  2. manifest.json: each artifact's size and sha256;
  3. attestation.intoto.json: an in-toto Statement v1, test-result predicate, whose subjects are every
     file's digest and whose result, passed/warned/failed checks and configuration are the manifest's;
  4. its signature (ssh-keygen -Y, namespace poc1-acceptance), against ``--allowed-signers`` when given
     (then a signature is required); an unsigned bundle must say so;
  5. the manifest's verdict follows from its checks by the one rule (evidence_writers/verdict.py), and
     its applied waivers from its waiver entries;
  6. POC_COMPLETION_SUMMARY.md is the summary of manifest.json, byte for byte;
  7. report.html shows the manifest's verdict, each check's outcome and the applied waivers.

Exit codes: 0 everything holds; 1 at least one failure (listed); 2 BUNDLE is not a bundle at all.
"""

from __future__ import annotations

import argparse
import html.parser
import json
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

from evidence_writers import seal, summary
from evidence_writers import verdict as rule
from evidence_writers import waivers as waiver_file
from evidence_writers.bundle import (
    MANIFEST,
    REPORT,
    SIGNATURE,
    STATEMENT,
    SUMMARY,
    SUMS,
    UNSIGNED,
    sha256_file,
)
from evidence_writers.redaction import Redactor
from tools import exit_codes

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = exit_codes.OK, exit_codes.FAILED, exit_codes.UNUSABLE
TAR_PREFIX = "evidence"


class Unusable(Exception):
    """BUNDLE is neither a readable tarball nor a directory (one line)."""


@dataclass
class Findings:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, name: str, cause: str) -> None:
        self.failures.append(f"{name}: {cause}")


# --------------------------------------------------------------------------------------------------
# opening


@contextmanager
def opened(bundle: Path, found: Findings) -> Iterator[Path]:
    """The bundle as a directory: itself, or a tarball's regular files unpacked into a temporary one."""
    if bundle.is_dir():
        yield bundle
        return
    if not bundle.is_file():
        raise Unusable(f"{bundle}: no such file or directory")
    try:
        tar = tarfile.open(bundle, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise Unusable(f"{bundle}: not a readable tarball ({_first(exc)})") from None
    with tar, tempfile.TemporaryDirectory(prefix="poc1-verify-") as tmp:
        out = Path(tmp)
        try:
            for member in tar.getmembers():
                parts = PurePosixPath(member.name).parts
                if member.isdir() and parts == (TAR_PREFIX,):
                    continue
                if (
                    not member.isreg()
                    or len(parts) != 2
                    or parts[0] != TAR_PREFIX
                    or parts[1].startswith(".")
                ):
                    found.fail(member.name, f"not a plain file under {TAR_PREFIX}/ in the tarball")
                    continue
                data = tar.extractfile(member)
                (out / parts[1]).write_bytes(data.read() if data else b"")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise Unusable(f"{bundle}: tarball cannot be read to the end ({_first(exc)})") from None
        yield out


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].rstrip(":") if lines else type(exc).__name__


def _files(directory: Path, found: Findings) -> list[str]:
    for p in directory.iterdir():
        if not p.name.startswith(".") and (p.is_symlink() or not p.is_file()):
            found.fail(p.name, "not a plain file")
    return seal.bundle_files(directory)


# --------------------------------------------------------------------------------------------------
# the checks


def check_sums(directory: Path, files: list[str], found: Findings) -> None:
    path = directory / SUMS
    if not path.is_file():
        found.fail(SUMS, "missing: nothing seals the bundle")
        return
    sums, bad = seal.parse_sums(path.read_text(encoding="utf-8", errors="replace"))
    for where in bad:
        found.fail(SUMS, f"{where} is not '<sha256>  <file>'")
    for name, digest in sums.items():
        if name not in files:
            found.fail(name, f"listed in {SUMS} but missing")
        elif sha256_file(directory / name) != digest:
            found.fail(name, f"sha256 differs from {SUMS}")
    for name in files:
        if name != SUMS and name not in sums:
            found.fail(name, f"present but not in {SUMS}")


def check_manifest_artifacts(directory: Path, manifest: dict[str, Any], found: Findings) -> None:
    for art in manifest.get("artifacts") or []:
        name = str(art.get("path"))
        p = directory / name
        if not p.is_file():
            found.fail(name, f"listed in {MANIFEST} but missing")
        elif p.stat().st_size != art.get("size") or sha256_file(p) != art.get("sha256"):
            found.fail(name, f"size or sha256 differs from {MANIFEST}")


def check_verdict(manifest: dict[str, Any], found: Findings) -> rule.Decision:
    decision = rule.decide_manifest(manifest)
    if manifest.get("verdict") != decision.verdict:
        found.fail(
            MANIFEST,
            f"verdict {manifest.get('verdict')!r} does not follow from its checks: the rule "
            f"gives {decision.verdict} ({decision.basis})",
        )
    section = manifest.get("waivers")
    if isinstance(section, dict):
        outcomes = {str(c.get("id")): c.get("outcome") for c in manifest.get("checks") or []}
        applied, _ = waiver_file.apply(
            waiver_file.entries_of(section),
            outcomes,
            rule.required_of(manifest),
            waiver_file.run_date(manifest.get("started")),
        )
        recorded = sorted(w.get("check") for w in section.get("applied") or [])
        if sorted(w["check"] for w in applied) != recorded:
            found.fail(
                MANIFEST,
                f"applied waivers {recorded} do not follow from its waiver entries "
                f"(expected {sorted(w['check'] for w in applied)})",
            )
    from acceptance import registry

    if rule.required_of(manifest) != [c.id for c in registry.CHECKS]:
        found.notes.append(
            f"{MANIFEST}: judged against its own check list "
            f"({', '.join(rule.required_of(manifest))}), not this suite's registry"
        )
    return decision


def check_statement(directory: Path, files: list[str], manifest: dict[str, Any], found: Findings) -> None:
    try:
        st = json.loads((directory / STATEMENT).read_text(encoding="utf-8"))
    except OSError:
        found.fail(STATEMENT, "missing")
        return
    except ValueError as exc:
        found.fail(STATEMENT, f"not JSON ({exc})")
        return
    if st.get("_type") != seal.STATEMENT_TYPE or st.get("predicateType") != seal.PREDICATE_TYPE:
        found.fail(STATEMENT, f"not an in-toto Statement v1 with predicate {seal.PREDICATE_TYPE}")
        return
    subjects = {s.get("name"): (s.get("digest") or {}).get("sha256") for s in st.get("subject") or []}
    for name in files:
        if name in seal.NOT_SUBJECTS:
            continue
        if name not in subjects:
            found.fail(name, f"not a subject of {STATEMENT}")
        elif subjects[name] != sha256_file(directory / name):
            found.fail(name, f"sha256 differs from {STATEMENT}")
    for name in subjects:
        if name not in files:
            found.fail(str(name), f"subject of {STATEMENT} but missing")
    expected = seal.statement(manifest, {})["predicate"]
    pred = st.get("predicate") or {}
    for key in ("result", "passedTests", "warnedTests", "failedTests", "configuration"):
        if pred.get(key) != expected[key]:
            found.fail(
                STATEMENT, f"predicate {key} {pred.get(key)!r} is not the manifest's ({expected[key]!r})"
            )


def check_signature(directory: Path, allowed_signers: Path | None, found: Findings) -> str:
    """One line saying what the signature proves; failures recorded in ``found``."""
    sig, statement = directory / SIGNATURE, directory / STATEMENT
    if not sig.is_file():
        if not (directory / UNSIGNED).is_file():
            found.fail(SIGNATURE, f"missing (and no {UNSIGNED} saying the bundle was not signed)")
            return "missing"
        if allowed_signers is not None:
            found.fail(STATEMENT, "not signed, but --allowed-signers asks for a signature")
        return "none (the bundle says it was not signed)"
    if not statement.is_file():
        return "not checked (no statement)"
    data = statement.read_bytes()
    try:
        if allowed_signers is None:
            proc = seal.ssh_keygen(["-Y", "check-novalidate", "-n", seal.NAMESPACE, "-s", str(sig)], data)
            if proc.returncode != 0:
                found.fail(SIGNATURE, f"does not verify: {seal._one_line(proc)}")
                return "bad"
            return f"{_good(proc)}; signer not checked (no --allowed-signers)"
        who = seal.ssh_keygen(["-Y", "find-principals", "-s", str(sig), "-f", str(allowed_signers)])
        principal = who.stdout.strip().splitlines()[0] if who.returncode == 0 and who.stdout.strip() else None
        if principal is None:
            found.fail(SIGNATURE, f"made by a key not in {allowed_signers}")
            return "untrusted"
        proc = seal.ssh_keygen(
            [
                "-Y",
                "verify",
                "-f",
                str(allowed_signers),
                "-I",
                principal,
                "-n",
                seal.NAMESPACE,
                "-s",
                str(sig),
            ],
            data,
        )
        if proc.returncode != 0:
            found.fail(SIGNATURE, f"does not verify for {principal}: {seal._one_line(proc)}")
            return "bad"
        return f"{_good(proc)} (allowed signers {allowed_signers})"
    except seal.SealError as exc:
        found.fail(SIGNATURE, str(exc))
        return "not checked"


def _good(proc: Any) -> str:
    line = (proc.stdout or proc.stderr or "").strip().splitlines()
    return line[0] if line else "good signature"


def check_summary(directory: Path, manifest: dict[str, Any], found: Findings) -> None:
    path = directory / SUMMARY
    if not path.is_file():
        found.fail(SUMMARY, "missing")
        return
    expected = Redactor().text(summary.render(manifest)).splitlines()
    actual = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if expected != actual:
        n = next(
            (i for i, (a, b) in enumerate(zip(actual, expected), 1) if a != b),
            min(len(actual), len(expected)) + 1,
        )
        found.fail(SUMMARY, f"is not the summary of {MANIFEST} (first difference at line {n})")


class _ReportFacts(html.parser.HTMLParser):
    """The few things of report.html that must agree with the manifest: verdict, row outcomes, waivers."""

    def __init__(self) -> None:
        super().__init__()
        self.verdict = ""
        self.rows: dict[str, str] = {}
        self.waived: list[str] = []
        self._in: str | None = None
        self._table: str | None = None
        self._row: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
        elif a.get("id") == "poc1-verdict":
            self._in = "verdict"
        elif tag == "tr" and a.get("data-check"):
            self._row = a["data-check"]
            if self._table == "poc1-waivers" and a.get("class") == "applied":
                self.waived.append(self._row or "")
        elif tag == "td" and self._table == "poc1-checks" and "outcome" in (a.get("class") or "").split():
            self._in = "outcome"
            if self._row:
                self.rows[self._row] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("span", "td"):
            self._in = None
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._in == "verdict":
            self.verdict += data
        elif self._in == "outcome" and self._row:
            self.rows[self._row] += data


def check_report(directory: Path, manifest: dict[str, Any], found: Findings) -> None:
    from evidence_writers.result import of_manifest

    path = directory / REPORT
    if not path.is_file():
        found.fail(REPORT, "missing")
        return
    facts = _ReportFacts()
    facts.feed(path.read_text(encoding="utf-8", errors="replace"))
    decision = rule.decide_manifest(manifest)
    expected = decision.verdict
    if facts.verdict.strip() != expected:
        found.fail(REPORT, f"shows verdict {facts.verdict.strip() or 'none'!r}, the manifest's is {expected}")
    for result in of_manifest(manifest):
        shown, expected_row = facts.rows.get(result.id, "").strip(), result.shown(decision.waived)
        if shown != expected_row:
            found.fail(REPORT, f"shows {result.id} as {shown or 'absent'!r}, the manifest gives {expected_row}")
    applied = sorted(w.get("check") for w in (manifest.get("waivers") or {}).get("applied") or [])
    if sorted(facts.waived) != applied:
        found.fail(REPORT, f"lists waivers {sorted(facts.waived)}, the manifest applied {applied}")


# --------------------------------------------------------------------------------------------------
# all of it


@dataclass
class Result:
    findings: Findings
    run_id: str | None = None
    verdict: str | None = None
    files: int = 0
    signature: str = "not checked"


def verify_directory(
    directory: Path, allowed_signers: Path | None = None, found: Findings | None = None
) -> Result:
    found = found or Findings()
    files = _files(directory, found)
    result = Result(found, files=len(files))
    check_sums(directory, files, found)
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except OSError:
        found.fail(MANIFEST, "missing: nothing to verify the bundle's content against")
        return result
    except ValueError as exc:
        found.fail(MANIFEST, f"not JSON ({exc})")
        return result
    if not isinstance(manifest, dict):
        found.fail(MANIFEST, "not a JSON object")
        return result
    result.run_id, result.verdict = manifest.get("run_id"), manifest.get("verdict")
    check_manifest_artifacts(directory, manifest, found)
    check_verdict(manifest, found)
    check_statement(directory, files, manifest, found)
    result.signature = check_signature(directory, allowed_signers, found)
    check_summary(directory, manifest, found)
    check_report(directory, manifest, found)
    return result


def verify(bundle: Path, allowed_signers: Path | None = None) -> Result:
    """Raises Unusable when ``bundle`` is not a bundle at all."""
    found = Findings()
    with opened(bundle, found) as directory:
        return verify_directory(directory, allowed_signers, found)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.verify", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path, help="POC-1/evidence-<run>.tar.gz, or a bundle directory")
    p.add_argument(
        "--allowed-signers",
        type=Path,
        default=None,
        help="ssh-keygen allowed-signers file; the bundle must then be signed by one of them",
    )
    args = p.parse_args(argv)
    if args.allowed_signers is not None and not args.allowed_signers.is_file():
        print(f"verify: --allowed-signers {args.allowed_signers}: no such file", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        result = verify(args.bundle, args.allowed_signers)
    except Unusable as exc:
        print(f"verify: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    for note in result.findings.notes:
        print(f"verify: note: {note}")
    for line in result.findings.failures:
        print(f"verify: FAIL {line}")
    what = (
        f"run {result.run_id}, verdict {result.verdict}, {result.files} files, signature: {result.signature}"
    )
    if result.findings.failures:
        print(f"verify: {args.bundle}: {len(result.findings.failures)} failure(s) ({what})")
        return EXIT_FAILED
    print(f"verify: OK {args.bundle}: {what}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
