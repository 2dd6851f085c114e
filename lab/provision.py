"""What makes a copy of the base rootfs into the lab's gateway or db host: files written into its root
before boot (the repo's code and config, keys, addresses) and the database set-up after boot."""
from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass

from lab import layout, machine, network
from lab.credentials import scram_verifier
from lab.errors import LabError
from lab.layout import DB, GATEWAY, Host
from lab.shell import run

PG_ETC = f"/etc/postgresql/{layout.PG_VERSION}/main"
SSHD_DROPIN = """# poc1 lab: key login only, one host key (the one recorded in the lab's known_hosts)
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""
PG_CONF = f"""# poc1 lab: listen on the db host's own address only; passwords as SCRAM-SHA-256
listen_addresses = '{DB.ip}'
password_encryption = 'scram-sha-256'
"""
PG_HBA = f"""# poc1 lab. TYPE DATABASE USER ADDRESS METHOD
local   all             postgres                                peer
host    {layout.DB_NAME}      {layout.DB_USER}      {GATEWAY.ip}/32         scram-sha-256
host    {layout.DB_NAME}      {layout.DB_READER}       {layout.RUNNER_IP}/32          scram-sha-256
"""
# PostgreSQL binds the db host's address, which systemd-networkd sets: start it once the network is up
PG_AFTER_NETWORK = "[Unit]\nWants=network-online.target\nAfter=network-online.target\n"


@dataclass(frozen=True)
class Placed:
    """A file of a lab host: its path inside the host, its content and mode."""

    dest: str
    content: bytes
    mode: int = 0o644


def _repo_file(rel: str) -> bytes:
    path = layout.REPO / rel
    if not path.is_file():
        raise LabError(f"gateway: {rel} is not in the repository ({path}); the lab deploys the repo's code")
    return path.read_bytes()


SCHEMA_FILE = "/opt/litellm/db_init.py"


def gateway_code() -> list[Placed]:
    """The repo's code and config as the runbook installs them (copied fresh on every lab-up)."""
    return [
        Placed("/etc/litellm/config.yaml", _repo_file("config.yaml")),
        Placed(SCHEMA_FILE, _repo_file("db_init.py")),
        Placed("/opt/litellm/gateway_logger.py", _repo_file("gateway_logger.py")),
        Placed(f"/etc/systemd/system/{layout.GATEWAY_UNIT}.service", _repo_file("deploy/litellm-gateway.service")),
        Placed("/opt/standin-model/standin_model.py", _repo_file("lab/standin_model.py")),
        Placed(f"/etc/systemd/system/{layout.STANDIN_UNIT}.service", _repo_file("lab/units/standin-model.service")),
    ]


def gateway_env(values: dict[str, str]) -> Placed:
    url = (f"postgresql+psycopg2://{layout.DB_USER}:{values[layout.DB_PASSWORD_ENV]}"
           f"@{DB.ip}:{layout.DB_PORT}/{layout.DB_NAME}")
    text = (f"LITELLM_MASTER_KEY={values[layout.MASTER_KEY_ENV]}\nPOC1_DB_URL={url}\n"
            f"UPSTREAM_API_BASE=http://127.0.0.1:{layout.STANDIN_PORT}/v1\n"
            f"UPSTREAM_API_KEY=sk-upstream-{uuid.uuid4().hex}\n")
    return Placed("/etc/litellm/litellm.env", text.encode(), 0o600)


def differs(host: Host, files: list[Placed]) -> list[str]:
    """The paths whose content in the host's root is not ``files``'s."""
    out = []
    for f in files:
        target = host.root / f.dest.lstrip("/")
        if not (target.is_file() and target.read_bytes() == f.content):
            out.append(f.dest)
    return out


def place(host: Host, files: list[Placed]) -> list[str]:
    """Write files into the host's root (from the runner); returns the paths whose content changed."""
    changed = differs(host, files)
    for f in files:
        if f.dest not in changed:
            continue
        target = host.root / f.dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.content)
        target.chmod(f.mode)
    return changed


def _enable(host: Host, unit: str) -> None:
    link = host.root / "etc/systemd/system/multi-user.target.wants" / unit
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(f"/etc/systemd/system/{unit}")


def _mask(host: Host, unit: str) -> None:
    link = host.root / "etc/systemd/system" / unit
    link.unlink(missing_ok=True)
    link.symlink_to("/dev/null")


def client_key() -> str:
    layout.SSH_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "poc1-lab-runner", "-f", layout.SSH_KEY],
        what="generating the lab's SSH key")
    return layout.SSH_KEY.with_suffix(".pub").read_text()


