"""What makes a copy of the base rootfs into the lab's gateway or db host: files written into its root
before boot (the repo's code and config, keys, addresses) and the database set-up after boot."""
from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from lab import layout, machine, network, tls
from lab.credentials import scram_verifier
from lab.errors import LabError
from lab.layout import DB, GATEWAY, Host
from lab.shell import run
from tools.polling import poll_until

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
# reap the session of a client that vanished (its FIN lost in a partition): without keepalives such a
# backend stays idle for good, holding a connection slot and showing in pg_stat_activity as the gateway's
tcp_keepalives_idle = 10
tcp_keepalives_interval = 5
tcp_keepalives_count = 3
"""
PG_TLS_CONF = f"""# poc1 lab: TLS with the lab's CA (lab/tls.py); `hostssl` in pg_hba.conf makes it required
ssl = on
ssl_cert_file = '{layout.DB_TLS_CERT}'
ssl_key_file = '{layout.DB_TLS_KEY}'
ssl_min_protocol_version = 'TLSv1.2'
"""


def pg_hba(tls_required: bool = True) -> str:
    """litellm_user only over TLS (``hostssl``), or, switched off for a test, also in clear text (``host``).

    The reader's line stays ``host``; the suite itself asks for verify-full (hosts.yml: db_sslmode)."""
    kind = "hostssl" if tls_required else "host   "
    return f"""# poc1 lab. TYPE DATABASE USER ADDRESS METHOD
local   all             postgres                                peer
{kind} {layout.DB_NAME}      {layout.DB_USER}      {GATEWAY.ip}/32         scram-sha-256
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
    #: (user, group) by name inside the host; None: root's
    owner: tuple[str, str] | None = None


def _repo_file(rel: str) -> bytes:
    path = layout.REPO / rel
    if not path.is_file():
        raise LabError(f"gateway: {rel} is not in the repository ({path}); the lab deploys the repo's code")
    return path.read_bytes()


SCHEMA_FILE = "/opt/litellm/db_init.py"
#: the schema's alembic migrations, beside db_init.py as db_init expects them
MIGRATION_FILES = sorted(str(p.relative_to(layout.REPO)) for p in (layout.REPO / "migrations").rglob("*")
                         if p.is_file() and p.suffix in (".py", ".mako") and "__pycache__" not in p.parts)
SCHEMA_FILES = (SCHEMA_FILE, *(f"/opt/litellm/{rel}" for rel in MIGRATION_FILES))
#: the logger package, every file of it (the ``*.py`` files directly in gateway_logger/: what its
#: code_sha256 covers), to /opt/litellm/gateway_logger/ (the unit's PYTHONPATH is /opt/litellm)
LOGGER_DIR = "/opt/litellm/gateway_logger"
LOGGER_FILES = sorted(str(p.relative_to(layout.REPO)) for p in (layout.REPO / "gateway_logger").glob("*.py")
                      if p.is_file())
#: what a lab built before the logger was a package still has: removed on the next lab-up
OBSOLETE_GATEWAY_FILES = ("/opt/litellm/gateway_logger.py",)


def gateway_code() -> list[Placed]:
    """The repo's code and config as the runbook installs them (copied fresh on every lab-up)."""
    return [
        Placed("/etc/litellm/config.yaml", _repo_file("config.yaml")),
        Placed(SCHEMA_FILE, _repo_file("db_init.py")),
        *(Placed(f"/opt/litellm/{rel}", _repo_file(rel)) for rel in MIGRATION_FILES),
        *(Placed(f"/opt/litellm/{rel}", _repo_file(rel)) for rel in LOGGER_FILES),
        Placed(f"/etc/systemd/system/{layout.GATEWAY_UNIT}.service", _repo_file("deploy/litellm-gateway.service")),
        Placed(f"/etc/systemd/system/{layout.CONTROL_UNIT}.service",
               _repo_file("deploy/litellm-gateway-control.service")),
        Placed("/opt/standin-model/standin_model.py", _repo_file("lab/standin_model.py")),
        Placed(f"/etc/systemd/system/{layout.STANDIN_UNIT}.service", _repo_file("lab/units/standin-model.service")),
    ]


