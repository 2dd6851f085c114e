"""Break the embedded lab the way a system under sign-off can be wrong, run the suite, and assert the
*right* check fails with the right cause — then undo it. A broken system that still gets GO is the worst
bug this project can have; each test here is one such system that once got GO.

Each test restores the lab in ``finally`` and checks the restore took.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.support import lab_mutation
from tests.support.acceptance_run import CHECK_6_NOT_ON_CAPACITY, SuiteRun, run_suite

pytestmark = pytest.mark.lab

CHECK_6 = "acceptance/check_overhead.py"


def psql(sql: str) -> str:
    import lab

    return lab.exec("db", f"runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -d litellm_db "
                          f"-c {shlex.quote(sql)}", timeout=60).stdout


def assert_fails(run: SuiteRun, check_id: str, pattern: str) -> str:
    assert run.rc == 1, run.stdout[-3000:]
    check = run.check(check_id)
    assert check["outcome"] == "failed", (check_id, check)
    assert re.search(pattern, check["cause"]), (check_id, check["cause"], pattern)
    assert run.manifest["verdict"] != "GO"
    return check["cause"]


def test_callback_blocking_the_event_loop_fails_check_6_on_capacity(tmp_path: Path, embedded_lab) -> None:  # noqa: ANN001
    """30 ms of the gateway's event loop per logged call. LiteLLM runs the callback after the answer, so
    the client's latency barely shows it; the gateway's capacity does."""
    with lab_mutation.patched_logger(lab_mutation.BLOCKS_EVENT_LOOP):
        # 4 capacity groups, not 12: 30 ms a call is six times the limit, no interval that wide straddles it
        run = run_suite(tmp_path / "evidence", CHECK_6, "--overhead-pairs=60", "--overhead-groups=4", timeout=300)
    cause = assert_fails(run, "overhead",
                         r"capacity: gateway time added per logged request \d+\.\d+ ms \(95% CI .*\) not below 5 ms")
    doc = run.check("overhead")["details"]
    print(f"\nblocking callback: {cause}; throughput {doc['throughput_rps']}")


def undo_lost_responses() -> None:
    psql("DROP TRIGGER IF EXISTS poc1_fault_lose_responses ON responses")
    psql("DROP FUNCTION IF EXISTS poc1_fault_lose_responses()")


def test_lost_response_rows_fail_checks_5_and_6(tmp_path: Path, embedded_lab) -> None:  # noqa: ANN001
    """One response row in ten never lands (a trigger swallows it), the request rows do."""
    undo_lost_responses()  # a run killed before its finally (SIGKILL) leaves the trigger behind
    psql("CREATE OR REPLACE FUNCTION poc1_fault_lose_responses() RETURNS trigger LANGUAGE plpgsql AS "
         "$$ BEGIN IF random() < 0.1 THEN RETURN NULL; END IF; RETURN NEW; END $$")
    psql("CREATE TRIGGER poc1_fault_lose_responses BEFORE INSERT ON responses FOR EACH ROW "
         "EXECUTE FUNCTION poc1_fault_lose_responses()")
    try:
        run = run_suite(tmp_path / "evidence", "acceptance/check_chat_call.py", "acceptance/check_db_rows.py",
                        CHECK_6, "acceptance/check_join_check.py", "--overhead-pairs=60", *CHECK_6_NOT_ON_CAPACITY,
                        timeout=300)
    finally:
        undo_lost_responses()
    assert psql("SELECT count(*) FROM pg_trigger WHERE tgname = 'poc1_fault_lose_responses'").strip() == "0"
    assert_fails(run, "join_check", r"\d+ of this run's calls have no response row")
    assert_fails(run, "join_check", r"request\(s\) written in this run's window have no response row")
    assert_fails(run, "overhead", r"every logged request has exactly one response row \d+ of \d+")


def _gateway(cmd: str) -> str:
    import lab

    return lab.exec("gateway", cmd, timeout=90).stdout.strip()


def test_gateway_that_crashed_and_was_restarted_by_systemd_fails_check_1(tmp_path: Path, embedded_lab) -> None:  # noqa: ANN001
    """active (running) again by the time anyone looks: only NRestarts tells."""
    from tests.support.lab_unit import gateway_unit, wait_gateway_answers

    _gateway("kill -9 $(systemctl show -p MainPID --value litellm-gateway)")
    try:
        # its 2 workers keep answering until systemd has seen the main process die: wait for the restart itself
        restarts = _gateway("for i in $(seq 60); do n=$(systemctl show -p NRestarts --value litellm-gateway); "
                            "[ \"$n\" != 0 ] && break; sleep 1; done; echo $n")
        assert restarts == "1"
        wait_gateway_answers()
        run = run_suite(tmp_path / "evidence", "acceptance/check_service_status.py", timeout=120)
    finally:
        gateway_unit("restart")  # a start by hand resets NRestarts
    assert _gateway("systemctl show -p NRestarts --value litellm-gateway") == "0"
    assert_fails(run, "service_status", r"^litellm-gateway on gateway 10\.231\.0\.18 restarted itself 1 time\(s\) "
                                        r"since its last start by hand \(NRestarts=1; .*\): it crashed$")


def test_gateway_restarted_during_the_run_fails_check_1(tmp_path: Path, embedded_lab) -> None:  # noqa: ANN001
    """Restarted while check 6 runs (so the run's start and end readings differ)."""
    import threading

    from tests.support.lab_unit import wait_gateway_answers

    restart = threading.Timer(6.0, lambda: _gateway("systemctl restart litellm-gateway"))
    restart.start()
    try:
        run = run_suite(tmp_path / "evidence", "acceptance/check_service_status.py", CHECK_6,
                        "--overhead-pairs=60", *CHECK_6_NOT_ON_CAPACITY, timeout=300)
    finally:
        restart.cancel()
        restart.join()
        wait_gateway_answers()
    assert_fails(run, "service_status", r"^litellm-gateway on gateway 10\.231\.0\.18 restarted during this run "
                                        r"\(started .* at the run's start, .* at its end\)$")


def test_gateway_restarted_since_the_previous_run_fails_check_1(tmp_path: Path, embedded_lab) -> None:  # noqa: ANN001
    from tests.support.lab_unit import gateway_unit

    first = run_suite(tmp_path / "evidence", "acceptance/check_service_status.py", timeout=120)
    assert first.check("service_status")["outcome"] == "passed", first.check("service_status")
    first_run = first.manifest["run_id"]  # read now: the next run reuses the evidence dir
    gateway_unit("restart")
    second = run_suite(tmp_path / "evidence", "acceptance/check_service_status.py", timeout=120)
    assert_fails(second, "service_status", r"^litellm-gateway on gateway 10\.231\.0\.18 restarted since the "
                                           rf"previous run {first_run} \(started .* then, .* now\)$")
    third = run_suite(tmp_path / "evidence", "acceptance/check_service_status.py", timeout=120)
    assert third.check("service_status")["outcome"] == "passed"  # said once: the new start is now the record


#: no check may take longer than this against a host that stops answering (its own bound is below it)
SILENT_HOST_BOUND_S = 25.0
CHECKS_1_TO_5 = tuple(f"acceptance/check_{c}.py" for c in
                      ("service_status", "gateway_db_connect", "chat_call", "db_rows", "join_check"))


def test_gateway_sshd_that_stops_answering_fails_checks_1_and_2_within_their_bound(  # noqa: ANN001
        tmp_path: Path, embedded_lab) -> None:
    """sshd SIGSTOPped: the TCP port still accepts, no banner ever comes."""
    _gateway("pkill -STOP -x sshd")
    try:
        run = run_suite(tmp_path / "evidence", *CHECKS_1_TO_5, timeout=240)
    finally:
        _gateway("pkill -CONT -x sshd")
    for check_id in ("service_status", "gateway_db_connect"):
        cause = assert_fails(run, check_id, r"ssh gateway \(10\.231\.0\.18:22\): no answer from sshd within 5 s "
                                            r"\(the port accepts, the SSH banner never came: sshd stopped or hung\)")
        assert len(cause.splitlines()) == 1
    for c in run.manifest["checks"]:
        assert c["duration_s"] <= SILENT_HOST_BOUND_S, c
    assert run.check("chat_call")["outcome"] == "passed"  # the gateway itself still answers


def test_frozen_postgresql_fails_the_database_checks_within_their_bound(tmp_path: Path, embedded_lab) -> None:  # noqa: ANN001
    """Every PostgreSQL process SIGSTOPped: connections are accepted by the kernel and never answered."""
    import lab

    from tests.support.lab_unit import wait_gateway_answers

    lab.exec("db", "pkill -STOP -u postgres", timeout=30)
    try:
        run = run_suite(tmp_path / "evidence", *CHECKS_1_TO_5, timeout=240)
    finally:
        lab.exec("db", "pkill -CONT -u postgres", timeout=30)
        wait_gateway_answers()
    for check_id in ("gateway_db_connect", "db_rows", "join_check"):
        cause = assert_fails(run, check_id, r"database poc1_reader@10\.231\.0\.19:5432/litellm_db: .*"
                                            r"(timeout expired|no answer within \d+ s)")
        assert len(cause.splitlines()) == 1
    for c in run.manifest["checks"]:
        assert c["duration_s"] <= SILENT_HOST_BOUND_S, c
    print("\n" + "\n".join(f"  {c['outcome']:7} {c['id']:19} {c['duration_s']:5.2f} s  {c['cause'] or ''}"
                           for c in run.manifest["checks"]))


def test_gateway_running_other_code_than_the_repositorys_fails_check_9(tmp_path: Path, embedded_lab) -> None:  # noqa: ANN001
    """One line appended to the gateway's logger package, restarted: it runs, it logs — and it is not what is
    signed."""
    with lab_mutation.patched_logger(lab_mutation.STALE_CODE):
        run = run_suite(tmp_path / "evidence", "acceptance/check_code_identity.py", timeout=120)
    assert_fails(run, "code_identity", r"^gateway 10\.231\.0\.18 runs code other than the repository's: "
                                       r"/opt/litellm/gateway_logger/__init__\.py \(sha256 [0-9a-f]{12}, the "
                                       r"repository's [0-9a-f]{12}\); code_sha256 [0-9a-f]{12}, the "
                                       r"repository's [0-9a-f]{12}$")


def test_venv_changed_under_the_running_gateway_fails_check_9(tmp_path: Path, embedded_lab) -> None:  # noqa: ANN001
    """A package file of the venv edited while the gateway runs (an upgrade in place, say): the process
    still runs what it imported at start."""
    import lab

    from tests.support.lab_unit import gateway_unit

    target = lab.exec("gateway", "/opt/litellm/venv/bin/python -c 'import sqlalchemy; print(sqlalchemy.__file__)'",
                      timeout=60).stdout.strip()
    original = lab.exec("gateway", f"cat {shlex.quote(target)}", timeout=30).stdout
    lab.exec("gateway", f"printf '\\n# changed in place\\n' >> {shlex.quote(target)}", timeout=30)
    try:
        run = run_suite(tmp_path / "evidence", "acceptance/check_code_identity.py", timeout=120)
    finally:
        lab.exec("gateway", f"cat > {shlex.quote(target)}", input=original, timeout=30)
        gateway_unit("restart")  # the restored file is newer than the process too: start afresh
    assert_fails(run, "code_identity", rf"^1 file\(s\) changed under the running litellm-gateway \(started .*\): "
                                       rf"{re.escape(target)} — it runs what it loaded before, restart it")
    again = run_suite(tmp_path / "evidence2", "acceptance/check_code_identity.py", timeout=120)
    assert again.check("code_identity")["outcome"] == "passed", again.check("code_identity")


def test_dead_writer_fails_check_8(tmp_path: Path, embedded_lab) -> None:  # noqa: ANN001
    """The gateway answers 200 and its logger's writer thread is gone: nothing is written, nothing says so
    unless check 8 reads the writer's own alive gauge."""
    with lab_mutation.patched_logger(lab_mutation.DEAD_WRITER):
        run = run_suite(tmp_path / "evidence", "acceptance/check_chat_call.py",
                        "acceptance/check_logger_metrics.py", timeout=120)
    assert run.check("chat_call")["outcome"] == "passed"
    assert_fails(run, "logger_metrics", r"gateway_logger's writer is not alive \(writer_alive=0\): rows are "
                                        r"queued and nothing writes them")


FOREIGN = "poc1-foreign-session"


def test_another_session_from_the_gateway_host_does_not_vouch_for_a_stopped_gateway(  # noqa: ANN001
        tmp_path: Path, embedded_lab) -> None:
    """The gateway is stopped while another program on its host holds a session as the logger's user (db_init,
    a psql left open): check 2 must not take that session for the logger's."""
    from tests.support.lab_unit import gateway_unit

    hold = ("import os, time, db_init; c = db_init.make_engine(os.environ['POC1_DB_URL'], application_name='psql')"
            ".connect(); print('held', flush=True); time.sleep(170)")
    _gateway(f"systemctl stop litellm-gateway && systemd-run --unit {FOREIGN} --collect "
             f"--property=EnvironmentFile=/etc/litellm/litellm.env --working-directory=/opt/litellm "
             f"--property=RuntimeMaxSec=180 /opt/litellm/venv/bin/python3 -c {shlex.quote(hold)}")
    try:
        held = _gateway(f"for i in $(seq 30); do journalctl -u {FOREIGN} -o cat --no-pager | grep -q held && "
                        "echo yes && break; sleep 1; done")
        assert held == "yes", "the foreign session did not open"
        run = run_suite(tmp_path / "evidence", "acceptance/check_gateway_db_connect.py", timeout=120)
    finally:
        _gateway(f"systemctl stop {FOREIGN} || true")
        gateway_unit("start")
    assert_fails(run, "gateway_db_connect", r"^journal: litellm-gateway is inactive on gateway "
                                            r"10\.231\.0\.18: no logger runs; probe: no session of "
                                            r"litellm_user from the gateway 10\.231\.0\.18 opened by the "
                                            r"logger \(application_name gateway_logger\); 1 other "
                                            r"session\(s\) from it: psql$")
