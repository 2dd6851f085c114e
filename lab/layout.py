"""Names, addresses and paths of the embedded lab: the contract of docs/ARCHITECTURE.md in one place.

hosts.yml (group ``local``) repeats the addresses and paths for the acceptance suite; tests/test_lab.py
checks that the two agree.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAB_DIR = Path(__file__).resolve().parent

DEFAULT_MIRROR = "http://deb.debian.org/debian"

BRIDGE = "br-poc1"
RUNNER_IP = "10.231.0.1"
PREFIX_LEN = 24

STATE_DIR = Path("/var/lib/poc1-lab")          # per lab, removed by `down`
CACHE_DIR = Path("/var/cache/poc1-lab")        # rootfs cache, kept by `down`
DEB_CACHE = CACHE_DIR / "debs"               # one subdirectory per Debian release
WHEEL_CACHE = CACHE_DIR / "wheels"
LOCK_FILE = CACHE_DIR / "lab.lock"

SSH_DIR = STATE_DIR / "ssh"
SSH_KEY = SSH_DIR / "id_ed25519"
KNOWN_HOSTS = SSH_DIR / "known_hosts"
SECRETS_FILE = STATE_DIR / "secrets.env"
DESCRIPTION_FILE = STATE_DIR / "lab.json"
MACHINES_DIR = STATE_DIR / "machines"
LOG_DIR = STATE_DIR / "log"
TLS_DIR = STATE_DIR / "tls"                    # the lab's CA (key + cert) and the db host's certificate

#: where the TLS files live inside the hosts (Debian's places, like ssl-cert's snakeoil pair)
DB_TLS_CERT = "/etc/ssl/certs/poc1-lab-db.crt"
DB_TLS_KEY = "/etc/ssl/private/poc1-lab-db.key"   # root:ssl-cert 0640, as PostgreSQL accepts it
GATEWAY_DB_CA = "/etc/litellm/db-ca.crt"          # the logger verifies the db host with it (verify-full)

#: names of the environment variables that carry the lab's secrets (values only in SECRETS_FILE)
MASTER_KEY_ENV = "POC1_LAB_MASTER_KEY"
DB_PASSWORD_ENV = "POC1_LAB_DB_PASSWORD"
DB_READER_PASSWORD_ENV = "POC1_LAB_DB_READER_PASSWORD"
UPSTREAM_API_KEY_ENV = "POC1_LAB_UPSTREAM_API_KEY"  # the gateway's key for the stand-in model

DB_NAME = "litellm_db"
DB_USER = "litellm_user"
DB_READER = "poc1_reader"
DB_PORT = 5432
#: PostgreSQL of the db host: 17 (Debian 13, as the seed's lab ran) or, for a compatibility run of the
#: schema and logger, 15 (Debian 12): ``POC1_LAB_PG=15 python -m lab up``. Without the variable, the
#: version of the lab that is up (recorded in PG_VERSION_FILE), else 17.
PG_ENV = "POC1_LAB_PG"
PG_SUITES = {"17": "trixie", "15": "bookworm"}
PG_VERSION_FILE = STATE_DIR / "pg_version"


def _pg_version() -> str:
    wanted = os.environ.get(PG_ENV, "").strip()
    if wanted:
        return wanted
    try:
        return PG_VERSION_FILE.read_text().strip() or "17"
    except OSError:
        return "17"


PG_VERSION = _pg_version()

#: the log tables' layout: "" plain, or daily / monthly partitions (db_init.py create --partition):
#: ``POC1_LAB_PARTITION=daily python -m lab up``; without the variable, the layout of the lab that is up
PARTITION_ENV = "POC1_LAB_PARTITION"
PARTITION_FILE = STATE_DIR / "partition"
PARTITIONS = ("", "daily", "monthly")


def _partition() -> str:
    if PARTITION_ENV in os.environ:
        return os.environ[PARTITION_ENV].strip()
    try:
        return PARTITION_FILE.read_text().strip()
    except OSError:
        return ""


PARTITION = _partition()
PG_UNIT = f"postgresql@{PG_VERSION}-main"

GATEWAY_PORT = 4000
GATEWAY_UNIT = "litellm-gateway"
CONTROL_UNIT = "litellm-gateway-control"  # check 6's control listener, started by the suite
STANDIN_UNIT = "standin-model"
STANDIN_PORT = 8011
MODEL = "gpt-4o-mini"

CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
NSPAWN_PROPAGATE = Path("/run/systemd/nspawn/propagate")


@dataclass(frozen=True)
class Base:
    """A cached base rootfs: one Debian release with the packages of one host's role, built once."""

    role: str
    suite: str
    packages: tuple[str, ...]
    #: the gateway's venv with the pinned versions (lab/requirements-gateway.txt), built from the wheels
    venv: bool = False

    @property
    def key(self) -> str:
        return f"{self.role}-{self.suite}"

    @property
    def dir(self) -> Path:
        return CACHE_DIR / f"base-{self.key}"

    @property
    def stamp(self) -> Path:
        return CACHE_DIR / f"base-{self.key}.stamp"

    @property
    def build_tmp(self) -> Path:
        return CACHE_DIR / f"base-{self.key}.tmp"

    @property
    def debs(self) -> Path:
        return DEB_CACHE / self.suite


