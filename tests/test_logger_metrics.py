"""Issue 7: the logger's metrics, and the acceptance check logger_metrics that reads them.

Without a lab: a real writer against the loopback PostgreSQL serves its metrics over HTTP; the check's
parser and judgement read that text (pool reuse from real checkouts, a real forced drop). On the
embedded lab: the check passes after the overhead benchmark and the report shows the pool reuse of the
run; a forced overflow (small queue and spool bounds, PostgreSQL stopped, a burst) makes it fail with
a one-line cause naming the dropped count, which equals the rows really missing. Everything changed on
the lab is undone in ``finally``.
"""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import db_init
import gateway_logger
from acceptance.check_logger_metrics import FETCH, Scrape, environment_rows, figures, judge, reuse
from evidence_writers import report
from lab import layout
from tests.support import chromium
from tests.support.gateway import litellm_call
from tests.support.pgserver import free_port

DROP_CAUSE = (
    r"^gateway_logger dropped (\d+) rows since it started at \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ "
    r"\(rejected 0, queue max (\d+), spool max (\d+) rows, spooled (\d+)\)$"
)


def _served(writer: gateway_logger.Writer) -> Scrape:
    port = free_port()
    assert gateway_logger.serve_metrics(writer.stats, port, writer.settings)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return Scrape.parse(text, time.time())


@pytest.fixture()
def make_writer(tmp_path: Path) -> Iterator:
    made: list[gateway_logger.Writer] = []

    def make(url: str | None, **settings: object) -> gateway_logger.Writer:
        base = {
            "queue_max": 100,
            "batch_max": 10,
            "flush_interval_ms": 20,
            "spool_dir": str(tmp_path / "spool"),
            "metrics_port": None,
            "write_timeout_s": 3.0,
            "shutdown_timeout_s": 2.0,
            **settings,
        }
        made.append(gateway_logger.Writer(gateway_logger.Settings(**base), url=url).start())
        return made[-1]

    yield make
    for w in made:
        w.stop(timeout=5)


# ------------------------------------------------------------------------------ no lab needed


def test_metrics_of_a_healthy_writer_pass_and_show_pool_reuse(fresh_db: str, make_writer) -> None:
    db_init.create(fresh_db)
    w = make_writer(fresh_db)
    for _ in range(5):  # five transactions, one pooled connection reused
        for _ in range(10):
            w.submit(gateway_logger.capture(litellm_call(f"m-{uuid.uuid4()}"), failed=False))
        assert w.flush(10)
    now = _served(w)
    assert now.get("rows_written_total") == 50 and now.get("rows_dropped_total") == 0
    assert now.get("connected") == 1 and now.get("queue_depth") == 0
    checkouts, connects = now.get("pool_checkouts_total"), now.get("pool_connects_total")
    assert checkouts >= 6 and 1 <= connects < checkouts  # the probe plus >= 5 batches
    batches = now.buckets[-1][1]
    assert batches >= 5 and [c for _, c in now.buckets] == sorted(c for _, c in now.buckets)
    assert judge(now) is None
    lines, details = figures(now, now)  # a baseline equal to now: nothing happened during "this run"
    assert (
        details["reuse_ratio"] == round(1 - connects / checkouts, 4) == round(reuse(checkouts, connects), 4)
    )
    assert (
        details["run_pool_checkouts"] == 0
        and "n/a (no checkout)" in environment_rows(details)["Logger DB pool reuse (this run)"]
    )
    assert f"({connects} new connection" in environment_rows(details)["Logger DB pool reuse (since start)"]


def test_dropped_rows_and_a_lost_connection_fail_with_their_counts(make_writer) -> None:
    w = make_writer(None, queue_max=2, batch_max=2, spool_max_rows=3)  # no database: queue, spool, then drop
    assert w.wait_ready(5)  # its spool exists
    for _ in range(12):
        w.submit(gateway_logger.capture(litellm_call(f"d-{uuid.uuid4()}"), failed=False))
    time.sleep(0.3)
    now = _served(w)
    dropped = now.get("rows_dropped_total")
    assert dropped == 12 - 3 - now.get("queue_depth") - now.get("in_flight") and dropped >= 12 - 3 - 2 - 2
    first, second = judge(now).split("; ")
    m = re.fullmatch(DROP_CAUSE, first)
    assert m and (int(m[1]), int(m[2]), int(m[3]), int(m[4])) == (dropped, 2, 3, 3), first
    assert second.startswith(
        "gateway_logger is not connected to its database (connection losses since start: 0"
    )


