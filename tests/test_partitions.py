"""The partitioned layout (``db_init.py create --partition=daily|monthly``, ``prune``) against real PostgreSQL:
it validates clean, the logger's write paths (one statement, COPY, the upgrade transaction) land rows in
their request's period without duplicates, the FK still refuses an orphan response, prune drops only whole
old partitions without deleting a row and refuses on the plain layout, and validate names the drift."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

import db_init
import gateway_logger
from gateway_logger import copying
from gateway_logger.calls import request_id_time
from gateway_logger.database import insert_batch
from tests.support.gateway import litellm_call, logged_rows

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "db_init.py"), *args], capture_output=True, text=True,
                          timeout=60, check=False)


def query(url: str, sql: str, **params: Any) -> list[Any]:
    engine = db_init.make_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params)
            return result.all() if result.returns_rows else []
    finally:
        engine.dispose()


def partition_names(url: str) -> set[str]:
    engine = db_init.make_engine(url)
    try:
        with engine.connect() as conn:
            return {p.name for parent in db_init.PARTITION_KEY for p in db_init.partitions(conn, parent)}
    finally:
        engine.dispose()


def request_times(url: str, request_ids: list[str]) -> dict[str, tuple[datetime, datetime]]:
    """request_id -> (requests.created_at, responses.request_created_at), joined on the composite FK."""
    rows = query(url, "SELECT r.request_id, r.created_at, s.request_created_at FROM requests r JOIN responses s "
                      "ON s.request_id_fk = r.id AND s.request_created_at = r.created_at "
                      "WHERE r.request_id = ANY(:ids)", ids=request_ids)
    return {rid: (created, carried) for rid, created, carried in rows}


def _record(request_id: str | None = None, *, failed: bool = False) -> dict[str, Any]:
    rid = request_id or gateway_logger.new_request_id()
    return gateway_logger.normalize(gateway_logger.capture(litellm_call(f"c-{uuid.uuid4()}", failed=failed,
                                                                        request_id=rid), failed=failed))


@pytest.fixture()
def daily_db(fresh_db: str) -> str:
    db_init.create(fresh_db, "daily")
    return fresh_db


@pytest.mark.parametrize("period", db_init.PERIODS)
def test_create_partitioned_validates_clean_and_a_second_create_changes_nothing(fresh_db: str, period: str) -> None:
    first = run_cli("create", f"--partition={period}", "--url", fresh_db)
    assert first.returncode == 0, first.stderr
    names = partition_names(fresh_db)
    now = datetime.now(UTC)
    want = {db_init.partition_name(t, s, period) for t in db_init.PARTITION_KEY
            for s in db_init.wanted_starts(period, now)} | {f"{t}{db_init.DEFAULT_SUFFIX}" for t in db_init.PARTITION_KEY}
    assert names == want and len(names) == 2 * (db_init.AHEAD[period] + 2)
    assert query(fresh_db, "SELECT relkind FROM pg_class WHERE relname IN ('requests', 'responses')") == [("p",), ("p",)]
    again = run_cli("create", "--url", fresh_db)  # the daily timer's call: no --partition needed
    assert again.returncode == 0 and "created partition" not in again.stdout, again.stdout + again.stderr
    result = run_cli("validate", "--url", fresh_db)
    assert result.returncode == 0 and "matches the models" in result.stdout, result.stdout + result.stderr
    other = "monthly" if period == "daily" else "daily"
    refused = run_cli("create", f"--partition={other}", "--url", fresh_db)
    assert refused.returncode == db_init.EXIT_REFUSED and f"partitioned {period}" in refused.stderr


def test_the_writer_lands_rows_in_their_period_and_a_replay_does_not_duplicate(daily_db: str, tmp_path) -> None:
    settings = gateway_logger.Settings(queue_max=100, batch_max=50, flush_interval_ms=20, spool_dir=str(tmp_path),
                                       spool_max_rows=1000, write_timeout_s=3.0, shutdown_timeout_s=5.0,
                                       metrics_port=None)
    w = gateway_logger.Writer(settings, url=daily_db).start()
    try:
        records = [_record() for _ in range(20)]
        for r in records + records:  # the second time: a replayed spool segment
            w.submit(r, normalized=True)
        assert w.flush(15)
        assert w.stats.snapshot()["rows_duplicate"] == 20
    finally:
        w.stop(timeout=5)
    ids = [r["request"]["request_id"] for r in records]
    rows = logged_rows(daily_db, ids)
    assert len(rows) == 20 and all(len(r["responses"]) == 1 for r in rows.values())
    times = request_times(daily_db, ids)
    for rid, row in rows.items():  # created_at is the time in the request's id, and the response carries it
        assert row["created_at"].timestamp() == pytest.approx(request_id_time(rid), abs=1e-6)
        assert times[rid] == (row["created_at"], row["created_at"])
    today = db_init.period_start(rows[ids[0]]["created_at"], "daily")
    placed = query(daily_db, "SELECT tableoid::regclass::text, count(*) FROM requests GROUP BY 1 UNION ALL "
                             "SELECT tableoid::regclass::text, count(*) FROM responses GROUP BY 1")
    assert sorted(placed) == sorted([(db_init.partition_name("requests", today, "daily"), 20),
                                     (db_init.partition_name("responses", today, "daily"), 20)])


def test_copy_and_the_upgrade_path_on_the_partitioned_layout(daily_db: str) -> None:
    engine = db_init.make_engine(daily_db)
    try:
        batch = [_record() for _ in range(copying.COPY_FROM)]
        assert insert_batch(engine, batch).inserted == copying.COPY_FROM  # COPY
        again = insert_batch(engine, batch)  # COPY meets them: the one statement skips them all
        assert (again.inserted, again.replaced, again.duplicate) == (0, 0, copying.COPY_FROM)
        rid = gateway_logger.new_request_id()
        assert insert_batch(engine, [_record(rid, failed=True)]).inserted == 1
        upgraded = insert_batch(engine, [_record(rid)])  # a retried call's success replaces its failure
        assert (upgraded.inserted, upgraded.replaced) == (0, 1)
    finally:
        engine.dispose()
    rows = logged_rows(daily_db, [r["request"]["request_id"] for r in batch] + [rid])
    assert len(rows) == copying.COPY_FROM + 1 and all(len(r["responses"]) == 1 for r in rows.values())
    assert rows[rid]["status_code"] == 200
    assert request_times(daily_db, [rid])[rid] == (rows[rid]["created_at"],) * 2


def test_a_response_without_its_request_is_refused(daily_db: str) -> None:
    with pytest.raises(IntegrityError, match="foreign key"):
        query(daily_db, "INSERT INTO responses (request_id_fk, request_created_at) VALUES (424242, now())")


def _old_rows(url: str, days_ago: int, n: int) -> None:
    """``n`` requests with their responses at noon ``days_ago`` days back (plain SQL: the partitions made
    for the past hold them)."""
    query(url, "WITH r AS (INSERT INTO requests (created_at, request_id, call_id, status_code) "
               "SELECT date_trunc('day', now()) - make_interval(days => :d) + interval '12 hours', "
               "'old-' || :d || '-' || g, 'c', 200 FROM generate_series(1, :n) g RETURNING id, created_at) "
               "INSERT INTO responses (request_id_fk, request_created_at) SELECT id, created_at FROM r",
          d=days_ago, n=n)


def _rows_read(url: str, names: list[str]) -> int:
    """Rows sequential scans read from these tables, by PostgreSQL's statistics (a backend reports them
    when it ends: the CLI's has before run_cli returns, give the collector a moment)."""
    time.sleep(0.5)
    return query(url, "SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_user_tables WHERE relname = ANY(:n)",
                 n=names)[0][0]


