"""The scheduled-run entry points in deploy/: systemd timer + service, the cron line, the CI workflow.

All three must call the one entry point (``make regression HOSTS=lab``); the units must pass
``systemd-analyze verify`` on a real systemd host (the embedded lab's gateway, reached with lab.exec).
Nothing here starts a run or dials the ``lab`` group: ``make -n`` only prints.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SERVICE = DEPLOY / "poc1-acceptance.service"
TIMER = DEPLOY / "poc1-acceptance.timer"
CRONTAB = DEPLOY / "crontab.example"
WORKFLOW = DEPLOY / "ci" / "scheduled-acceptance.yml"
ENTRY_POINT = ["make", "regression", "HOSTS=lab"]


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value in order (systemd keys repeat, e.g. Environment=)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, f"{path.name}: not a unit-file line: {line}"
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def calls_entry_point(command: str) -> bool:
    """True when the last command of a shell line is exactly the entry point (any prefix like env/cd)."""
    last = re.split(r"&&|;", command)[-1]
    words = [w for w in shlex.split(last) if not w.startswith(">") and w != "2>&1"]
    words = [w for w in words if not re.fullmatch(r"\d?>>?\S*", w)]
    return words[-3:] == ENTRY_POINT


def test_timer_is_hourly_persistent_and_starts_the_service() -> None:
    t = unit(TIMER)["Timer"]
    assert t["OnCalendar"] == ["hourly"]
    assert t["Persistent"] == ["true"]
    assert t["Unit"] == [SERVICE.name]
    assert unit(TIMER)["Install"]["WantedBy"] == ["timers.target"]


def test_service_is_a_oneshot_calling_the_entry_point() -> None:
    s = unit(SERVICE)["Service"]
    assert s["Type"] == ["oneshot"]
    (exec_start,) = s["ExecStart"]
    assert calls_entry_point(exec_start)
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in s["Environment"]
    # secrets only through an EnvironmentFile, never inline
    assert not re.search(r"(KEY|PASSWORD)=", SERVICE.read_text().split("[Service]")[1].replace("_ENV", ""))


def _cron_field_ok(field: str, lo: int, hi: int) -> bool:
    for part in field.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return False
        if base == "*":
            continue
        a, _, b = base.partition("-")
        nums = [a] + ([b] if b else [])
        if not all(n.isdigit() and lo <= int(n) <= hi for n in nums):
            return False
    return True


def test_cron_line_is_valid_and_calls_the_entry_point() -> None:
    jobs = [ln for ln in CRONTAB.read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#") and not re.match(r"^[A-Z_]+=", ln)]
    assert len(jobs) == 1, jobs
    fields = jobs[0].split(None, 6)
    minute, hour, dom, month, dow, user, command = fields
    for value, lo, hi in ((minute, 0, 59), (hour, 0, 23), (dom, 1, 31), (month, 1, 12), (dow, 0, 7)):
        assert _cron_field_ok(value, lo, hi), value
    assert user == "root"
    assert calls_entry_point(command.split(">>")[0])
    assert not _cron_field_ok("61", 0, 59) and not _cron_field_ok("*/0", 0, 59)  # the validator can say no


def test_ci_workflow_is_scheduled_serialised_and_calls_the_entry_point() -> None:
    wf = yaml.safe_load(WORKFLOW.read_text())
    triggers = wf.get("on") or wf.get(True)  # YAML 1.1 reads a bare `on` as True
    (cron,) = [s["cron"] for s in triggers["schedule"]]
    minute, hour, dom, month, dow = cron.split()
    for value, lo, hi in ((minute, 0, 59), (hour, 0, 23), (dom, 1, 31), (month, 1, 12), (dow, 0, 7)):
        assert _cron_field_ok(value, lo, hi)
    assert wf["concurrency"]["cancel-in-progress"] is False
    (job,) = wf["jobs"].values()
    assert "self-hosted" in job["runs-on"]
    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert sum(calls_entry_point(r) for r in runs) == 1
    assert job["env"]["POC1_RUNS_DIR"].startswith("/")  # history survives the workspace wipe
    for step in job["steps"]:
        for name, value in (step.get("env") or {}).items():
            assert str(value).startswith("${{ secrets."), f"{name} must come from the secret store"


def test_make_regression_runs_the_runner_on_the_given_group() -> None:
    """`make -n` prints the recipe without running it (no deps install, no run, nothing dialled)."""
    proc = subprocess.run(["make", "-n", "-C", str(REPO), "regression", "HOSTS=lab"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr.strip()[-300:]
    assert re.search(r"-m tools\.regression --hosts lab\b", proc.stdout), proc.stdout[-500:]


# --------------------------------------------------------------------------------------------------
# systemd-analyze verify on a real systemd host: the embedded lab's gateway


@pytest.mark.lab
def test_units_pass_systemd_analyze_verify_on_the_lab_gateway(embedded_lab) -> None:  # noqa: ANN001
    good = verify_in_gateway({SERVICE.name: SERVICE.read_text(), TIMER.name: TIMER.read_text()})
    assert good.returncode == 0, (good.stdout + good.stderr).strip()[-800:]
    # the same check fails on a broken timer: it is really verifying
    broken = TIMER.read_text().replace("OnCalendar=hourly", "OnCalendar=hourlyish")
    bad = verify_in_gateway({SERVICE.name: SERVICE.read_text(), TIMER.name: broken})
    assert bad.returncode != 0 and "hourlyish" in (bad.stdout + bad.stderr)


def verify_in_gateway(files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Copy unit files into a scratch dir on the lab's gateway host and `systemd-analyze verify` them there
    (a real systemd 252 as PID 1 of that host; nothing is installed or enabled)."""
    import lab

    scratch = f"/tmp/poc1-units-{uuid.uuid4().hex[:8]}"
    lab.exec("gateway", ["mkdir", "-p", scratch])
    try:
        for name, text in files.items():
            lab.exec("gateway", ["sh", "-c", 'cat > "$1"', "sh", f"{scratch}/{name}"], input=text)
        # the timer first: verify also loads the service it names from the same directory
        return lab.exec("gateway", ["systemd-analyze", "verify", f"{scratch}/{TIMER.name}",
                                    f"{scratch}/{SERVICE.name}"], check=False, timeout=60)
    finally:
        lab.exec("gateway", ["rm", "-rf", scratch], check=False)


GATEWAY_UNIT = DEPLOY / "litellm-gateway.service"
CONTROL_UNIT = DEPLOY / "litellm-gateway-control.service"


def test_the_gateway_unit_puts_the_logger_package_on_the_path() -> None:
    """The logger is a package (gateway_logger/): LiteLLM imports config.yaml's callback from sys.path, so the
    unit's PYTHONPATH must be the directory the runbook installs the package and db_init.py into."""
    s = unit(GATEWAY_UNIT)["Service"]
    assert "PYTHONPATH=/opt/litellm" in s["Environment"] and s["WorkingDirectory"] == ["/opt/litellm"]
    assert "`/opt/litellm/gateway_logger/`" in (REPO / "POC-1" / "RUNBOOK.md").read_text()
    callbacks = yaml.safe_load((REPO / "config.yaml").read_text())["litellm_settings"]["callbacks"]
    assert callbacks == "gateway_logger.proxy_handler_instance"
    assert (REPO / "gateway_logger" / "__init__.py").is_file()
    # the control listener drops the callbacks at start: it never imports the logger
    (pre,) = unit(CONTROL_UNIT)["Service"]["ExecStartPre"]
    assert "pop('callbacks'" in pre
