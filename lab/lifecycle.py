"""`up`, `down` and `status` of the embedded lab, each idempotent and safe after a killed run."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

from lab import (
    cgroups,
    credentials,
    deploy,
    fleet,
    layout,
    lock,
    machine,
    mounts,
    network,
    prereqs,
    probe,
    provision,
    rootfs,
    tls,
)
from lab.errors import LabError
from lab.layout import DB, GATEWAY, GATEWAYS
from tools.polling import poll_until

GATEWAY_READY_TIMEOUT_S = 180
TLS_SESSION_TIMEOUT_S = 60
KEEP_FAILED_ENV = "POC1_LAB_KEEP_FAILED"  # =1: leave a failed lab up for inspection


@dataclass(frozen=True)
class LabDescription:
    """What the suite needs to reach the lab. Secrets only by the names of their variables."""

    gateway_ip: str
    db_ip: str
    runner_ip: str
    gateway_url: str
    ssh_user: str
    ssh_key: str
    known_hosts: str
    secrets_file: str
    master_key_env: str
    db_password_env: str
    db_reader_password_env: str
    db_name: str
    db_user: str
    db_reader_user: str
    db_port: int
    gateway_unit: str
    standin_unit: str
    pg_unit: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def describe() -> LabDescription:
    return LabDescription(
        gateway_ip=GATEWAY.ip, db_ip=DB.ip, runner_ip=layout.RUNNER_IP, gateway_url=layout.GATEWAY_URL,
        ssh_user="root", ssh_key=str(layout.SSH_KEY), known_hosts=str(layout.KNOWN_HOSTS),
        secrets_file=str(layout.SECRETS_FILE), master_key_env=layout.MASTER_KEY_ENV,
        db_password_env=layout.DB_PASSWORD_ENV, db_reader_password_env=layout.DB_READER_PASSWORD_ENV,
        db_name=layout.DB_NAME, db_user=layout.DB_USER, db_reader_user=layout.DB_READER,
        db_port=layout.DB_PORT, gateway_unit=layout.GATEWAY_UNIT, standin_unit=layout.STANDIN_UNIT,
        pg_unit=layout.PG_UNIT)


def _say(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- down


def teardown() -> None:
    """Remove every trace of a lab (complete, half-built or left by a killed run); keeps the cache."""
    left: list[str] = []
    for host in layout.ALL_HOSTS:  # gateways first: their loggers flush to the db host on the way down;
        # every gateway a lab of any size may have (a lab of 2 torn down by a run asking for 1)
        left += [f"{host.name}: process {p}" for p in machine.stop(host)]
    left += [f"link {n}" for n in network.remove()]
    for host in layout.ALL_HOSTS:
        left += [f"mount {m}" for m in machine.remove_root(host)]
        left += [f"cgroup {c}" for c in cgroups.remove(host.cgroup)]
    left += [f"cgroup {c}" for c in cgroups.remove(layout.BUILD_CGROUP)]
    rootfs.discard_partial_build()  # a build killed half-way (its mounts, its tree); we hold the lock
    left += [f"mount {m}" for m in mounts.unmount_all(layout.STATE_DIR)]
    if not left and layout.STATE_DIR.exists():
        shutil.rmtree(layout.STATE_DIR)
    if left:
        raise LabError(f"teardown left {len(left)} thing(s) behind: {'; '.join(left[:4])}")


def down() -> None:
    prereqs.require_root()
    with lock.held():
        teardown()
    _say("down (no container, link, mount or state left; cache kept in "
         f"{layout.CACHE_DIR})")


# ----------------------------------------------------------------------------------------------- up


def _mirror() -> str:
    mirror = prereqs.debian_mirror()
    prereqs.require_mirror(mirror)
    return mirror


def _wait_gateway(values: dict[str, str], timeout: float = GATEWAY_READY_TIMEOUT_S) -> None:
    """Every gateway host answers a chat completion with 200."""
    deadline = time.monotonic() + timeout
    for gateway in GATEWAYS:
        answered, (_, reason) = poll_until(
            lambda g=gateway: probe.chat_completion(values[layout.MASTER_KEY_ENV], url=g.url),
            lambda answer: answer[0] == 200, timeout=max(1.0, deadline - time.monotonic()), interval=0.5)
        if answered:
            continue
        journal = machine.exec_(gateway, ["journalctl", "-u", layout.GATEWAY_UNIT, "-n", "1", "-o", "cat",
                                          "--no-pager"], check=False).stdout.strip()
        raise LabError(credentials.scrub(
            f"{gateway.name}: no 200 from {gateway.url}/v1/chat/completions within {timeout:.0f} s "
            f"(last: {reason}; journal: {journal or 'empty'})", values))


def _build_hosts() -> None:
    """The lab's part: each host's root with its name, address, SSH keys; the TLS files the playbook
    copies; the stand-in model."""
    authorized = provision.client_key()
    known = []
    for host in (DB, *GATEWAYS):
        machine.make_root(host)
        provision.common(host, authorized)
        known.append(provision.host_key(host))
    layout.KNOWN_HOSTS.write_text("".join(known))
    tls.make_certificates()
    provision.standin()
    fleet.write()


def _start(values: dict[str, str]) -> deploy.Recap:
    """Boot the hosts, then provision them with the playbook (as a user deploys the real VMs)."""
    for host in (DB, *GATEWAYS):
        machine.start(host)
    for host in (DB, *GATEWAYS):
        machine.wait_booted(host)
    for host in (DB, *GATEWAYS):
        if not poll_until(lambda h=host: probe.tcp_open(h.ip, 22), lambda ok: ok, timeout=30, interval=0.2)[0]:
            raise LabError(f"{host.name}: sshd not listening on {host.ip}:22 within 30 s after boot")
    recap = deploy.run(values)
    _wait_gateway(values)
    return recap


def is_up() -> bool:
    """Every container running and every gateway answering 200 with this lab's master key."""
    if not layout.SECRETS_FILE.is_file() or any(machine.init_pid(h) is None for h in layout.HOSTS.values()):
        return False
    key = credentials.load()[layout.MASTER_KEY_ENV]
    return all(probe.chat_completion(key, timeout=10, url=g.url)[0] == 200 for g in GATEWAYS)


