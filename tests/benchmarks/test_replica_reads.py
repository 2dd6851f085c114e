"""The log on a primary with a physical streaming replica, and the suite's reads pointed at the replica
(docs/DISTRIBUTED_POSTGRESQL.md, issue 16 item 4). Two throwaway clusters on 127.0.0.1: a primary
(tests/support/pgserver.py) and a hot standby made from it with ``pg_basebackup -R``; asynchronous
streaming replication, both with fsync=off.

1. Replication lag as the suite would see it: the project's own ``gateway_logger.Writer`` writes to the
   primary (schema by ``python db_init.py create``) at a few rates; for every row, the time from the
   writer's commit (``insert_batch`` returned: the statement is autocommit, COPY commits inside it) to
   the row being visible on the replica, found by polling its request_id there; the same poller against
   the primary gives the method's own floor. ``pg_stat_replication.replay_lag`` sampled meanwhile.
2. Checks 2/7's session queries (pg_stat_activity / pg_stat_ssl) on both, while the writer is connected:
   the gateway's sessions are only on the server it writes to.
3. Checks 4/5's reads (``acceptance.queries``) in the suite's READ ONLY transactions, on the primary
   and on the replica, after a ``generate_series`` fill of ROWS requests + responses
   (``POC1_BENCH_REPLICA_ROWS``, default 1 000 000): same answers, time of each.

A benchmark (``make bench``), not a test: timings on 2 shared cores. Both clusters are destroyed at the end.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, bindparam, select, text

import db_init
import gateway_logger
import gateway_logger.batches
from acceptance import queries
from acceptance.check_gateway_db_connect import SESSIONS_SQL
from tests.support import pgserver
from tests.support.gateway import litellm_call
from tests.support.pgserver import PgServer

ROOT = Path(__file__).resolve().parents[2]
ROWS = int(os.environ.get("POC1_BENCH_REPLICA_ROWS", "1000000"))
DB, WRITER, READER = "litellm_db", "litellm_user", "poc1_reader"
#: (name, rows per second or None = flat out, rows)
RATES = (("20 rows/s (one call a batch)", 20.0, 100), ("100 rows/s", 100.0, 500),
         ("1000 rows/s", 1000.0, 3000), ("flat out", None, 20000))
REPEATS = 15
SEEN_DEADLINE_S = 60.0


@dataclass
class Standby(PgServer):
    """A hot standby of ``primary``: ``pg_basebackup -R`` (standby.signal + primary_conninfo), started on
    its own port. Same superuser password as the primary (the base backup copied its catalog)."""

    primary: PgServer | None = None

    def start(self) -> Standby:
        assert self.primary is not None
        user = pgserver._ensure_user()
        os.chmod(self.root, 0o755)
        os.chown(self.root, user.pw_uid, user.pw_gid)
        bindir = pgserver.pg_bindir()
        conninfo = (f"host=127.0.0.1 port={self.primary.port} user={pgserver.SUPERUSER} "
                    f"password={self.primary.password} application_name=bench_standby")
        self._run_as_pg(str(bindir / "pg_basebackup"), "-D", str(self.datadir), "-R", "-X", "stream",
                        "-c", "fast", "--no-sync", "-d", conninfo, timeout=120)
        self._run_as_pg(str(bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60",
                        "-l", str(self.root / "log"),
                        "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c hot_standby=on",
                        "start")
        return self


@dataclass
class Pair:
    primary: PgServer
    standby: Standby
    writer_pw: str = field(default_factory=lambda: os.urandom(12).hex())
    reader_pw: str = field(default_factory=lambda: os.urandom(12).hex())

    def url(self, server: PgServer, user: str) -> str:
        pw = {WRITER: self.writer_pw, READER: self.reader_pw}[user]
        return server.url(DB, user, pw)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """Primary + standby, the log database on the primary as the lab has it (owner = the gateway's role,
    a reader role with SELECT and pg_read_all_stats); destroyed however the module ends."""
    primary = PgServer().start()
    standby: Standby | None = None
    try:
        made = Pair(primary, Standby(password=primary.password, primary=primary))
        primary.psql(f"CREATE ROLE {WRITER} LOGIN PASSWORD '{made.writer_pw}'")
        primary.psql(f"CREATE ROLE {READER} LOGIN PASSWORD '{made.reader_pw}' IN ROLE pg_read_all_stats")
        primary.psql(f"CREATE DATABASE {DB} OWNER {WRITER}")
        env = dict(os.environ, POC1_DB_URL=made.url(primary, WRITER))  # the URL (password) not in argv
        proc = subprocess.run([sys.executable, "db_init.py", "create"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        primary.psql(f"GRANT SELECT ON requests, responses TO {READER}", db=DB)
        standby = made.standby
        standby.start()  # after the schema: the base backup carries it
        yield made
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()


def reader(url: str) -> Engine:
    """The suite's reader engine (fixtures/database.py: READ ONLY, 5 s statement timeout)."""
    return db_init.make_engine(url, read_only=True, application_name="poc1-acceptance", pool_size=2,
                               max_overflow=2, pool_timeout=5)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"p50 {pct(values, .5) * 1000:.2f} / p95 {pct(values, .95) * 1000:.2f} / "
            f"max {max(values) * 1000:.2f} ms (n={len(values)})")