def test_prune_drops_only_whole_old_partitions_and_deletes_no_row(daily_db: str) -> None:
    engine = db_init.make_engine(daily_db)
    try:
        with engine.begin() as conn:  # partitions for 40..33 days ago, like a database in use since then
            made = db_init.ensure_partitions(conn, "daily", datetime.now(UTC) - timedelta(days=40))
    finally:
        engine.dispose()
    for days in (40, 33):
        _old_rows(daily_db, days, 50)
    _old_rows(daily_db, 0, 5)  # today's
    query(daily_db, "INSERT INTO requests (created_at, request_id, call_id, status_code) "
                    "VALUES ('2001-01-01 00:00+00', 'ancient', 'c', 200)")  # outside every partition
    kept = sorted(n for n in partition_names(daily_db) if n.startswith("responses") and n not in made)
    read_before = _rows_read(daily_db, kept)
    result = run_cli("prune", "--older-than", "30d", "--url", daily_db)
    assert result.returncode == 0, result.stderr
    assert _rows_read(daily_db, kept) == read_before  # no FK check read the responses that stay
    dropped = [line.split()[3] for line in result.stdout.splitlines() if "dropped partition" in line]
    assert sorted(dropped) == sorted(made) and len(dropped) == 16, result.stdout
    assert dropped.index(made[0].replace("requests", "responses")) < dropped.index(made[0])  # responses first
    assert not partition_names(daily_db) & set(made)
    assert query(daily_db, "SELECT count(*) FROM requests WHERE request_id LIKE ANY (ARRAY['old-40-%', 'old-33-%'])") == [(0,)]
    assert query(daily_db, "SELECT count(*) FROM responses") == [(5,)]  # today's; the old ones went with them
    assert query(daily_db, "SELECT count(*) FROM requests WHERE request_id LIKE 'old-0-%' OR request_id = 'ancient'") == [(6,)]
    query(daily_db, "SELECT pg_stat_force_next_flush()")
    deleted = query(daily_db, "SELECT coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables "
                              "WHERE relname LIKE 'requests%' OR relname LIKE 'responses%'")
    assert deleted == [(0,)]
    kept = run_cli("validate", "--url", daily_db)  # the row of 2001 stays in the default partition: a warning
    assert kept.returncode == 0 and "1 row(s) in the default partition requests_default" in kept.stderr, kept.stderr
    nothing = run_cli("prune", "--older-than", "30d", "--url", daily_db)
    assert nothing.returncode == 0 and "0 partition(s)" in nothing.stdout