GATEWAY_ENV = "/etc/litellm/litellm.env"
DB_URL_LINE = re.compile(r"^POC1_DB_URL=.*$", re.M)


def db_url_line(values: dict[str, str], tls_on: bool = True) -> str:
    """The logger's URL; libpq takes sslmode/sslrootcert from its query. Quoted: `&` means something to sh
    (create_schema sources the file), and systemd's EnvironmentFile strips the quotes."""
    url = (f"postgresql+psycopg2://{layout.DB_USER}:{values[layout.DB_PASSWORD_ENV]}"
           f"@{DB.ip}:{layout.DB_PORT}/{layout.DB_NAME}?{tls.QUERY_ON if tls_on else tls.QUERY_OFF}")
    return f"POC1_DB_URL='{url}'"


def gateway_env(values: dict[str, str]) -> Placed:
    text = (f"LITELLM_MASTER_KEY={values[layout.MASTER_KEY_ENV]}\n{db_url_line(values)}\n"
            f"UPSTREAM_API_BASE=http://127.0.0.1:{layout.STANDIN_PORT}/v1\n"
            f"UPSTREAM_API_KEY=sk-upstream-{uuid.uuid4().hex}\n")
    return Placed(GATEWAY_ENV, text.encode(), 0o600)


def db_tls_files() -> list[Placed]:
    """The db host's certificate and key (made on the runner, lab/tls.py) and the settings that use them."""
    return [
        Placed(layout.DB_TLS_CERT, tls.SERVER_CERT.read_bytes()),
        Placed(layout.DB_TLS_KEY, tls.SERVER_KEY.read_bytes(), 0o640, ("root", "ssl-cert")),
        Placed(f"{PG_ETC}/conf.d/poc1-lab-tls.conf", PG_TLS_CONF.encode()),
    ]


def gateway_tls_files() -> list[Placed]:
    """Only the CA certificate (public): readable by the gateway's user, nothing secret."""
    return [Placed(layout.GATEWAY_DB_CA, tls.CA_CERT.read_bytes())]


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
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, f.mode)  # a key is never readable by all
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), f.mode)
            if f.owner is not None:
                os.fchown(out.fileno(), *_ids(host, *f.owner))
            out.write(f.content)
    return changed


def stale_gateway_files(root: Path) -> list[str]:
    """Files under the gateway host's ``root`` that the repository's code no longer has: the logger's
    old single module, and files of the package directory other than the repository's (a module since
    removed, one a test wrote); bytecode caches aside."""
    stale = [p for p in OBSOLETE_GATEWAY_FILES if (root / p.lstrip("/")).exists()]
    package = root / LOGGER_DIR.lstrip("/")
    wanted = {f"/opt/litellm/{rel}" for rel in LOGGER_FILES}
    if package.is_dir():
        stale += sorted(f"{LOGGER_DIR}/{p.name}" for p in package.iterdir()
                        if p.name != "__pycache__" and f"{LOGGER_DIR}/{p.name}" not in wanted)
    return stale


def remove_stale(host: Host) -> list[str]:
    """Remove ``stale_gateway_files`` from the host's root (from the runner); returns their paths."""
    stale = stale_gateway_files(host.root)
    for path in stale:
        target = host.root / path.lstrip("/")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    return stale


def _ids(host: Host, user: str, group: str) -> tuple[int, int]:
    """Numeric ids of a user and group as the host's own /etc/passwd and /etc/group define them."""
    def lookup(table: str, name: str) -> int:
        for line in (host.root / "etc" / table).read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name and len(fields) > 2:
                return int(fields[2])
        raise LabError(f"{host.name}: no {'user' if table == 'passwd' else 'group'} {name!r} in its /etc/{table}")
    return lookup("passwd", user), lookup("group", group)


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
    place(GATEWAY, [*gateway_code(), gateway_env(values), *gateway_tls_files()])
    remove_stale(GATEWAY)
    for unit in (layout.STANDIN_UNIT, layout.GATEWAY_UNIT):
        _enable(GATEWAY, f"{unit}.service")
    _mask(GATEWAY, "postgresql.service")  # the base has it; the gateway host is not a database


