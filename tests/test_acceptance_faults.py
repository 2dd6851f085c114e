"""The acceptance suite against a healthy and a broken embedded lab.

Each fault is something a real deployment suffers (a stopped unit, a wrong key, a re-keyed host, a
database that is down, unreachable or renamed ...). For each, the suite runs as a user runs it
(``python -m pytest --hosts=local --evidence-dir=TMP``, checks 1–5) and we read its manifest.json:
the *right* checks fail with the *right* one-line cause, within their time bound, the others still
run, pass where they should, and every check still leaves its artifacts, with hashes that match.
Every fault is undone in ``finally`` and the lab is verified healthy again before the next one.
The last test searches every artifact and report of every run for every secret value it knew.
"""
from __future__ import annotations

import re
import secrets
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx
import pytest
import yaml

from acceptance import registry
from acceptance.registry import CHECKS
from evidence_writers.bundle import verify_bundle
from lab import layout
from tests.support import lab_mutation
from tests.support.acceptance_run import ROOT, SuiteRun, run_suite

pytestmark = pytest.mark.lab

FIVE = ("service_status", "gateway_db_connect", "chat_call", "db_rows", "join_check")
#: checks 1–5 only; check 6 (the overhead benchmark) is slow and has its own tests
CHECK_MODULES = tuple(f"acceptance/check_{c}.py" for c in FIVE)
ARTIFACTS = {c: list(registry.BY_ID[c].artifacts) for c in FIVE}
CHECK_BOUND_S = 20.0     # no check may take longer than this, whatever is broken
RUN_BOUND_S = 60.0       # nor the whole run of checks 1–5
GATEWAY, DB = "10\\.231\\.0\\.18", "10\\.231\\.0\\.19"
READER_DB = rf"database poc1_reader@{DB}:5432/litellm_db"
NO_CALL = r"^no call to look for: chat_call failed \("

#: every (run, secrets it knew), for the final leak search
RUNS: list[tuple[SuiteRun, set[str]]] = []


# --- the lab, as the suite's own inventory describes it ---------------------------------------------------

def current_lab_secrets() -> set[str]:
    """Every secret of the lab right now (from its 0600 secrets file, as the suite reads it)."""
    from fixtures.inventory import load_target
    return set(load_target(ROOT / "hosts.yml", "local").secret_values())


def lab_sh(host: str, cmd: str, timeout: float = 60) -> str:
    import lab
    return lab.exec(host, cmd, timeout=timeout).stdout


def healthy(timeout: float = 90) -> None:
    """Wait until the lab is back to normal: units active, a chat call answered and logged, logger connected.

    A test process killed mid-fault (SIGKILL: no finally) can leave tests/test_mutations.py's trigger that
    swallows response rows; it is dropped here first, so one killed run cannot fail every later one.

    The secrets are read afresh on every attempt: a `lab up` by someone else may have renewed them.
    """
    from sqlalchemy import text

    from acceptance import queries
    from fixtures.database import open_reader
    from fixtures.inventory import load_target
    _psql("DROP TRIGGER IF EXISTS poc1_fault_lose_responses ON responses")
    deadline = time.monotonic() + timeout
    last = "not checked"
    while time.monotonic() < deadline:
        try:
            target = load_target(ROOT / "hosts.yml", "local")
            states = lab_sh("gateway", "systemctl is-active litellm-gateway standin-model ssh || true").split()
            states += lab_sh("db", f"systemctl is-active {layout.PG_UNIT} ssh || true").split()
            if set(states) != {"active"}:
                last = f"units: {states}"
                raise RuntimeError(last)
            with httpx.Client(timeout=10, trust_env=False) as client:
                resp = client.post(f"{target.vars['gateway_url']}/v1/chat/completions",
                                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "health"}]},
                                   headers={"Authorization": f"Bearer {target.master_key}"})
            if resp.status_code != 200:
                last = f"chat HTTP {resp.status_code}"
                raise RuntimeError(last)
            call_id = resp.headers["x-poc1-request-id"]
            engine = open_reader(target)
            try:
                with engine.connect() as conn:
                    found = queries.wait_for_call(conn, call_id, timeout_s=max(1.0, deadline - time.monotonic()))
                    sessions = conn.execute(text(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'litellm_user' "
                        "AND client_addr = '10.231.0.18'")).scalar_one()
            finally:
                engine.dispose()
            if found.request is None or not found.responses or not sessions:
                last = f"logger: row={found.request is not None} sessions={sessions}"
                raise RuntimeError(last)
            return
        except Exception as exc:  # keep waiting; report the last reason if it never recovers
            last = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            time.sleep(1)
    raise AssertionError(f"the lab did not recover within {timeout:.0f} s: {last}")


