"""One command for a sign-off: ``python -m tools.validate --hosts GROUP`` (behind ``make validate``).

Why a wrapper around pytest: a signer wants one command that brings the embedded lab up when it is
down, runs the checks with the report options set (self-contained HTML, JUnit XML, pytest-benchmark
JSON and saved runs), refuses to hand out a bundle holding a secret, seals it (validation.json,
SHA256SUMS, an in-toto statement signed with ``--signing-key`` / ``$POC1_SIGNING_KEY`` when given),
packs it into one tarball, and answers with the verdict and an exit code a CI system can use.

    python -m tools.validate                    # the embedded lab (group "local"), up if needed
    python -m tools.validate --hosts lab        # the real lab of the closeout pack
    python -m tools.validate -- -k overhead     # anything after -- goes to pytest
    python -m tools.validate -- --benchmark-compare   # check 6's timings against the last saved run
    python -m tools.validate --nagios --prom-file=/var/lib/node_exporter/textfile   # monitoring hooks

Every run saves check 6's pytest-benchmark data under .benchmarks/ (--benchmark-autosave) and puts its
JSON into the bundle as pytest_benchmark.json.

A lab that is up but degraded (a unit stopped) is *not* repaired: the checks are there to say so.

Exit codes: 0 GO or GO with waivers; 1 NO-GO (a refused bundle too); 2 nothing to judge (the lab could
not be brought up, the suite could not start, it wrote no manifest, or signing failed), with the reason
on the last line. With ``--nagios``: one status line on stdout (everything else on stderr) and exit
0 OK (GO), 1 WARNING (GO with waivers), 2 CRITICAL (NO-GO or nothing to judge), 3 UNKNOWN (locked).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TextIO

from evidence_writers import verdict as rule
from evidence_writers.bundle import BENCH_JSON, JUNIT, MANIFEST, REPORT, VALIDATION
from tools import exit_codes, monitoring, process
from tools.files import atomic_file
from tools.runlock import try_lock

REPO = Path(__file__).resolve().parent.parent
DEFAULT_EVIDENCE = REPO / "POC-1" / "evidence"
EMBEDDED_GROUP = "local"
SUITE_TIMEOUT_S = 1800
LAB_UP_TIMEOUT_S = 1800
EXIT_GO, EXIT_NO_GO, EXIT_NOTHING = exit_codes.OK, exit_codes.FAILED, exit_codes.UNUSABLE
LAB_DOWN = 3  # `python -m lab status`: 0 well, 1 degraded, 3 down


#: where validate's own lines and its children's output go (stderr under --nagios: stdout is the status)
OUT: TextIO = sys.stdout


def say(line: str) -> None:
    print(f"validate: {line}", file=OUT, flush=True)


def _run(cmd: Sequence[str], timeout: float, env_extra: dict[str, str] | None = None) -> int:
    """Run a child in its own process group, output straight through; stop the group on timeout."""
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1", **(env_extra or {}))
    OUT.flush()
    proc = subprocess.Popen(list(cmd), cwd=REPO, env=env, start_new_session=True,
                            stdout=2 if OUT is sys.stderr else None)
    rc = process.wait_or_stop(proc, timeout)
    if rc == process.TIMED_OUT:
        say(f"{' '.join(cmd[:4])} ... exceeded {timeout:g} s; stopped")
    return rc


def ensure_lab() -> str | None:
    """Bring the embedded lab up when it is down (or healthy: `up` then redeploys changed code).
    A degraded lab is left as it is. Returns a cause when the lab could not be brought up."""
    state = _run([sys.executable, "-m", "lab", "status"], timeout=120)
    if state not in (0, LAB_DOWN):
        say("the embedded lab is up but degraded: running the checks against it as it stands")
        return None
    rc = _run([sys.executable, "-m", "lab", "up"], timeout=LAB_UP_TIMEOUT_S)
    return None if rc == 0 else f"`python -m lab up` failed (exit {rc}); see its output above"


def lock_path(evidence: Path) -> Path:
    """Outside the repository (no stray file for git) and outside the bundle (emptied at start)."""
    digest = hashlib.sha256(str(evidence).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"poc1-validate-{digest}.lock"


def lock_bundle(evidence: Path) -> int | None:
    """An exclusive lock on the bundle for this run (two runs into one directory would mix their
    files); None when another validate run holds it. Released by the kernel when we exit."""
    return try_lock(lock_path(evidence), f"pid {os.getpid()}")


def bench_scratch(evidence: Path) -> Path:
    """Where pytest-benchmark writes its JSON during the run: not in the bundle, which the suite
    empties at start (pytest-benchmark opens the file before that); moved in afterwards."""
    return evidence.parent / f".{evidence.name}.{BENCH_JSON}.{os.getpid()}"


def pytest_command(hosts: str, evidence: Path, extra: Sequence[str]) -> list[str]:
    """The suite with the sign-off outputs switched on (pytest.ini's defaults stay as they are)."""
    return [sys.executable, "-m", "pytest", "acceptance", f"--hosts={hosts}", f"--evidence-dir={evidence}",
            f"--html={evidence / REPORT}", "--self-contained-html", f"--junitxml={evidence / JUNIT}",
            f"--benchmark-json={bench_scratch(evidence)}", "--benchmark-autosave",
            "-p", "no:cacheprovider", "-rfE", *extra]


def collect_benchmark_json(evidence: Path) -> None:
    scratch = bench_scratch(evidence)
    if scratch.is_file() and scratch.stat().st_size and evidence.is_dir():
        os.replace(scratch, evidence / BENCH_JSON)
    scratch.unlink(missing_ok=True)


@dataclass
class Judgement:
    verdict: str
    run_id: str | None
    failing: list[str]
    cause: str | None = None
    manifest: dict[str, Any] | None = None


def judge(evidence: Path, not_before: float = 0.0) -> Judgement:
    """The verdict by the one rule (evidence_writers/verdict.py) from this run's manifest.json (one older
    than ``not_before`` is a previous run's and does not count). A manifest whose recorded verdict is
    not the rule's is NO-GO with that cause."""
    from evidence_writers.result import of_manifest

    path = evidence / MANIFEST
    try:
        if path.stat().st_mtime < not_before:
            return Judgement(rule.NO_GO, None, [], f"the suite wrote no new {MANIFEST} in {evidence}")
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        what = "no" if isinstance(exc, OSError) else "an unreadable"
        return Judgement(rule.NO_GO, None, [], f"the suite wrote {what} {MANIFEST} in {evidence}")
    decision = rule.decide_manifest(manifest)
    shown = [(r, r.shown(decision.waived)) for r in of_manifest(manifest)]
    failing = [f"{r.id}: {s}" + (f": {r.cause}" if r.cause else "") for r, s in shown if s != "PASS"]
    if manifest.get("verdict") != decision.verdict:
        failing.append(f"{MANIFEST} records {manifest.get('verdict')!r} but the rule gives "
                       f"{decision.verdict}")
        return Judgement(rule.NO_GO, manifest.get("run_id"), failing, None, manifest)
    return Judgement(decision.verdict, manifest.get("run_id"), failing, None, manifest)


def leaked_secrets(evidence: Path, hosts: str, inventory: Path,
                   environ: dict[str, str] | None = None) -> list[str]:
    """Files of the bundle (the report and JUnit XML included) holding a secret of the target."""
    from evidence_writers.redaction import Redactor
    from fixtures.inventory import InventoryError, load_target

    try:
        secrets = load_target(inventory, hosts, environ).secret_values()
    except InventoryError:
        return []  # pytest refused the same inventory already, and wrote nothing
    redactor = Redactor(secrets)
    found = []
    for path in sorted(p for p in evidence.rglob("*") if p.is_file()):
        if redactor.leaks(path.read_bytes().decode("utf-8", "replace")):
            found.append(path.name)
    return found


def write_validation(evidence: Path, result: Judgement, verdict: str, cause: str | None,
                     scan: str) -> None:
    """validation.json: the verdict validate gave this bundle (tools/regression.py records it), sealed
    with the rest when the bundle is handed out."""
    doc = {"run_id": result.run_id, "verdict": verdict, "manifest_verdict": result.verdict, "cause": cause,
           "secret_scan": scan}
    (evidence / VALIDATION).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def pack(evidence: Path, run_id: str) -> Path:
    """``evidence-<run id>.tar.gz`` beside the bundle: the bundle as one file to attach or archive."""
    out = evidence.parent / f"evidence-{run_id}.tar.gz"
    with atomic_file(out) as fh, tarfile.open(fileobj=fh, mode="w:gz") as tar:
        for path in sorted(evidence.iterdir()):
            if path.name.startswith("."):
                continue
            tar.add(path, arcname=f"evidence/{path.name}")
    return out


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m tools.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default=EMBEDDED_GROUP,
                        help="inventory group (default: local, the embedded lab)")
    parser.add_argument("--evidence-dir", type=Path, default=DEFAULT_EVIDENCE,
                        help="bundle directory (default: POC-1/evidence)")
    parser.add_argument("--inventory", type=Path, default=REPO / "hosts.yml")
    parser.add_argument("--no-lab-up", action="store_true",
                        help="never start the embedded lab, run against whatever is there")
    parser.add_argument("--signing-key", type=Path, default=_env_path("POC1_SIGNING_KEY"),
                        help="SSH private key to sign the bundle's attestation with (ssh-keygen -Y sign) "
                             "[$POC1_SIGNING_KEY; none: unsigned, and the bundle says so]")
    parser.add_argument("--waivers", type=Path, default=None,
                        help="waiver file for this run [$POC1_WAIVERS, else POC-1/waivers.yml]")
    parser.add_argument("--prom-file", type=Path, default=_env_path("POC1_PROM_FILE"),
                        help="write a Prometheus textfile here (a directory: poc1_acceptance.prom in it) "
                             "for node_exporter's textfile collector [$POC1_PROM_FILE]")
    parser.add_argument("--nagios", action="store_true",
                        help="print one Nagios-style status line and exit 0 OK / 1 WARNING / 2 CRITICAL")
    args, extra = parser.parse_known_args(argv)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return args, extra


