"""The lab's own part of its hosts, written into their roots before boot: names, addresses, SSH keys and
the stand-in model (what a VM has before anyone deploys on it). What the runbook installs comes from the
playbook (lab/deploy.py); this module also knows what the playbook puts on the gateway, to tell whether a
running lab needs it run again, and switches TLS of a running lab for tests with the role's own templates."""
from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import jinja2

from lab import layout, machine, network
from lab.errors import LabError
from lab.layout import DB, GATEWAYS, Host
from lab.shell import run

PG_ETC = f"/etc/postgresql/{layout.PG_VERSION}/main"
SSHD_DROPIN = """# poc1 lab: key login only, one host key (the one recorded in the lab's known_hosts)
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""
ROLES_DIR = layout.REPO / "deploy" / "ansible" / "roles"


def render(role: str, template: str, **values: object) -> str:
    """One of a role's templates as Ansible's template module renders it (trim_blocks, the file's last
    newline kept): the lab's TLS switch writes exactly what the playbook would."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLES_DIR / role / "templates"), trim_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined, autoescape=False)
    return env.get_template(template).render(**values)


def pg_hba(tls_required: bool = True) -> str:
    """litellm_user only over TLS (``hostssl``), or, switched off for a test, also in clear text (``host``).

    The reader's line stays ``host``; the suite itself asks for verify-full (hosts.yml: db_sslmode)."""
    return render("poc1_postgresql", "pg_hba.conf.j2", poc1_gateway_addresses=[g.ip for g in GATEWAYS],
                  poc1_tls_required=tls_required, poc1_db_name=layout.DB_NAME, poc1_db_user=layout.DB_USER,
                  poc1_db_reader=layout.DB_READER, poc1_runner_address=layout.RUNNER_IP)


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
    """What the playbook (roles/poc1_gateway) puts on the gateway from the repository: compared with a
    running lab's files to tell whether `up` must run the playbook again."""
    return [
        Placed("/etc/litellm/config.yaml", _repo_file("config.yaml")),
        Placed(SCHEMA_FILE, _repo_file("db_init.py")),
        *(Placed(f"/opt/litellm/{rel}", _repo_file(rel)) for rel in MIGRATION_FILES),
        *(Placed(f"/opt/litellm/{rel}", _repo_file(rel)) for rel in LOGGER_FILES),
        Placed(f"/etc/systemd/system/{layout.GATEWAY_UNIT}.service", _repo_file("deploy/litellm-gateway.service")),
        Placed(f"/etc/systemd/system/{layout.CONTROL_UNIT}.service",
               _repo_file("deploy/litellm-gateway-control.service")),
    ]


def standin_files() -> list[Placed]:
    """The lab's stand-in for the LLM provider (not part of the deployment: the real VMs have OpenAI)."""
    return [
        Placed("/opt/standin-model/standin_model.py", _repo_file("lab/standin_model.py")),
        Placed(f"/etc/systemd/system/{layout.STANDIN_UNIT}.service", _repo_file("lab/units/standin-model.service")),
    ]


GATEWAY_ENV = "/etc/litellm/litellm.env"
DB_URL_LINE = re.compile(r"^POC1_DB_URL=.*$", re.M)


def db_url_line(values: dict[str, str], tls_on: bool = True) -> str:
    """The logger's URL line as roles/poc1_gateway's litellm.env.j2 writes it (quoted: `&` means something
    to sh, and systemd's EnvironmentFile strips the quotes); sslmode from the TLS switch."""
    text = render("poc1_gateway", "litellm.env.j2", poc1_master_key="", poc1_upstream_api_base="",
                  poc1_upstream_api_key="", poc1_db_user=layout.DB_USER,
                  poc1_db_password=values[layout.DB_PASSWORD_ENV], poc1_db_host=DB.ip, poc1_db_port=layout.DB_PORT,
                  poc1_db_name=layout.DB_NAME, poc1_db_sslmode="verify-full" if tls_on else "disable")
    found = DB_URL_LINE.search(text)
    if found is None:
        raise LabError("roles/poc1_gateway/templates/litellm.env.j2 has no POC1_DB_URL line")
    return found.group(0)


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


def _enable(host: Host, unit: str) -> None:
    link = host.root / "etc/systemd/system/multi-user.target.wants" / unit
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(f"/etc/systemd/system/{unit}")


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


def standin() -> None:
    """The stand-in model on each gateway host, started at boot (before the playbook starts the gateway)."""
    for gateway in GATEWAYS:
        place(gateway, standin_files())
        _enable(gateway, f"{layout.STANDIN_UNIT}.service")


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


def set_gateway_db_url(gateway: Host, values: dict[str, str], tls_on: bool) -> bool:
    """Rewrite only the POC1_DB_URL line of a gateway's env file (others' lines stay); True if changed."""
    path = gateway.root / GATEWAY_ENV.lstrip("/")
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
        envs = [(g.root / GATEWAY_ENV.lstrip("/")).read_text() for g in GATEWAYS]
    except OSError:  # a host not built (yet)
        return "unknown"
    required = any(ln.split()[:3] == ["hostssl", layout.DB_NAME, layout.DB_USER] for ln in hba.splitlines())
    verified = all("sslmode=verify-full" in env for env in envs)
    if required and verified:
        return "on"
    if not required and all("sslmode=disable" in env for env in envs):
        return "off"
    return (f"mixed (pg_hba: {'hostssl' if required else 'host'} for {layout.DB_USER}; gateway URL: "
            f"{'verify-full' if verified else 'no verify-full'})")


def reload_postgres() -> None:
    """pg_hba.conf and the ssl settings take effect on reload; sessions already open keep going."""
    _psql("postgres", "SELECT pg_reload_conf();")


def gateway_db_sessions(gateway: Host | None = None) -> list[tuple[int, bool]]:
    """(pid, encrypted) of litellm_user's sessions from a gateway (default: every gateway of the lab), as
    the db host sees them."""
    ips = ", ".join(f"'{g.ip}'" for g in ((gateway,) if gateway else GATEWAYS))
    sql = ("SELECT a.pid, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid "
           f"WHERE a.usename = '{layout.DB_USER}' AND host(a.client_addr) IN ({ips}) ORDER BY a.pid")
    out = machine.exec_(DB, ["psql", "-X", "-q", "-A", "-t", "-F", " ", "-d", "postgres", "-c", sql],
                        user="postgres", timeout=30).stdout
    return [(int(pid), ssl == "t") for pid, ssl in (ln.split() for ln in out.splitlines() if ln.strip())]


# ------------------------------------------------------------------------------------- after boot


def _psql(database: str, sql: str) -> None:
    machine.exec_(DB, ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database], input=sql,
                  user="postgres", timeout=60)
