"""What the partitioned layout (docs/PARTITIONING.md) costs and saves, on the session's loopback cluster.

1. Retention: ``db_init.py prune`` of DAYS daily partitions of ROWS requests (and their responses) each,
   against the plain layout's way, one ``DELETE FROM requests WHERE created_at < cutoff`` (the responses
   go by ON DELETE CASCADE), of the same rows. Wall time of each.
2. The logger's write per batch (``database.insert_batch`` on a kept autocommit connection, as the writer
   does), plain and partitioned in the same run, interleaved rounds, plus a second plain database: the
   spread between the two plain ones is the noise floor.

Sizes: ``POC1_BENCH_PARTITION_ROWS`` (default 100000 rows per day) and ``POC1_BENCH_PARTITION_DAYS`` (30).
The cluster runs with fsync=off (tests/support/pgserver.py): a real disk makes the DELETE slower still.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

import db_init
import gateway_logger
from gateway_logger.database import insert_batch
from tests.support.gateway import litellm_call

ROOT = Path(__file__).resolve().parents[2]
ROWS = int(os.environ.get("POC1_BENCH_PARTITION_ROWS", "100000"))
DAYS = int(os.environ.get("POC1_BENCH_PARTITION_DAYS", "30"))
BATCH_SIZES = (1, 10, 50, 200)
ROUNDS, BATCHES = 7, 40


def _execute(url: str, *statements: str) -> None:
    engine = db_init.make_engine(url, connect_args={"options": "-c statement_timeout=0"})
    try:
        with engine.begin() as conn:
            for s in statements:
                conn.execute(text(s))
    finally:
        engine.dispose()


def _fill(url: str, partitioned: bool) -> None:
    """DAYS old days of ROWS requests each, at noon + n ms, with a response each; plus today's few."""
    fk, fk_values = (("request_id_fk, request_created_at", "id, created_at") if partitioned
                     else ("request_id_fk", "id"))
    for day in [*range(DAYS + 5, 5, -1), 0]:
        n = ROWS if day else 1000
        _execute(url, f"""WITH r AS (INSERT INTO requests (created_at, request_id, call_id, model, status_code,
                              payload, start_time, end_time)
                          SELECT date_trunc('day', now()) - interval '{day} days' + interval '12 hours'
                                 + g * interval '1 ms', 'd{day}-' || g, 'c' || g, 'm', 200,
                                 '{{"model": "m", "messages": [{{"role": "user", "content": "hi"}}]}}'::jsonb,
                                 now(), now()
                          FROM generate_series(1, {n}) g RETURNING id, created_at)
                          INSERT INTO responses ({fk}, latency_ms, content, total_tokens)
                          SELECT {fk_values}, 20, '{{"choices": []}}'::jsonb, 11 FROM r""")
    _execute(url, "ANALYZE requests", "ANALYZE responses")


def test_prune_against_delete(pg: Any, bench_results: dict[str, dict[str, Any]]) -> None:
    part = pg.create_database(f"bench_part_{uuid.uuid4().hex[:8]}")
    plain = pg.create_database(f"bench_plain_{uuid.uuid4().hex[:8]}")
    db_init.create(plain)
    db_init.create(part, "daily")
    engine = db_init.make_engine(part)
    try:
        with engine.begin() as conn:  # the old days' partitions, as a database in use for DAYS+ days has them
            for back in range(DAYS + 5, 4, -(db_init.AHEAD["daily"] + 1)):
                db_init.ensure_partitions(conn, "daily", datetime.now(UTC) - timedelta(days=back))
    finally:
        engine.dispose()
    t0 = time.perf_counter()
    _fill(part, partitioned=True)
    _fill(plain, partitioned=False)
    fill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "db_init.py"), "prune", "--older-than", "5d", "--url", part],
                          capture_output=True, text=True, timeout=600, check=False)
    prune_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    dropped = sum("dropped partition" in line for line in proc.stdout.splitlines())
    t0 = time.perf_counter()
    _execute(plain, "DELETE FROM requests WHERE created_at < date_trunc('day', now()) - interval '5 days'")
    delete_s = time.perf_counter() - t0
    engine = db_init.make_engine(part)
    try:
        with engine.connect() as conn:
            left = conn.execute(text("SELECT count(*) FROM requests")).scalar_one()
    finally:
        engine.dispose()
    assert left == 1000
    bench_results["partition_prune"] = {"rows_per_day": ROWS, "days": DAYS, "fill_s": round(fill_s, 1),
                                        "partitions_dropped": dropped, "prune_s (CLI, incl. ~0.5 s start)":
                                        round(prune_s, 2), "delete_s (plain, cascade)": round(delete_s, 2)}
    print(f"\nprune of {dropped} partitions ({DAYS} days x {ROWS} rows, both tables): {prune_s:.2f} s; "
          f"DELETE of the same rows on plain: {delete_s:.2f} s (fill {fill_s:.0f} s)")


def _records(n: int) -> list[dict[str, Any]]:
    return [gateway_logger.normalize(gateway_logger.capture(
        litellm_call(f"c-{uuid.uuid4()}", request_id=gateway_logger.new_request_id()), failed=False))
        for _ in range(n)]


def test_write_per_batch_plain_and_partitioned(pg: Any, bench_results: dict[str, dict[str, Any]]) -> None:
    urls = {"plain": pg.create_database(f"bw_plain_{uuid.uuid4().hex[:8]}"),
            "partitioned": pg.create_database(f"bw_part_{uuid.uuid4().hex[:8]}"),
            "plain (again)": pg.create_database(f"bw_plain2_{uuid.uuid4().hex[:8]}")}
    for name, url in urls.items():
        db_init.create(url, "daily" if name == "partitioned" else None)
    engines = {name: db_init.make_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=False)
               for name, url in urls.items()}
    times: dict[tuple[str, int], list[float]] = {}
    try:
        kept = {name: e.connect() for name, e in engines.items()}
        for name in urls:  # warm: the layout look-up, plans, first pages
            insert_batch(engines[name], _records(5), conn=kept[name])
        for _ in range(ROUNDS):
            for size in BATCH_SIZES:
                batches = [_records(size) for _ in range(BATCHES)]
                for name in urls:  # same records' shape, fresh ids per database
                    per = []
                    for b in batches:
                        b = [{"request": dict(r["request"], request_id=gateway_logger.new_request_id()),
                              "response": r["response"]} for r in b]
                        t0 = time.perf_counter()
                        insert_batch(engines[name], b, conn=kept[name])
                        per.append(time.perf_counter() - t0)
                    times.setdefault((name, size), []).append(statistics.median(per))
        for c in kept.values():
            c.close()
    finally:
        for e in engines.values():
            e.dispose()
    table = {}
    for size in BATCH_SIZES:
        row = {name: round(statistics.median(times[(name, size)]) * 1000, 3) for name in urls}
        table[f"batch {size} (median ms of {ROUNDS} rounds x {BATCHES})"] = row
        print(f"\nbatch of {size}: " + ", ".join(f"{n} {v} ms" for n, v in row.items())
              + "; rounds: " + "; ".join(f"{n} {[round(t * 1000, 3) for t in times[(n, size)]]}" for n in urls))
    bench_results["partition_write"] = table
