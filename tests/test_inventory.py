"""Inventory resolution (fixtures/inventory.py over ansible-core) and the suite's usage errors — no host
is ever dialled.

The ``lab`` group of the repository's hosts.yml names the real 192.168.10.x machines: it is parsed here
with sockets disabled, to prove parsing alone never opens a connection. The other inventories (YAML and
INI, group_vars/ and host_vars/, vaults) put their hosts on loopback addresses and are never dialled either.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from fixtures.inventory import InventoryError, Target, load_target, read_env_file
from tests.support.acceptance_run import ROOT, run_suite

HOSTS_YML = ROOT / "hosts.yml"
DATA = Path(__file__).resolve().parent / "fixtures_inventory"
LAB_ENV = {"LITELLM_MASTER_KEY": "sk-lab-master-not-real-0001",
           "POC1_DB_READER_PASSWORD": "reader-not-real-0001"}


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
    secrets.write_text("# lab secrets\nexport T_INV_MASTER='from-file-master-1'\n"
                       "T_INV_READER=from-file-reader-1\n"
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
def test_bad_inventory_is_one_line_naming_file_group_field(tmp_path: Path, mutate, group: str,
                                                           pattern: str) -> None:
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


# --- inventories as Ansible users write them (read by ansible-core) ------------------------------------

def copy_data(tmp_path: Path, name: str) -> Path:
    """A private copy of a tests/fixtures_inventory/ inventory, to add vaults or files to."""
    dest = tmp_path / name
    shutil.copytree(DATA / name, dest)
    return dest


def test_yaml_with_connection_vars_at_group_level(no_network: None) -> None:
    """The issue's first report: ansible_user/port/key under the group's vars:, not under each host."""
    t = load_target(DATA / "yaml_group_vars" / "hosts.yml", "poc1", environ=ENV)
    assert [(h.name, h.address, h.port, h.user) for h in t.gateways] == [("gw-a", "127.0.0.31", 22, "root")]
    assert (t.db.name, t.db.address, t.db.user) == ("pg-a", "127.0.0.32", "root")
    assert t.db.key_file == Path(os.path.expanduser("~/.ssh/id_ed25519"))
    assert t.vars["gateway_url"] == "http://127.0.0.31:4000"  # from group_vars/poc1.yml
    assert (t.master_key, t.db_reader_password) == (ENV["T_INV_MASTER"], ENV["T_INV_READER"])


def test_yaml_vars_at_group_level_written_by_the_test(tmp_path: Path, no_network: None) -> None:
    g = local_like_group(tmp_path)
    conn = {k: g["hosts"]["gateway"].pop(k)
            for k in ("ansible_port", "ansible_user", "ansible_ssh_private_key_file")}
    del g["hosts"]["db"]["ansible_user"], g["hosts"]["db"]["ansible_ssh_private_key_file"]
    g["vars"].update(conn, ansible_user="admin")
    t = load_target(write_inventory(tmp_path, g), "g", environ=ENV)
    assert (t.gateway.user, t.db.user, t.gateway.port) == ("admin", "admin", 22)
    assert t.db.key_file == tmp_path / "key"


def test_ini_form_roles_by_group_membership_and_free_host_names(no_network: None) -> None:
    t = load_target(DATA / "ini" / "hosts.ini", "poc1", environ=ENV)
    assert [(h.name, h.address, h.port, h.user) for h in t.gateways] == [
        ("hx-litellm-01", "127.0.0.11", 22, "deploy"), ("hx-litellm-02", "127.0.0.12", 22, "deploy")]
    assert t.gateway is t.gateways[0] and t.hosts["gateway"] is t.gateways[0]
    assert set(t.hosts) == {"gateway", "db"}  # the checks' one gateway and one db, as before
    # host_vars/hx-pg-01.yml overrides [poc1:vars]
    assert (t.db.name, t.db.address, t.db.port, t.db.user) == (
        "hx-pg-01", "127.0.0.21", 2222, "postgres-admin")
    assert t.db.key_file == Path(os.path.expanduser("~/.ssh/poc1_ed25519"))
    # group_vars/poc1.yml over group_vars/all.yml; [poc1:vars] and group_vars/all.yml both reach the group
    assert (t.vars["db_name"], t.vars["db_user"], t.vars["db_port"]) == ("litellm_db", "litellm_user", 5433)
    assert t.vars["gateway_url"] == "http://127.0.0.11:4000" and t.db_address == "127.0.0.21"
    # a role group's vars reach its hosts, not the suite's group-level settings
    assert t.gateway.vars["gateway_listen_port"] == 4000 and "gateway_listen_port" not in t.vars
    assert not any(k in t.vars for k in ("inventory_hostname", "groups", "group_names", "playbook_dir"))


def test_nested_groups_inherit_vars_from_every_parent(tmp_path: Path, no_network: None) -> None:
    inv = tmp_path / "hosts"  # no extension: Ansible tries YAML, then INI
    inv.write_text(textwrap.dedent("""\
        [gw_pool]
        a1 ansible_host=127.0.0.41
        [gateway:children]
        gw_pool
        [db]
        d1 ansible_host=127.0.0.42
        [poc1:children]
        gateway
        db
        [prod:children]
        poc1
        [prod:vars]
        ansible_user=root
        ansible_ssh_private_key_file=/k
        gateway_url=http://127.0.0.41:4000
        gateway_service=litellm-gateway
        db_name=litellm_db
        db_user=litellm_user
        db_reader_user=poc1_reader
        known_hosts_file=/kh
        master_key_env=T_INV_MASTER
        db_reader_password_env=T_INV_READER
        [poc1:vars]
        db_name=child_wins
        """))
    t = load_target(inv, "poc1", environ=ENV)
    assert [h.name for h in t.gateways] == ["a1"] and t.db.name == "d1"  # a1 is in gateway via gw_pool
    assert t.vars["db_name"] == "child_wins" and t.vars["gateway_service"] == "litellm-gateway"
    whole = load_target(inv, "prod", environ=ENV)  # the parent selects the same hosts
    assert whole.vars["db_name"] == "litellm_db" and whole.gateway.name == "a1"


def test_group_vars_and_host_vars_directories_precedence(tmp_path: Path, no_network: None) -> None:
    """group_vars/all < group_vars/<group>/ (a directory of files) < host_vars/<host>, as in Ansible."""
    d = copy_data(tmp_path, "ini")
    (d / "group_vars" / "poc1.yml").unlink()
    (d / "group_vars" / "poc1").mkdir()
    (d / "group_vars" / "poc1" / "10-db.yml").write_text("db_name: from_dir\ndb_reader_user: poc1_reader\n")
    (d / "group_vars" / "poc1" / "20-more.yml").write_text("logger_metrics_port: 9465\n")
    (d / "host_vars" / "hx-litellm-02.yml").write_text("ansible_host: 127.0.0.13\nansible_port: 2201\n")
    t = load_target(d / "hosts.ini", "poc1", environ=ENV)
    assert t.vars["db_name"] == "from_dir" and t.vars["logger_metrics_port"] == 9465
    assert t.vars["db_port"] == 5432  # the default: 5433 lived in the removed poc1.yml
    assert [(h.address, h.port) for h in t.gateways] == [("127.0.0.11", 22), ("127.0.0.13", 2201)]


def test_inventory_directory(tmp_path: Path, no_network: None) -> None:
    """--inventory=DIR: Ansible reads every inventory file in it, group_vars/ beside them."""
    d = copy_data(tmp_path, "ini")
    t = load_target(d, "poc1", environ=ENV)
    assert t.db.port == 2222 and len(t.gateways) == 2


def test_custom_role_group_names(tmp_path: Path, no_network: None) -> None:
    inv = tmp_path / "inv.ini"
    inv.write_text((DATA / "ini" / "hosts.ini").read_text()
                   .replace("[gateway]", "[litellm]").replace("[db]", "[postgres]")
                   .replace("gateway\ndb\n", "litellm\npostgres\n")
                   + "poc1_gateway_group=litellm\npoc1_db_group=postgres\n")
    shutil.copytree(DATA / "ini" / "group_vars", tmp_path / "group_vars")
    t = load_target(inv, "poc1", environ=ENV)
    assert [h.name for h in t.gateways] == ["hx-litellm-01", "hx-litellm-02"] and t.db.name == "hx-pg-01"
    no_names = tmp_path / "plain.ini"
    no_names.write_text(inv.read_text().replace("poc1_gateway_group=litellm\n", ""))
    with pytest.raises(InventoryError, match=r"group 'poc1': hosts\.gateway: missing host .*group 'gateway'"):
        load_target(no_names, "poc1", environ=ENV)


def test_two_environments_in_one_group_file_stay_apart(tmp_path: Path, no_network: None) -> None:
    """hosts.yml's layout: Ansible alone merges lab's and local's same-named hosts; here they stay apart."""
    proc = subprocess.run([shutil.which("ansible-inventory") or "ansible-inventory", "-i", str(HOSTS_YML),
                           "--host", "gateway"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and '"ansible_host": "10.231.0.18"' in proc.stdout  # lab's address lost
    lab = load_target(HOSTS_YML, "lab", environ=LAB_ENV)
    assert lab.gateway.address == "192.168.10.18" and lab.vars["gateway_url"] == "http://192.168.10.18:4000"
    # without a shared host name nothing is scoped: a role group defined beside the target group counts
    inv = tmp_path / "inv.yml"
    g = local_like_group(tmp_path)
    hosts = g.pop("hosts")
    inv.write_text(yaml.safe_dump({"all": {"children": {
        "gateway": {"hosts": {"gw1": hosts["gateway"]}}, "db": {"hosts": {"pg1": hosts["db"]}},
        "g": {"children": {"gateway": None, "db": None}, "vars": g["vars"]}}}}))
    t = load_target(inv, "g", environ=ENV)
    assert (t.gateway.name, t.db.name) == ("gw1", "pg1")


# --- vault ----------------------------------------------------------------------------------------------

VAULT_PASSWORD = "vault-pass-not-real-42"
VAULTED_READER = "reader-from-vault-7f3a9c"


def vault_file(tmp_path: Path, password: str = VAULT_PASSWORD, mode: int = 0o600) -> Path:
    path = tmp_path / "vault-pass"
    path.write_text(password + "\n")
    path.chmod(mode)
    return path


def encrypt_string(name: str, value: str, password: str = VAULT_PASSWORD) -> str:
    """What `ansible-vault encrypt_string --name NAME` prints, made with the Python API."""
    from ansible.parsing.vault import VaultLib, VaultSecret

    ciphertext = VaultLib([("default", VaultSecret(password.encode()))]).encrypt(value).decode()
    return f"{name}: !vault |\n" + textwrap.indent(ciphertext, "  ") + "\n"


def vaulted_ini(tmp_path: Path, reader: str = VAULTED_READER, password: str = VAULT_PASSWORD) -> Path:
    """The INI inventory with no reader env var named: the reader password is in the vault only."""
    d = copy_data(tmp_path, "ini")
    ini = d / "hosts.ini"
    ini.write_text(ini.read_text().replace("db_reader_password_env=T_INV_READER\n", ""))
    (d / "group_vars" / "poc1.yml").write_text((d / "group_vars" / "poc1.yml").read_text()
                                               + encrypt_string("db_reader_password", reader, password))
    return ini


def test_reader_password_from_the_vault(tmp_path: Path, no_network: None) -> None:
    ini = vaulted_ini(tmp_path)
    env = {"T_INV_MASTER": ENV["T_INV_MASTER"], "ANSIBLE_VAULT_PASSWORD_FILE": str(vault_file(tmp_path))}
    t = load_target(ini, "poc1", environ=env)
    assert t.db_reader_password == VAULTED_READER
    assert VAULTED_READER in t.secret_values()
    # the value is not a setting: never in vars, nor in any repr
    assert "db_reader_password" not in t.vars and VAULTED_READER not in repr(t) + repr(t.vars) + repr(t.hosts)
    # reproductions still name a variable (the conventional one), which is not read
    assert t.vars["db_reader_password_env"] == "POC1_DB_READER_PASSWORD"
    # the same through the explicit argument
    other = load_target(ini, "poc1", environ={"T_INV_MASTER": "m" * 12},
                        vault_password_file=vault_file(tmp_path))
    assert other.db_reader_password == VAULTED_READER


def test_named_environment_variable_wins_over_the_vault(tmp_path: Path) -> None:
    d = copy_data(tmp_path, "ini")
    (d / "group_vars" / "poc1.yml").write_text((d / "group_vars" / "poc1.yml").read_text()
                                               + encrypt_string("db_reader_password", VAULTED_READER))
    env = {**ENV, "ANSIBLE_VAULT_PASSWORD_FILE": str(vault_file(tmp_path))}
    t = load_target(d / "hosts.ini", "poc1", environ=env)
    assert t.db_reader_password == ENV["T_INV_READER"]
    assert VAULTED_READER in t.secret_values()  # unused, still redacted


def test_vault_encrypted_vars_file_made_by_ansible_vault(tmp_path: Path, no_network: None) -> None:
    """A whole group_vars file encrypted by the `ansible-vault` CLI; its every string is a secret."""
    ini = vaulted_ini(tmp_path)
    ini.write_text(ini.read_text().replace("master_key_env=T_INV_MASTER\n", ""))
    secret_dir = ini.parent / "group_vars" / "gateway"
    secret_dir.mkdir()
    (ini.parent / "group_vars" / "gateway.yml").rename(secret_dir / "plain.yml")
    vault_yml = ini.parent / "group_vars" / "poc1_vault.yml"
    vault_yml.write_text("master_key: sk-master-from-vault-file-1\nbecome_note: other-vaulted-value-1\n")
    (ini.parent / "group_vars" / "poc1").mkdir()
    pw = vault_file(tmp_path)
    proc = subprocess.run([shutil.which("ansible-vault") or "ansible-vault", "encrypt",
                           "--vault-password-file", str(pw), str(vault_yml)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert vault_yml.read_text().startswith("$ANSIBLE_VAULT;")
    vault_yml.rename(ini.parent / "group_vars" / "poc1" / "vault.yml")
    (ini.parent / "group_vars" / "poc1.yml").rename(ini.parent / "group_vars" / "poc1" / "main.yml")
    t = load_target(ini, "poc1", environ={"ANSIBLE_VAULT_PASSWORD_FILE": str(pw)})
    assert t.master_key == "sk-master-from-vault-file-1" and t.db_reader_password == VAULTED_READER
    assert {"other-vaulted-value-1", "sk-master-from-vault-file-1"} <= set(t.secret_values())
    assert "other-vaulted-value-1" not in repr(dict(t.vars))
    assert str(t.vars["become_note"]) == "<vault-encrypted>"
    with pytest.raises(InventoryError) as err:
        load_target(ini, "poc1", environ={"ANSIBLE_VAULT_PASSWORD_FILE": str(vault_file(tmp_path, "nope"))})
    msg = str(err.value)
    assert msg.startswith(f"{ini}: group 'poc1': group_vars/poc1/vault.yml: cannot decrypt"), msg
    assert "\n" not in msg
    assert "sk-master" not in msg and "$ANSIBLE_VAULT" not in msg


def test_wrong_vault_password_is_one_line_naming_file_group_variable(tmp_path: Path) -> None:
    ini = vaulted_ini(tmp_path)
    pw = vault_file(tmp_path, "not-the-password")
    with pytest.raises(InventoryError) as err:
        load_target(ini, "poc1", environ={"T_INV_MASTER": "m" * 12, "ANSIBLE_VAULT_PASSWORD_FILE": str(pw)})
    msg = str(err.value)
    assert msg.startswith(f"{ini}: group 'poc1': vars.db_reader_password: vault-encrypted "
                          f"(group_vars/poc1.yml:4) and cannot be decrypted"), msg
    assert "ANSIBLE_VAULT_PASSWORD_FILE does not open it" in msg and "\n" not in msg
    for secret in (VAULTED_READER, "not-the-password", "$ANSIBLE_VAULT", "m" * 12):
        assert secret not in msg
    with pytest.raises(InventoryError, match=r"vars\.db_reader_password: .* no vault password \(set "
                                             r"ANSIBLE_VAULT_PASSWORD_FILE"):
        load_target(ini, "poc1", environ={"T_INV_MASTER": "m" * 12})


def test_vault_password_file_from_ansible_cfg(tmp_path: Path) -> None:
    """``vault_password_file`` of the ansible.cfg Ansible finds (via ANSIBLE_CONFIG), in a fresh process."""
    ini = vaulted_ini(tmp_path)
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text(f"[defaults]\nvault_password_file = {vault_file(tmp_path)}\n")
    code = ("import sys; from fixtures.inventory import load_target; "
            "t = load_target(sys.argv[1], 'poc1', environ={'T_INV_MASTER': 'm' * 12}); "
            "print(t.db_reader_password == sys.argv[2])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "PYTEST_"))}
    proc = subprocess.run([sys.executable, "-c", code, str(ini), VAULTED_READER], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, check=False,
                          env={**env, "ANSIBLE_CONFIG": str(cfg)})
    assert proc.stdout.strip() == "True", proc.stdout + proc.stderr
    assert VAULTED_READER not in proc.stdout + proc.stderr


@pytest.mark.parametrize(("mode", "pattern"), [
    (0o644, r"has mode 0644; refusing a password readable by others"),
    (0o700, r"is executable: a vault password script is not run by the suite"),
])
def test_vault_password_file_must_be_private_and_not_a_script(tmp_path: Path, mode: int,
                                                              pattern: str) -> None:
    ini = vaulted_ini(tmp_path)
    pw = vault_file(tmp_path, mode=mode)
    with pytest.raises(InventoryError, match=rf"^{ini}: ANSIBLE_VAULT_PASSWORD_FILE: vault password file "
                                             rf"{pw} {pattern}") as err:
        load_target(ini, "poc1", environ={"T_INV_MASTER": "m" * 12, "ANSIBLE_VAULT_PASSWORD_FILE": str(pw)})
    assert VAULT_PASSWORD not in str(err.value)


def test_plaintext_secret_in_the_inventory_is_refused(tmp_path: Path) -> None:
    g = local_like_group(tmp_path, db_reader_password="plain-reader-pw-1")
    with pytest.raises(InventoryError) as err:
        load_target(write_inventory(tmp_path, g), "g", environ=ENV)
    msg = str(err.value)
    assert "group 'g': vars.db_reader_password: a secret in plaintext in the inventory" in msg
    assert "plain-reader-pw-1" not in msg


# --- more ways an inventory can be wrong ----------------------------------------------------------------

def test_missing_var_in_ini_names_file_group_variable(tmp_path: Path) -> None:
    ini = tmp_path / "hosts.ini"
    ini.write_text((DATA / "ini" / "hosts.ini").read_text().replace("gateway_service=litellm-gateway\n", ""))
    shutil.copytree(DATA / "ini" / "group_vars", tmp_path / "group_vars")
    with pytest.raises(InventoryError) as err:
        load_target(ini, "poc1", environ=ENV)
    assert str(err.value) == f"{ini}: group 'poc1': vars.gateway_service: missing"


def test_missing_connection_var_names_the_free_host_name(tmp_path: Path) -> None:
    ini = tmp_path / "hosts.ini"
    ini.write_text((DATA / "ini" / "hosts.ini").read_text().replace(
        "hx-litellm-02 ansible_host=127.0.0.12", "hx-litellm-02"))
    pattern = rf"^{ini}: group 'poc1': hosts\.hx-litellm-02\.ansible_host: missing$"
    with pytest.raises(InventoryError, match=pattern):
        load_target(ini, "poc1", environ=ENV)


def test_unknown_group_in_ini_lists_the_groups() -> None:
    ini = DATA / "ini" / "hosts.ini"
    with pytest.raises(InventoryError) as err:
        load_target(ini, "poc2", environ=ENV)
    assert str(err.value) == f"{ini}: group 'poc2': no such group (groups: db, gateway, poc1)"


@pytest.mark.parametrize(("text", "pattern"), [
    ("[gateway]\nh1 ansible_host=127.0.0.1\n[poc1:children\ngateway\n", r"malformed INI at line 3: "),
    ("[gateway]\nh1 ansible_host=127.0.0.1\n[poc1:vars]\ndb_password hunter2-secret\n",
     r"malformed INI at line 4: Expected key=value"),
    ("[poc1:weird]\nx\n", r"malformed INI at line 1: Section \[poc1:weird\] has unknown type"),
])
def test_malformed_ini_names_the_line_and_quotes_nothing(tmp_path: Path, text: str, pattern: str) -> None:
    ini = tmp_path / "bad.ini"
    ini.write_text(text)
    with pytest.raises(InventoryError, match=rf"^{ini}: {pattern}") as err:
        load_target(ini, "poc1", environ=ENV)
    assert "\n" not in str(err.value) and "hunter2" not in str(err.value)


def test_malformed_group_vars_file_names_the_file_and_line(tmp_path: Path) -> None:
    d = copy_data(tmp_path, "ini")
    (d / "group_vars" / "poc1.yml").write_text("db_name: [unclosed\nnote: hunter2-secret\n")
    with pytest.raises(InventoryError) as err:
        load_target(d / "hosts.ini", "poc1", environ=ENV)
    assert str(err.value).startswith(f"{d / 'hosts.ini'}: group 'poc1': group_vars/poc1.yml: "
                                     f"malformed YAML at line 2: "), str(err.value)
    assert "hunter2" not in str(err.value)


def test_several_db_hosts_are_refused(tmp_path: Path) -> None:
    ini = tmp_path / "hosts.ini"
    ini.write_text((DATA / "ini" / "hosts.ini").read_text().replace(
        "[db]\n", "[db]\nhx-pg-02 ansible_host=127.0.0.22\n"))
    with pytest.raises(InventoryError, match=r"group 'poc1': hosts\.db: 2 hosts in group 'db' "
                                             r"\(hx-pg-02, hx-pg-01\); the suite needs exactly one"):
        load_target(ini, "poc1", environ=ENV)


def test_templated_value_is_refused_not_rendered(tmp_path: Path) -> None:
    g = local_like_group(tmp_path, gateway_url="http://{{ lookup('pipe', 'id') }}:4000")
    with pytest.raises(InventoryError, match=r"group 'g': vars\.gateway_url: is a Jinja template; the suite "
                                             r"reads the inventory untemplated"):
        load_target(write_inventory(tmp_path, g), "g", environ=ENV)


# --- resolution stays local and quiet -------------------------------------------------------------------

def test_resolution_runs_no_connection_plugin_and_prints_nothing(tmp_path: Path, no_network: None,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capfd: pytest.CaptureFixture[str]) -> None:
    from ansible.plugins import loader as plugin_loader

    real_all = plugin_loader.connection_loader.all

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a connection plugin was loaded: {args}")

    def names_only(*args: object, **kwargs: object) -> object:
        """Ansible lists the plugins' file names (to clean facts of their vars); loading one is refused."""
        if kwargs.get("path_only") is not True:
            refuse(*args)
        return real_all(*args, **kwargs)

    monkeypatch.setattr(plugin_loader.connection_loader, "get", refuse)
    monkeypatch.setattr(plugin_loader.connection_loader, "get_with_context", refuse)
    monkeypatch.setattr(plugin_loader.connection_loader, "all", names_only)
    ini = vaulted_ini(tmp_path)
    g = local_like_group(tmp_path)
    g["typo_section"] = {"x": 1}  # Ansible warns "Skipping unexpected key": not on our stderr
    inv = write_inventory(tmp_path, g)
    load_target(inv, "g", environ=ENV)
    load_target(ini, "poc1", environ={"T_INV_MASTER": "m" * 12,
                                      "ANSIBLE_VAULT_PASSWORD_FILE": str(vault_file(tmp_path))})
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_resolution_is_fast(tmp_path: Path) -> None:
    """In-process, no subprocess: a resolution (after ansible-core is imported) takes milliseconds."""
    load_target(DATA / "ini" / "hosts.ini", "poc1", environ=ENV)
    t0 = time.monotonic()
    for _ in range(5):
        load_target(DATA / "ini" / "hosts.ini", "poc1", environ=ENV)
    assert (time.monotonic() - t0) / 5 < 1.0


# --- the same errors through pytest: exit code 4, one line, before any check -----------------------------

@pytest.mark.parametrize("case", ["unknown group", "missing db host", "reader env not set", "malformed",
                                  "malformed ini", "wrong vault password"])
def test_suite_refuses_bad_inventory_with_usage_error(tmp_path: Path, case: str) -> None:
    evidence = tmp_path / "evidence"
    env = ENV
    if case == "malformed":
        inv, group = tmp_path / "inv.yml", "g"
        inv.write_text("all: {children: {g: [\n")
    elif case == "malformed ini":
        inv, group = tmp_path / "inv.ini", "poc1"
        inv.write_text("[gateway]\nh1 ansible_host=127.0.0.1\n[poc1:vars]\nno equals sign\n")
    elif case == "wrong vault password":
        inv, group = vaulted_ini(tmp_path), "poc1"
        env = {"T_INV_MASTER": "m" * 12, "ANSIBLE_VAULT_PASSWORD_FILE": str(vault_file(tmp_path, "wrong-pw"))}
    else:
        mutate, group = {b[0]: (b[1], b[2]) for b in BAD}[case]
        g = local_like_group(tmp_path)
        mutate(g)
        inv = write_inventory(tmp_path, g)
    run = run_suite(evidence, hosts=group, inventory=inv, env=env, timeout=60)
    assert run.rc == 4, run.stdout + run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("ERROR:")]
    assert len(errors) == 1 and str(inv) in errors[0] and "Traceback" not in run.stderr, run.stderr
    assert not evidence.exists()  # refused before anything ran or was written
    assert "wrong-pw" not in run.stdout + run.stderr and VAULTED_READER not in run.stdout + run.stderr


def test_suite_collects_against_an_ini_inventory_with_a_vault(tmp_path: Path) -> None:
    """The INI form and a vault-held reader password through pytest itself (collection only: no dialling)."""
    ini = vaulted_ini(tmp_path)
    env = {"T_INV_MASTER": "m" * 12, "ANSIBLE_VAULT_PASSWORD_FILE": str(vault_file(tmp_path))}
    run = run_suite(tmp_path / "evidence", "--collect-only", "-v", "acceptance", hosts="poc1", inventory=ini,
                    env=env, timeout=60)
    assert run.rc == 0, run.stdout + run.stderr
    header = (f"POC-1 acceptance: target poc1 from {ini} (hx-litellm-01 127.0.0.11, hx-litellm-02 127.0.0.12, "
              f"hx-pg-01 127.0.0.21)")
    assert header in run.stdout, run.stdout
    # two gateway hosts: every check per host, check 6 on the first only
    assert "test_service_status[hx-litellm-02]" in run.stdout and "test_overhead[hx-litellm-01]" in run.stdout
    assert "test_overhead[hx-litellm-02]" not in run.stdout and "17 tests collected" in run.stdout
    assert VAULTED_READER not in run.stdout + run.stderr


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


# --- both forms against the embedded lab -----------------------------------------------------------

LAB_CONNECTION = {"ansible_user": "root", "ansible_port": 22,
                  "ansible_ssh_private_key_file": "/var/lib/poc1-lab/ssh/id_ed25519"}


def lab_inventory(d: Path, form: str) -> Path:
    """The embedded lab as a user's inventory: free host names, roles by the `gateway`/`db` groups,
    connection variables at the group, the suite's settings in group_vars/, the reader password only in a
    vault-encrypted value (no `db_reader_password_env`, no secrets file)."""
    from lab import credentials, layout

    settings = yaml.safe_load((ROOT / "hosts.yml").read_text())["all"]["children"]["local"]["vars"]
    for name in ("secrets_env_file", "db_reader_password_env"):
        settings.pop(name)
    (d / "group_vars").mkdir(parents=True)
    (d / "group_vars" / "poc1.yml").write_text(
        yaml.safe_dump(settings, sort_keys=False)
        + encrypt_string("db_reader_password", credentials.load()[layout.DB_READER_PASSWORD_ENV]))
    if form == "ini":
        path = d / "hosts.ini"
        path.write_text("[gateway]\nedge-gw-01 ansible_host=10.231.0.18\n\n[db]\npg-main ansible_host=10.231.0.19\n\n"
                        "[poc1:children]\ngateway\ndb\n\n[poc1:vars]\n"
                        + "".join(f"{k}={v}\n" for k, v in LAB_CONNECTION.items()))
    else:
        path = d / "hosts.yml"
        path.write_text(yaml.safe_dump({"all": {"children": {"poc1": {
            "vars": LAB_CONNECTION,
            "children": {"gateway": {"hosts": {"edge-gw-01": {"ansible_host": "10.231.0.18"}}},
                         "db": {"hosts": {"pg-main": {"ansible_host": "10.231.0.19"}}}}}}}}, sort_keys=False))
    return path


@pytest.mark.lab
@pytest.mark.parametrize("form", ["ini", "yaml"])
def test_both_forms_run_the_suite_go_on_the_lab_with_the_reader_password_from_a_vault(
        form: str, embedded_lab, tmp_path: Path) -> None:  # noqa: ANN001
    from lab import credentials, layout
    from tests.support.acceptance_run import CHECK_6_NOT_ON_CAPACITY

    inventory = lab_inventory(tmp_path / "inventory", form)
    secrets = credentials.load()
    env = {layout.MASTER_KEY_ENV: secrets[layout.MASTER_KEY_ENV], "ANSIBLE_VAULT_PASSWORD_FILE": str(vault_file(tmp_path))}
    run = run_suite(tmp_path / "evidence", *CHECK_6_NOT_ON_CAPACITY, hosts="poc1", inventory=inventory, env=env,
                    unset=(layout.DB_READER_PASSWORD_ENV, layout.DB_PASSWORD_ENV), timeout=600)
    manifest = run.manifest
    assert run.rc == 0 and manifest["verdict"] == "GO", (run.outcomes(), run.stdout[-3000:])
    assert "edge-gw-01" in json.dumps(manifest) and "pg-main" in json.dumps(manifest)  # its hosts, by their names
    leaked = [p for p in run.files() if secrets[layout.DB_READER_PASSWORD_ENV].encode() in p.read_bytes()]
    assert leaked == []  # the vaulted value is redacted like any other secret
