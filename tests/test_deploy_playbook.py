"""The runbook as a playbook (deploy/ansible/site.yml): it parses, its lab inventory can only reach the
embedded lab, its SCRAM verifiers are PostgreSQL's own, and on the embedded lab — which `lab up` already
provisions with it — a run mends drift (a stale logger file, the old single module), the next run changes
nothing, and the suite's checks pass after it."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import uuid
from pathlib import Path

import psycopg2
import pytest

from acceptance import registry
from lab import deploy, layout
from lab.errors import LabError
from tests.support.acceptance_run import run_suite

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE = ROOT / "deploy" / "ansible"
_spec = importlib.util.spec_from_file_location(
    "poc1_scram", ANSIBLE / "roles" / "poc1_postgresql" / "filter_plugins" / "poc1_scram.py")
assert _spec is not None and _spec.loader is not None
scram = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scram)


def test_the_playbook_parses() -> None:
    proc = subprocess.run([deploy._ansible_playbook(), "--syntax-check", "-i", str(deploy.INVENTORY),
                           str(deploy.PLAYBOOK)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={"PATH": os.environ["PATH"], "ANSIBLE_CONFIG": str(deploy.CONFIG)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "playbook: " in proc.stdout


def test_the_lab_inventory_reaches_only_the_embedded_lab(tmp_path: Path) -> None:
    assert sorted(deploy.inventory_addresses()) == ["10.231.0.18", "10.231.0.19"]
    deploy.require_lab_addresses()  # no error
    elsewhere = tmp_path / "local.yml"
    elsewhere.write_text(deploy.INVENTORY.read_text().replace("10.231.0.19", "192.168.10.19"))
    with pytest.raises(LabError, match=r"address 192\.168\.10\.19 is not the embedded lab's \(10\.231\.0\.0/24\)"):
        deploy.require_lab_addresses(elsewhere)


# ------------------------------------------------------------------------------------ SCRAM verifiers


def test_scram_verifier_is_postgresqls_own_and_kept_while_the_password_matches(pg) -> None:  # noqa: ANN001
    role, password = f"t_scram_{uuid.uuid4().hex[:8]}", "pw-" + uuid.uuid4().hex
    pg.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")  # the server makes this verifier itself
    try:
        stored = pg.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'").strip()
        assert scram.matches(password, stored) and not scram.matches(password + "x", stored)
        lines = [f"other {scram.new_verifier('x')}", f"{role} {stored}"]
        assert scram.poc1_scram_verifier(password, lines, role) == stored  # a second run changes nothing
        fresh = scram.poc1_scram_verifier("new-" + password, lines, role)
        assert fresh != stored and fresh.startswith("SCRAM-SHA-256$4096:")
        pg.psql(f"ALTER ROLE {role} PASSWORD '{fresh}'")  # the verifier, never the password, reaches it
        with psycopg2.connect(host="127.0.0.1", port=pg.port, dbname="postgres", user=role,
                              password="new-" + password, connect_timeout=10):
            pass
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(host="127.0.0.1", port=pg.port, dbname="postgres", user=role, password=password,
                             connect_timeout=10)
    finally:
        pg.psql(f"DROP ROLE {role}")


def test_scram_without_a_password_names_the_role() -> None:
    with pytest.raises(ValueError, match="no password for role poc1_reader"):
        scram.poc1_scram_verifier("", [], "poc1_reader")
    assert not scram.matches("pw", "md5abc") and not scram.matches("pw", None)


# ------------------------------------------------------------------------------------ on the lab


@pytest.mark.lab
def test_a_run_mends_drift_the_next_changes_nothing_and_the_checks_pass(embedded_lab, tmp_path: Path) -> None:  # noqa: ANN001
    import lab
    from lab import credentials

    values = credentials.load()
    lab.exec("gateway", "echo x > /opt/litellm/gateway_logger/removed_since.py; "
                        "echo x > /opt/litellm/gateway_logger.py")
    first = deploy.run(values, "-e", "poc1_install_packages=true")
    second = deploy.run(values, "-e", "poc1_install_packages=true")
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in (*first.hosts.values(), *second.hosts.values()))
    assert first.changed()["lab-gateway"] >= 2 and first.changed()["lab-db"] == 0, first
    assert second.changed() == {"lab-db": 0, "lab-gateway": 0}, second
    left = lab.exec("gateway", "ls /opt/litellm/gateway_logger.py /opt/litellm/gateway_logger/removed_since.py",
                    check=False)
    assert left.returncode != 0 and left.stdout == "", left.stdout
    ids = [spec.id for spec in registry.discover() if spec.id != "overhead"]  # check 6 has its own tests; ~60 s
    run = run_suite(tmp_path / "evidence", *(f"acceptance/{registry.PREFIX}{cid}.py" for cid in ids), timeout=300)
    outcomes = {c["id"]: c["outcome"] for c in run.manifest["checks"] if c["outcome"] != "not run"}
    assert outcomes == dict.fromkeys(ids, "passed"), (outcomes, run.stdout[-3000:])
    print(f"\nplaybook on the lab: first {first.line()}, second {second.line()}; checks {sorted(outcomes)}")


@pytest.mark.lab
def test_the_db_host_runs_the_postgresql_the_lab_asked_for(embedded_lab) -> None:  # noqa: ANN001
    import lab

    version = lab.exec("db", ["runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-c", "SHOW server_version"])
    assert version.stdout.strip().split(".")[0] == layout.PG_VERSION, version.stdout
    release = lab.exec("db", "cat /etc/debian_version").stdout.strip()
    assert release.split(".")[0] == {"17": "13", "15": "12"}[layout.PG_VERSION], release


def test_make_deploy_hosts_lab_targets_the_real_vms_and_the_lab_code_refuses_them() -> None:
    """`make deploy HOSTS=lab` as make would run it (-n: printed, nothing run, nothing dialled)."""
    real = ANSIBLE / "inventories" / "lab.yml"
    dry = subprocess.run(["make", "-n", "deploy", "HOSTS=lab"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         check=True).stdout
    assert "ansible-playbook -i deploy/ansible/inventories/lab.yml" in dry and "deploy/ansible/site.yml" in dry, dry
    refused = subprocess.run(["make", "deploy", "HOSTS=local"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert refused.returncode != 0 and "python3 -m lab deploy" in refused.stdout, refused.stdout
    assert sorted(deploy.inventory_addresses(real)) == ["192.168.10.18", "192.168.10.19"]
    with pytest.raises(LabError, match="refusing to run the playbook"):
        deploy.require_lab_addresses(real)
    proc = subprocess.run([deploy._ansible_playbook(), "--syntax-check", "-i", str(real), str(deploy.PLAYBOOK)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={"PATH": os.environ["PATH"], "ANSIBLE_CONFIG": str(deploy.CONFIG)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
