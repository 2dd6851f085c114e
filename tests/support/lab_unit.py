"""Change a systemd unit on an embedded-lab host and wait for the gateway to answer again: the undo
step of every test that breaks the lab on purpose."""
from __future__ import annotations

from tools.polling import poll_until

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