def _redeploy(values: dict[str, str]) -> list[str]:
    """A running lab picks up the repo's current code: the stand-in's files by the lab, and whatever the
    playbook deploys — if any of it differs from the repository, by running the playbook again."""
    changed: list[str] = []
    drift: list[str] = []
    for gateway in GATEWAYS:
        placed = provision.place(gateway, provision.standin_files())
        if placed:
            machine.exec_(gateway, ["systemctl", "daemon-reload"])
            machine.exec_(gateway, ["systemctl", "restart", layout.STANDIN_UNIT], timeout=60)
        changed += placed if gateway is GATEWAY else [f"{gateway.name}:{p}" for p in placed]
        found = provision.differs(gateway, provision.gateway_code()) + provision.stale_gateway_files(gateway.root)
        drift += found if gateway is GATEWAY else [f"{gateway.name}:{p}" for p in found]
    if drift:
        recap = deploy.run(values)
        _say(f"playbook: {recap.line()}")
        changed += drift
    if changed:
        _wait_gateway(values)
    return changed


def up() -> LabDescription:
    prereqs.require_root()
    prereqs.install_missing_tools()
    with lock.held():
        t0 = time.monotonic()
        running = is_up()
        if running and set(provision.SCHEMA_FILES) & set(provision.differs(GATEWAY, provision.gateway_code())):
            _say("db_init.py or its migrations changed since this lab was built: building a fresh lab "
                 "(fresh database)")
            running = False
        if running and not layout.PG_VERSION_FILE.is_file():
            _say("this lab was built before the playbook provisioned it: building a fresh lab")
            running = False
        if running and _running_gateways() != len(GATEWAYS):
            _say(f"{len(GATEWAYS)} gateway host(s) asked for ({layout.GATEWAYS_ENV}), the lab has "
                 f"{_running_gateways()}: building a fresh lab")
            running = False
        if running and _running_partition() != layout.PARTITION:
            _say(f"log tables {layout.PARTITION or 'plain'} asked for ({layout.PARTITION_ENV}), the lab's are "
                 f"{_running_partition() or 'plain'}: building a fresh lab (fresh database)")
            running = False
        if running and layout.PG_VERSION_FILE.read_text().strip() != layout.PG_VERSION:
            _say(f"PostgreSQL {layout.PG_VERSION} asked for ({layout.PG_ENV}), the lab runs "
                 f"{layout.PG_VERSION_FILE.read_text().strip()}: building a fresh lab")
            running = False
        if running:
            values = credentials.load()
            changed = _redeploy(values)
            _say(f"already up{'; redeployed ' + ', '.join(changed) if changed else ''}")
            if provision.tls_state() != "on":
                _say(f"TLS for {layout.DB_USER} is {provision.tls_state()} (python -m lab tls on)")
            _print_addresses()
            return describe()
        teardown()  # whatever a killed or failed run left
        if not 1 <= layout.GATEWAY_COUNT <= layout.MAX_GATEWAYS:
            raise LabError(f"{layout.GATEWAYS_ENV}={os.environ.get(layout.GATEWAYS_ENV, '')!r}: the lab has 1 to "
                           f"{layout.MAX_GATEWAYS} gateway hosts")
        if layout.PARTITION not in layout.PARTITIONS:
            raise LabError(f"{layout.PARTITION_ENV}={layout.PARTITION!r}: the log tables are plain (empty), "
                           f"daily or monthly")
        if layout.PG_VERSION not in layout.PG_SUITES:
            raise LabError(f"{layout.PG_ENV}={layout.PG_VERSION}: the lab has PostgreSQL "
                           f"{' or '.join(layout.PG_SUITES)}")
        prereqs.require_disk(cold=not rootfs.all_current())
        for old in rootfs.remove_obsolete():
            _say(f"removed {old} (the cache before each host had its own base)")
        built = rootfs.ensure(_mirror)
        if built is not None:
            _say(f"base rootfs built in {built:.0f} s")
        t_lab = time.monotonic()
        try:
            values = credentials.generate()
            layout.PG_VERSION_FILE.write_text(layout.PG_VERSION + "\n")
            layout.GATEWAYS_FILE.write_text(f"{len(GATEWAYS)}\n")
            layout.PARTITION_FILE.write_text(layout.PARTITION + "\n")
            network.create_bridge()
            _build_hosts()
            recap = _start(values)
            _say(f"provisioned by deploy/ansible/site.yml: {recap.line()}")
            (layout.DESCRIPTION_FILE).write_text(json.dumps(describe().as_dict(), indent=2) + "\n")
        except BaseException:
            if os.environ.get(KEEP_FAILED_ENV) != "1":
                try:
                    teardown()
                except LabError as exc:
                    _say(f"(cleanup after the failure: {exc})")
            raise
        _say(f"up in {time.monotonic() - t0:.1f} s (lab {time.monotonic() - t_lab:.1f} s)")
        _print_addresses()
        return describe()


