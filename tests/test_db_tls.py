"""TLS on the database link: the lab serves it with its own CA, litellm_user cannot do without it, and
the db_tls acceptance check tells an encrypted link from a clear-text one.

The first tests need no lab (the check's judgement, the lab's pg_hba and URL); the others use the
embedded lab: the suite runs as a user runs it (a subprocess, its manifest.json read), connections are
made from the gateway host itself, and TLS switched off for a test is switched on again in ``finally``.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from acceptance.check_db_tls import Session, judge, tls_version
from lab import layout, provision, tls
from tests.support.acceptance_run import run_suite
from tools.polling import poll_until

GW, DB_IP = layout.GATEWAY.ip, layout.DB.ip
CLEAR_CAUSE = (r"^(\d+) of \1 litellm_user sessions? from 10\.231\.0\.18 (is|are) not encrypted "
               r"\(pids? \d+(, \d+)*\)$")


def _s(pid: int, addr: str | None = GW, ssl: bool | None = True, version: str | None = "TLSv1.3") -> Session:
    return Session(pid, addr, ssl, version, "TLS_AES_256_GCM_SHA384" if ssl else None, 256 if ssl else None)


# ------------------------------------------------------------------------------ no lab needed


def test_judge_names_the_clear_text_sessions() -> None:
    assert judge([_s(1), _s(2, version="TLSv1.2")], "litellm_user", GW, "poc1_reader") is None
    assert (judge([_s(123, ssl=False, version=None), _s(124, ssl=False, version=None)], "litellm_user", GW, "r")
            == "2 of 2 litellm_user sessions from 10.231.0.18 are not encrypted (pids 123, 124)")
    # a clear-text session from elsewhere fails the link too, even beside an encrypted one from the gateway
    assert (judge([_s(1), _s(9, addr="10.0.0.5", ssl=False, version=None)], "litellm_user", GW, "r")
            == "1 of 2 litellm_user sessions from 10.0.0.5 is not encrypted (pid 9)")


def test_judge_refuses_old_protocols_missing_sessions_and_hidden_rows() -> None:
    assert tls_version("TLSv1.3") == (1, 3) and tls_version("TLSv1") == (1, 0) and tls_version("SSLv3") is None
    assert (judge([_s(5, version="TLSv1.1"), _s(6)], "litellm_user", GW, "r")
            == "1 of 2 litellm_user sessions use a protocol older than TLSv1.2 (pid 5: TLSv1.1)")
    assert judge([], "litellm_user", GW, "r").startswith(
        "no session of litellm_user from the gateway 10.231.0.18 in pg_stat_activity (sessions from: none)")
    assert "sessions from: 10.0.0.5" in judge([_s(1, addr="10.0.0.5")], "litellm_user", GW, "r")
    hidden = judge([_s(1, addr=None, ssl=None, version=None)], "litellm_user", GW, "poc1_reader")
    assert hidden.endswith("from poc1_reader (1 session); grant it pg_read_all_stats")


def test_pg_hba_requires_tls_for_litellm_user_only_when_on() -> None:
    def lines_for(text: str, user: str) -> list[str]:
        return [ln.split()[0] for ln in text.splitlines() if not ln.startswith("#") and user in ln.split()]

    assert lines_for(provision.pg_hba(tls_required=True), layout.DB_USER) == ["hostssl"]  # no `host` line
    assert lines_for(provision.pg_hba(tls_required=False), layout.DB_USER) == ["host"]
    assert lines_for(provision.pg_hba(True), layout.DB_READER) == lines_for(provision.pg_hba(False),
                                                                            layout.DB_READER) == ["host"]


def test_db_url_survives_sh_with_its_tls_parameters(tmp_path: Path) -> None:
    """The playbook's db_init.py task sources litellm.env with sh: the URL's `&` must not end the assignment."""
    env = tmp_path / "litellm.env"
    env.write_text(provision.db_url_line({layout.DB_PASSWORD_ENV: "pw-_x"}, tls_on=True) + "\n")
    out = subprocess.run(["sh", "-c", f'. {env}; printf %s "$POC1_DB_URL"'], capture_output=True, text=True,
                         check=True).stdout
    assert out == (f"postgresql+psycopg2://litellm_user:pw-_x@{DB_IP}:5432/litellm_db"
                   f"?sslmode=verify-full&sslrootcert={layout.GATEWAY_DB_CA}")


# ------------------------------------------------------------------------------ the lab

CONNECT = """
import os, sys
sys.path.insert(0, "/opt/litellm")
from sqlalchemy import text
from sqlalchemy.engine import make_url
import db_init
base = make_url(os.environ["POC1_DB_URL"])
for arg in sys.argv[1:]:
    host, mode, root = arg.split(",")
    url = base.set(host=host).update_query_dict({"sslmode": mode, **({"sslrootcert": root} if root else {})})
    engine = db_init.make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            ssl = conn.execute(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar()
        print(f"{arg}\\tconnected ssl={ssl}")
    except Exception as exc:
        print(f"{arg}\\trefused: {db_init.one_line_cause(exc, url)}")
    finally:
        engine.dispose()
"""


def connect_from_gateway(*attempts: str) -> dict[str, str]:
    """Connect as litellm_user from the gateway host, as the litellm user (its env file, other sslmodes)."""
    import lab

    proc = lab.exec("gateway", "set -a; . /etc/litellm/litellm.env; set +a; exec runuser -u litellm -- "
                               "/opt/litellm/venv/bin/python - " + " ".join(attempts), input=CONNECT, timeout=60)
    return dict(ln.split("\t", 1) for ln in proc.stdout.splitlines())


@pytest.mark.lab
def test_lab_serves_tls_with_its_ca_and_the_check_passes(embedded_lab, tmp_path: Path) -> None:  # noqa: ANN001
    import lab

    assert lab.tls_state() == "on"
    # the db host's certificate: signed by the lab's CA, named by the address the gateway dials and its name
    verify = subprocess.run(["openssl", "verify", "-CAfile", tls.CA_CERT, tls.SERVER_CERT], capture_output=True,
                            text=True)
    assert verify.returncode == 0, verify.stderr
    san = subprocess.run(["openssl", "x509", "-in", tls.SERVER_CERT, "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True, check=True).stdout
    assert f"IP Address:{DB_IP}" in san and "DNS:db" in san
    assert (layout.TLS_DIR.stat().st_mode & 0o077) == 0 and (tls.CA_KEY.stat().st_mode & 0o077) == 0
    # the gateway holds the CA, readable by the gateway's user
    ca = lab.exec("gateway", ["runuser", "-u", "litellm", "--", "cat", layout.GATEWAY_DB_CA]).stdout
    assert ca == tls.CA_CERT.read_text()

    run = run_suite(tmp_path / "evidence", "acceptance/check_db_tls.py")
    check = run.check("db_tls")
    assert check["outcome"] == "passed", (check, run.stdout[-2000:])
    assert check["details"]["from_gateway"] >= 1 and check["details"]["encrypted"] == check["details"]["sessions"]
    text = (run.evidence_dir / "db_tls.txt").read_text()
    assert re.search(rf"^pid \d+ from {re.escape(GW)}: TLS TLSv1\.[23] \S+ \d+ bits$", text, re.M), text
    assert "sslmode=verify-full sslrootcert=/etc/litellm/db-ca.crt" in text
    print(f"\ndb_tls on the TLS lab: suite {run.wall_s:.1f} s, check {check['duration_s']:.2f} s")


@pytest.mark.lab
def test_litellm_user_without_tls_is_refused(embedded_lab) -> None:  # noqa: ANN001
    seen = connect_from_gateway(f"{DB_IP},disable,", f"{DB_IP},verify-full,", "db,verify-full,",
                                f"{DB_IP},verify-full,/etc/ssl/certs/ca-certificates.crt")
    # same password, same address: only the missing TLS is refused, by pg_hba.conf
    assert re.search(r'refused: .*no pg_hba\.conf entry for host "10\.231\.0\.18", user "litellm_user", '
                     r'database "litellm_db", no encryption', seen[f"{DB_IP},disable,"]), seen
    assert seen[f"{DB_IP},verify-full,"] == "connected ssl=True", seen  # the env's CA, by address
    assert seen["db,verify-full,"] == "connected ssl=True", seen      # and by the host's name
    # verify-full really verifies: the system's CAs do not vouch for the lab's certificate
    assert "certificate verify failed" in seen[f"{DB_IP},verify-full,/etc/ssl/certs/ca-certificates.crt"], seen


@pytest.mark.lab
def test_tls_off_fails_the_check_with_its_cause(embedded_lab, tmp_path: Path) -> None:  # noqa: ANN001
    import lab

    t0 = time.monotonic()
    try:
        assert lab.set_tls(False) == "off"
        t_off = time.monotonic() - t0
        run = run_suite(tmp_path / "evidence", "acceptance/check_db_tls.py")
    finally:
        t1 = time.monotonic()
        lab.set_tls(True)
        t_on = time.monotonic() - t1
    assert lab.tls_state() == "on"
    check = run.check("db_tls")
    assert run.rc == 1 and check["outcome"] == "failed", check
    assert re.fullmatch(CLEAR_CAUSE, check["cause"]), check["cause"]
    assert f"[db_tls] {check['cause']}" in run.stdout
    text = (run.evidence_dir / "db_tls.txt").read_text()
    assert re.search(rf"^pid \d+ from {re.escape(GW)}: NOT ENCRYPTED$", text, re.M), text
    assert "gateway's database URL (/etc/litellm/litellm.env): sslmode=disable" in text
    print(f"\ntls off {t_off:.1f} s, suite {run.wall_s:.1f} s, tls on again {t_on:.1f} s; cause: {check['cause']}")


@pytest.mark.lab
def test_the_suite_reader_verifies_the_db_certificate(embedded_lab) -> None:  # noqa: ANN001
    """The `local` group makes the reader connect with verify-full and the lab's CA: with that CA it
    connects; with a CA that did not sign the db host's certificate it is refused, by name."""
    import dataclasses

    from fixtures import database
    from fixtures.errors import Unavailable
    from fixtures.inventory import load_target

    target = load_target(Path(__file__).resolve().parents[1] / "hosts.yml", "local")
    url = database.reader_url(target)
    assert url.query == {"sslmode": "verify-full", "sslrootcert": str(tls.CA_CERT)}
    database.open_reader(target).dispose()

    wrong_ca = dataclasses.replace(target, vars={**target.vars,
                                                 "db_sslrootcert": "/etc/ssl/certs/ca-certificates.crt"})
    with pytest.raises(Unavailable, match="certificate verify failed"):
        database.open_reader(wrong_ca)


@pytest.mark.lab
def test_the_db_host_probes_idle_sessions_so_a_vanished_client_is_reaped(embedded_lab) -> None:  # noqa: ANN001
    """A client whose FIN was lost in a partition (the link-down fault leaves one) would otherwise stay in
    pg_stat_activity for good and be counted as the gateway's by the db_tls check: the db host's kernel
    keeps a keepalive timer on every PostgreSQL session, as the lab's postgresql.conf asks (~25 s)."""
    import lab

    def idle_sessions() -> list[str]:  # a session sending at that instant shows its retransmit timer instead
        out = lab.exec("db", ["ss", "-tnoH", "state", "established", "src", f"{DB_IP}:{layout.DB_PORT}"]).stdout
        return [ln for ln in out.splitlines() if f"{GW}:" in ln and "timer:(keepalive," in ln]

    settled, sessions = poll_until(idle_sessions, lambda found: len(found) >= 1, timeout=20, interval=0.5)
    assert settled, "no idle session from the gateway on the db host within 20 s"
    # PostgreSQL always asks for keepalives; without the setting the kernel's first probe is 2 h away ("120min");
    # seconds as "8.3s" (Debian 12's ss) or "8.328sec" (Debian 13's), empty at the instant the timer fires
    unprobed = [ln.split("timer:")[-1] for ln in sessions if not re.search(r"timer:\(keepalive,(?:[\d.]+(?:ms|s|sec))?,", ln)]
    assert unprobed == [], unprobed
