"""The one helper per mechanism (tools/files.py, polling.py, process.py, runlock.py, exit_codes.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import db_init
from tools import exit_codes, process, regression, validate, verify
from tools.files import atomic_file, atomic_write
from tools.polling import poll_until
from tools.runlock import try_lock


def test_atomic_write_replaces_whole_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "doc.txt"
    atomic_write(target, "old")
    atomic_write(target, b"new", 0o600)
    assert target.read_bytes() == b"new" and (target.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["doc.txt"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "doc.txt"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError), atomic_file(target) as out:
        out.write(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["doc.txt"]


def test_poll_until_returns_the_first_satisfying_value_or_the_last_one_seen() -> None:
    seen = iter(range(100))
    assert poll_until(lambda: next(seen), lambda v: v >= 3, timeout=5, interval=0) == (True, 3)
    met, last = poll_until(lambda: "still booting", lambda v: v == "running", timeout=0.05, interval=0.01)
    assert (met, last) == (False, "still booting")


def test_poll_until_probes_at_least_once_and_lets_a_hopeless_probe_raise() -> None:
    calls: list[int] = []
    assert poll_until(lambda: calls.append(1) or True, timeout=0) == (True, True) and calls == [1]

    def exited() -> bool:
        raise LookupError("the process exited")

    with pytest.raises(LookupError):
        poll_until(exited, timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_wait_or_stop_stops_the_whole_group_at_its_deadline() -> None:
    # a child that ignores SIGTERM and has a grandchild: both must be gone after the deadline
    script = "import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
             "subprocess.Popen(['sleep', '60']); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    time.sleep(0.3)
    rc = process.wait_or_stop(proc, timeout=0.5, steps=((signal.SIGTERM, 0.5), (signal.SIGKILL, 5.0)))
    assert rc == process.TIMED_OUT == exit_codes.TIMED_OUT
    assert poll_until(lambda: not _group_alive(proc.pid), timeout=5, interval=0.05)[0]


def test_wait_or_stop_returns_the_childs_own_code() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"], start_new_session=True)
    assert process.wait_or_stop(proc, timeout=30) == 7


def test_run_lock_is_exclusive_and_dies_with_its_holder(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    fd = try_lock(lock, "pid 1 since now")
    assert fd is not None and lock.read_text() == "pid 1 since now\n"
    assert try_lock(lock, "second") is None
    os.close(fd)  # what the kernel does when the holder dies
    again = try_lock(lock, "third", mode=0o600)
    assert again is not None
    os.close(again)


def test_every_tool_takes_its_exit_codes_from_the_one_table() -> None:
    assert (validate.EXIT_GO, validate.EXIT_NO_GO, validate.EXIT_NOTHING) == (
        exit_codes.OK, exit_codes.FAILED, exit_codes.UNUSABLE)
    assert (verify.EXIT_OK, verify.EXIT_FAILED, verify.EXIT_UNUSABLE) == (
        exit_codes.OK, exit_codes.FAILED, exit_codes.UNUSABLE)
    assert (regression.EXIT_GO, regression.EXIT_NO_GO, regression.EXIT_REGRESSION, regression.EXIT_SETTINGS,
            regression.EXIT_LOCKED) == (exit_codes.OK, exit_codes.FAILED, exit_codes.REGRESSION,
                                        exit_codes.SETTINGS, exit_codes.LOCKED)
    # db_init.py is deployed alone on the gateway, so it keeps its own constants: held to the table here
    assert (db_init.EXIT_OK, db_init.EXIT_DRIFT, db_init.EXIT_UNREACHABLE) == (
        exit_codes.OK, exit_codes.FAILED, exit_codes.UNUSABLE)
