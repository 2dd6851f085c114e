"""PostgreSQL away (stopped, frozen) while the gateway logs: answers stay fast, rows wait, none are lost.

Writer level: the queue overflows into the on-disk spool and is replayed; past the stated bound rows
are dropped *and counted*; one bad row does not take its batch down; a replay does not duplicate; exit
flushes. Gateway level: a steady stream of >= 20 req/s through a real proxy while its PostgreSQL is
stopped, then frozen (SIGSTOP), for 15 s each; every answer 200, p95 as before, every row there after.
"""
from __future__ import annotations

import asyncio
import json
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import db_init
import gateway_logger
from tests.support.gateway import Gateway, litellm_call, logged_rows, wait_for_rows
from tests.support.pgserver import PgServer
from tools.polling import poll_until

OUTAGE_S = 15.0
RATE = 25.0  # requests per second, open loop


@pytest.fixture()
def writers() -> Iterator[Callable[..., gateway_logger.Writer]]:
    """Writers with small bounds; all stopped at the end of the test."""
    made: list[gateway_logger.Writer] = []

    def make(url: str, spool_dir: Path, **settings: object) -> gateway_logger.Writer:
        base = dict(queue_max=5, batch_max=5, flush_interval_ms=20, spool_dir=str(spool_dir),
                    spool_max_rows=1000, write_timeout_s=3.0, shutdown_timeout_s=5.0, metrics_port=None)
        base.update(settings)
        w = gateway_logger.Writer(gateway_logger.Settings(**base), url=url).start()
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop(timeout=5)


def _ids(n: int) -> list[str]:
    """Request ids as the logger's pre-call hook issues them (rows are keyed by them)."""
    return [gateway_logger.new_request_id() for _ in range(n)]


def _normalized(request_id: str) -> dict:
    call = litellm_call(request_id, request_id=request_id)
    return gateway_logger.normalize(gateway_logger.capture(call, failed=False))


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    return poll_until(predicate, timeout=timeout, interval=0.05)[0]


_ROW_COUNTS = ("rows_received", "rows_spooled", "rows_dropped", "queue_depth", "in_flight")


def _settled(w: gateway_logger.Writer, predicate: Callable[[dict[str, int]], bool],
             timeout: float) -> tuple[bool, dict[str, int]]:
    """(whether, the last) row counts that satisfy ``predicate`` and stayed the same over one poll: a
    snapshot is read counter by counter while the spooler moves rows (a row spooled or dropped is counted
    a moment before it leaves ``in_flight``), so a single one can count a row twice or not at all."""
    seen: list[dict[str, int]] = []

    def quiet() -> bool:
        snap = w.stats.snapshot()
        seen.append({name: snap[name] for name in _ROW_COUNTS})
        return len(seen) >= 2 and seen[-1] == seen[-2] and predicate(seen[-1])

    return _wait(quiet, timeout), seen[-1]


def _spooled_ids(spool_dir: Path) -> list[str]:
    return [json.loads(line)["request"]["request_id"]
            for f in sorted(spool_dir.glob("spool-*.jsonl")) for line in f.read_text().splitlines() if line]


# --------------------------------------------------------------------------------------------------
# writer level


def test_rows_go_to_the_spool_while_the_database_is_away_and_are_replayed(
        own_pg: PgServer, log_db: str, tmp_path: Path, writers, capfd: pytest.CaptureFixture[str]) -> None:
    """All of them, within a flush interval: not only those past the queue bound (a kill would lose the
    rest; issue 11)."""
    own_pg.stop()
    try:
        w = writers(log_db, tmp_path)
        assert _wait(lambda: "database connection lost" in capfd.readouterr().err, 15)
        ids = _ids(60)
        for i in ids:
            w.submit(gateway_logger.capture(litellm_call(i, request_id=i), failed=False))
        ok, snap = _settled(w, lambda s: s["rows_spooled"] == 60, 5)
        assert ok and (snap["rows_dropped"], snap["queue_depth"], snap["in_flight"]) == (0, 0, 0), snap
        assert sorted(_spooled_ids(tmp_path)) == sorted(ids)
    finally:
        own_pg.restart()
    assert w.flush(30), w.stats.snapshot()
    rows = logged_rows(log_db, ids)
    assert sorted(rows) == sorted(ids) and all(len(r["responses"]) == 1 for r in rows.values())
    assert _spooled_ids(tmp_path) == []
    assert w.stats.snapshot()["rows_replayed"] == 60
    assert "database connection established:" in capfd.readouterr().err


