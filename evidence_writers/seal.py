"""Sealing a finished bundle: an in-toto Statement over its files (signed with ``ssh-keygen -Y sign`` when
a key is configured, else a note saying it is not), then ``SHA256SUMS`` over every file.

Why both: ``sha256sum -c SHA256SUMS`` needs nothing but coreutils and catches any changed byte or missing
file; the signed statement (in-toto test-result predicate: result, passed/warned/failed checks,
configuration = inventory group and versions lock digest) also catches someone who edits a file *and*
recomputes SHA256SUMS. Unsigned, the bundle is tamper-evident against accidents only, and says so.
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from evidence_writers import verdict as rule
from evidence_writers.bundle import KEEP, SIGNATURE, STATEMENT, SUMS, UNSIGNED, sha256_file

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://in-toto.io/attestation/test-result/v0.1"
NAMESPACE = "poc1-acceptance"  # ssh-keygen -Y ... -n: a signature for this purpose only
SIGNING_ENV = "POC1_SIGNING_KEY"
RESULT = {rule.GO: "PASSED", rule.GO_WITH_WAIVERS: "WARNED", rule.NO_GO: "FAILED"}
NOT_SUBJECTS = {SUMS, STATEMENT, SIGNATURE, UNSIGNED}
SSH_KEYGEN_TIMEOUT_S = 30


class SealError(RuntimeError):
    """Sealing or signing failed (one line, no key material)."""


def bundle_files(directory: Path) -> list[str]:
    """The files a bundle hands out: plain top-level files, hidden ones (the marker) excluded, sorted."""
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.is_file() and not p.is_symlink() and not p.name.startswith(".") and p.name not in KEEP
    )


def sums_text(directory: Path, names: list[str]) -> str:
    """``sha256sum`` output format (two spaces: text mode), one line per file."""
    return "".join(f"{sha256_file(directory / n)}  {n}\n" for n in names)


def parse_sums(text: str) -> tuple[dict[str, str], list[str]]:
    """(name -> sha256, malformed lines) of a SHA256SUMS file."""
    sums: dict[str, str] = {}
    bad: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
            bad.append(f"line {n}")
            continue
        sums[name.lstrip("*")] = digest
    return sums, bad


def statement(manifest: Mapping[str, Any], subjects: Mapping[str, str]) -> dict[str, Any]:
    """The in-toto Statement: ``subjects`` name -> sha256; the predicate comes from the one verdict rule."""
    decision = rule.decide_manifest(manifest)
    waivers = manifest.get("waivers") or {}
    configuration: list[dict[str, Any]] = [
        {
            "name": "inventory-group",
            "content": base64.b64encode(str(manifest.get("target")).encode()).decode(),
            "annotations": {
                "group": manifest.get("target"),
                "inventory": manifest.get("inventory"),
                "hosts": manifest.get("hosts") or {},
            },
        },
        {"name": "versions-lock", "digest": {"sha256": str(manifest.get("versions_digest"))}},
    ]
    if waivers.get("sha256"):
        configuration.append(
            {
                "name": "waivers",
                "digest": {"sha256": waivers["sha256"]},
                "annotations": {"applied": [w["check"] for w in waivers.get("applied") or []]},
            }
        )
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": name, "digest": {"sha256": digest}} for name, digest in sorted(subjects.items())
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "result": RESULT[decision.verdict],
            "configuration": configuration,
            "passedTests": list(decision.passed),
            "warnedTests": list(decision.waived),
            "failedTests": [*decision.failed, *decision.not_run],
        },
    }


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    text = (proc.stderr or proc.stdout or "").strip().splitlines()
    return text[-1] if text else f"exit {proc.returncode}"


def ssh_keygen(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """ssh-keygen, bounded, never prompting (a passphrase-protected key fails instead of hanging)."""
    try:
        proc = subprocess.run(
            ["ssh-keygen", *args],
            input=stdin,
            capture_output=True,
            timeout=SSH_KEYGEN_TIMEOUT_S,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise SealError("ssh-keygen not found (package openssh-client)") from None
    except subprocess.TimeoutExpired:
        raise SealError(f"ssh-keygen {args[0]} {args[1]} took over {SSH_KEYGEN_TIMEOUT_S} s") from None
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def sign(path: Path, key: Path) -> Path:
    """``ssh-keygen -Y sign -n poc1-acceptance``: writes ``<path>.sig`` beside ``path``."""
    if not key.is_file():
        raise SealError(f"signing key {key}: no such file")
    sig = path.with_name(path.name + ".sig")
    sig.unlink(missing_ok=True)
    proc = ssh_keygen(["-Y", "sign", "-f", str(key), "-n", NAMESPACE, "-q", str(path)])
    if proc.returncode != 0 or not sig.is_file():
        raise SealError(f"signing with {key} failed: {_one_line(proc)}")
    return sig


@dataclass(frozen=True)
class Sealed:
    files: list[str]  # every file SHA256SUMS lists
    signed: bool
    note: str  # one line: signed with which key, or why not


def seal(directory: Path, manifest: Mapping[str, Any], signing_key: Path | None) -> Sealed:
    """Statement, signature (or the unsigned note), then SHA256SUMS over everything but itself."""
    for stale in NOT_SUBJECTS:
        (directory / stale).unlink(missing_ok=True)
    subjects = {n: sha256_file(directory / n) for n in bundle_files(directory)}
    (directory / STATEMENT).write_text(
        json.dumps(statement(manifest, subjects), indent=2) + "\n", encoding="utf-8"
    )
    if signing_key is not None:
        sign(directory / STATEMENT, signing_key)
        fingerprint = key_fingerprint(signing_key)
        note = f"signed with {fingerprint} (ssh-keygen -Y sign -n {NAMESPACE})"
    else:
        note = (
            f"not signed: no signing key configured (--signing-key or ${SIGNING_ENV}); SHA256SUMS and "
            f"{STATEMENT} show accidental changes only, not deliberate ones"
        )
        (directory / UNSIGNED).write_text(note + "\n", encoding="utf-8")
    names = bundle_files(directory)
    (directory / SUMS).write_text(sums_text(directory, names), encoding="utf-8")
    return Sealed(names, signing_key is not None, note)


def key_fingerprint(key: Path) -> str:
    """SHA256:... of the key (from its public half), for saying who signed; never the key itself."""
    proc = ssh_keygen(["-l", "-E", "sha256", "-f", str(key)])
    parts = proc.stdout.split()
    return parts[1] if proc.returncode == 0 and len(parts) > 1 else "an SSH key"

