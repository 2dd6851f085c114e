"""Change a systemd unit on an embedded-lab host and wait for the gateway to answer again: the undo
step of every test that breaks the lab on purpose."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tools.polling import poll_until

ROOT = Path(__file__).resolve().parents[2]

#: a 2-worker gateway starts in ~18 s alone; it took over 90 s while other test runs shared the 2 cores
READY_TIMEOUT_S = 180


def wait_gateway_answers(timeout: float = READY_TIMEOUT_S) -> None:
    """Until the lab's gateway answers a chat call with 200 (lab.is_up), or fail after ``timeout``."""
    import lab

    if not poll_until(lab.is_up, timeout=timeout, interval=1.0)[0]:
        raise AssertionError(f"the lab's gateway did not answer within {timeout:g} s")


def gateway_unit(action: str, unit: str = "litellm-gateway") -> None:
    """``systemctl ACTION UNIT`` on the gateway host; after start/restart, wait until it answers."""
    import lab

    lab.systemctl("gateway", action, unit, check=True, timeout=90)
    if action in ("start", "restart"):
        wait_gateway_answers()


def lab_up(gateways: int = 1, partition: str = "") -> str:
    """``python -m lab up`` with this many gateway hosts and this log-table layout (another size or layout
    than the lab's is a rebuild); its output. In a child process: the lab's layout is read at import."""
    proc = subprocess.run([sys.executable, "-m", "lab", "up"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1500, stdin=subprocess.DEVNULL,
                          env={**os.environ, "POC1_LAB_GATEWAYS": str(gateways), "POC1_LAB_PARTITION": partition})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    return proc.stdout
