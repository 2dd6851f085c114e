"""lab.machine's view of the systemd-nspawn it started, without a lab: the PID file is trusted for our own
child whatever its argv (between fork and exec it is `python -m lab up`'s: read as "exited during boot",
the CI failure of a fleet rebuild), never for a foreign process; a child that exited says its status."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab import layout, machine


@pytest.fixture()
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> layout.Host:
    monkeypatch.setattr(layout, "MACHINES_DIR", tmp_path / "machines")
    monkeypatch.setattr(layout, "LOG_DIR", tmp_path / "log")
    monkeypatch.setattr(layout, "CACHE_DIR", tmp_path / "cache")
    h = layout.Host("probe", "127.0.0.1", (), layout.GATEWAY_BASE)
    h.machine_dir.mkdir(parents=True)
    layout.LOG_DIR.mkdir()
    return h


def test_our_child_is_ours_before_its_exec_and_says_why_it_exited(host: layout.Host) -> None:
    # a child whose argv names no machine: what the PID shows before `nice ... systemd-nspawn` is exec'd
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; print('booting', flush=True); "
                             "time.sleep(0.5); sys.exit(3)"], stdout=host.console_log.open("wb"))
    machine._STARTED[proc.pid] = proc
    try:
        host.pid_file.write_text(f"{proc.pid}\n")
        assert machine.nspawn_pid(host) == proc.pid
        proc.wait(10)
        assert machine.nspawn_pid(host) is None
        cause = machine.exit_cause(host)
        assert cause.startswith("exit code 3; console: booting") and str(layout.CACHE_DIR) in cause
        assert (layout.CACHE_DIR / "failed-boot-probe.log").read_text() == "booting\n"
    finally:
        machine._STARTED.pop(proc.pid, None)


def test_a_foreign_process_in_the_pid_file_is_not_our_nspawn(host: layout.Host) -> None:
    host.pid_file.write_text(f"{os.getpid()}\n")  # alive, but not started by lab.machine nor named for it
    assert machine.nspawn_pid(host) is None
    assert machine.exit_cause(host).startswith("exit status unknown; console: (nothing)")