def test_rows_past_the_bound_are_dropped_counted_and_said(own_pg: PgServer, log_db: str, tmp_path: Path,
                                                          writers, capfd: pytest.CaptureFixture[str]) -> None:
    own_pg.stop()
    try:
        w = writers(log_db, tmp_path, spool_max_rows=10)
        assert _wait(lambda: "database connection lost" in capfd.readouterr().err, 15)
        ids = _ids(40)
        for i in ids:
            w.submit(gateway_logger.capture(litellm_call(i, request_id=i), failed=False))

        # every row is spooled (exactly the bound), held in memory, or dropped; none twice, none lost
        ok, snap = _settled(w, lambda s: s["rows_received"] == 40 and s["rows_spooled"] == 10 and
                            s["rows_dropped"] + s["queue_depth"] + s["in_flight"] + 10 == 40, 15)
        assert ok, snap
        assert snap["rows_dropped"] >= 40 - 5 - 5 - 10, snap  # memory holds at most queue max (+ a batch)
        spooled = _spooled_ids(tmp_path)
        assert len(spooled) == 10 and set(spooled) <= set(ids), spooled  # the bound holds on disk too
        assert "gateway_logger: rows dropped:" in capfd.readouterr().err
    finally:
        own_pg.restart()
    assert w.flush(30), w.stats.snapshot()
    rows = logged_rows(log_db, ids)
    assert len(rows) == 40 - snap["rows_dropped"] and set(spooled) <= set(rows)  # exactly the kept ones
    assert all(len(r["responses"]) == 1 for r in rows.values())
    assert w.stats.snapshot()["rows_written"] == len(rows)  # (a stalled batch copied to the spool is a
    # duplicate on replay, counted apart: rows_replayed and rows_duplicate are not fixed here)


def test_the_spool_bound_holds_while_the_spool_is_being_counted(tmp_path: Path, monkeypatch) -> None:
    """``refresh`` scans the directory without the spool's lock (the spooler counts once a second while
    the event loop appends): rows appended during the scan, here two segments' worth, must still count,
    or the spool takes more than its bound (the writer then never settles: rows_spooled 16-20 of 10)."""
    spool = gateway_logger.Spool(str(tmp_path), max_rows=10, segment_rows=5, db_tag="t")
    records = [_normalized(i) for i in _ids(20)]
    assert spool.append(records[:3]) == 3
    scan = spool._names

    def scan_while_another_thread_appends() -> list[str]:
        names = scan()
        assert spool.append(records[3:10]) == 7  # fills the live segment and a whole new one
        return names

    monkeypatch.setattr(spool, "_names", scan_while_another_thread_appends)
    spool.refresh()
    monkeypatch.undo()
    assert spool.rows == 10 and spool.full
    assert spool.append(records[10:]) == 0
    assert sorted(_spooled_ids(tmp_path)) == sorted(r["request"]["request_id"] for r in records[:10])


def test_bad_row_does_not_take_its_batch_down(log_db: str, tmp_path: Path, writers) -> None:
    w = writers(log_db, tmp_path, queue_max=100, batch_max=10, flush_interval_ms=1000)
    ids = _ids(10)
    bad = _normalized(ids[3])
    bad["response"]["latency_ms"] = 2**40  # integer out of range: the server rejects this row only
    for n, i in enumerate(ids):
        if n == 3:
            w.submit(bad, normalized=True)
        else:
            call = litellm_call(i, "nul\x00" if n == 5 else "fine", request_id=i)
            w.submit(gateway_logger.capture(call, failed=False))
    assert w.flush(15)
    rows = logged_rows(log_db, ids)
    assert sorted(rows) == sorted(ids)
    assert rows[ids[3]]["payload"]["gateway_logger"].startswith("document not storable")
    assert rows[ids[5]]["payload"]["messages"][0]["content"] == "nul\ufffd"
    assert all(rows[i]["payload"]["messages"][0]["content"] == "fine"
               for n, i in enumerate(ids) if n not in (3, 5))
    snap = w.stats.snapshot()
    assert (snap["rows_degraded"], snap["rows_dropped"], snap["rows_written"]) == (1, 0, 10)


def test_replay_does_not_duplicate(log_db: str, tmp_path: Path, writers) -> None:
    w = writers(log_db, tmp_path, queue_max=100, batch_max=50)
    ids = _ids(20)
    records = [_normalized(i) for i in ids]
    for r in records + records:
        w.submit(r, normalized=True)
    assert w.flush(15)
    rows = logged_rows(log_db, ids)
    assert len(rows) == 20 and all(len(r["responses"]) == 1 for r in rows.values())
    assert w.stats.snapshot()["rows_duplicate"] == 20