def host_key(host: Host) -> str:
    """A fresh SSH host key for this lab; returns its known_hosts line."""
    key = host.root / "etc/ssh/ssh_host_ed25519_key"
    key.unlink(missing_ok=True)
    key.with_suffix(".pub").unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}", "-f", key],
        what=f"{host.name}: generating its SSH host key")
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    return f"{host.ip} {kind} {blob}\n"


def common(host: Host, authorized_key: str) -> None:
    hosts = "127.0.0.1\tlocalhost\n" + "".join(f"{h.ip}\t{h.name}\n" for h in layout.HOSTS.values())
    place(host, [
        Placed("/etc/hostname", f"{host.name}\n".encode()),
        Placed("/etc/hosts", hosts.encode()),
        Placed("/etc/machine-id", f"{uuid.uuid4().hex}\n".encode(), 0o444),
        Placed("/etc/systemd/network/10-host0.network", network.host0_network_file(host).encode()),
        Placed("/etc/ssh/sshd_config.d/poc1-lab.conf", SSHD_DROPIN.encode()),
        Placed("/root/.ssh/authorized_keys", authorized_key.encode(), 0o600),
    ])
    (host.root / "root/.ssh").chmod(0o700)


def gateway_host(values: dict[str, str]) -> None:
    place(GATEWAY, [*gateway_code(), gateway_env(values)])
    for unit in (layout.STANDIN_UNIT, layout.GATEWAY_UNIT):
        _enable(GATEWAY, f"{unit}.service")
    _mask(GATEWAY, "postgresql.service")  # the base has it; the gateway host is not a database


def db_host() -> None:
    place(DB, [
        Placed(f"{PG_ETC}/conf.d/poc1-lab.conf", PG_CONF.encode()),
        Placed("/etc/systemd/system/postgresql@.service.d/poc1-lab.conf", PG_AFTER_NETWORK.encode()),
    ])
    hba = DB.root / PG_ETC.lstrip("/") / "pg_hba.conf"
    hba.write_text(PG_HBA)  # existing file: keeps its owner (postgres) and mode


# ------------------------------------------------------------------------------------- after boot


def _psql(database: str, sql: str) -> None:
    machine.exec_(DB, ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database], input=sql,
                  user="postgres", timeout=60)


def wait_postgres(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if machine.exec_(DB, ["pg_isready", "-q", "-h", DB.ip], check=False, timeout=10).returncode == 0:
            return
        time.sleep(0.2)
    state = machine.exec_(DB, ["systemctl", "is-active", layout.PG_UNIT], check=False).stdout.strip()
    raise LabError(f"db: PostgreSQL not accepting connections on {DB.ip} within {timeout:.0f} s ({layout.PG_UNIT} {state})")


def roles_and_database(values: dict[str, str]) -> None:
    """The gateway's role (owner of the log database) and the suite's read-only role."""
    _psql("postgres", f"""
CREATE ROLE {layout.DB_USER} LOGIN PASSWORD '{scram_verifier(values[layout.DB_PASSWORD_ENV])}';
CREATE ROLE {layout.DB_READER} LOGIN PASSWORD '{scram_verifier(values[layout.DB_READER_PASSWORD_ENV])}';
GRANT pg_read_all_stats TO {layout.DB_READER};
CREATE DATABASE {layout.DB_NAME} OWNER {layout.DB_USER} ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE {layout.DB_NAME} FROM PUBLIC;
GRANT CONNECT ON DATABASE {layout.DB_NAME} TO {layout.DB_READER};
""")


def create_schema() -> str:
    """The repo's db_init.py create, run on the gateway host as litellm_user over the lab network."""
    proc = machine.exec_(GATEWAY, ["sh", "-c", "set -a; . /etc/litellm/litellm.env; set +a; "
                                   "exec /opt/litellm/venv/bin/python /opt/litellm/db_init.py create"],
                         timeout=120)
    return proc.stdout.strip()


def grant_reader() -> None:
    """SELECT on the schema's tables (names from db_init's models) for the read-only role."""
    if str(layout.REPO) not in sys.path:
        sys.path.insert(0, str(layout.REPO))
    from db_init import Base  # noqa: PLC0415  (the one schema)

    tables = ", ".join('"' + t.name.replace('"', '""') + '"' for t in Base.metadata.sorted_tables)
    _psql(layout.DB_NAME, f"GRANT SELECT ON TABLE {tables} TO {layout.DB_READER};")