def run_playbook(extra: list[str]) -> deploy.Recap:
    """`python -m lab deploy [ANSIBLE ARGS]`: deploy/ansible/site.yml against the running lab, again."""
    prereqs.require_root()
    with lock.held():
        if not is_up():
            raise LabError("the lab is not up (python -m lab up)")
        recap = deploy.run(credentials.load(), *extra)
        _say(f"playbook: {recap.line()}")
        return recap


# ----------------------------------------------------------------------------------------------- TLS


def _wait_sessions(encrypted: bool, timeout: float = TLS_SESSION_TIMEOUT_S) -> list[tuple[int, bool]]:
    """Until each gateway's logger sessions (at least one) are all encrypted, or all in clear text."""
    sessions: list[tuple[int, bool]] = []
    deadline = time.monotonic() + timeout
    for gateway in GATEWAYS:
        settled, sessions = poll_until(lambda g=gateway: provision.gateway_db_sessions(g),
                                       lambda found: bool(found) and all(ssl == encrypted for _, ssl in found),
                                       timeout=max(1.0, deadline - time.monotonic()), interval=0.3)
        if not settled:
            shown = ", ".join(f"pid {pid} {'TLS' if ssl else 'clear text'}" for pid, ssl in sessions) or "none"
            raise LabError(f"db: {layout.DB_USER}'s sessions from {gateway.name} {gateway.ip} not all "
                           f"{'encrypted' if encrypted else 'in clear text'} within {timeout:.0f} s "
                           f"(sessions: {shown})")
    return provision.gateway_db_sessions()


def _apply_tls(values: dict[str, str], on: bool) -> None:
    """TLS required for litellm_user and the logger on verify-full, or both off; only what differs changes.

    The order keeps the logger connectable throughout: the server's certificate first, pg_hba.conf opened
    before the gateway restarts in clear text, closed (hostssl) only after it reconnected over TLS."""
    if not on and provision.set_hba(tls_required=False):
        provision.reload_postgres()
    restarted = False
    for gateway in GATEWAYS:
        url_changed = provision.set_gateway_db_url(gateway, values, on)
        if url_changed or any(ssl != on for _, ssl in provision.gateway_db_sessions(gateway)):
            machine.exec_(gateway, ["systemctl", "restart", layout.GATEWAY_UNIT], timeout=90)
            restarted = True
    if restarted:
        _wait_gateway(values)
    if on and provision.set_hba(tls_required=True):
        provision.reload_postgres()
    _wait_sessions(encrypted=on)


