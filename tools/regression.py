"""One scheduled regression run of the acceptance suite: ``python -m tools.regression --hosts GROUP``.

Why a wrapper around ``tools.validate``: a schedule needs what a single sign-off does not — runs that
never overlap, a folder per run that survives the next run, one history line per finished run, a
baseline to compare the overhead with, an alarm when it (or the versions lock) moves, retention, and a
trend page. The suite itself stays the one place that checks anything.

A run, in order:
  1. take ``POC-1/runs/.lock`` (fcntl.flock, non-blocking; if held: one line, exit 75);
  2. create ``POC-1/runs/<UTC timestamp>-<run id>/`` and write its ``INCOMPLETE`` marker first;
  3. run the suite into ``<run folder>/evidence/`` (its output tee'd into ``<run folder>/suite.log``);
  4. read ``manifest.json``, ``validation.json`` (the verdict validate gave: a bundle it refused, e.g.
     for a secret, is NO-GO with that cause) and check 6's JSON (tools/bundle_facts.py), compare with
     the baseline and the previous run's versions lock, write ``regression.json``;
  5. append one history line atomically, remove ``INCOMPLETE``, prune old run folders, rewrite
     ``index.html``.
A run killed anywhere before step 5 leaves its folder marked INCOMPLETE and the history untouched.

Exit codes: 0 GO (or GO with waivers) and no alarm, 1 NO-GO, 3 regression alarm on a GO run, 4 bad
settings, 75 another run holds the lock, 128+N killed by signal N. With ``--nagios``: one status line on
stdout (the suite's output on stderr), exit 0 OK, 1 WARNING (waivers or an alarm), 2 CRITICAL (NO-GO),
3 UNKNOWN (bad settings, locked, killed). ``--prom-file``: a Prometheus textfile of the run.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TextIO

from evidence_writers import verdict as rule
from tools import exit_codes, monitoring, process, trend_page
from tools.bundle_facts import BundleFacts, read_bundle, read_overhead, read_validation  # noqa: F401
from tools.history import (
    HISTORY_NAME,
    Alarm,
    AlarmPolicy,
    Baseline,
    RunRecord,
    append_record,
    load_pinned_baseline,
    overhead_alarm,
    read_history,
    rolling_baseline,
    versions_alarm,
)
from tools.runlock import try_lock

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RUNS_DIR = REPO / "POC-1" / "runs"
LOCK_NAME = ".lock"
INCOMPLETE = trend_page.INCOMPLETE_MARKER
RUN_FOLDER_RE = re.compile(r"^\d{8}T\d{6}Z-[A-Za-z0-9_.-]+$")
STARTED_NS = ".started_ns"  # orders runs that started within the same second (tests)

EXIT_GO, EXIT_NO_GO, EXIT_REGRESSION, EXIT_SETTINGS, EXIT_LOCKED = (
    exit_codes.OK, exit_codes.FAILED, exit_codes.REGRESSION, exit_codes.SETTINGS, exit_codes.LOCKED)


class Interrupted(Exception):
    """A termination signal arrived while the run was in progress."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Settings:
    hosts: str
    runs_dir: Path = DEFAULT_RUNS_DIR
    keep: int = 48
    policy: AlarmPolicy = field(default_factory=AlarmPolicy)
    baseline_file: Path | None = None  # default: <runs_dir>/baseline.json
    suite_timeout_s: float = 1800.0
    suite_args: list[str] = field(default_factory=list)

    @property
    def pinned_baseline(self) -> Path:
        return self.baseline_file or self.runs_dir / "baseline.json"


@dataclass
class SuiteRun:
    """What a bundle producer gets: where to write the bundle, and the stream for its output."""

    hosts: str
    run_id: str
    evidence_dir: Path
    log: TextIO
    timeout_s: float
    extra_args: list[str]
    redact: Callable[[str], str] = lambda text: text
    echo: TextIO = field(default_factory=lambda: sys.stdout)  # where the suite's output is shown live