#: what Ansible needs on a host (python3, python3-apt for its apt module) and what each role runs
GATEWAY_BASE = Base("gateway", "bookworm", ("python3", "python3-venv", "python3-apt", "python3-setuptools"),
                    venv=True)
DB_BASE = Base("db", PG_SUITES.get(PG_VERSION, "trixie"), ("python3", "python3-apt", f"postgresql-{PG_VERSION}"))


@dataclass(frozen=True)
class Host:
    """One lab host: its inventory name, machine name, address and the units that make its role."""

    name: str
    ip: str
    units: tuple[str, ...]
    base: Base
    #: the machine's name part when ``name`` is too long for it (nspawn's veth is vb-MACHINE, ≤ 15 chars)
    short: str | None = None

    @property
    def machine(self) -> str:
        return f"poc1-{self.short or self.name}"

    @property
    def url(self) -> str:
        """The gateway's HTTP address (a gateway host)."""
        return f"http://{self.ip}:{GATEWAY_PORT}"

    @property
    def playbook_name(self) -> str:
        """Its name in the playbook's inventory (deploy/ansible/inventories/local.yml): ``lab-NAME``."""
        return f"lab-{self.name}"

    @property
    def veth(self) -> str:
        """The host side of the container's veth, as systemd-nspawn names it (vb-MACHINE, ≤15 chars)."""
        return f"vb-{self.machine}"[:15]

    @property
    def cgroup(self) -> str:
        return f"poc1-lab-{self.name}"

    @property
    def machine_dir(self) -> Path:
        return MACHINES_DIR / self.name

    @property
    def root(self) -> Path:
        return self.machine_dir / "root"

    @property
    def pid_file(self) -> Path:
        return self.machine_dir / "nspawn.pid"

    @property
    def console_log(self) -> Path:
        return LOG_DIR / f"{self.name}.console.log"


GATEWAY = Host("gateway", "10.231.0.18", (STANDIN_UNIT, GATEWAY_UNIT), GATEWAY_BASE)
DB = Host("db", "10.231.0.19", (PG_UNIT,), DB_BASE)
#: a fleet: ``make lab-up GATEWAYS=N`` (POC1_LAB_GATEWAYS) adds gateway-2.. (10.231.0.20..), each a whole
#: gateway host of its own (stand-in model, LiteLLM with the logger) writing to the one db host
MAX_GATEWAYS = 4
ALL_GATEWAYS: tuple[Host, ...] = (GATEWAY, *(
    Host(f"gateway-{n}", f"10.231.0.{18 + n}", (STANDIN_UNIT, GATEWAY_UNIT), GATEWAY_BASE, short=f"gw{n}")
    for n in range(2, MAX_GATEWAYS + 1)))
GATEWAYS_ENV = "POC1_LAB_GATEWAYS"
GATEWAYS_FILE = STATE_DIR / "gateways"
#: the extra gateways as inventory files the lab writes (lab/fleet.py): read after hosts.yml (group
#: ``local``) by the suite and after inventories/local.yml by the playbook
SUITE_FLEET_INVENTORY = STATE_DIR / "fleet-hosts.yml"
PLAYBOOK_FLEET_INVENTORY = STATE_DIR / "fleet-playbook.yml"


def _gateway_count() -> int:
    wanted = os.environ.get(GATEWAYS_ENV, "").strip()
    if not wanted:
        try:
            wanted = GATEWAYS_FILE.read_text().strip()
        except OSError:
            wanted = ""
    try:
        return int(wanted or "1")
    except ValueError:
        return -1  # refused by `lab up` with a one-line cause (lifecycle.up)


GATEWAY_COUNT = _gateway_count()
GATEWAYS: tuple[Host, ...] = ALL_GATEWAYS[:max(1, min(GATEWAY_COUNT, MAX_GATEWAYS))]
HOSTS: dict[str, Host] = {h.name: h for h in (DB, *GATEWAYS)}
#: every host a lab of any size may have left behind (teardown removes them all)
ALL_HOSTS: tuple[Host, ...] = (*ALL_GATEWAYS, DB)
GATEWAY_URL = GATEWAY.url
BUILD_CGROUP = "poc1-lab-build"