def db_host() -> None:
    place(DB, [
        Placed(f"{PG_ETC}/conf.d/poc1-lab.conf", PG_CONF.encode()),
        Placed("/etc/systemd/system/postgresql@.service.d/poc1-lab.conf", PG_AFTER_NETWORK.encode()),
        *db_tls_files(),
    ])
    set_hba(tls_required=True)


# ------------------------------------------------------------------------------- TLS on a running lab

HBA_FILE = f"{PG_ETC}/pg_hba.conf"


def set_hba(tls_required: bool) -> bool:
    """Write pg_hba.conf (existing file: keeps its owner, postgres, and mode); True if it changed."""
    hba = DB.root / HBA_FILE.lstrip("/")
    text = pg_hba(tls_required)
    if hba.is_file() and hba.read_text() == text:
        return False
    hba.write_text(text)
    return True


def set_gateway_db_url(values: dict[str, str], tls_on: bool) -> bool:
    """Rewrite only the POC1_DB_URL line of the gateway's env file (others' lines stay); True if changed."""
    path = GATEWAY.root / GATEWAY_ENV.lstrip("/")
    old = path.read_text()
    new = DB_URL_LINE.sub(lambda _: db_url_line(values, tls_on), old, count=1)
    if new == old:
        return False
    path.write_text(new)  # existing file: keeps its mode 0600
    return True


def tls_state() -> str:
    """on (hostssl + verify-full), off (host + sslmode=disable), or what is mixed, from the hosts' files."""
    try:
        hba = (DB.root / HBA_FILE.lstrip("/")).read_text()
        env = (GATEWAY.root / GATEWAY_ENV.lstrip("/")).read_text()
    except OSError:  # a host not built (yet)
        return "unknown"
    required = any(ln.split()[:3] == ["hostssl", layout.DB_NAME, layout.DB_USER] for ln in hba.splitlines())
    verified = "sslmode=verify-full" in env
    if required and verified:
        return "on"
    if not required and "sslmode=disable" in env:
        return "off"
    return (f"mixed (pg_hba: {'hostssl' if required else 'host'} for {layout.DB_USER}; gateway URL: "
            f"{'verify-full' if verified else 'no verify-full'})")


def reload_postgres() -> None:
    """pg_hba.conf and the ssl settings take effect on reload; sessions already open keep going."""
    _psql("postgres", "SELECT pg_reload_conf();")


def gateway_db_sessions() -> list[tuple[int, bool]]:
    """(pid, encrypted) of litellm_user's sessions from the gateway, as the db host sees them."""
    sql = ("SELECT a.pid, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid "
           f"WHERE a.usename = '{layout.DB_USER}' AND host(a.client_addr) = '{GATEWAY.ip}' ORDER BY a.pid")
    out = machine.exec_(DB, ["psql", "-X", "-q", "-A", "-t", "-F", " ", "-d", "postgres", "-c", sql],
                        user="postgres", timeout=30).stdout
    return [(int(pid), ssl == "t") for pid, ssl in (ln.split() for ln in out.splitlines() if ln.strip())]


# ------------------------------------------------------------------------------------- after boot


def _psql(database: str, sql: str) -> None:
    machine.exec_(DB, ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database], input=sql,
                  user="postgres", timeout=60)


def wait_postgres(timeout: float = 60) -> None:
    ready, _ = poll_until(lambda: machine.exec_(DB, ["pg_isready", "-q", "-h", DB.ip], check=False,
                                                 timeout=10).returncode == 0, timeout=timeout, interval=0.2)
    if ready:
        return
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
