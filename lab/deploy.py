"""The lab's hosts provisioned by the project's own playbook (deploy/ansible/site.yml, inventory
``inventories/local.yml``): what a user runs against the real VMs is what every lab-up runs and tests.

Only the lab's "hardware" is the lab's own code (rootfs, containers, network, SSH and TLS keys, the
stand-in model); everything the runbook installs comes from the playbook.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from lab import credentials, layout
from lab.errors import LabError
from lab.shell import clean_env

ANSIBLE_DIR = layout.REPO / "deploy" / "ansible"
PLAYBOOK = ANSIBLE_DIR / "site.yml"
INVENTORY = ANSIBLE_DIR / "inventories" / "local.yml"
CONFIG = ANSIBLE_DIR / "ansible.cfg"
LOG = layout.CACHE_DIR / "playbook.log"  # kept by `down`: the cause of a failed up stays readable
TIMEOUT_S = 600
#: passed through to ansible-playbook when set: ANSIBLE_CALLBACKS_ENABLED=ansible.builtin.junit writes each
#: task's time into JUNIT_OUTPUT_DIR (how the playbook's times in POC-1/FINDINGS.md were measured)
TIMING_ENV = ("ANSIBLE_CALLBACKS_ENABLED", "JUNIT_OUTPUT_DIR", "JUNIT_TASK_CLASS")
LAB_NETWORK = ipaddress.ip_network(f"{layout.RUNNER_IP}/{layout.PREFIX_LEN}", strict=False)
RECAP = re.compile(r"^(?P<host>\S+)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                   r"\s+failed=(?P<failed>\d+)", re.MULTILINE)
TASK = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(?P<name>[^\]]*)\]", re.MULTILINE)
FATAL = re.compile(r"^fatal: \[(?P<host>[^\]]+)\]: (?P<kind>FAILED|UNREACHABLE)! => (?P<body>.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Recap:
    """One playbook run: per host its counts (ok, changed, unreachable, failed), and how long it took."""

    hosts: dict[str, dict[str, int]]
    seconds: float

    def changed(self) -> dict[str, int]:
        return {h: r["changed"] for h, r in self.hosts.items()}

    def line(self) -> str:
        return ", ".join(f"{h} changed={r['changed']}" for h, r in sorted(self.hosts.items())) + \
            f" ({self.seconds:.1f} s)"


def _addresses(node: object) -> list[str]:
    if isinstance(node, dict):
        return [str(v) for k, v in node.items() if k == "ansible_host"] + \
            [a for v in node.values() for a in _addresses(v)]
    return []


def inventory_addresses(path: Path = INVENTORY) -> list[str]:
    return _addresses(yaml.safe_load(path.read_text()))


def require_lab_addresses(path: Path = INVENTORY) -> None:
    """Ansible's ssh is outside the suite's network guard: every address it may dial is checked here."""
    found = inventory_addresses(path)
    outside = [a for a in found if not _in_lab(a)]
    if outside or not found:
        raise LabError(f"{path}: refusing to run the playbook: address {outside[0] if outside else '(none)'} "
                       f"is not the embedded lab's ({LAB_NETWORK})")


def _in_lab(address: str) -> bool:
    try:
        return ipaddress.ip_address(address) in LAB_NETWORK
    except ValueError:
        return False


def _ansible_playbook() -> str:
    beside = Path(sys.executable).with_name("ansible-playbook")
    found = str(beside) if beside.is_file() else shutil.which("ansible-playbook")
    if not found:
        raise LabError("ansible-playbook not found (pip install ansible-core: make deps)")
    return found


def _cause(out: str) -> str:
    """The first failure of a run in one line: host, task, Ansible's message."""
    fatal = FATAL.search(out)
    if fatal is None:
        tail = [ln for ln in out.splitlines() if ln.strip()]
        return tail[-1][:300] if tail else "no output"
    tasks = [m["name"] for m in TASK.finditer(out, 0, fatal.start())]
    try:
        body = json.loads(fatal["body"])
        msg = str(body.get("msg") or body.get("stderr") or body)
    except ValueError:
        msg = fatal["body"]
    msg = " ".join(msg.split())[:300]
    return f"{fatal['host']}: task '{tasks[-1] if tasks else '?'}' {fatal['kind'].lower()}: {msg}"


def run(values: dict[str, str], *extra: str, timeout: float = TIMEOUT_S) -> Recap:
    """``ansible-playbook site.yml`` against the lab with its secrets in the environment (the inventory
    looks them up by name); the output, secrets scrubbed, in LOG. A failure is one line naming the host
    and the task."""
    from lab import fleet

    inventories = [INVENTORY, *fleet.playbook_sources()]  # a lab of several gateways: gateway-2.. too
    for path in inventories:
        require_lab_addresses(path)
    layout.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    timing = {k: os.environ[k] for k in TIMING_ENV if k in os.environ}  # e.g. the junit callback's task times
    env = clean_env(**values, **timing, HOME=str(Path.home()), ANSIBLE_CONFIG=str(CONFIG), ANSIBLE_NOCOLOR="1",
                    ANSIBLE_FORCE_COLOR="0", **{layout.PG_ENV: layout.PG_VERSION,
                                                                 layout.PARTITION_ENV: layout.PARTITION})
    argv = [_ansible_playbook(), *(a for p in inventories for a in ("-i", str(p))), str(PLAYBOOK), *extra]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=layout.REPO, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        LOG.write_text(credentials.scrub(out, values))
        raise LabError(f"playbook: no end within {timeout:.0f} s (last task: "
                       f"{([m['name'] for m in TASK.finditer(out)] or ['?'])[-1]}; log {LOG})") from None
    seconds = time.monotonic() - t0
    out = credentials.scrub(proc.stdout + proc.stderr, values)
    LOG.write_text(out)
    hosts = {m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
             for m in RECAP.finditer(out)}
    if proc.returncode != 0 or not hosts:
        raise LabError(f"playbook: {_cause(out)} (exit {proc.returncode}; log {LOG})")
    return Recap(hosts, seconds)