def test_prune_refuses_on_the_plain_layout(fresh_db: str) -> None:
    db_init.create(fresh_db)
    result = run_cli("prune", "--older-than", "30d", "--url", fresh_db)
    assert result.returncode == db_init.EXIT_REFUSED and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "not partitioned" in result.stderr
    assert query(fresh_db, "SELECT relkind FROM pg_class WHERE relname = 'requests'") == [("r",)]


@pytest.mark.parametrize("age, ok", [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)),
                                     ("0d", None), ("30", None), ("1w", None)])
def test_prune_ages(age: str, ok: timedelta | None) -> None:
    if ok is None:
        with pytest.raises(db_init.Refused):
            db_init.parse_age(age)
    else:
        assert db_init.parse_age(age) == ok


def test_validate_reports_a_dropped_index_and_a_missing_partition_ahead(daily_db: str) -> None:
    last = db_init.wanted_starts("daily", datetime.now(UTC))[-1]
    gone = db_init.partition_name("responses", last, "daily")
    today = db_init.partition_name("responses", db_init.period_start(datetime.now(UTC), "daily"), "daily")
    query(daily_db, f"DROP INDEX ix_requests_model; DROP TABLE {gone}; "
                    f"ALTER TABLE {today} DROP CONSTRAINT {today}_request_fk")
    result = run_cli("validate", "--url", daily_db)
    assert result.returncode == db_init.EXIT_DRIFT
    lines = {line[4:] for line in result.stdout.splitlines() if line.startswith("  - ")}
    assert lines == {"requests: missing index ix_requests_model on (model)",
                     f"responses: missing daily partition {gone} for {last:%Y-%m-%d} (run db_init.py create)",
                     (f"responses: no partition {gone} for the other table's period "
                      "(a request and its responses share a period)"),
                     (f"responses: partition {today} lacks its foreign key (request_id_fk, request_created_at) -> "
                      f"{today.replace('responses', 'requests')}(id, created_at) ON DELETE CASCADE")}, result.stdout
    assert run_cli("create", "--url", daily_db).returncode == db_init.EXIT_DRIFT  # the index is still missing
    assert gone in partition_names(daily_db)  # but the partition ahead is back


def test_rows_of_a_period_without_partition_are_kept_in_the_default_and_named(daily_db: str) -> None:
    last = db_init.wanted_starts("daily", datetime.now(UTC))[-1]
    names = [db_init.partition_name(t, last, "daily") for t in ("responses", "requests")]
    query(daily_db, f"DROP TABLE {names[0]}; ALTER TABLE requests DETACH PARTITION {names[1]}; DROP TABLE {names[1]}")
    query(daily_db, "INSERT INTO requests (created_at, request_id, call_id, status_code) VALUES (:t, 'late', 'c', 200)",
          t=last + timedelta(hours=1))
    assert query(daily_db, "SELECT tableoid::regclass::text FROM requests WHERE request_id = 'late'") == [("requests_default",)]
    result = run_cli("create", "--url", daily_db)
    assert result.returncode == db_init.EXIT_DRIFT, result.stdout + result.stderr
    for name in names:  # neither table gets the period: a response's partition needs its request's
        assert f"{name} cannot be made: rows of {last:%Y-%m-%d} are in a default partition" in result.stderr
    assert "1 row(s) in the default partition requests_default" in result.stderr
    assert not set(names) & partition_names(daily_db)
