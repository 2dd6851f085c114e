"""Check 2: the gateway is connected to PostgreSQL — as each of its workers' logger says, and as PostgreSQL says.

Artifact gateway_db_connect.log: the logger's ``gateway_logger: database connection ...`` lines from the
journal of the unit's *current* invocation (so an old "established" line cannot vouch for a restart),
and a live probe from the runner: server version, read-only transaction, and the sessions of the
gateway's DB user in pg_stat_activity. Pass = the unit is active; every worker that said ``starting``
in this invocation (``--num_workers N``: each has its own writer and pool) and still runs has its latest
connection line established/restored; and PostgreSQL shows a session of that user from the gateway's
address opened by the logger (``application_name`` ``gateway_logger``: a db_init or psql session of the
same user from the same host does not vouch for the logger).
"""
from __future__ import annotations

import re
import shlex

from sqlalchemy import bindparam, text

from acceptance.spec import CheckSpec
from evidence_writers.redaction import active, clip
from evidence_writers.result import CheckResult
from evidence_writers.writers import SqlResult, render_table
from fixtures.context import Hosts
from fixtures.database import ReaderDb
from fixtures.errors import CheckFailure, one_line
from fixtures.host import Host
from fixtures.inventory import Target

CHECK = CheckSpec("gateway_db_connect", "Gateway is connected to PostgreSQL (logger journal + live session)",
                  order=2, artifacts=("gateway_db_connect.log",))
pytestmark = CHECK.mark

MARK = "gateway_logger: database connection"
START = "gateway_logger: starting (pid "
GOOD = ("established", "restored")
#: the logger's sessions (gateway_logger/connection.py names its engine so); other sessions of its user
#: do not count
LOGGER_APP = "gateway_logger"
#: ``... host litellm[PID]: gateway_logger: ...`` (journalctl -o short-iso-precise)
PID_RE = re.compile(r"\[(\d+)\]: gateway_logger: ")

SESSIONS_SQL = text(
    "SELECT pid, usename, application_name, client_addr::text AS client_addr, state, backend_start "
    "FROM pg_stat_activity WHERE usename = :user AND datname = :db ORDER BY backend_start"
).bindparams(bindparam("user"), bindparam("db"))


def journal_evidence(target: Target, hosts: Hosts, evidence: CheckResult) -> str | None:
    """Journal part: returns the failure cause, or None if the logger reports a live connection."""
    doc = evidence.text("gateway_db_connect.log")
    unit = str(target.vars["gateway_service"])
    session = hosts.gateway
    props, shown = session.service(unit).show(("InvocationID", "ActiveEnterTimestamp", "ActiveState"))
    invocation = props.get("InvocationID", "")
    since = props.get("ActiveEnterTimestamp", "")
    doc.section(f"unit {unit}", shown.transcript())
    unit_file = unit if unit.endswith(".service") else f"{unit}.service"
    if invocation:
        scope = f"invocation {invocation}"
        cmd = f"journalctl _SYSTEMD_UNIT={shlex.quote(unit_file)} _SYSTEMD_INVOCATION_ID={shlex.quote(invocation)}"
    elif since:
        scope = f"since {since}"
        cmd = f"journalctl -u {shlex.quote(unit)} --since {shlex.quote(since)}"
    else:
        doc.section("journal", "the unit has no current invocation (not started)")
        return f"{unit} has not been started on gateway {target.gateway.address}: no journal to read"
    state = props.get("ActiveState", "")
    if state != "active":
        return f"{unit} is {state or 'unknown'} on gateway {target.gateway.address}: no logger runs"
    cmd += (f" --no-pager -o short-iso-precise | grep -F -e {shlex.quote(MARK)} -e {shlex.quote(START)}"
            " | tail -n 400")
    res = session.run(cmd)
    lines = [ln for ln in res.stdout.splitlines() if MARK in ln]
    doc.section(f"journal of {unit} ({scope}), logger start and connection lines",
                f"$ {cmd}\n" + res.stdout.rstrip("\n"))
    evidence.details["journal_connection_lines"] = len(lines)
    if not lines:
        return f"no '{MARK} ...' line in the journal of {unit} since its last start"
    latest = latest_per_worker(res.stdout.splitlines())
    alive = running_pids(session, latest)
    judged = {pid: last for pid, last in latest.items() if pid in alive}
    evidence.details["workers_started"] = len(latest)
    evidence.details["workers_connected"] = sum(1 for last in judged.values() if last.startswith(GOOD))
    evidence.details["logger_last"] = clip(lines[-1].split(MARK, 1)[1].strip(), 200)
    if not judged:
        return f"none of the {len(latest)} logger process(es) that started in this invocation still runs"
    for pid, last in sorted(judged.items()):
        if not last:
            return f"worker pid {pid} of {unit} started its logger but has no database connection line yet"
        if not last.startswith(GOOD):
            return one_line(f"worker pid {pid}: gateway_logger's latest connection line says: {last}", 200)
    return None


