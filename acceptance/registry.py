"""The acceptance checks of the closeout pack, in the order they run.

Why a registry: the manifest, the verdict, the HTML report and the scheduled runs all need the same
list of check ids, titles and artifact names, including checks whose module is not written yet (a
check with no module is listed as missing and does not run). A check module declares itself with
``pytestmark = pytest.mark.check("<id>")``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckSpec:
    id: str
    title: str
    #: files the check always leaves in the evidence dir (a placeholder if it ended before writing one)
    artifacts: tuple[str, ...]


CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec("service_status", "litellm-gateway service is active (running)", ("service_status.txt",)),
    CheckSpec("gateway_db_connect", "Gateway is connected to PostgreSQL (logger journal + live session)",
              ("gateway_db_connect.log",)),
    CheckSpec("chat_call", "Runbook chat call returns HTTP 200 with a completion, plain and streamed",
              ("chat_call.json", "chat_stream.json")),
    CheckSpec("db_rows", "This run's requests (plain and streamed) and their responses are logged",
              ("requests_head.txt", "responses_head.txt")),
    CheckSpec("join_check", "Request-to-response join and table integrity", ("join_check.txt",)),
    # check 6: written by its own module (acceptance/check_overhead.py), which declares its artifacts here
    CheckSpec("overhead", "DB-logging overhead benchmark", ()),
    # production prerequisites beyond the closeout pack's six, after them
    CheckSpec("db_tls", "Gateway's database sessions are encrypted (TLS >= 1.2)", ("db_tls.txt",)),
    CheckSpec("logger_metrics", "Logger metrics: no row dropped, database connected, pool reuse",
              ("logger_metrics.txt",)),
    CheckSpec("code_identity", "The gateway runs the repository's code, unchanged since it started",
              ("code_identity.txt",)),
)

BY_ID: dict[str, CheckSpec] = {c.id: c for c in CHECKS}
#: the order checks are listed in (manifest, report, summary): the closeout pack's numbering
ORDER: dict[str, int] = {c.id: i for i, c in enumerate(CHECKS)}
#: the order they run in: check 5 judges every call the run made, check 6's included, so it runs after it;
#: check 1 runs last, so it sees whether the unit restarted while the others ran
RUN_LAST = ("join_check", "logger_metrics", "service_status")
RUN_ORDER: dict[str, int] = {cid: i for i, cid in enumerate(
    [c.id for c in CHECKS if c.id not in RUN_LAST] + list(RUN_LAST))}