def set_tls(on: bool) -> str:
    """`python -m lab tls on|off`: the switch for tests; returns the lab's TLS state afterwards."""
    prereqs.require_root()
    with lock.held():
        if not is_up():
            raise LabError("the lab is not up (python -m lab up)")
        t0 = time.monotonic()
        _apply_tls(credentials.load(), on)
        state = provision.tls_state()
        _say(f"TLS for {layout.DB_USER}: {state} ({time.monotonic() - t0:.1f} s)")
        return state


def tls_status() -> int:
    """`python -m lab tls status`: the state and the logger's sessions; exit 0 on, 1 otherwise, 3 down."""
    prereqs.require_root()
    if any(machine.init_pid(h) is None for h in layout.HOSTS.values()):
        _say("down")
        return 3
    state = provision.tls_state()
    sessions = provision.gateway_db_sessions()
    shown = ", ".join(f"pid {pid} {'TLS' if ssl else 'clear text'}" for pid, ssl in sessions) or "none"
    _say(f"TLS for {layout.DB_USER}: {state}; sessions from {', '.join(g.ip for g in GATEWAYS)}: {shown}")
    return 0 if state == "on" else 1


def _running_partition() -> str:
    try:
        return layout.PARTITION_FILE.read_text().strip()
    except OSError:
        return ""  # a lab built before the layout was a choice: plain


def _running_gateways() -> int:
    return sum(1 for g in layout.ALL_GATEWAYS if machine.init_pid(g) is not None)


def _print_addresses() -> None:
    for g in GATEWAYS:
        _say(f"{g.name:7} {g.ip} ({g.url}, ssh root@{g.ip})")
    _say(f"db      {DB.ip} (PostgreSQL :{layout.DB_PORT}/{layout.DB_NAME}, ssh root@{DB.ip})")
    _say(f"secrets {layout.SECRETS_FILE} ({layout.MASTER_KEY_ENV}, {layout.DB_PASSWORD_ENV}, "
         f"{layout.DB_READER_PASSWORD_ENV}, {layout.UPSTREAM_API_KEY_ENV}); known_hosts {layout.KNOWN_HOSTS}")


# ----------------------------------------------------------------------------------------------- status


def _unit_state(host: layout.Host, unit: str) -> str:
    proc = machine.exec_(host, ["systemctl", "is-active", unit], check=False, timeout=10)
    return proc.stdout.strip() or "unknown"


def host_status(host: layout.Host) -> tuple[bool, str]:
    """(all well, one line) for one host: booted, sshd, its units, PostgreSQL."""
    if machine.nspawn_pid(host) is None:
        return False, f"{host.name:10}{host.ip:13} not running"
    if machine.init_pid(host) is None:
        return False, f"{host.name:10}{host.ip:13} container starting (no init yet)"
    system = machine.exec_(host, ["systemctl", "is-system-running"], check=False, timeout=10).stdout.strip()
    parts = {"booted": system or "unknown", "sshd": _unit_state(host, "ssh")}
    if not probe.tcp_open(host.ip, 22):
        parts["sshd"] += "(port 22 closed)"
    for unit in host.units:
        parts[unit] = _unit_state(host, unit)
    if host is DB:
        ready = machine.exec_(DB, ["pg_isready", "-h", DB.ip], check=False, timeout=10)
        parts["postgresql"] = "accepting" if ready.returncode == 0 else (ready.stdout.strip() or "down")
        parts["tls"] = provision.tls_state().split()[0]  # a setting (python -m lab tls), not a health
    ok = parts["booted"] in ("running", "degraded") and all(
        v in ("active", "accepting") for k, v in parts.items() if k not in ("booted", "tls"))
    return ok, f"{host.name:10}{host.ip:13} " + " ".join(f"{k}={v}" for k, v in parts.items())


def status() -> int:
    """Print one line per host; exit code 0 all well, 1 degraded, 3 down."""
    prereqs.require_root()
    if not any(machine.nspawn_pid(h) for h in layout.ALL_HOSTS) and not network.link_exists(layout.BRIDGE):
        _say("down")
        return 3
    results = [host_status(h) for h in (*GATEWAYS, DB)]
    for _, line in results:
        print(line, flush=True)
    return 0 if all(ok for ok, _ in results) else 1
