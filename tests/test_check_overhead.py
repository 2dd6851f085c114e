"""Check 6's failure path on the embedded lab: a delay injected into the logger's write path (the
TEST-ONLY knob POC1_LOGGER_TEST_DELAY_MS, set in the gateway's environment file and the unit restarted)
must make check 6 fail, and say why.

The delay sleeps before each batch's statement, after the answer has gone out, so the client's latency
does not see it: check 6 catches it through the durability lag (response end to the row's statement
start), one of its stated pass conditions. 100 ms is what every row waited for its batch in the logger of
before issue 14 (its flush interval): that logger, run today, is NO-GO. The healthy control is the GO run
of tests/test_validate.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.acceptance_run import CHECK_6_NOT_ON_CAPACITY, run_suite
from tests.support.lab_unit import gateway_unit

pytestmark = pytest.mark.lab

ENV_FILE = "/etc/litellm/litellm.env"
UNIT = "litellm-gateway"
KNOB = "POC1_LOGGER_TEST_DELAY_MS"
DELAY_MS = 100


def gateway_env_has_knob() -> int:
    """How many times the running gateway process has the knob in its environment (0 or 1)."""
    import lab

    out = lab.exec("gateway", f"tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value {UNIT})/environ "
                              f"| grep -c '^{KNOB}=' || true", timeout=30).stdout.strip()
    return int(out or 0)


def test_injected_write_delay_makes_check_6_fail(tmp_path: Path, embedded_lab) -> None:  # noqa: ANN001
    import lab

    lab.exec("gateway", f"sed -i '/^{KNOB}=/d' {ENV_FILE} && printf '{KNOB}={DELAY_MS}\\n' >> {ENV_FILE}")
    try:
        gateway_unit("restart", UNIT)
        assert gateway_env_has_knob() == 1
        run = run_suite(tmp_path / "evidence", "acceptance/check_overhead.py", "--overhead-pairs=60",
                        *CHECK_6_NOT_ON_CAPACITY, timeout=300)
    finally:
        lab.exec("gateway", f"sed -i '/^{KNOB}=/d' {ENV_FILE}")
        gateway_unit("restart", UNIT)
    assert gateway_env_has_knob() == 0, "the delay knob is still set on the gateway after the undo"

    assert run.rc == 1, run.stdout[-3000:]
    check = run.check("overhead")
    assert check["outcome"] == "failed"
    assert "durability lag p95 " in check["cause"], check["cause"]
    doc = json.loads((run.evidence_dir / "overhead_benchmark.json").read_text())
    lag = doc["durability_lag_ms"]["interleaved"]
    assert lag["p95"] >= DELAY_MS, lag  # every row waited at least for the injected sleep
    assert doc["completeness"]["logged_rows"] == doc["completeness"]["logged_ok"]  # slow, not lost
    assert (run.evidence_dir / "overhead_histogram.png").is_file()
    assert "overhead_histogram.png" in [a["path"] for a in run.manifest["artifacts"]]
    # the unlogged arm ran on the control listener, which the check stopped again
    assert doc["control"]["unit"] == CONTROL and doc["completeness"]["unlogged_rows"] == 0
    assert control_state() == "inactive"


CONTROL = "litellm-gateway-control"
CONTROL_FILE = f"/etc/systemd/system/{CONTROL}.service"


def control_state() -> str:
    import lab

    return lab.exec("gateway", f"systemctl is-active {CONTROL} || true", timeout=30).stdout.strip()


def test_missing_control_listener_fails_check_6_naming_it(tmp_path: Path, embedded_lab) -> None:  # noqa: ANN001
    """Without its control arm check 6 cannot measure (no client may opt out of logging): it must say so."""
    import lab

    lab.exec("gateway", f"mv {CONTROL_FILE} {CONTROL_FILE}.away && systemctl daemon-reload")
    try:
        run = run_suite(tmp_path / "evidence", "acceptance/check_overhead.py", "--overhead-pairs=20", timeout=120)
    finally:
        lab.exec("gateway", f"mv {CONTROL_FILE}.away {CONTROL_FILE} && systemctl daemon-reload")
    assert run.rc == 1, run.stdout[-3000:]
    check = run.check("overhead")
    assert check["outcome"] == "failed"
    assert check["cause"] == (f"control listener {CONTROL} is not installed on gateway (install "
                              "deploy/litellm-gateway-control.service, see POC-1/RUNBOOK.md)"), check["cause"]
    assert "not found" not in lab.exec("gateway", f"systemctl show -p LoadState {CONTROL}", timeout=30).stdout