def test_run_figures_need_the_same_logger_process() -> None:
    base = Scrape(
        0.0, (), {"start_time_seconds": 100.0, "pool_checkouts_total": 10, "pool_connects_total": 1}
    )
    now = Scrape(
        60.0,
        (),
        {"start_time_seconds": 100.0, "pool_checkouts_total": 210, "pool_connects_total": 3, "connected": 1},
    )
    _, details = figures(now, base)
    assert (details["run_pool_checkouts"], details["run_pool_connects"], details["run_reuse_ratio"]) == (
        200,
        2,
        0.99,
    )
    restarted = Scrape(60.0, (), {**now.values, "start_time_seconds": 160.0})
    lines, details = figures(restarted, base)
    assert "run_reuse_ratio" not in details and lines[-1].endswith("(the logger restarted during the run)")
    _, details = figures(now, "ssh gateway (10.231.0.18:22): connect timed out after 5 s")
    assert environment_rows(details)["Logger DB pool reuse (this run)"] == (
        "not measured (ssh gateway (10.231.0.18:22): connect timed out after 5 s)"
    )


def test_report_environment_shows_rows_a_check_adds() -> None:
    manifest = {
        "run_id": "r1",
        "checks": [
            {"id": "db_tls", "details": {"sessions": 1}},
            {
                "id": "logger_metrics",
                "details": {
                    "environment": {
                        "Logger DB pool reuse (this run)": "99.5% (1 / 200)",
                        "Run id": "must not replace the run id",
                    }
                },
            },
        ],
    }
    env = report.environment(manifest)  # a bundle from before the report hook: its rows, ready-made
    assert env["Logger DB pool reuse (this run)"] == "99.5% (1 / 200)" and env["Run id"] == "r1"
    # today's bundles: check 8's figures, turned into rows by its own pytest_poc1_report_section hook
    _, details = figures(Scrape(60.0, (), {"start_time_seconds": 100.0, "pool_checkouts_total": 210,
                                           "pool_connects_total": 3, "rows_written_total": 7}),
                         Scrape(0.0, (), {"start_time_seconds": 100.0, "pool_checkouts_total": 10,
                                          "pool_connects_total": 1}))
    env = report.environment({"run_id": "r2", "checks": [{"id": "logger_metrics", "details": details}]})
    assert env["Logger DB pool reuse (this run)"] == "99.0% (2 new connections / 200 checkouts)"
    assert env["Logger rows (since start)"].startswith("written 7,") and env["Run id"] == "r2"


# ------------------------------------------------------------------------------ the lab

ENV_FILE = "/etc/litellm/litellm.env"
POSTGRES = layout.PG_UNIT
BOUNDS = {"POC1_LOGGER_QUEUE_MAX": 5, "POC1_LOGGER_BATCH_MAX": 5, "POC1_LOGGER_SPOOL_MAX_ROWS": 10}
BURST = 40


def _lab_metrics() -> Scrape:
    """The gateway's metrics read on the gateway host itself (lab.exec), as the check reads them over SSH."""
    import lab

    out = lab.exec("gateway", ["/opt/litellm/venv/bin/python", "-I", "-c", FETCH, "9464"], timeout=30).stdout
    return Scrape.parse(out, time.time())


def _wait_metrics(predicate, timeout: float) -> Scrape:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        now = _lab_metrics()
        if predicate(now) or time.monotonic() > deadline:
            return now
        time.sleep(0.5)


@pytest.mark.lab
def test_lab_check_passes_after_the_benchmark_and_the_report_shows_reuse(
    embedded_lab, tmp_path: Path
) -> None:  # noqa: ANN001
    from tests.support.acceptance_run import CHECK_6_NOT_ON_CAPACITY, run_suite

    run = run_suite(
        tmp_path / "evidence",
        "acceptance/check_overhead.py",
        "acceptance/check_logger_metrics.py",
        "--overhead-pairs=20",
        *CHECK_6_NOT_ON_CAPACITY,
        f"--html={tmp_path / 'report.html'}",
        timeout=240,
    )
    check = run.check("logger_metrics")
    assert check["outcome"] == "passed", (check, run.stdout[-2000:])
    d = check["details"]
    assert d["rows_dropped"] == 0 and d["connected"] is True
    # the benchmark's logged requests were written in this run, through pooled connections
    assert d["run_rows_written"] >= 20 and d["run_pool_checkouts"] >= 1, d
    assert 0 <= d["run_reuse_ratio"] <= 1 and d["run_pool_connects"] <= d["run_pool_checkouts"]
    text = (run.evidence_dir / "logger_metrics.txt").read_text()
    assert (
        "gateway_logger_pool_checkouts_total" in text and "gateway_logger_batch_write_seconds_bucket" in text
    )
    assert re.search(r"^pool reuse during this run \(\d+ s, \d+ rows written\): \d+\.\d% ", text, re.M), text
    # as a reader sees it: the environment table of the report, rendered by Chromium
    shown = environment_rows(d)["Logger DB pool reuse (this run)"]
    seen = chromium.render(tmp_path / "report.html", tmp_path, {"env": "#environment tr"})
    rows = [r["text"] for r in seen.layout["env"] if r["visible"]]
    assert any("Logger DB pool reuse (this run)" in r and shown in r for r in rows), rows
    print(
        f"\nlogger_metrics after the overhead benchmark: {shown}; since start: "
        f"{environment_rows(d)['Logger DB pool reuse (since start)']}; {d['run_rows_written']} rows written in "
        f"the run; suite {run.wall_s:.1f} s"
    )


