"""Check 2's reading of the journal: every worker is judged by its own latest connection line."""
from __future__ import annotations

from acceptance.check_gateway_db_connect import latest_per_worker

J = "2026-12-01T13:45:00.475752+0000 gateway litellm[{pid}]: gateway_logger: {text}"


def lines(*pairs: tuple[int, str]) -> list[str]:
    return [J.format(pid=pid, text=text) for pid, text in pairs]


def test_each_worker_keeps_its_own_latest_line() -> None:
    got = latest_per_worker(lines(
        (11, "starting (pid 11, one of 2 workers (supervisor pid 10); ...)"),
        (11, "database connection established: postgresql://u:***@db/x"),
        (12, "starting (pid 12, one of 2 workers (supervisor pid 10); ...)"),
        (12, "database connection established: postgresql://u:***@db/x"),
        (11, "database connection lost: server closed the connection"),
    ))
    assert got == {11: "lost: server closed the connection", 12: "established: postgresql://u:***@db/x"}


def test_a_worker_that_only_started_has_no_connection_yet() -> None:
    got = latest_per_worker(lines((21, "starting (pid 21, the only worker; ...)")))
    assert got == {21: ""}


def test_a_restart_of_a_pid_forgets_its_earlier_lines_and_foreign_lines_are_ignored() -> None:
    got = latest_per_worker([
        *lines((31, "database connection established: x"), (31, "starting (pid 31, the only worker; ...)")),
        "2026-12-01T13:45:00+0000 gateway systemd[1]: Started litellm-gateway.service",
    ])
    assert got == {31: ""}
