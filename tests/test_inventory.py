"""Inventory parsing (fixtures/inventory.py) and the suite's usage errors — no host is ever dialled.

The ``lab`` group of the repository's hosts.yml names the real 192.168.10.x machines: it is parsed here
with sockets disabled, to prove parsing alone never opens a connection.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.inventory import InventoryError, Target, load_target, read_env_file
from tests.support.acceptance_run import ROOT, run_suite

HOSTS_YML = ROOT / "hosts.yml"
LAB_ENV = {"LITELLM_MASTER_KEY": "sk-lab-master-not-real-0001", "POC1_DB_READER_PASSWORD": "reader-not-real-0001"}


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a TCP/UDP connection fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"inventory parsing tried to connect: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def write_inventory(tmp_path: Path, group: dict, name: str = "inv.yml", group_name: str = "g") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"all": {"children": {group_name: group}}}))
    return path


def local_like_group(tmp_path: Path, **var_overrides: object) -> dict:
    """A complete group on loopback addresses (never dialled by these tests either)."""
    key = tmp_path / "key"
    key.write_text("not a real key")
    vars_ = {
        "gateway_url": "http://127.0.0.1:4000", "gateway_service": "litellm-gateway", "db_port": 5432,
        "db_name": "litellm_db", "db_user": "litellm_user", "db_reader_user": "poc1_reader",
        "known_hosts_file": str(tmp_path / "known_hosts"), "master_key_env": "T_INV_MASTER",
        "db_reader_password_env": "T_INV_READER",
    }
    vars_.update(var_overrides)
    host = {"ansible_host": "127.0.0.1", "ansible_port": 22, "ansible_user": "root",
            "ansible_ssh_private_key_file": str(key)}
    return {"hosts": {"gateway": dict(host), "db": dict(host)}, "vars": vars_}


ENV = {"T_INV_MASTER": "master-value-123456", "T_INV_READER": "reader-value-123456"}


# --- the repository's inventory ----------------------------------------------------------------------

def test_lab_group_parses_to_the_seed_addresses_without_dialling(no_network: None) -> None:
    t = load_target(HOSTS_YML, "lab", environ=LAB_ENV)
    assert isinstance(t, Target)
    assert (t.gateway.address, t.gateway.port, t.gateway.user) == ("192.168.10.18", 22, "root")
    assert (t.db.address, t.db.port, t.db.user) == ("192.168.10.19", 22, "root")
    assert t.gateway.key_file == Path(os.path.expanduser("~/.ssh/id_ed25519"))
    assert t.vars["gateway_url"] == "http://192.168.10.18:4000"
    assert t.vars["gateway_service"] == "litellm-gateway"
    assert (t.vars["db_name"], t.vars["db_user"], t.vars["db_port"]) == ("litellm_db", "litellm_user", 5432)
    assert t.vars["gateway_python"] == "/opt/litellm/venv/bin/python"
    assert t.master_key == LAB_ENV["LITELLM_MASTER_KEY"]
    assert t.db_reader_password == LAB_ENV["POC1_DB_READER_PASSWORD"]
    assert t.db_address == "192.168.10.19" and t.gateway_db_client_address == "192.168.10.18"
    assert set(t.secret_values()) == set(LAB_ENV.values())


def test_lab_group_names_env_vars_never_values() -> None:
    doc = yaml.safe_load(HOSTS_YML.read_text())
    for group in doc["all"]["children"].values():
        for key, value in group["vars"].items():
            if key.endswith("_env"):
                assert str(value).isupper() and "_" in str(value), (key, value)
        assert not any("password" in k and not k.endswith("_env") for k in group["vars"])


def test_lab_group_without_its_secrets_is_a_one_line_error_naming_file_group_field() -> None:
    with pytest.raises(InventoryError) as err:
        load_target(HOSTS_YML, "lab", environ={"POC1_DB_READER_PASSWORD": "x" * 12})
    msg = str(err.value)
    assert "\n" not in msg
    assert str(HOSTS_YML) in msg and "group 'lab'" in msg and "vars.master_key_env" in msg
    assert "LITELLM_MASTER_KEY is not set" in msg


def test_local_group_points_at_the_embedded_lab(no_network: None) -> None:
    t = load_target(HOSTS_YML, "local", environ={"POC1_LAB_MASTER_KEY": "m" * 20,
                                                  "POC1_LAB_DB_READER_PASSWORD": "r" * 20})
    assert {n: h.address for n, h in t.hosts.items()} == {"gateway": "10.231.0.18", "db": "10.231.0.19"}
    assert t.known_hosts_file == Path("/var/lib/poc1-lab/ssh/known_hosts")
    assert t.vars["secrets_env_file"] == "/var/lib/poc1-lab/secrets.env"


# --- secrets file --------------------------------------------------------------------------------------

def test_secrets_file_fills_missing_env_and_all_its_values_are_redactable(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("# lab secrets\nexport T_INV_MASTER='from-file-master-1'\nT_INV_READER=from-file-reader-1\n"
                       "OTHER_SECRET=\"other-value-1\"\n")
    secrets.chmod(0o600)
    inv = write_inventory(tmp_path, local_like_group(tmp_path, secrets_env_file=str(secrets)))
    t = load_target(inv, "g", environ={"T_INV_MASTER": "from-env-master-1"})
    assert t.master_key == "from-env-master-1"            # the environment wins
    assert t.db_reader_password == "from-file-reader-1"   # the file fills the gap
    # the overridden file value and the unused one are still secrets of this run
    assert {"from-file-master-1", "other-value-1", "from-env-master-1"} <= set(t.secret_values())


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_secrets_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("T_INV_MASTER=m\nT_INV_READER=r\n")
    secrets.chmod(mode)
    inv = write_inventory(tmp_path, local_like_group(tmp_path, secrets_env_file=str(secrets)))
    with pytest.raises(InventoryError, match=rf"secrets_env_file: {secrets} has mode {mode:04o}"):
        load_target(inv, "g", environ={})


def test_missing_secrets_file_is_named_in_the_error(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path, local_like_group(tmp_path, secrets_env_file=str(tmp_path / "nope.env")))
    with pytest.raises(InventoryError, match=r"T_INV_MASTER is not set and .*nope.env does not exist"):
        load_target(inv, "g", environ={})


def test_read_env_file_syntax(tmp_path: Path) -> None:
    f = tmp_path / "e.env"
    f.write_text("A=1\n  export B = two \n# C=3\nD='x y'\nE=\"q\"\nnot a line\nF=a=b\n")
    assert read_env_file(f) == {"A": "1", "B": "two", "D": "x y", "E": "q", "F": "a=b"}


# --- every way an inventory can be wrong ----------------------------------------------------------------

def _drop(d: dict, *path: str) -> dict:
    for p in path[:-1]:
        d = d[p]
    del d[path[-1]]
    return d


BAD = [
    ("unknown group", lambda g: g, "nogroup", r"group 'nogroup': no such group \(groups: g\)"),
    ("missing db host", lambda g: _drop(g, "hosts", "db"), "g", r"group 'g': hosts\.db: missing host"),
    ("missing ansible_host", lambda g: _drop(g, "hosts", "gateway", "ansible_host"), "g",
     r"hosts\.gateway\.ansible_host: missing"),
    ("missing key file field", lambda g: _drop(g, "hosts", "db", "ansible_ssh_private_key_file"), "g",
     r"hosts\.db\.ansible_ssh_private_key_file: missing"),
    ("bad port", lambda g: g["hosts"]["gateway"].update(ansible_port="ssh"), "g",
     r"hosts\.gateway\.ansible_port: not a TCP port"),
    ("missing gateway_url", lambda g: _drop(g, "vars", "gateway_url"), "g", r"vars\.gateway_url: missing"),
    ("bad gateway_url", lambda g: g["vars"].update(gateway_url="10.0.0.1:4000"), "g",
     r"vars\.gateway_url: not an http\(s\) URL"),
    ("missing reader env name", lambda g: _drop(g, "vars", "db_reader_password_env"), "g",
     r"vars\.db_reader_password_env: missing"),
    ("reader env not set", lambda g: g["vars"].update(db_reader_password_env="T_INV_UNSET_VAR"), "g",
     r"vars\.db_reader_password_env: environment variable T_INV_UNSET_VAR is not set"),
]


@pytest.mark.parametrize(("mutate", "group", "pattern"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_inventory_is_one_line_naming_file_group_field(tmp_path: Path, mutate, group: str, pattern: str) -> None:
    g = local_like_group(tmp_path)
    mutate(g)
    inv = write_inventory(tmp_path, g)
    with pytest.raises(InventoryError, match=pattern) as err:
        load_target(inv, group, environ=ENV)
    assert str(err.value).startswith(str(inv)) and "\n" not in str(err.value)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    inv = tmp_path / "bad.yml"
    inv.write_text("all:\n  children:\n    g:\n      hosts: [unclosed\n")
    with pytest.raises(InventoryError, match=rf"{inv}: malformed YAML at line \d+"):
        load_target(inv, "g", environ=ENV)


def test_not_an_inventory(tmp_path: Path) -> None:
    inv = tmp_path / "list.yml"
    inv.write_text("- just\n- a list\n")
    with pytest.raises(InventoryError, match=r"all: missing"):
        load_target(inv, "g", environ=ENV)
    with pytest.raises(InventoryError, match=r"inventory file not found"):
        load_target(tmp_path / "absent.yml", "g", environ=ENV)


# --- the same errors through pytest: exit code 4, one line, before any check -----------------------------

@pytest.mark.parametrize("case", ["unknown group", "missing db host", "reader env not set", "malformed"])
def test_suite_refuses_bad_inventory_with_usage_error(tmp_path: Path, case: str) -> None:
    evidence = tmp_path / "evidence"
    if case == "malformed":
        inv, group = tmp_path / "inv.yml", "g"
        inv.write_text("all: {children: {g: [\n")
    else:
        mutate, group = {b[0]: (b[1], b[2]) for b in BAD}[case]
        g = local_like_group(tmp_path)
        mutate(g)
        inv = write_inventory(tmp_path, g)
    run = run_suite(evidence, hosts=group, inventory=inv, env=ENV, timeout=60)
    assert run.rc == 4, run.stdout + run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("ERROR:")]
    assert len(errors) == 1 and str(inv) in errors[0] and "Traceback" not in run.stderr, run.stderr
    assert not evidence.exists()  # refused before anything ran or was written


def test_project_tests_do_not_activate_the_suite(tmp_path: Path) -> None:
    """``pytest tests/...`` must not need an inventory nor touch the evidence dir."""
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    (evidence / "keep.txt").write_text("not the suite's")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hosts=no-such-group",
         f"--evidence-dir={evidence}", "tests/test_inventory.py::test_read_env_file_syntax"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (evidence / "keep.txt").exists()
    assert "1 passed" in proc.stdout