def latest_per_worker(lines: list[str]) -> dict[int, str]:
    """pid -> the text after ``database connection`` of its latest line ('' if it only said ``starting``)."""
    latest: dict[int, str] = {}
    for line in lines:
        m = PID_RE.search(line)
        if not m:
            continue
        pid = int(m.group(1))
        if MARK in line:
            latest[pid] = line.split(MARK, 1)[1].strip().lstrip(":").strip()
        elif START in line:
            latest[pid] = ""  # a (re)start of this pid: its earlier lines no longer vouch
    return latest


def running_pids(session: Host, pids: dict[int, str]) -> set[int]:
    """Which of ``pids`` still run on the host (a worker that died leaves its lines behind)."""
    if not pids:
        return set()
    res = session.run(f"ps -o pid= -p {','.join(str(p) for p in sorted(pids))} || true")
    return {int(tok) for tok in res.stdout.split() if tok.isdigit()}


def probe_evidence(target: Target, db: ReaderDb, evidence: CheckResult) -> str | None:
    """Live part: returns the failure cause, or None if PostgreSQL shows the gateway's session."""
    doc = evidence.text("gateway_db_connect.log")
    user, dbname = str(target.vars["db_user"]), str(target.vars["db_name"])
    gateway_addr = target.gateway_db_client_address
    with db.read("live probe") as conn:
        version = conn.execute(text("SELECT version()")).scalar_one()
        server_version = conn.execute(text("SHOW server_version")).scalar_one()
        read_only = conn.execute(text("SHOW transaction_read_only")).scalar_one()
        rows = conn.execute(SESSIONS_SQL, {"user": user, "db": dbname}).all()
    evidence.details.update(server_version=server_version, transaction_read_only=read_only)
    doc.section(f"live probe from the runner as {target.vars['db_reader_user']} ({db.label})",
                [f"server: {version}", f"server_version: {server_version}",
                 f"transaction_read_only: {read_only}"])
    doc.add(render_table(SqlResult(
        title=f"sessions of {user} on {dbname} (expected from the gateway {gateway_addr})",
        sql=str(SESSIONS_SQL), columns=["pid", "usename", "application_name", "client_addr", "state",
                                        "backend_start"], rows=rows), active()))
    from_host = [r for r in rows if r.client_addr and r.client_addr.split("/")[0] == gateway_addr]
    from_gateway = [r for r in from_host if r.application_name == LOGGER_APP]
    evidence.details["sessions_from_gateway"] = len(from_gateway)
    if read_only != "on":
        return f"the probe's transaction is not READ ONLY (transaction_read_only={read_only})"
    if from_gateway:
        return None
    if from_host:
        names = ", ".join(sorted({str(r.application_name or "''") for r in from_host}))
        return (f"no session of {user} from the gateway {gateway_addr} opened by the logger (application_name "
                f"{LOGGER_APP}); {len(from_host)} other session(s) from it: {names}")
    if rows and all(r.client_addr is None for r in rows):
        return (f"pg_stat_activity hides client addresses from {target.vars['db_reader_user']} "
                f"({len(rows)} session(s) of {user}); grant it pg_read_all_stats")
    seen = ", ".join(sorted({str(r.client_addr) for r in rows})) or "none"
    return f"no session of {user} from the gateway {gateway_addr} in pg_stat_activity (sessions from: {seen})"


def test_gateway_db_connect(target: Target, hosts: Hosts, db: ReaderDb, evidence: CheckResult) -> None:
    evidence.text("gateway_db_connect.log").add(
        f"# gateway {target.gateway.address} -> PostgreSQL {target.db_address}:{target.vars['db_port']}"
        f"/{target.vars['db_name']} (inventory group {target.group})")
    causes = []
    for part, run in (("journal", lambda: journal_evidence(target, hosts, evidence)),
                      ("probe", lambda: probe_evidence(target, db, evidence))):
        try:
            cause = run()
        except CheckFailure as exc:  # one part failing must not hide the other part's evidence
            cause = str(exc)
            evidence.text("gateway_db_connect.log").section(f"{part}: failed", cause)
        if cause:
            causes.append(f"{part}: {cause}")
    if causes:
        raise CheckFailure("; ".join(causes))
