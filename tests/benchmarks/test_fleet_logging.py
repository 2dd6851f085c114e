"""The logger of a fleet: 2 gateway hosts x 2 workers each writing to the one database of the embedded lab
(`python -m lab up` with POC1_LAB_GATEWAYS=2, built here and put back to 1 gateway after).

Closed loop: CLIENTS concurrent clients per gateway host for SECONDS; each answered call's row is looked
for in ``requests`` every POLL_S from the runner (the first time it is seen minus the time its answer
arrived = its durability lag, to within POLL_S). Printed: calls/s and rows/s per host and for the fleet,
lag p50/p95/max, loss. Asserted: every answered call has its row (no loss) and p95 lag <= LAG_BOUND_S.
A benchmark (`make bench`): two lab rebuilds and ~1 min of load.
"""
from __future__ import annotations

import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select

import db_init
from tests.support.acceptance_run import ROOT
from tests.support.lab_unit import lab_up

pytestmark = pytest.mark.lab

CLIENTS = int(os.environ.get("POC1_BENCH_FLEET_CLIENTS", "6"))
SECONDS = float(os.environ.get("POC1_BENCH_FLEET_SECONDS", "30"))
POLL_S = 0.2
LAG_BOUND_S = 2.0


@dataclass
class Call:
    host: str
    status: int
    request_id: str | None
    answered: float
    seen: float | None = None


def _target():
    from fixtures.inventory import load_target
    from lab import fleet

    return load_target(ROOT / "hosts.yml", "local", extra_sources=tuple(fleet.suite_sources("local")))


def _load(target, calls: list[Call], lock: threading.Lock, stop: float) -> None:
    headers = {"Authorization": f"Bearer {target.master_key}"}

    def client(host: str, url: str, n: int) -> None:
        with httpx.Client(timeout=30, trust_env=False) as c:
            i = 0
            while time.monotonic() < stop:
                i += 1
                try:
                    r = c.post(url, headers=headers, json={"model": "gpt-4o-mini", "messages": [
                        {"role": "user", "content": f"fleet {host} {n} {i}"}]})
                    call = Call(host, r.status_code, r.headers.get("x-poc1-request-id"), time.time())
                except httpx.HTTPError:
                    call = Call(host, 0, None, time.time())
                with lock:
                    calls.append(call)

    jobs = [(g.name, f"{target.for_gateway(g.name).vars['gateway_url']}/v1/chat/completions", n)
            for g in target.gateways for n in range(CLIENTS)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for job in jobs:
            pool.submit(client, *job)


def _poll(target, calls: list[Call], lock: threading.Lock, until: list[float]) -> None:
    from fixtures.database import open_reader

    engine = open_reader(target)
    try:
        while time.monotonic() < until[0]:
            with lock:
                pending = {c.request_id: c for c in calls if c.status == 200 and c.request_id and c.seen is None}
            if pending:
                with engine.connect() as conn:
                    found = conn.execute(select(db_init.Request.request_id)
                                         .where(db_init.Request.request_id.in_(list(pending)))).scalars().all()
                now = time.time()
                for rid in found:
                    pending[rid].seen = now
            time.sleep(POLL_S)
    finally:
        engine.dispose()


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def test_two_gateways_two_workers_into_one_database() -> None:
    lab_up(gateways=2)
    try:
        target = _target()
        assert len(target.gateways) == 2
        calls: list[Call] = []
        lock = threading.Lock()
        t0 = time.monotonic()
        until = [t0 + SECONDS + 60]
        poller = threading.Thread(target=_poll, args=(target, calls, lock, until), daemon=True)
        poller.start()
        _load(target, calls, lock, t0 + SECONDS)
        load_s = time.monotonic() - t0
        ok = [c for c in calls if c.status == 200 and c.request_id]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(c.seen is None for c in ok):
            time.sleep(POLL_S)
        until[0] = 0
        poller.join(10)
        lost = [c for c in ok if c.seen is None]
        lags = [c.seen - c.answered for c in ok if c.seen is not None]
        first = min(c.answered for c in ok)
        last_seen = max(c.seen for c in ok if c.seen is not None)
        print(f"\nfleet: {len(target.gateways)} gateways x 2 workers, {CLIENTS} clients each, {load_s:.1f} s of load")
        for g in target.gateways:
            mine = [c for c in ok if c.host == g.name]
            print(f"  {g.name}: {len(mine)} answered ({len(mine) / load_s:.1f}/s), "
                  f"{sum(1 for c in calls if c.host == g.name and c.status != 200)} not 200, "
                  f"lag p50 {_pct([c.seen - c.answered for c in mine if c.seen], 0.5) * 1000:.0f} ms")
        print(f"  fleet: {len(ok)} calls answered ({len(ok) / load_s:.1f}/s), rows landed "
              f"{len(ok) - len(lost)} ({(len(ok) - len(lost)) / (last_seen - first):.1f} rows/s first answer to "
              f"last row), lost {len(lost)}; lag p50 {statistics.median(lags) * 1000:.0f} ms, p95 "
              f"{_pct(lags, 0.95) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms (poll every {POLL_S * 1000:.0f} ms)")
        assert not lost, f"{len(lost)} answered calls have no row"
        assert _pct(lags, 0.95) <= LAG_BOUND_S
    finally:
        lab_up(gateways=1)
