"""`up` recovers from a killed run, then `down` leaves nothing behind; the lab stays down afterwards. These
break the lab every other lab test needs, so they carry ``lab_teardown``: tests/conftest.py runs them after
every other test of the session, whatever their file is called."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import lab
from lab import cgroups, layout, machine, mounts, network

pytestmark = [pytest.mark.lab, pytest.mark.lab_teardown]
REPO = Path(__file__).resolve().parent.parent


def _lab_processes() -> set[int]:
    """Every process of the lab: the nspawns and everything inside the containers' cgroups."""
    found: set[int] = set()
    for host in layout.HOSTS.values():
        found |= {p for p in (machine.nspawn_pid(host), *machine.stray_nspawn_pids(host)) if p}
        found |= cgroups.pids(host.cgroup)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_up_recovers_from_a_killed_run(embedded_lab: lab.LabDescription) -> None:
    """A killed run leaves containers without their nspawn, the bridge and veths, /proc mounted in a
    rootfs and a lock file naming a dead process: `up` must clean all that and bring up a fresh lab."""
    old = {name: machine.nspawn_pid(host) for name, host in layout.HOSTS.items()}
    assert all(old.values())
    for pid in old.values():
        os.kill(pid, signal.SIGKILL)  # the lab's own nspawns, by id; their containers go on running
    subprocess.run(["mount", "-t", "proc", "poc1-stale-proc", str(layout.GATEWAY.root / "proc")], check=True)
    layout.LOCK_FILE.write_text("999999\n")
    assert network.link_exists(layout.BRIDGE) and cgroups.pids(layout.GATEWAY.cgroup)

    proc = subprocess.run([sys.executable, "-m", "lab", "up"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "lab: up in" in proc.stdout  # rebuilt, not "already up"
    new = {name: machine.nspawn_pid(host) for name, host in layout.HOSTS.items()}
    assert all(new.values()) and not set(new.values()) & set(old.values())
    assert sorted(mounts.under(layout.STATE_DIR)) == sorted(str(h.root) for h in layout.HOSTS.values())
    assert lab.is_up()


def test_down_leaves_no_process_link_mount_or_file(embedded_lab: lab.LabDescription) -> None:
    before = _lab_processes()
    assert len(before) > 10  # a booted lab: two nspawns, two systemds, sshd, PostgreSQL, the gateway...

    proc = subprocess.run([sys.executable, "-m", "lab", "down"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr

    assert [p for p in before if _alive(p)] == []
    assert _lab_processes() == set()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert "br-poc1" not in links and "vb-poc1" not in links
    assert mounts.under(layout.STATE_DIR, layout.CACHE_DIR) == []
    assert not layout.STATE_DIR.exists()
    assert [d for h in layout.HOSTS.values() for d in cgroups.dirs(h.cgroup) if d.exists()] == []
    assert not any((layout.NSPAWN_PROPAGATE / h.machine).exists() for h in layout.HOSTS.values())
    assert all((h.base.dir / "usr/bin/systemctl").exists() for h in layout.HOSTS.values())  # the cache stays

    status = subprocess.run([sys.executable, "-m", "lab", "status"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert (status.returncode, status.stdout) == (3, "lab: down\n")
