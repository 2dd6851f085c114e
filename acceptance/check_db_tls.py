"""Production prerequisite: the gateway's link to PostgreSQL is encrypted (TLS 1.2 or newer).

Artifact db_tls.txt: pg_stat_ssl joined to pg_stat_activity for every session of the gateway's DB user,
read from the runner as the reader role (a member of pg_read_all_stats, so it sees other roles' TLS state),
one line per session (pid, client_addr, ssl, version, cipher, bits); for the reader, the TLS state of the
probe's own session and the sslmode of the gateway's database URL (whether the link is also verified,
which PostgreSQL cannot see). Pass = at least one session of that user from the gateway, and every
session of that user encrypted with TLS 1.2 or newer.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from acceptance import queries
from acceptance.spec import CheckSpec
from evidence_writers.redaction import active
from evidence_writers.result import CheckResult
from evidence_writers.writers import render_table
from fixtures.context import Hosts
from fixtures.database import ReaderDb
from fixtures.errors import CheckFailure
from fixtures.inventory import Target

CHECK = CheckSpec("db_tls", "Gateway's database sessions are encrypted (TLS >= 1.2)",
                  order=7, artifacts=("db_tls.txt",))
pytestmark = CHECK.mark

MIN_VERSION = (1, 2)
#: where the runbook puts the gateway's database URL; only its sslmode/sslrootcert are read, never the URL
GATEWAY_ENV_FILE = "/etc/litellm/litellm.env"


@dataclass(frozen=True)
class Session:
    pid: int
    client_addr: str | None
    ssl: bool | None
    version: str | None
    cipher: str | None
    bits: int | None

    @classmethod
    def of(cls, row: Any) -> "Session":
        return cls(row.pid, row.client_addr, row.ssl, row.version, row.cipher, row.bits)

    def line(self) -> str:
        state = (f"TLS {self.version} {self.cipher} {self.bits} bits" if self.ssl
                 else "NOT ENCRYPTED" if self.ssl is False else "TLS state hidden")
        return f"pid {self.pid} from {self.client_addr or '(hidden)'}: {state}"


def tls_version(text: str | None) -> tuple[int, int] | None:
    """'TLSv1.3' -> (1, 3), 'TLSv1' -> (1, 0); SSLv3 or anything else -> None (older than any TLS)."""
    m = re.fullmatch(r"TLSv(\d+)(?:\.(\d+))?", text or "")
    return (int(m[1]), int(m[2] or 0)) if m else None


def _sessions(n: int) -> str:
    return "session" if n == 1 else "sessions"


def judge(sessions: Sequence[Session], user: str, gateway_addr: str, reader: str) -> str | None:
    """The one-line cause of a failure, or None when the link is encrypted as required."""
    if sessions and all(s.client_addr is None and s.ssl is None for s in sessions):
        return (f"pg_stat_activity/pg_stat_ssl hide the sessions of {user} from {reader} "
                f"({len(sessions)} {_sessions(len(sessions))}); grant it pg_read_all_stats")
    if not any(s.client_addr == gateway_addr for s in sessions):
        seen = ", ".join(sorted({s.client_addr or "local socket" for s in sessions})) or "none"
        return (f"no session of {user} from the gateway {gateway_addr} in pg_stat_activity (sessions from: "
                f"{seen}): nothing shows its link encrypted")
    clear = [s for s in sessions if not s.ssl]
    if clear:
        addrs = ", ".join(sorted({s.client_addr or "local socket" for s in clear}))
        pids = ", ".join(str(s.pid) for s in clear)
        return (f"{len(clear)} of {len(sessions)} {user} {_sessions(len(sessions))} from {addrs} "
                f"{'is' if len(clear) == 1 else 'are'} not encrypted (pid{'s' if len(clear) != 1 else ''} {pids})")
    weak = [s for s in sessions if (tls_version(s.version) or (0, 0)) < MIN_VERSION]
    if weak:
        shown = "; ".join(f"pid {s.pid}: {s.version}" for s in weak)
        return (f"{len(weak)} of {len(sessions)} {user} {_sessions(len(sessions))} use a protocol older than "
                f"TLSv{MIN_VERSION[0]}.{MIN_VERSION[1]} ({shown})")
    return None


def gateway_sslmode(hosts: Hosts) -> str:
    """The libpq TLS parameters in the gateway's database URL (never the URL: it holds the password)."""
    path = shlex.quote(GATEWAY_ENV_FILE)
    cmd = (f"if [ -r {path} ]; then grep -o -E 'ssl(mode|rootcert)=[^&[:space:]]*' {path} || echo '(no sslmode "
           "in the URL: libpq default prefer, TLS if offered, certificate not verified)'; "
           f"else echo '(no {GATEWAY_ENV_FILE} on the gateway)'; fi")
    try:
        res = hosts.gateway.run(cmd)
    except CheckFailure as exc:  # informative only: the verdict rests on what PostgreSQL reports
        return f"not read: {exc}"
    shown = " ".join(res.stdout.replace("'", "").replace('"', "").split())
    return shown or f"not read: {res.stderr.strip() or f'exit {res.rc}'}"


def test_db_tls(target: Target, hosts: Hosts, db: ReaderDb, evidence: CheckResult) -> None:
    doc = evidence.text("db_tls.txt")
    user, dbname = str(target.vars["db_user"]), str(target.vars["db_name"])
    reader = str(target.vars["db_reader_user"])
    gateway_addr = target.gateway_db_client_address
    doc.add(f"# TLS of {user}'s sessions on {target.db_address}:{target.vars['db_port']}/{dbname}, expected "
            f"from the gateway {gateway_addr} (inventory group {target.group}); pass = at least one from the "
            f"gateway and every one encrypted, TLS >= {MIN_VERSION[0]}.{MIN_VERSION[1]}")
    with db.read(f"TLS state of {user}'s sessions") as conn:
        found = queries.result(conn, f"sessions of {user} on {dbname} with pg_stat_ssl",
                               queries.tls_of_sessions(user, dbname))
        own = conn.execute(queries.tls_of_this_session()).first()
    sessions = [Session.of(r) for r in found.rows]
    doc.add(render_table(found, active()))
    doc.section("per session", [s.line() for s in sessions] or ["(no session)"])
    doc.section("for the reader", [
        f"this probe ({reader} from the runner): "
        + (f"TLS {own.version} {own.cipher} {own.bits} bits" if own is not None and own.ssl else "not encrypted"),
        f"gateway's database URL ({GATEWAY_ENV_FILE}): {gateway_sslmode(hosts)}",
    ])
    evidence.details.update(
        sessions=len(sessions), from_gateway=sum(s.client_addr == gateway_addr for s in sessions),
        encrypted=sum(bool(s.ssl) for s in sessions),
        versions=sorted({s.version for s in sessions if s.version}))
    cause = judge(sessions, user, gateway_addr, reader)
    doc.add(f"result: {cause or 'every session encrypted'}")
    if cause:
        raise CheckFailure(cause)