@pytest.mark.lab
def test_lab_port_from_the_inventory_and_nothing_there_is_one_line(embedded_lab, tmp_path: Path) -> None:
    import yaml

    from tests.support.acceptance_run import ROOT, run_suite

    inventory = yaml.safe_load((ROOT / "hosts.yml").read_text())
    inventory["all"]["children"]["local"]["vars"]["logger_metrics_port"] = 9  # discard: nothing listens
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    run = run_suite(tmp_path / "evidence", "acceptance/check_logger_metrics.py", inventory=path)
    check = run.check("logger_metrics")
    assert run.rc == 1 and check["outcome"] == "failed"
    assert re.fullmatch(
        r"logger metrics not readable on gateway 10\.231\.0\.18 at 127\.0\.0\.1:9: "
        r".*Connection refused.*",
        check["cause"],
    ), check["cause"]
    assert "127.0.0.1:9/metrics" in (run.evidence_dir / "logger_metrics.txt").read_text()


@pytest.mark.lab
def test_lab_forced_overflow_fails_the_check_naming_the_dropped_rows(embedded_lab, tmp_path: Path) -> None:
    import lab
    from tests.support.acceptance_run import run_suite
    from tests.support.lab import LocalLab
    from tests.support.lab_unit import gateway_unit

    names = "|".join(BOUNDS)
    unset = f"sed -i -E '/^({names})=/d' {ENV_FILE}"
    t0 = time.monotonic()
    lab.exec(
        "gateway",
        unset + " && printf '" + "".join(f"{k}={v}\\n" for k, v in BOUNDS.items()) + f"' >> {ENV_FILE}",
    )
    try:
        gateway_unit("restart")
        fresh = _lab_metrics()
        assert (
            fresh.get("queue_max") == BOUNDS["POC1_LOGGER_QUEUE_MAX"] and fresh.get("rows_dropped_total") == 0
        )
        lab.systemctl("db", "stop", POSTGRES, check=True)
        labc = LocalLab.from_inventory()
        with httpx.Client(timeout=30) as client:
            answers = [
                client.post(
                    f"{labc.gateway_url}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {labc.master_key}"},
                    json={
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": f"burst {n} {uuid.uuid4()}"}],
                    },
                )
                for n in range(BURST)
            ]
        assert [a.status_code for a in answers] == [200] * BURST  # the gateway answers; the logger drops
        ids = [a.headers["x-poc1-request-id"] for a in answers]
        received = fresh.get("rows_received_total") + BURST  # the restart's readiness call came before
        seen = _wait_metrics(lambda m: m.get("rows_received_total") >= received, 15)
        lab.systemctl("db", "start", POSTGRES, check=True)
        back = _wait_metrics(
            lambda m: (
                m.get("connected") == 1
                and m.get("spool_rows") == 0
                and m.get("queue_depth") == 0
                and m.get("in_flight") == 0
            ),
            30,
        )
        run = run_suite(tmp_path / "evidence", "acceptance/check_logger_metrics.py", timeout=120)
        t_broken = time.monotonic() - t0
    finally:
        lab.exec("gateway", unset)
        if lab.systemctl("db", "is-active", POSTGRES) != "active":
            lab.systemctl("db", "start", POSTGRES, check=True)
        gateway_unit("restart")
    assert lab.exec("gateway", f"grep -cE '^({names})=' {ENV_FILE} || true").stdout.strip() == "0"
    assert _lab_metrics().get("rows_dropped_total") == 0  # restored: a fresh logger with the default bounds

    dropped = back.get("rows_dropped_total")
    assert dropped >= BURST - 5 - 5 - 10 and seen.get("rows_dropped_total") == dropped, (
        seen.values,
        back.values,
    )
    check = run.check("logger_metrics")
    assert run.rc == 1 and check["outcome"] == "failed", check
    m = re.fullmatch(DROP_CAUSE, check["cause"])
    assert m and (int(m[1]), int(m[2]), int(m[3])) == (dropped, 5, 10), check["cause"]
    # the spool was full: each of the 2 workers holds the bound against its own count of the shared spool
    # (refreshed from its files), so together they can pass it, never beyond 2 x the bound
    assert 10 <= int(m[4]) <= 2 * 10, check["cause"]
    assert f"[logger_metrics] {check['cause']}" in run.stdout
    # the counter tells the truth: exactly that many of the burst's calls have no row
    reader = labc.reader_engine()
    try:
        from sqlalchemy import func, select

        with reader.connect() as conn:
            stored = conn.execute(
                select(func.count()).select_from(db_init.Request).where(db_init.Request.request_id.in_(ids))
            ).scalar_one()
    finally:
        reader.dispose()
    assert stored == BURST - dropped, (stored, dropped)
    print(
        f"\nforced overflow: {dropped} of {BURST} rows dropped, {stored} stored; cause: {check['cause']}; "
        f"broken for {t_broken:.1f} s"
    )