def _env_path(name: str) -> Path | None:
    return Path(os.environ[name]) if os.environ.get(name) else None


@dataclass
class Outcome:
    """What this validate run gave: exit code, verdict, the one-line cause of a refusal."""

    exit_code: int
    verdict: str
    cause: str | None = None
    judgement: Judgement | None = None
    locked: bool = False  # another run holds the bundle: nothing was tried


def run(args: argparse.Namespace, extra: Sequence[str]) -> Outcome:
    from evidence_writers import seal

    evidence = args.evidence_dir.resolve()
    evidence.parent.mkdir(parents=True, exist_ok=True)
    if lock_bundle(evidence) is None:
        cause = f"another validate run is writing {evidence} (lock {lock_path(evidence)})"
        say(cause)
        return Outcome(EXIT_NOTHING, rule.NO_GO, cause, locked=True)
    if args.hosts == EMBEDDED_GROUP and not args.no_lab_up:
        cause = ensure_lab()
        if cause:
            say(cause)
            return Outcome(EXIT_NOTHING, rule.NO_GO, cause)
    started = time.time()
    env = {"POC1_WAIVERS": str(args.waivers.resolve())} if args.waivers else {}
    rc = _run(pytest_command(args.hosts, evidence, [f"--inventory={args.inventory.resolve()}", *extra]),
              timeout=SUITE_TIMEOUT_S, env_extra=env)
    collect_benchmark_json(evidence)
    result = judge(evidence, not_before=started)
    if result.cause:
        cause = f"{result.cause} (pytest exit {rc})"
        say(f"{cause}; verdict NO-GO")
        return Outcome(EXIT_NOTHING, rule.NO_GO, cause, result)
    leaks = leaked_secrets(evidence, args.hosts, args.inventory)
    if leaks:
        cause = f"a secret of group {args.hosts} is in {', '.join(leaks)}: bundle not packed"
        write_validation(evidence, result, rule.NO_GO, cause, f"secret found in {', '.join(leaks)}")
        say(f"{cause}; verdict NO-GO")
        return Outcome(EXIT_NO_GO, rule.NO_GO, cause, result)
    scanned = len([p for p in evidence.iterdir() if p.is_file() and not p.name.startswith(".")])
    write_validation(evidence, result, result.verdict, None,
                     f"no secret of group {args.hosts} in the {scanned} files of the bundle")
    try:
        sealed = seal.seal(evidence, result.manifest or {}, args.signing_key)
    except seal.SealError as exc:
        cause = f"{exc}: bundle not packed"
        for name in seal.NOT_SUBJECTS:
            (evidence / name).unlink(missing_ok=True)
        write_validation(evidence, result, rule.NO_GO, cause, "clean")
        say(f"{cause}; verdict NO-GO")
        return Outcome(EXIT_NOTHING, rule.NO_GO, cause, result)
    tarball = pack(evidence, result.run_id or "unknown")
    print("", file=OUT, flush=True)
    say(f"run {result.run_id} against {args.hosts}: verdict {result.verdict}")
    for line in result.failing:
        say(f"  {line}")
    say(f"report  {evidence / REPORT}")
    say(f"bundle  {tarball} ({len(sealed.files)} files in SHA256SUMS; {sealed.note})")
    return Outcome(EXIT_GO if rule.is_go(result.verdict) else EXIT_NO_GO, result.verdict, None, result)


def main(argv: Sequence[str] | None = None) -> int:
    global OUT
    args, extra = parse(argv)
    OUT = sys.stderr if args.nagios else sys.stdout
    outcome = run(args, extra)
    status = monitoring.Status(target=args.hosts, verdict=outcome.verdict, cause=outcome.cause,
                               run_id=outcome.judgement.run_id if outcome.judgement else None,
                               manifest=outcome.judgement.manifest if outcome.judgement else None)
    if args.prom_file and not outcome.locked:
        try:
            say(f"prometheus textfile {monitoring.write_textfile(args.prom_file, status)}")
        except OSError as exc:
            say(f"--prom-file {args.prom_file}: {exc.strerror or exc}")
    if not args.nagios:
        return outcome.exit_code
    line, code = monitoring.nagios(status)
    if outcome.locked:
        line, code = monitoring.unknown(args.hosts, outcome.cause or "locked")
    print(line, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