# --- how faults are described and checked ---------------------------------------------------------------

@dataclass
class Fault:
    name: str
    #: check id -> regex its one-line cause must match (search)
    fails: dict[str, str]
    #: checks that must still pass
    passes: tuple[str, ...]
    apply: Callable[[], None] | None = None
    undo: Callable[[], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: edits the group vars of a copy of hosts.yml (e.g. another known_hosts file)
    inventory_vars: Callable[[Path], dict[str, str]] | None = None


def local_inventory(tmp_path: Path, overrides: dict[str, str]) -> Path:
    doc = yaml.safe_load((ROOT / "hosts.yml").read_text())
    doc["all"]["children"]["local"]["vars"].update(overrides)
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_checks(tmp_path: Path, *, env: dict[str, str] | None = None, inventory: Path | None = None,
               extra: tuple[str, ...] = ()) -> SuiteRun:
    known = current_lab_secrets() | set((env or {}).values())
    run = run_suite(tmp_path / "evidence", *CHECK_MODULES, *extra, inventory=inventory, env=env)
    RUNS.append((run, known))
    return run


def assert_bundle_complete(run: SuiteRun) -> dict:
    """Every check ran and each left its artifacts; the manifest's hashes match the files."""
    assert (run.evidence_dir / "manifest.json").is_file(), run.stdout[-3000:] + run.stderr[-2000:]
    m = run.manifest
    assert [c["id"] for c in m["checks"]] == list(FIVE), m["checks"]
    for c in m["checks"]:
        assert c["artifacts"] == ARTIFACTS[c["id"]], c
        for name in c["artifacts"]:
            assert (run.evidence_dir / name).stat().st_size > 0
        assert c["duration_s"] < CHECK_BOUND_S, c
        if c["cause"] is not None:
            assert "\n" not in c["cause"] and len(c["cause"]) < 600, c["cause"]
    assert verify_bundle(run.evidence_dir) == []
    assert "Traceback" not in run.stdout and "ERROR at setup" not in run.stdout, run.stdout[-3000:]
    assert run.wall_s < RUN_BOUND_S, run.wall_s
    return m


GW_SSH_KEY = "/etc/ssh/ssh_host_ed25519_key"


def _rekey_gateway() -> None:
    lab_sh("gateway", f"cp -p {GW_SSH_KEY} {GW_SSH_KEY}.fault-backup && cp -p {GW_SSH_KEY}.pub {GW_SSH_KEY}.pub.fault-backup"
                      f" && rm -f {GW_SSH_KEY} {GW_SSH_KEY}.pub && ssh-keygen -q -t ed25519 -N '' -f {GW_SSH_KEY}"
                      f" && systemctl restart ssh")


def _restore_gateway_key() -> None:
    lab_sh("gateway", f"if [ -f {GW_SSH_KEY}.fault-backup ]; then mv -f {GW_SSH_KEY}.fault-backup {GW_SSH_KEY};"
                      f" mv -f {GW_SSH_KEY}.pub.fault-backup {GW_SSH_KEY}.pub; fi; systemctl restart ssh")


def _psql(sql: str) -> None:
    lab_sh("db", f"runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d litellm_db -c {shlex.quote(sql)}")


def _set_db_link(up: bool) -> None:
    import lab
    lab.set_link("db", up=up)


def _logger_drops_streams() -> None:
    lab_mutation.deploy_logger(lab_mutation.mutated_logger(lab_mutation.DROPS_STREAMS))


def _logger_restored() -> None:
    lab_mutation.deploy_logger(lab_mutation.repo_logger())


FAULTS = [
    Fault("logger drops streamed calls",
          fails={"db_rows": r"^stream call gw-[0-9a-f-]+: no row in requests after \d+ s",
                 "join_check": r"^the stream call's request joins 0 responses, expected exactly 1"},
          passes=("service_status", "gateway_db_connect", "chat_call"),
          apply=_logger_drops_streams, undo=_logger_restored),
    Fault("gateway unit stopped",
          fails={"service_status": rf"litellm-gateway on gateway {GATEWAY} is (inactive|failed) \(dead\)",
                 "gateway_db_connect": rf"no session of litellm_user from the gateway {GATEWAY}",
                 "chat_call": rf"POST http://{GATEWAY}:4000/v1/chat/completions: ConnectError: .*Connection refused",
                 "db_rows": NO_CALL, "join_check": NO_CALL},
          passes=(),
          apply=lambda: lab_sh("gateway", "systemctl stop litellm-gateway"),
          undo=lambda: lab_sh("gateway", "systemctl start litellm-gateway")),
    Fault("stand-in model (upstream) stopped",
          fails={"chat_call": r"HTTP 5\d\d: ", "db_rows": NO_CALL, "join_check": NO_CALL},
          passes=("service_status", "gateway_db_connect"),
          apply=lambda: lab_sh("gateway", "systemctl stop standin-model"),
          undo=lambda: lab_sh("gateway", "systemctl start standin-model")),
    Fault("wrong master key",
          fails={"chat_call": r"HTTP (400|401|403): ", "db_rows": NO_CALL, "join_check": NO_CALL},
          passes=("service_status", "gateway_db_connect"),
          env={"POC1_LAB_MASTER_KEY": "sk-wrong-" + secrets.token_urlsafe(24)}),
    Fault("reader password wrong",
          fails={c: rf'{READER_DB}: .*password authentication failed for user "poc1_reader"'
                 for c in ("gateway_db_connect", "db_rows", "join_check")},
          passes=("service_status", "chat_call"),
          env={"POC1_LAB_DB_READER_PASSWORD": "wrong-" + secrets.token_urlsafe(18)}),
    Fault("PostgreSQL stopped on the db host",
          # (gateway_db_connect: the probe's cause, after the journal's "lost" line if the logger noticed first)
          fails={c: rf"{READER_DB}: .*Connection refused" for c in ("gateway_db_connect", "db_rows", "join_check")},
          passes=("service_status", "chat_call"),  # the gateway keeps answering with its database down
          apply=lambda: lab_sh("db", f"systemctl stop {layout.PG_UNIT}"),
          undo=lambda: lab_sh("db", f"systemctl start {layout.PG_UNIT}")),
    Fault("requests table renamed",
          fails={c: r'relation "requests" does not exist' for c in ("db_rows", "join_check")},
          passes=("service_status", "chat_call"),
          apply=lambda: _psql("ALTER TABLE requests RENAME TO requests_fault"),
          undo=lambda: _psql("DO $$ BEGIN IF to_regclass('requests_fault') IS NOT NULL THEN "
                             "ALTER TABLE requests_fault RENAME TO requests; END IF; END $$")),
    Fault("gateway host key changed",
          fails={"service_status": rf"ssh gateway \({GATEWAY}:22\): host key CHANGED",
                 "gateway_db_connect": rf"journal: ssh gateway \({GATEWAY}:22\): host key CHANGED"},
          passes=("chat_call", "db_rows", "join_check"),
          apply=_rekey_gateway, undo=_restore_gateway_key),
    Fault("gateway host key unknown",
          fails={"service_status": rf"ssh gateway \({GATEWAY}:22\): host key unknown: {GATEWAY} is not in .*known_hosts",
                 "gateway_db_connect": r"journal: ssh gateway .*host key unknown"},
          passes=("chat_call", "db_rows", "join_check"),
          inventory_vars=lambda tmp: {"known_hosts_file": str((tmp / "empty_known_hosts").resolve())}),
    Fault("sshd stopped on the gateway (port closed)",
          fails={"service_status": rf"ssh gateway \({GATEWAY}:22\): .*Connection refused",
                 "gateway_db_connect": r"journal: ssh gateway .*Connection refused"},
          passes=("chat_call", "db_rows", "join_check"),
          apply=lambda: lab_sh("gateway", "systemctl stop ssh"),
          undo=lambda: lab_sh("gateway", "systemctl start ssh")),
    Fault("db host unreachable (link down)",
          fails={c: rf"{READER_DB}: .*(No route to host|timeout expired|timed out)"
                 for c in ("gateway_db_connect", "db_rows", "join_check")},
          passes=("service_status", "chat_call"),
          apply=lambda: _set_db_link(False), undo=lambda: _set_db_link(True)),
]


# --- the tests -------------------------------------------------------------------------------------------

def test_healthy_lab_passes_and_the_bundle_is_true(embedded_lab, tmp_path: Path) -> None:  # noqa: ANN001
    healthy()
    run = run_checks(tmp_path)
    m = assert_bundle_complete(run)
    assert run.outcomes() == {c: "passed" for c in FIVE}, run.stdout[-3000:]
    assert run.rc == 0
    assert set(m["not_run"]) == {c.id for c in CHECKS} - set(FIVE) and m["verdict"] == ("GO" if not m["not_run"] else "NO-GO")
    assert m["target"] == "local" and m["hosts"] == {"gateway": "10.231.0.18", "db": "10.231.0.19"}
    v = m["versions"]
    assert v["gateway"]["litellm"] and v["gateway"]["sqlalchemy"] and v["gateway"]["psycopg2"]
    assert v["db"]["postgresql"].startswith(f"{layout.PG_VERSION}.") and v["suite"]["commit"]
    assert v["files_match"]["db_init.py"] is True  # the lab runs the repo's db_init.py
    chat = run.check("chat_call")["details"]
    # this run's calls (plain and streamed) are the ones found in the database
    rows, join = run.check("db_rows")["details"], run.check("join_check")["details"]
    assert rows["plain"]["request_id"] == chat["request_id"] == join["request_ids"]["plain"]
    assert rows["stream"]["request_id"] == chat["stream_request_id"] == join["request_ids"]["stream"]
    assert rows["plain"]["responses"] == rows["stream"]["responses"] == 1
    assert join["linked_rows"] == {"plain": 1, "stream": 1}
    head = (run.evidence_dir / "requests_head.txt").read_text()
    assert chat["request_id"] in head and chat["stream_request_id"] in head and chat["call_id"] in head
    print(f"\nhealthy run of checks 1-5: {run.wall_s:.2f} s wall (process), "
          f"checks {sum(c['duration_s'] for c in m['checks']):.2f} s, manifest wall {m['timings']['wall_s']} s")


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_fails_the_right_check_with_its_cause(embedded_lab, tmp_path: Path,  # noqa: ANN001
                                                    fault: Fault) -> None:
    assert set(fault.fails).isdisjoint(fault.passes)
    healthy()  # start from a working lab (another `lab up` may have just restarted the gateway)
    inventory = None
    if fault.inventory_vars is not None:
        (tmp_path / "empty_known_hosts").write_text("")
        inventory = local_inventory(tmp_path, fault.inventory_vars(tmp_path))
    t0 = time.monotonic()
    try:
        if fault.apply is not None:
            fault.apply()
        run = run_checks(tmp_path, env=fault.env, inventory=inventory)
    finally:
        t1 = time.monotonic()
        if fault.undo is not None:
            fault.undo()
        healthy()
    print(f"\n{fault.name}: break {t1 - t0 - run.wall_s:.1f} s, suite {run.wall_s:.1f} s, "
          f"undo+recovery {time.monotonic() - t1:.1f} s")
    m = assert_bundle_complete(run)
    assert run.rc == 1 and m["verdict"] == "NO-GO"
    for check_id, pattern in fault.fails.items():
        c = run.check(check_id)
        assert c["outcome"] == "failed", (check_id, c)
        assert re.search(pattern, c["cause"]), (check_id, c["cause"], pattern)
        assert f"[{check_id}] {c['cause']}" in run.stdout  # the same one line in the terminal
    for check_id in fault.passes:
        assert run.check(check_id)["outcome"] == "passed", (check_id, run.check(check_id))
    for c in m["checks"]:
        print(f"  {c['outcome']:7} {c['id']:19} {c['duration_s']:5.2f} s  {c['cause'] or ''}")


def test_ssh_accept_new_trusts_on_first_use_and_records_the_key(embedded_lab, tmp_path: Path) -> None:  # noqa: ANN001
    healthy()
    known = tmp_path / "known_hosts"
    known.write_text("")
    inventory = local_inventory(tmp_path, {"known_hosts_file": str(known)})
    run = run_checks(tmp_path, inventory=inventory, extra=("--ssh-accept-new",))
    assert_bundle_complete(run)
    assert run.check("service_status")["outcome"] == "passed", run.check("service_status")
    lines = known.read_text().splitlines()
    assert any(ln.startswith("10.231.0.18 ssh-ed25519 ") for ln in lines), lines
    # and the key it learned is the lab's real one
    lab_keys = Path("/var/lib/poc1-lab/ssh/known_hosts").read_text()
    learned = next(ln for ln in lines if ln.startswith("10.231.0.18 "))
    assert learned.split()[2] in lab_keys


def test_no_secret_value_in_any_artifact_or_report(embedded_lab, tmp_path: Path) -> None:  # noqa: ANN001
    """Every file of every run in this module (plus one run with an HTML and a JUnit report), and their
    terminal output, searched for every secret the run knew: the lab's, and the wrong ones we injected."""
    healthy()
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    run_checks(tmp_path,
               extra=(f"--html={report_dir / 'report.html'}", "--self-contained-html",
                      f"--junitxml={report_dir / 'junit.xml'}"))
    assert (report_dir / "report.html").is_file() and (report_dir / "junit.xml").is_file()
    searched = 0
    for run, known in RUNS:
        assert known, "a run must know at least one secret"
        files = run.files() + (sorted(report_dir.iterdir()) if run is RUNS[-1][0] else [])
        blobs = [(str(p), p.read_bytes()) for p in files] + [("stdout", run.stdout.encode()),
                                                              ("stderr", run.stderr.encode())]
        for where, data in blobs:
            for secret in known:
                assert secret.encode() not in data, f"a secret of {len(secret)} chars leaked into {where}"
            searched += 1
    assert searched >= 10