def test_stop_flushes_what_was_queued(log_db: str, tmp_path: Path, writers) -> None:
    w = writers(log_db, tmp_path, queue_max=1000, batch_max=100, flush_interval_ms=2000)
    ids = _ids(300)
    for i in ids:
        w.submit(gateway_logger.capture(litellm_call(i, request_id=i), failed=False))
    w.stop()
    assert len(logged_rows(log_db, ids)) == 300
    assert _spooled_ids(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# gateway level


@dataclass
class Sample:
    sent: float
    latency: float
    status: int
    call_id: str | None


async def _stream(gw: Gateway, rate: float, seconds: float) -> list[Sample]:
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        async def one(n: int) -> None:
            sent = time.monotonic()
            try:
                r = await client.post(f"{gw.url}/v1/chat/completions", headers=gw.headers, json={
                    "model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"steady {n}"}]})
                samples.append(Sample(sent, time.monotonic() - sent, r.status_code,
                                      r.headers.get("x-poc1-request-id")))
            except httpx.HTTPError:
                samples.append(Sample(sent, time.monotonic() - sent, 0, None))

        start, tasks, n = time.monotonic(), [], 0
        while time.monotonic() - start < seconds:
            tasks.append(asyncio.create_task(one(n)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        await asyncio.gather(*tasks)
    return samples


def _signal_cluster(action: Callable[[], None]) -> None:
    """PgServer.freeze/thaw, retried: a backend may exit between listing the pids and signalling them
    (ProcessLookupError); signalling again covers the rest (SIGSTOP/SIGCONT are idempotent)."""
    for _ in range(5):
        try:
            return action()
        except ProcessLookupError:
            time.sleep(0.05)
    action()


def _p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20)[-1]


@pytest.fixture(scope="module")
def outage_gateway(own_pg: PgServer) -> Iterator[tuple[Gateway, str]]:
    url = own_pg.create_database("outage_gw")
    db_init.create(url)
    gw = Gateway(url).start()  # default settings, as deployed
    try:
        with httpx.Client(timeout=30) as client:  # warm-up: a fresh proxy's first answers are slow
            for n in range(30):
                gw.chat(client, f"warm-up {n}")
        yield gw, url
    finally:
        gw.cleanup()


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_gateway_keeps_answering_while_postgres_is_away(outage: str, own_pg: PgServer,
                                                        outage_gateway: tuple[Gateway, str],
                                                        record_property) -> None:
    gw, url = outage_gateway
    before_s, after_s = 4.0, 3.0
    log_mark = len(gw.log_text())
    result: list[Sample] = []
    runner = threading.Thread(target=lambda: result.extend(asyncio.run(
        _stream(gw, RATE, before_s + OUTAGE_S + after_s))))
    runner.start()
    time.sleep(before_s)
    t_away = time.monotonic()
    own_pg.stop() if outage == "stopped" else _signal_cluster(own_pg.freeze)
    try:
        time.sleep(OUTAGE_S - (time.monotonic() - t_away))
    finally:
        own_pg.restart() if outage == "stopped" else _signal_cluster(own_pg.thaw)
    t_back = time.monotonic()
    runner.join(60)
    assert not runner.is_alive()

    statuses = [s.status for s in result]
    assert len(result) >= RATE * (before_s + OUTAGE_S + after_s) * 0.95
    assert statuses.count(200) == len(result), f"non-200 answers: {[s for s in statuses if s != 200][:5]}"
    before = [s.latency for s in result if s.sent < t_away]
    during = [s.latency for s in result if t_away <= s.sent < t_back]
    after = [s.latency for s in result if s.sent >= t_back]
    p95_before, p95_during, p95_after = _p95(before), _p95(during), _p95(after)
    for phase, value in (("before", p95_before), ("during", p95_during), ("after", p95_after)):
        record_property(f"{outage}_p95_{phase}_ms", round(value * 1000, 1))
    print(f"\n{outage}: {len(result)} requests, p95 before {p95_before * 1000:.1f} ms, "
          f"during {p95_during * 1000:.1f} ms, after {p95_after * 1000:.1f} ms")
    # "normal" is the quieter of the two healthy phases (the machine is shared): the outage must stay
    # within twice that plus 250 ms. What this rules out is a stall of the request path: a write on the
    # event loop (or on LiteLLM's to_thread pool) waits out connect/statement timeouts, seconds per request
    # (lab-notes.md). Not a latency benchmark: with +50 ms a CI run on the shared 2 cores failed at p95
    # 117 ms during vs 22 ms before (the same test on a quiet machine: 23 ms during, 3 runs of 3)
    normal = min(p95_before, p95_after)
    assert p95_during <= 2 * normal + 0.25, (p95_before, p95_during, p95_after)

    ids = [s.call_id for s in result if s.call_id]
    assert len(ids) == len(result)
    rows = wait_for_rows(url, ids, timeout=60)
    missing = [i for i in ids if len(rows.get(i, {}).get("responses", [])) != 1]
    assert not missing, f"{len(missing)} of {len(ids)} requests have no rows after PostgreSQL came back"
    journal = gw.log_text()[log_mark:]
    assert "gateway_logger: database connection lost:" in journal
    assert "gateway_logger: database connection restored:" in journal


def test_sigterm_flushes_to_spool_and_the_spool_is_replayed(own_pg: PgServer,
                                                            outage_gateway: tuple[Gateway, str],
                                                            tmp_path: Path) -> None:
    gw, url = outage_gateway
    own_pg.stop()
    try:
        with httpx.Client(timeout=30) as client:
            answers = [gw.chat(client, f"before exit {n}") for n in range(30)]
        assert [a.status_code for a in answers] == [200] * 30
        ids = [a.headers["x-poc1-request-id"] for a in answers]
        time.sleep(1.0)  # callbacks run after the answer
        assert gw.stop_proxy(signal.SIGTERM, timeout=30) is not None
        assert set(ids) <= set(_spooled_ids(gw.spool_dir)), "exit did not put the waiting rows in the spool"
    finally:
        own_pg.restart()
    settings = gateway_logger.Settings.from_env({}, spool_dir=str(gw.spool_dir), metrics_port=None)
    w = gateway_logger.Writer(settings, url=url).start()
    try:
        assert w.flush(30)
    finally:
        w.stop()
    rows = logged_rows(url, ids)
    assert len(rows) == 30 and all(len(r["responses"]) == 1 for r in rows.values())


def test_torn_spool_line_is_dropped_and_the_rest_replayed(log_db: str, tmp_path: Path, writers,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    """A crash can leave a half-written last line; the segment's other rows must still arrive."""
    ids = _ids(3)
    records = [_normalized(i) for i in ids]
    lines = [json.dumps(r) for r in records] + ['{"request": {"request_id": "torn']
    (tmp_path / f"spool-{gateway_logger.spool_tag(log_db)}-1-1-1.jsonl").write_text("\n".join(lines))
    foreign_id = _ids(1)[0]  # a spool meant for another database stays where it is
    foreign = tmp_path / f"spool-{gateway_logger.spool_tag(log_db + '_other')}-1-1-1.jsonl"
    foreign.write_text(json.dumps(_normalized(foreign_id)))
    w = writers(log_db, tmp_path)
    assert w.flush(15), w.stats.snapshot()
    assert sorted(logged_rows(log_db, ids + [foreign_id])) == sorted(ids)
    assert foreign.exists()
    assert "1 unreadable line(s) dropped" in capfd.readouterr().err


def test_spool_tag_names_the_database_not_the_connection_options() -> None:
    tag = gateway_logger.spool_tag
    base = "postgresql+psycopg2://litellm_user:pw1@10.231.0.19:5432/litellm_db"
    same = [base + "?sslmode=verify-full&sslrootcert=/etc/litellm/db-ca.crt", base + "?sslmode=disable",
            base.replace("pw1", "pw2"), base.replace(":5432", ""), base.replace("+psycopg2", "")]
    assert {tag(u) for u in same} == {tag(base)}
    other = [base.replace("litellm_user", "u2"), base.replace("10.231.0.19", "10.231.0.20"),
             base.replace("5432", "5433"), base.replace("litellm_db", "other_db")]
    assert len({tag(u) for u in [base, *other]}) == 5
    assert tag(None) != tag(base) and len(tag(base)) == 12


def test_spool_written_before_a_tls_switch_is_replayed_after_it(log_db: str, tmp_path: Path, writers) -> None:
    """The lab's TLS toggle changes only the URL's sslmode: rows spooled under the old URL must arrive."""
    ids = _ids(3)
    records = [_normalized(i) for i in ids]
    before = gateway_logger.spool_tag(log_db + "?sslmode=disable")
    (tmp_path / f"spool-{before}-1-1-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    w = writers(log_db + "?sslmode=prefer", tmp_path)
    assert w.flush(15), w.stats.snapshot()
    assert sorted(logged_rows(log_db, ids)) == sorted(ids)
    assert _spooled_ids(tmp_path) == [] and w.stats.snapshot()["rows_replayed"] == 3
