"""A fleet on the embedded lab: `python -m lab up` with POC1_LAB_GATEWAYS=2 builds a second gateway host
writing to the one database; the suite (group ``local``, the lab's fleet file read after hosts.yml) checks
each gateway host, GO only if both pass; one stopped gateway makes the verdict NO-GO naming that host.
The same lab has daily-partitioned log tables (POC1_LAB_PARTITION=daily: one rebuild for both, the plain
layout is every other lab test's): the same suite passes on them, and a responses partition without its
cascading foreign key fails check 5 naming it.

It rebuilds the lab twice (2 gateways, then back to the 1 every other lab test expects), so it carries
``lab_teardown``: it runs after the tests that share the lab (tests/conftest.py).
"""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

import lab

from tests.support.acceptance_run import CHECK_6_NOT_ON_CAPACITY, run_suite
from tests.support.lab_unit import lab_up

pytestmark = [pytest.mark.lab, pytest.mark.lab_teardown]
SECOND = "gateway-2"


def _psql(sql: str) -> str:
    return lab.exec("db", f"runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -d litellm_db -c {shlex.quote(sql)}",
                    timeout=60).stdout.strip()


def test_two_gateways_go_and_one_stopped_is_no_go_naming_it(embedded_lab, tmp_path: Path) -> None:
    try:
        out = lab_up(gateways=2, partition="daily")
        assert "gateway-2 10.231.0.20" in out
        assert _psql("SELECT relkind FROM pg_class WHERE relname IN ('requests', 'responses')") == "p\np"
        # the partitions' daily upkeep runs from one gateway host only
        assert lab.systemctl("gateway", "is-enabled", "poc1-log-partitions.timer") == "enabled"
        assert lab.systemctl(SECOND, "is-enabled", "poc1-log-partitions.timer") != "enabled"

        go = run_suite(tmp_path / "go", *CHECK_6_NOT_ON_CAPACITY, timeout=900)
        m = go.manifest
        assert go.rc == 0 and m["verdict"] == "GO", go.stdout[-3000:]
        assert m["hosts"] == {"gateway": "10.231.0.18", SECOND: "10.231.0.20", "db": "10.231.0.19"}
        for c in m["checks"]:
            if c["id"] == "overhead":  # one named gateway (the first: hosts.yml names none)
                assert c["details"]["gateway_host"] == "gateway" and "hosts" not in c["details"]
                continue
            parts = c["details"]["hosts"]
            assert list(parts) == ["gateway", SECOND] and all(p["outcome"] == "passed" for p in parts.values())
            assert all(any(f".{h}." in a for a in c["artifacts"]) for h in parts), c["artifacts"]
        second_call = go.check("chat_call")["details"]["hosts"][SECOND]["details"]
        assert second_call["status"] == 200 and second_call["request_id"]
        assert '"url": "http://10.231.0.20:4000/v1/chat/completions"' in \
            (go.evidence_dir / f"chat_call.{SECOND}.json").read_text()
        assert go.manifest["versions"]["other_gateways"][SECOND]["code_sha256"] == \
            go.manifest["versions"]["gateway"]["code_sha256"]
        constraints = go.check("join_check")["details"]["hosts"][SECOND]["details"]["constraints"]
        assert all(constraints.values()) and any("partitioned" in name for name in constraints)
        # both gateways' rows of this run are in today's partition, not the default one
        assert int(_psql("SELECT count(*) FROM requests_default")) == 0

        _psql("ALTER TABLE responses_default DROP CONSTRAINT responses_default_request_fk")
        no_fk = run_suite(tmp_path / "no-fk", "-k", "join_check", timeout=300)
        cause = no_fk.check("join_check")["cause"]
        assert no_fk.check("join_check")["outcome"] == "failed" and "constraint(s) missing: foreign key" in cause
        assert cause.startswith("gateway: ") and f"{SECOND}: " in cause

        # a file only gateway-2 has: check 9 reads each host's own files
        lab.exec(SECOND, "echo 'x = 1' > /opt/litellm/gateway_logger/zz_only_here.py")
        try:
            other = run_suite(tmp_path / "other-code", "-k", "code_identity", timeout=300)
        finally:
            lab.exec(SECOND, "rm -f /opt/litellm/gateway_logger/zz_only_here.py")
        identity = other.check("code_identity")
        assert identity["outcome"] == "failed" and identity["cause"].startswith(f"{SECOND}: ")
        assert "zz_only_here.py" in identity["cause"] and identity["details"]["hosts"]["gateway"]["outcome"] == "passed"

        lab.systemctl(SECOND, "stop", "litellm-gateway", check=True, timeout=90)
        try:
            broken = run_suite(tmp_path / "stopped", "-k", "not overhead", timeout=600)
        finally:
            lab.systemctl(SECOND, "start", "litellm-gateway", check=True, timeout=90)
        bm = broken.manifest
        assert broken.rc != 0 and bm["verdict"] == "NO-GO"
        status = broken.check("service_status")
        assert status["outcome"] == "failed" and status["cause"].startswith(f"{SECOND}: ")
        assert "10.231.0.20 is inactive" in status["cause"] and "10.231.0.18" not in status["cause"]
        assert status["details"]["hosts"]["gateway"]["outcome"] == "passed"
        assert broken.check("chat_call")["cause"].startswith(f"{SECOND}: ")
        assert "gateway-2" in broken.stdout  # the terminal summary names the host too
    finally:
        lab_up(gateways=1)  # the lab every other test expects (a rebuild: the count changed)