class Poller(threading.Thread):
    """Finds committed request ids on one server, as fast as it can; ``seen[rid]`` = when first visible.
    Each poll is its own READ ONLY transaction (as ``queries.wait_for_call``), built from db_init's model."""

    STMT = select(db_init.Request.request_id).where(
        db_init.Request.request_id.in_(bindparam("ids", expanding=True)))

    def __init__(self, url: str, committed: dict[str, float]) -> None:
        super().__init__(daemon=True)
        self.engine = reader(url)
        self.committed = committed
        self.seen: dict[str, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        with self.engine.connect() as conn:
            while not self.halt.is_set():
                pending = [rid for rid in list(self.committed) if rid not in self.seen][:2000]
                if not pending:
                    time.sleep(0.0005)
                    continue
                found = conn.execute(self.STMT, {"ids": pending}).scalars().all()
                now = time.monotonic()
                conn.rollback()
                for rid in found:
                    self.seen[rid] = now
        self.engine.dispose()

    def lags(self, ids: list[str]) -> list[float]:
        return [self.seen[r] - self.committed[r] for r in ids if r in self.seen]


class ReplicationSampler(threading.Thread):
    """pg_stat_replication on the primary every 50 ms: replay_lag (s, when PostgreSQL shows one) and bytes
    the standby's replay is behind the primary's WAL."""

    SQL = text("SELECT extract(epoch FROM replay_lag) AS replay_lag, "
               "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) AS behind FROM pg_stat_replication")

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.replay_lag: list[float] = []
        self.behind: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        engine = db_init.make_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                while not self.halt.wait(0.05):
                    for row in conn.execute(self.SQL):
                        if row.replay_lag is not None:
                            self.replay_lag.append(float(row.replay_lag))
                        if row.behind is not None:
                            self.behind.append(float(row.behind))
        finally:
            engine.dispose()


def _records(n: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        rid = gateway_logger.new_request_id()
        out.append(gateway_logger.normalize(gateway_logger.capture(litellm_call(rid, request_id=rid), failed=False)))
    return out


def _drive(w: gateway_logger.Writer, records: list[dict[str, Any]], rate: float | None) -> float:
    """Open loop at ``rate`` rows/s (None: as fast as submit takes them); returns the achieved rate."""
    t0 = time.monotonic()
    for i, r in enumerate(records):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        w.submit(r, normalized=True)
    assert w.flush(60), w.stats.snapshot()
    return len(records) / max(time.monotonic() - t0, 1e-9)


def _until(what: str, done: Callable[[], bool], timeout: float) -> float:
    t0 = time.monotonic()
    while not done():
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout:g} s"
        time.sleep(0.005)
    return time.monotonic() - t0


def test_replica_lag_and_the_suites_reads_on_a_replica(pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        bench_results: dict[str, dict[str, Any]]) -> None:
    committed: dict[str, float] = {}
    batches: list[int] = []
    real = gateway_logger.batches.insert_batch

    def observed(engine: Any, records: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        written = real(engine, records, *args, **kwargs)  # returned = committed (autocommit / COPY's COMMIT)
        now = time.monotonic()
        batches.append(len(records))
        for r in records:
            committed.setdefault(r["request"]["request_id"], now)
        return written

    monkeypatch.setattr(gateway_logger.batches, "insert_batch", observed)
    on_standby = Poller(pair.url(pair.standby, READER), committed)
    on_primary = Poller(pair.url(pair.primary, READER), committed)
    sampler = ReplicationSampler(pair.primary.url())
    settings = gateway_logger.Settings(queue_max=50_000, spool_dir=str(tmp_path / "spool"), metrics_port=None,
                                       metrics_dir=str(tmp_path / "metrics"))
    w = gateway_logger.Writer(settings, url=pair.url(pair.primary, WRITER)).start()
    figures: dict[str, Any] = {}
    try:
        assert w.wait_ready(20)
        for t in (on_standby, on_primary, sampler):
            t.start()
        _drive(w, _records(5), None)  # the writer's connection made, the pollers warm
        _until("warm-up rows on the standby", lambda: len(on_standby.seen) == len(committed), SEEN_DEADLINE_S)
        for name, rate, n in RATES:
            records = _records(n)
            ids = [r["request"]["request_id"] for r in records]
            b0, s0, l0 = len(batches), len(sampler.replay_lag), len(sampler.behind)
            achieved = _drive(w, records, rate)
            _until(f"{name}: rows on the standby", lambda ids=ids: all(r in on_standby.seen for r in ids), SEEN_DEADLINE_S)
            _until(f"{name}: rows on the primary", lambda ids=ids: all(r in on_primary.seen for r in ids), SEEN_DEADLINE_S)
            sizes = batches[b0:]
            lag = sampler.replay_lag[s0:]
            figures[f"{name}: achieved rows/s"] = round(achieved)
            figures[f"{name}: batches, mean rows"] = f"{len(sizes)}, {statistics.mean(sizes):.1f}"
            figures[f"{name}: commit -> visible on REPLICA"] = ms(on_standby.lags(ids))
            figures[f"{name}: commit -> visible on primary (floor)"] = ms(on_primary.lags(ids))
            figures[f"{name}: replica minus primary, per row (signed)"] = ms(
                [on_standby.seen[r] - on_primary.seen[r] for r in ids])
            figures[f"{name}: pg_stat_replication.replay_lag"] = (
                f"p50 {pct(lag, .5) * 1000:.2f} / max {max(lag) * 1000:.2f} ms ({len(lag)} samples)" if lag
                else "NULL in every sample")
            figures[f"{name}: replay bytes behind, max"] = int(max(sampler.behind[l0:], default=0))
        figures["writer rows_spooled / rows_dropped"] = (f"{w.stats['rows_spooled']} / "
                                                         f"{w.stats['rows_dropped']}")

        # checks 2/7: the gateway's (here: the writer's) sessions, as the suite's reader sees them on each
        sessions: dict[str, tuple[int, int]] = {}
        for where, server in (("primary", pair.primary), ("replica", pair.standby)):
            engine = reader(pair.url(server, READER))
            try:
                with engine.connect() as conn:
                    rows = conn.execute(SESSIONS_SQL, {"user": WRITER, "db": DB}).all()
                    tls = conn.execute(queries.tls_of_sessions(WRITER, DB)).all()
            finally:
                engine.dispose()
            logger = sum(1 for r in rows if r.application_name == "gateway_logger")
            sessions[where] = (logger, len(tls))
            figures[f"check 2/7 on the {where}: {WRITER} sessions (gateway_logger) / pg_stat_ssl rows"] = (
                f"{len(rows)} ({logger}) / {len(tls)}")
    finally:
        w.stop(timeout=10)
        for t in (on_standby, on_primary, sampler):
            t.halt.set()
    for t in (on_standby, on_primary, sampler):
        t.join(10)
    assert sessions["primary"][0] >= 1 and sessions["replica"] == (0, 0), sessions

    # checks 4/5's reads at size: fill the primary, wait until the standby has replayed it
    phase_ids = [r for r in committed]
    step_ms = 30 * 24 * 3600 * 1000.0 / ROWS
    owner = db_init.make_engine(pair.url(pair.primary, WRITER), connect_args={"options": "-c statement_timeout=0"})
    try:
        with owner.connect() as conn:
            before_lsn = conn.execute(text("SELECT pg_current_wal_lsn()::text")).scalar_one()
        t0 = time.monotonic()
        with owner.begin() as conn:
            conn.execute(text(f"""INSERT INTO requests (created_at, request_id, call_id, route, model, payload,
                                      status_code, user_id, api_key, start_time, end_time)
                SELECT now() - (g * interval '{step_ms:.3f} milliseconds') - interval '10 minutes', 'fill-' || g,
                       'fill-' || g, '/v1/chat/completions', 'gpt-4o-mini',
                       '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "filler"}}]}}'::jsonb,
                       CASE WHEN g % 50 = 0 THEN 429 ELSE 200 END, 'filler', 'filler-key-hash',
                       now() - (g * interval '{step_ms:.3f} milliseconds'), now()
                FROM generate_series(1, {ROWS}) AS g"""))
            conn.execute(text("""INSERT INTO responses (created_at, request_id_fk, latency_ms, content,
                                      prompt_tokens, completion_tokens, total_tokens, cost, response_model)
                SELECT r.created_at, r.id, 20, '{"choices": [{"message": {"content": "filler"}}]}'::jsonb, 2, 9, 11,
                       '0.0000057', 'gpt-4o-mini' FROM requests r WHERE r.request_id LIKE 'fill-%'"""))
        fill_s = time.monotonic() - t0
        with owner.connect() as conn:
            filled_lsn = conn.execute(text("SELECT pg_current_wal_lsn()::text")).scalar_one()
        su = db_init.make_engine(pair.standby.url(), isolation_level="AUTOCOMMIT")
        try:
            with su.connect() as conn:
                def replayed(lsn: str) -> Callable[[], bool]:
                    return lambda: bool(conn.execute(text("SELECT pg_last_wal_replay_lsn() >= CAST(:l AS pg_lsn)"),
                                                     {"l": lsn}).scalar_one())
                caught_up = _until("the fill replayed on the standby", replayed(filled_lsn), 300)
                with owner.begin() as oconn:
                    oconn.execute(text("ANALYZE requests"))
                    oconn.execute(text("ANALYZE responses"))
                    analyzed_lsn = oconn.execute(text("SELECT pg_current_wal_lsn()::text")).scalar_one()
                _until("ANALYZE replayed on the standby", replayed(analyzed_lsn), 60)
                in_recovery = conn.execute(text("SELECT pg_is_in_recovery()")).scalar_one()
                wal_mb = conn.execute(text("SELECT pg_wal_lsn_diff(CAST(:b AS pg_lsn), CAST(:a AS pg_lsn)) / 1e6"),
                                      {"a": before_lsn, "b": filled_lsn}).scalar_one()
        finally:
            su.dispose()
    finally:
        owner.dispose()
    figures[f"fill {ROWS:,} requests + responses on the primary, s"] = round(fill_s, 1)
    figures["fill: WAL MB / standby replayed it within s of the fill's commit"] = f"{wal_mb:.0f} / {caught_up:.2f}"

    some = phase_ids[len(phase_ids) // 2]
    call_id = some  # litellm_call(rid, request_id=rid): the call id is the request id
    run_ids = phase_ids[-300:]
    since = datetime.now(UTC) - timedelta(minutes=5)
    statements: dict[str, Any] = {
        "check 4 request_by_id": queries.request_by_id(some),
        "check 4 requests_with_call_id": queries.requests_with_call_id(call_id),
        "check 4 responses_of_request": queries.responses_of_request(some),
        "check 4 newest_requests": queries.newest_requests(),
        "check 5 join_for_request": queries.join_for_request(some),
        f"check 5 tally_of_requests ({len(run_ids)} ids)": queries.tally_of_requests(run_ids),
        **{f"check 5 window {k}": v for k, v in queries.window_counts(since).items()},
        "check 5 constraints (pg_catalog)": text(queries.CONSTRAINTS_SQL),
    }
    answers: dict[str, dict[str, Any]] = {"primary": {}, "replica": {}}
    times: dict[str, dict[str, list[float]]] = {"primary": {}, "replica": {}}
    engines = {"primary": reader(pair.url(pair.primary, READER)), "replica": reader(pair.url(pair.standby, READER))}
    try:
        for where, engine in engines.items():
            with engine.connect() as conn:
                facts = conn.execute(text("SELECT current_setting('transaction_read_only'), "
                                          "pg_is_in_recovery()")).one()
                conn.rollback()
                figures[f"reader on the {where}: transaction_read_only, pg_is_in_recovery"] = f"{facts[0]}, {facts[1]}"
        for _ in range(REPEATS):  # interleaved: the machine's noise falls on both alike
            for name, stmt in statements.items():
                for where, engine in engines.items():
                    with engine.connect() as conn:
                        conn.execute(text("SET LOCAL statement_timeout = 2000"))  # as check 5
                        t0 = time.perf_counter()
                        rows = conn.execute(stmt).all()
                        times[where].setdefault(name, []).append(time.perf_counter() - t0)
                        conn.rollback()
                    answers[where][name] = [tuple(r) for r in rows]
        window_sql = queries.sql_text(statements["check 5 window requests_without_response"])
        for where, engine in engines.items():  # the plan behind that window count's time, on each server
            with engine.connect() as conn:
                plan = conn.execute(text("EXPLAIN " + window_sql)).scalars().all()
                conn.rollback()
            figures[f"check 5 window requests_without_response: plan on the {where}"] = next(
                (line.strip(" ->").split("  (")[0] for line in plan if "Join" in line), plan[0])
    finally:
        for engine in engines.values():
            engine.dispose()
    assert in_recovery is True
    for name in statements:
        assert answers["primary"][name] == answers["replica"][name], name
        p, r = times["primary"][name], times["replica"][name]
        figures[f"{name}: primary / replica median ms"] = (
            f"{statistics.median(p) * 1000:.2f} / {statistics.median(r) * 1000:.2f} "
            f"(p95 {pct(p, .95) * 1000:.2f} / {pct(r, .95) * 1000:.2f})")
    bench_results["streaming replica (docs/DISTRIBUTED_POSTGRESQL.md)"] = figures
