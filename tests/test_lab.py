"""The embedded lab (lab/): two booted systemd-nspawn hosts that the suite reaches like real VMs.

Checked over real SSH (paramiko, host keys verified against the lab's known_hosts), real SQL from the
runner and real HTTP. The first tests need no lab: the contract with hosts.yml and the one-line
failures of `up`.
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import paramiko
import pytest
from sqlalchemy import column, func, insert, select, table
from sqlalchemy.exc import DBAPIError, OperationalError

import lab
from db_init import Request, Response
from lab import layout, machine, prereqs, provision
from lab.errors import LabError
from tests.support.lab import REPO, LocalLab, local_group

ROW_WAIT_S = 20


# ------------------------------------------------------------------------------ no lab needed


def test_inventory_group_local_is_the_lab_layout() -> None:
    group = local_group()
    hosts, v = group["hosts"], group["vars"]
    assert {n: h["ansible_host"] for n, h in hosts.items()} == {"gateway": layout.GATEWAY.ip, "db": layout.DB.ip}
    assert {h["ansible_ssh_private_key_file"] for h in hosts.values()} == {str(layout.SSH_KEY)}
    assert v["known_hosts_file"] == str(layout.KNOWN_HOSTS)
    assert v["secrets_env_file"] == str(layout.SECRETS_FILE)
    assert v["gateway_url"] == layout.GATEWAY_URL
    assert (v["master_key_env"], v["db_password_env"], v["db_reader_password_env"]) == (
        layout.MASTER_KEY_ENV, layout.DB_PASSWORD_ENV, layout.DB_READER_PASSWORD_ENV)
    assert (v["db_name"], v["db_user"], v["db_reader_user"], int(v["db_port"])) == (
        layout.DB_NAME, layout.DB_USER, layout.DB_READER, layout.DB_PORT)
    assert v["gateway_service"] == layout.GATEWAY_UNIT


def test_up_without_root_stops_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from lab.__main__ import main

    monkeypatch.setattr(prereqs.os, "geteuid", lambda: 1000)
    assert main(["up"]) == 1
    out, err = capsys.readouterr()
    assert err == "lab up: the lab needs root (namespaces, bridge, mounts): run it as root\n" and out == ""


def test_unreachable_mirror_is_one_line() -> None:
    with pytest.raises(LabError) as err:
        prereqs.require_mirror("http://127.0.0.1:9/debian")  # nothing listens on the discard port
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("Debian mirror unreachable (http://127.0.0.1:9/debian/dists/")


def test_full_disk_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prereqs.shutil, "disk_usage", lambda p: type("U", (), {"free": 300 * 1024 ** 2})())
    with pytest.raises(LabError, match=r"^not enough disk: /\S* has 0\.3 GB free, the lab needs 4 GB$"):
        prereqs.require_disk(cold=True)


# ------------------------------------------------------------------------------ the lab itself

@pytest.fixture(scope="module")
def local(embedded_lab: lab.LabDescription) -> LocalLab:
    return LocalLab.from_inventory()


@pytest.fixture(scope="module")
def reader(local: LocalLab):
    engine = local.reader_engine()
    yield engine
    engine.dispose()


def _wait_row(engine, call_id: str) -> tuple[Request, list[Response]] | None:
    deadline = time.monotonic() + ROW_WAIT_S
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            req = conn.execute(select(Request).where(Request.request_id == call_id)).first()
            if req is not None:
                resps = conn.execute(select(Response).where(Response.request_id_fk == req.id)).all()
                return req, resps
        time.sleep(0.5)
    return None


@pytest.mark.lab
def test_gateway_unit_active_over_verified_ssh(local: LocalLab) -> None:
    rc, out, _ = local.run("gateway", "systemctl is-active litellm-gateway")
    assert (rc, out.strip()) == (0, "active")
    rc, out, _ = local.run("gateway", "systemctl show -p User,FragmentPath litellm-gateway")
    assert "User=litellm" in out and "FragmentPath=/etc/systemd/system/litellm-gateway.service" in out
    rc, out, _ = local.run("gateway", "cat /etc/systemd/system/litellm-gateway.service")
    assert out == (REPO / "deploy/litellm-gateway.service").read_text()  # the runbook's unit, unchanged


@pytest.mark.lab
def test_ssh_refuses_unknown_and_wrong_host_keys(local: LocalLab, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        local.ssh("gateway", known_hosts=str(empty))
    # the db host's key recorded under the gateway's address: a changed key must be refused
    db_line = next(ln for ln in Path(local.known_hosts).read_text().splitlines() if ln.startswith(layout.DB.ip + " "))
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(db_line.replace(layout.DB.ip, layout.GATEWAY.ip, 1) + "\n")
    with pytest.raises(paramiko.BadHostKeyException):
        local.ssh("gateway", known_hosts=str(wrong))
    assert local.run("db", "hostname")[1].strip() == "db"


@pytest.mark.lab
def test_logger_connection_line_in_gateway_journal(local: LocalLab) -> None:
    rc, out, _ = local.run("gateway", "journalctl -u litellm-gateway -o cat --no-pager")
    assert rc == 0
    established = [ln for ln in out.splitlines() if ln.startswith("gateway_logger: database connection established")]
    assert established, "no 'gateway_logger: database connection established' line in the gateway's journal"
    assert f"@{layout.DB.ip}:5432/{layout.DB_NAME}" in established[-1] and ":***@" in established[-1]
    for value in (local.db_password, local.master_key, local.reader_password):
        assert value not in out


@pytest.mark.lab
def test_chat_completion_row_lands_on_db_host(local: LocalLab, reader) -> None:
    marker = f"lab row test {uuid.uuid4().hex}"
    resp = local.chat(marker)
    assert resp.status_code == 200, resp.text[:200]
    assert marker in resp.json()["choices"][0]["message"]["content"]  # the stand-in model answered
    call_id = resp.headers["x-poc1-request-id"]
    found = _wait_row(reader, call_id)
    assert found is not None, f"no row for call {call_id} on the db host after {ROW_WAIT_S} s"
    req, resps = found
    assert req.status_code == 200 and req.model == "gpt-4o-mini"
    assert marker in str(req.payload)
    assert len(resps) == 1 and resps[0].total_tokens and resps[0].total_tokens > 0


@pytest.mark.lab
def test_pg_hba_keeps_litellm_user_off_the_runner(local: LocalLab) -> None:
    from db_init import make_engine

    engine = make_engine(local.db_url(local.db_user, local.db_password))
    try:
        with pytest.raises(OperationalError) as err, engine.connect():
            pass
    finally:
        engine.dispose()
    text = str(err.value.orig)
    assert "no pg_hba.conf entry" in text and f'host "{layout.RUNNER_IP}"' in text and layout.DB_USER in text


@pytest.mark.lab
def test_reader_role_reads_sees_sessions_and_cannot_write(local: LocalLab, reader) -> None:
    activity = table("pg_stat_activity", column("usename"), column("client_addr"))
    with reader.connect() as conn:
        assert conn.execute(select(func.current_user())).scalar() == layout.DB_READER
        assert conn.execute(select(func.count()).select_from(Request)).scalar() >= 1
        assert conn.execute(select(func.pg_has_role("pg_read_all_stats", "member"))).scalar() is True
        sessions = conn.execute(select(activity.c.client_addr).where(activity.c.usename == layout.DB_USER)).all()
    # the logger's pooled connection, seen with its client address (needs pg_read_all_stats)
    assert sessions and {str(s.client_addr) for s in sessions} == {layout.GATEWAY.ip}

    writer = local.reader_engine(read_only=False)
    try:
        with pytest.raises(DBAPIError, match="permission denied for table requests"), writer.begin() as conn:
            conn.execute(insert(Request).values(request_id=f"x-{uuid.uuid4().hex}", status_code=0))
    finally:
        writer.dispose()


@pytest.mark.lab
def test_db_host_roles_listen_and_scram(local: LocalLab) -> None:
    rc, out, _ = local.run("db", "ss -Hltn 'sport = :5432'")
    assert rc == 0 and [ln.split()[3] for ln in out.splitlines()] == [f"{layout.DB.ip}:5432"]
    sql = "SELECT rolname || ' ' || left(rolpassword, 14) FROM pg_authid WHERE rolname IN ('litellm_user', 'poc1_reader') ORDER BY 1"
    rc, out, _ = local.run("db", f"runuser -u postgres -- psql -XAtc \"{sql}\"")
    assert rc == 0 and out.split("\n")[:2] == ["litellm_user SCRAM-SHA-256$", "poc1_reader SCRAM-SHA-256$"]
    rc, out, _ = local.run("db", "psql --version")
    assert f" {layout.PG_VERSION}." in out


@pytest.mark.lab
def test_secrets_stay_in_root_only_files(local: LocalLab) -> None:
    assert stat.S_IMODE(layout.SECRETS_FILE.stat().st_mode) == 0o600
    inventory = (REPO / "hosts.yml").read_text()
    for value in (local.master_key, local.db_password, local.reader_password):
        assert value not in inventory
    rc, out, _ = local.run("gateway", "stat -c '%a %U' /etc/litellm/litellm.env")
    assert out.strip() == "600 root"



@pytest.mark.lab
def test_gateway_runs_the_repos_code(local: LocalLab) -> None:
    logger = [(f"/opt/litellm/{rel}", rel) for rel in provision.LOGGER_FILES]
    assert len(logger) > 1 and "gateway_logger/__init__.py" in provision.LOGGER_FILES
    for path, rel in (("/etc/litellm/config.yaml", "config.yaml"), ("/opt/litellm/db_init.py", "db_init.py"),
                      *logger):
        assert local.run("gateway", f"cat {path}")[1] == (REPO / rel).read_text(), path
    assert local.run("gateway", "test -e /opt/litellm/gateway_logger.py")[0] == 1  # the old module is gone
    out = local.run("gateway", "ls /opt/litellm/gateway_logger")[1]  # the package: the repo's files only
    deployed = sorted(n for n in out.split() if n.endswith(".py"))
    assert deployed == [rel.split("/")[1] for rel in provision.LOGGER_FILES], out


@pytest.mark.lab
def test_up_redeploys_code_that_differs_from_the_repo(local: LocalLab) -> None:
    target = "/opt/standin-model/standin_model.py"
    deployed = "/opt/litellm/gateway_logger/__init__.py"  # the playbook's: `up` runs it again
    lab.exec("gateway", f"echo '# drift' >> {target}; echo '# drift' >> {deployed}")
    before = lab.systemctl("gateway", "show", "-p", "ExecMainPID", "standin-model")
    proc = subprocess.run([sys.executable, "-m", "lab", "up"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert re.match(r"lab: playbook: lab-db changed=0, lab-gateway changed=[1-9]\d* \(", first), proc.stdout
    second = proc.stdout.splitlines()[1]
    assert second.startswith("lab: already up; redeployed ") and target in second and deployed in second, proc.stdout
    assert local.run("gateway", f"cat {target}")[1] == (REPO / "lab/standin_model.py").read_text()
    assert local.run("gateway", f"cat {deployed}")[1] == (REPO / "gateway_logger/__init__.py").read_text()
    assert lab.systemctl("gateway", "show", "-p", "ExecMainPID", "standin-model") != before  # restarted
    assert local.chat().status_code == 200


@pytest.mark.lab
def test_status_reports_every_unit(embedded_lab: lab.LabDescription) -> None:
    proc = subprocess.run([sys.executable, "-m", "lab", "status"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    gw, db = proc.stdout.splitlines()
    for part in ("sshd=active", "standin-model=active", "litellm-gateway=active"):
        assert part in gw
    for part in ("sshd=active", f"{layout.PG_UNIT}=active", "postgresql=accepting"):
        assert part in db


@pytest.mark.lab
def test_second_up_reuses_the_running_lab(local: LocalLab) -> None:
    pids = {h: machine.nspawn_pid(layout.HOSTS[h]) for h in layout.HOSTS}
    proc = subprocess.run([sys.executable, "-m", "lab", "up"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("lab: already up"), proc.stdout + proc.stderr
    assert {h: machine.nspawn_pid(layout.HOSTS[h]) for h in layout.HOSTS} == pids
    assert LocalLab.from_inventory().master_key == local.master_key


@pytest.mark.lab
def test_lock_keeps_a_second_command_out(embedded_lab: lab.LabDescription) -> None:
    from lab import lock

    with lock.held():
        proc = subprocess.run([sys.executable, "-m", "lab", "down"], cwd=REPO, capture_output=True, text=True,
                              timeout=60, env={**os.environ, lock.TIMEOUT_ENV: "2"})
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"lab down: another lab command (pid {os.getpid()}) still holds ")
    assert proc.stderr.count("\n") == 1
    assert lab.is_up()


@pytest.mark.lab
def test_hooks_stop_start_a_unit_and_cut_a_link(local: LocalLab) -> None:
    """What fault-injection tests use: units and links changed from the runner, no SSH involved."""
    lab.exec("gateway", ["systemctl", "stop", "standin-model"])
    try:
        assert lab.systemctl("gateway", "is-active", "standin-model") == "inactive"
        assert local.chat().status_code >= 500  # the provider is gone: the gateway says so
    finally:
        lab.exec("gateway", ["systemctl", "start", "standin-model"])
    assert lab.systemctl("gateway", "is-active", "standin-model") == "active"
    assert local.chat().status_code == 200

    lab.set_link("db", up=False)
    try:
        from lab.probe import tcp_open

        assert not tcp_open(layout.DB.ip, layout.DB_PORT, timeout=1)
    finally:
        lab.set_link("db", up=True)
    assert lab.exec("db", "pg_isready -h 10.231.0.19").returncode == 0
    assert tcp_open(layout.DB.ip, layout.DB_PORT, timeout=3)


@pytest.mark.lab
def test_openai_sdk_calls_of_every_kind_each_leave_one_row_on_db_host(local: LocalLab, reader) -> None:
    """As a user's client calls the lab gateway: the official SDK, plain, streamed (with and without the
    usage chunk), a tool call and an embedding — each one request row and one linked response with tokens."""
    import openai

    sdk = openai.OpenAI(base_url=local.gateway_url + "/v1", api_key=local.master_key, max_retries=0, timeout=30)
    chat = sdk.chat.completions
    messages = [{"role": "user", "content": f"sdk {uuid.uuid4().hex}"}]
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    seen: dict[str, tuple[str, str]] = {}  # kind -> (x-poc1-request-id, what the client got)

    raw = chat.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    seen["plain"] = (raw.headers["x-poc1-request-id"], raw.parse().choices[0].message.content)
    for kind, options in (("stream", None), ("stream+usage", {"include_usage": True})):
        kwargs = {"stream_options": options} if options else {}
        with chat.with_streaming_response.create(model="gpt-4o-mini", messages=messages, stream=True,
                                                 **kwargs) as resp:
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
            seen[kind] = (resp.headers["x-poc1-request-id"], text)
    raw = chat.with_raw_response.create(model="gpt-4o-mini", messages=messages, tools=[tool])
    call = raw.parse().choices[0].message.tool_calls[0]
    seen["tool call"] = (raw.headers["x-poc1-request-id"], call.function.name)
    raw = sdk.embeddings.with_raw_response.create(model="text-embedding-3-small", input="lab embedding")
    seen["embedding"] = (raw.headers["x-poc1-request-id"], str(len(raw.parse().data[0].embedding)))

    for kind, (request_id, got) in seen.items():
        found = _wait_row(reader, request_id)
        assert found is not None, f"{kind}: no row for {request_id} after {ROW_WAIT_S} s"
        req, resps = found
        assert req.status_code == 200 and len(resps) == 1, (kind, req.status_code, len(resps))
        assert resps[0].prompt_tokens and resps[0].total_tokens, (kind, resps[0].total_tokens)
        if kind == "embedding":
            assert req.route == "/v1/embeddings"
            continue
        assert req.route == "/v1/chat/completions", (kind, req.route)
        content = json.dumps(resps[0].content)
        assert got and got in content, (kind, got)  # the completion (or the tool's name) the client got
        assert bool((resps[0].content.get("gateway_logger") or {}).get("stream")) == kind.startswith("stream")