#: A bundle producer: runs the checks, leaves manifest.json (+ artifacts) in ``evidence_dir``,
#: returns the suite's exit code. The default one calls tools.validate; tests inject their own.
Producer = Callable[[SuiteRun], int]


# --------------------------------------------------------------------------------------------------
# the default producer: tools.validate in its own process group, tied to our life


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the runner dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def validate_command(run: SuiteRun) -> list[str]:
    return [sys.executable, "-m", "tools.validate", "--hosts", run.hosts,
            "--evidence-dir", str(run.evidence_dir), *run.extra_args]


def subprocess_producer(command: Callable[[SuiteRun], list[str]] = validate_command) -> Producer:
    def produce(run: SuiteRun) -> int:
        env = dict(os.environ, POC1_RUN_ID=run.run_id, LITELLM_LOCAL_MODEL_COST_MAP="True",
                   PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(command(run), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                start_new_session=True, preexec_fn=_die_with_parent)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = run.redact(line)
                run.log.write(line)
                run.log.flush()
                run.echo.write(line)
                run.echo.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        rc = process.wait_or_stop(proc, run.timeout_s)
        if rc == process.TIMED_OUT:
            run.log.write(f"regression: the suite exceeded {run.timeout_s:g} s and was stopped\n")
        reader.join(timeout=5)
        return rc

    return produce


def redactor(hosts: str, inventory: Path = REPO / "hosts.yml") -> Callable[[str], str]:
    """The suite's own redaction (every secret of the target, bearer tokens, URL passwords, sk- keys) for
    what the runner keeps itself: suite.log, the journal/cron log, the history. Best effort on the
    secrets: an inventory that does not resolve still leaves the pattern-based redaction."""
    try:
        from evidence_writers.redaction import Redactor
    except ImportError:  # the suite is not importable: it will not run either
        return lambda text: text
    secrets: list[str] = []
    try:
        from fixtures.inventory import load_target

        secrets = load_target(inventory, hosts).secret_values()
    except Exception:  # noqa: BLE001 - InventoryError and anything odd: the suite will say it in one line
        pass
    return Redactor(secrets).text


# --------------------------------------------------------------------------------------------------
# lock, folder, marker


def acquire_lock(runs_dir: Path) -> int | None:
    """The run lock's fd, or None when another run holds it. Released by the kernel if we die."""
    return try_lock(runs_dir / LOCK_NAME, f"pid {os.getpid()} since {_now()}")


def lock_holder(runs_dir: Path) -> str:
    try:
        return (runs_dir / LOCK_NAME).read_text(encoding="utf-8").strip() or "unknown holder"
    except OSError:
        return "unknown holder"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_synced(path: Path, text: str, mode: str = "w") -> None:
    with open(path, mode, encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------------------------------
# reading the bundle


# --------------------------------------------------------------------------------------------------
# retention


def folder_name(run_id: str, started: datetime) -> str:
    """``<UTC timestamp>-<run id>``; a run id that already starts with its UTC timestamp (the suite's do:
    ``20260101T120000Z-1a2b3c4d``) is not prefixed a second time."""
    return run_id if RUN_FOLDER_RE.match(run_id) else f"{started:%Y%m%dT%H%M%SZ}-{run_id}"


def _started_ns(folder: Path) -> int:
    try:
        return int((folder / STARTED_NS).read_text().strip())
    except (OSError, ValueError):
        return 0


def run_folders(runs_dir: Path) -> list[Path]:
    """Run folders, oldest first: by the UTC timestamp their names start with (runs never overlap, so any
    timestamp taken during a run orders them), ties broken by the start time in nanoseconds."""
    found = [p for p in runs_dir.iterdir() if p.is_dir() and RUN_FOLDER_RE.match(p.name)]
    return sorted(found, key=lambda p: (p.name[:16], _started_ns(p), p.name))


def prune(runs_dir: Path, history: list[RunRecord], keep: int, current: str) -> list[str]:
    """Delete all but the newest ``keep`` run folders; never the current one, never the newest GO."""
    protected = {current}
    for r in reversed(history):
        if r.verdict == "GO" and (runs_dir / r.folder).is_dir():
            protected.add(r.folder)
            break
    folders = run_folders(runs_dir)
    doomed = [p for p in folders[:max(0, len(folders) - keep)] if p.name not in protected]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in doomed]


# --------------------------------------------------------------------------------------------------
# one run


@dataclass
class Outcome:
    exit_code: int
    folder: Path | None
    record: RunRecord | None
    manifest: dict[str, Any] | None = None
    cause: str | None = None  # why nothing ran (settings, lock, signal)


def run_once(settings: Settings, producer: Producer | None = None, out: TextIO = sys.stdout) -> Outcome:
    producer = producer or subprocess_producer()
    runs_dir = settings.runs_dir
    runs_dir.mkdir(parents=True, exist_ok=True)
    try:
        pinned = load_pinned_baseline(settings.pinned_baseline)
    except (ValueError, OSError) as exc:
        print(f"regression: {exc}", file=out)
        return Outcome(EXIT_SETTINGS, None, None, cause=str(exc))
    lock_fd = acquire_lock(runs_dir)
    if lock_fd is None:
        cause = f"another run holds {runs_dir / LOCK_NAME} ({lock_holder(runs_dir)}); not starting"
        print(f"regression: {cause}", file=out)
        return Outcome(EXIT_LOCKED, None, None, cause=cause)
    previous_handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}

    def on_signal(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    folder: Path | None = None
    try:
        for s in previous_handlers:
            signal.signal(s, on_signal)
        started = datetime.now(timezone.utc)
        run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"  # the suite's run-id shape
        folder = runs_dir / folder_name(run_id, started)
        folder.mkdir()
        _write_synced(folder / INCOMPLETE,
                      f"started {started:%Y-%m-%dT%H:%M:%SZ} pid {os.getpid()} target {settings.hosts}\n")
        (folder / STARTED_NS).write_text(f"{time.time_ns()}\n")
        evidence = folder / "evidence"
        evidence.mkdir()
        log_path = folder / "suite.log"
        redact = redactor(settings.hosts)
        with open(log_path, "w", encoding="utf-8") as log:
            rc = producer(SuiteRun(settings.hosts, run_id, evidence, log, settings.suite_timeout_s,
                                   list(settings.suite_args), redact, out))
        facts = read_bundle(evidence, rc, log_path)
        record = _judge(settings, pinned, folder, started, run_id, facts, rc)
        record.cause = redact(record.cause) if record.cause else None
        if facts.run_id and facts.run_id != run_id and re.fullmatch(r"[A-Za-z0-9_.-]+", facts.run_id):
            renamed = runs_dir / folder_name(facts.run_id, started)
            if not renamed.exists():
                folder.rename(renamed)
                folder = renamed
                record.folder = folder.name
        _write_synced(folder / "regression.json", json.dumps(asdict(record), indent=2, sort_keys=True) + "\n")
        # the commit: history line + marker removal, with termination signals held off until both are done
        held = signal.pthread_sigmask(signal.SIG_BLOCK, set(previous_handlers))
        try:
            append_record(runs_dir / HISTORY_NAME, record)
            (folder / INCOMPLETE).unlink()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        history = read_history(runs_dir / HISTORY_NAME)
        pruned = prune(runs_dir, history, settings.keep, folder.name)
        trend_page.write(history, runs_dir)
        _report(record, folder, pruned, out)
        return Outcome(record.exit_code, folder, record, facts.manifest)
    except Interrupted as exc:
        if folder is not None and (folder / INCOMPLETE).exists():
            _write_synced(folder / INCOMPLETE, f"killed by {exc} at {_now()}; no history line written\n", "a")
            print(f"regression: interrupted by {exc}; {folder.name} left INCOMPLETE", file=out)
        else:  # after the commit: the run is in the history; only pruning or the page may be stale
            print(f"regression: interrupted by {exc} after the run was recorded", file=out)
        return Outcome(128 + exc.signum, folder, None, cause=f"interrupted by {exc}")
    finally:
        for s, h in previous_handlers.items():
            signal.signal(s, h)
        os.close(lock_fd)


def _judge(settings: Settings, pinned: Baseline | None, folder: Path, started: datetime, run_id: str,
           facts: BundleFacts, rc: int) -> RunRecord:
    history = read_history(settings.runs_dir / HISTORY_NAME)
    overhead = read_overhead(folder / "evidence")
    baseline = pinned or rolling_baseline(history, settings.hosts, settings.policy)
    alarms: list[Alarm] = []
    prev = next((r for r in reversed(history) if r.target == settings.hosts and r.versions_digest), None)
    for alarm in (overhead_alarm(overhead.p95_ms, baseline, settings.policy),
                  versions_alarm(facts.versions_digest, facts.versions, prev)):
        if alarm:
            alarms.append(alarm)
    if not rule.is_go(facts.verdict):
        code = EXIT_NO_GO
    elif alarms:
        code = EXIT_REGRESSION
    else:
        code = EXIT_GO
    cause = facts.cause
    return RunRecord(
        run_id=facts.run_id or run_id, folder=folder.name, time=f"{started:%Y-%m-%dT%H:%M:%SZ}",
        finished=_now(), target=settings.hosts, verdict=facts.verdict, checks=facts.checks,
        overhead=overhead, versions_digest=facts.versions_digest, versions=facts.versions,
        exit_code=code, alarms=alarms, baseline=baseline, cause=cause)


def _report(r: RunRecord, folder: Path, pruned: list[str], out: TextIO) -> None:
    p95 = f"{r.overhead.p95_ms:.3f} ms" if r.overhead.p95_ms is not None else "not measured"
    if r.baseline and r.baseline.p95_ms is not None:
        base = f"{r.baseline.p95_ms:.3f} ms, {r.baseline.source}"
    else:
        base = r.baseline.source if r.baseline else "none"
    print(f"regression: run {r.run_id} target={r.target} verdict={r.verdict} overhead p95={p95} "
          f"(baseline {base}) -> {folder}", file=out)
    if r.cause:
        print(f"regression: cause: {r.cause}", file=out)
    for a in r.alarms:
        print(f"regression: ALARM {a.kind}: {a.text}", file=out)
    if pruned:
        print(f"regression: pruned {len(pruned)} old run folder(s)", file=out)
    print(f"regression: trend page {folder.parent / 'index.html'}", file=out)


# --------------------------------------------------------------------------------------------------
# pinning a baseline by hand (accepting a new overhead level)


def pin_baseline(runs_dir: Path, run_id: str, path: Path) -> str:
    match = [r for r in read_history(runs_dir / HISTORY_NAME) if r.run_id == run_id]
    if not match or match[-1].overhead.p95_ms is None:
        raise ValueError(f"run {run_id} is not in the history or has no overhead p95")
    r = match[-1]
    _write_synced(path, json.dumps({"p95_ms": r.overhead.p95_ms, "runs": [r.run_id],
                                    "note": f"pinned from run {r.run_id} of {r.time}"}, indent=2) + "\n")
    return f"regression: baseline pinned to {r.overhead.p95_ms:.3f} ms (run {r.run_id}) in {path}"


# --------------------------------------------------------------------------------------------------
# command line


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.regression", description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", required=True, help="inventory group of hosts.yml (e.g. local, lab)")
    p.add_argument("--runs-dir", type=Path, default=Path(_env("POC1_RUNS_DIR", str(DEFAULT_RUNS_DIR))))
    p.add_argument("--keep", type=int, default=int(_env("POC1_REGRESSION_KEEP", "48")),
                   help="run folders to keep (the newest GO is always kept) [$POC1_REGRESSION_KEEP, 48]")
    p.add_argument("--threshold-pct", type=float, default=float(_env("POC1_REGRESSION_THRESHOLD_PCT", "50")),
                   help="p95 worse than baseline by more than this %% ... [50]")
    p.add_argument("--threshold-ms", type=float, default=float(_env("POC1_REGRESSION_THRESHOLD_MS", "1.0")),
                   help="... and by more than this many ms -> alarm [1.0]")
    p.add_argument("--baseline-window", type=int, default=int(_env("POC1_REGRESSION_BASELINE_WINDOW", "5")),
                   help="median of the last N GO runs [5]")
    p.add_argument("--baseline-min-runs", type=int,
                   default=int(_env("POC1_REGRESSION_BASELINE_MIN_RUNS", "3")),
                   help="no overhead alarm before this many GO runs [3]")
    p.add_argument("--baseline-file", type=Path, default=None,
                   help="pinned baseline {\"p95_ms\": ...}; overrides the rolling median "
                        "[RUNS_DIR/baseline.json]")
    p.add_argument("--pin", metavar="RUN_ID", help="pin RUN_ID's overhead p95 as the baseline and exit")
    p.add_argument("--suite-timeout", type=float,
                   default=float(_env("POC1_REGRESSION_SUITE_TIMEOUT", "1800")))
    p.add_argument("--suite-arg", action="append",
                   default=shlex.split(_env("POC1_REGRESSION_SUITE_ARGS", "")),
                   help="extra argument passed to tools.validate (repeatable) [$POC1_REGRESSION_SUITE_ARGS]")
    p.add_argument("--prom-file", type=Path, default=_env("POC1_PROM_FILE", "") or None,
                   help="write a Prometheus textfile of the run here (a directory: poc1_acceptance.prom "
                        "in it) for node_exporter's textfile collector [$POC1_PROM_FILE]")
    p.add_argument("--nagios", action="store_true",
                   help="one Nagios-style status line on stdout, exit 0 OK / 1 WARNING / 2 CRITICAL / "
                        "3 UNKNOWN")
    args = p.parse_args(argv)
    if args.keep < 1 or args.baseline_window < 1 or args.baseline_min_runs < 1:
        p.error("--keep, --baseline-window and --baseline-min-runs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(
        hosts=args.hosts, runs_dir=args.runs_dir, keep=args.keep,
        policy=AlarmPolicy(args.threshold_pct, args.threshold_ms, args.baseline_window,
                           args.baseline_min_runs),
        baseline_file=args.baseline_file, suite_timeout_s=args.suite_timeout, suite_args=args.suite_arg)
    if args.pin:
        try:
            print(pin_baseline(settings.runs_dir, args.pin, settings.pinned_baseline))
            return EXIT_GO
        except ValueError as exc:
            print(f"regression: {exc}", file=sys.stderr)
            return EXIT_SETTINGS
    outcome = run_once(settings, out=sys.stderr if args.nagios else sys.stdout)
    return monitor(outcome, settings.hosts, args.prom_file, args.nagios)


def monitor(outcome: Outcome, hosts: str, prom_file: Path | None, nagios: bool) -> int:
    """The monitoring hooks of a finished (or refused) run; returns the exit code to use."""
    r = outcome.record
    if r is None:  # nothing ran: bad settings, locked, or killed before the history line
        if nagios:
            line, code = monitoring.unknown(hosts, outcome.cause or "the run did not finish")
            print(line, flush=True)
            return code
        return outcome.exit_code
    status = monitoring.Status(target=hosts, verdict=r.verdict, run_id=r.run_id, cause=r.cause,
                               manifest=outcome.manifest, alarms=[(a.kind, a.text) for a in r.alarms],
                               regression=True)
    if prom_file is not None:
        try:
            where = monitoring.write_textfile(prom_file, status)
            print(f"regression: prometheus textfile {where}", file=sys.stderr if nagios else sys.stdout)
        except OSError as exc:
            print(f"regression: --prom-file {prom_file}: {exc.strerror or exc}", file=sys.stderr)
    if not nagios:
        return outcome.exit_code
    line, code = monitoring.nagios(status)
    print(line, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
