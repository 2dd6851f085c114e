"""What check 6 does to the live gateway: the interleaved logging-on/off requests, the throughput
blocks, and the read-only look-up of the rows they left (by this run's call ids).

Why interleaved and paired: both arms go to the same gateway process in the same seconds, so drift
(other load on the machine, the gateway warming up) hits both alike. Why throughput blocks as well:
LiteLLM runs the logging callbacks *after* the answer is sent, so per-request latency can hide work
that still costs the gateway capacity; blocks where every request is logged (or none is) charge that
background work to the arm that caused it.
"""
from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, Sequence

import httpx
from sqlalchemy import Engine, func, select

from acceptance import overhead_stats as st
from db_init import Request, Response

ARMS = ("logged", "unlogged")
CHAT_PATH = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
HEADER_OVERHEAD = "x-litellm-overhead-duration-ms"
HEADER_CALLBACK = "x-litellm-callback-duration-ms"


@dataclass
class Sample:
    """One request as the client saw it."""

    arm: str
    phase: str
    seq: int
    status: int
    latency_ms: float
    end_epoch: float
    call_id: str | None
    litellm_overhead_ms: float | None
    litellm_callback_ms: float | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.call_id is not None


def _header_ms(headers: httpx.Headers, name: str) -> float | None:
    try:
        return float(headers[name])
    except (KeyError, ValueError):  # absent, or LiteLLM's literal "None"
        return None


#: the id each arm's answer carries: the logger's own row id on the gateway; LiteLLM's call id on the
#: control listener, whose logger is off (the check looks that id up to prove no row was written)
ID_HEADER = {"logged": "x-poc1-request-id", "unlogged": "x-litellm-call-id"}


@dataclass
class Caller:
    """Sends the runbook's chat call, tagged with the run: the logged arm to the gateway, the unlogged
    arm to the control listener (same build, same host, logger writes off), one client each."""

    clients: dict[str, httpx.Client]
    run_id: str
    model: str = MODEL

    def body(self, arm: str, phase: str, seq: int) -> dict[str, Any]:
        return {"model": self.model, "max_tokens": 16, "messages": [
            {"role": "user", "content": f"overhead probe {self.run_id} {arm} {phase} {seq}"}]}

    def send(self, arm: str, phase: str, seq: int) -> Sample:
        """One chat call, timed from just before the request to the last byte of the answer."""
        body = self.body(arm, phase, seq)
        start = time.perf_counter()
        try:
            resp = self.clients[arm].post(CHAT_PATH, json=body)
            resp.read()
        except httpx.HTTPError as exc:
            text = str(exc).splitlines()[0] if str(exc) else ""
            return Sample(arm, phase, seq, 0, (time.perf_counter() - start) * 1000.0, time.time(), None, None,
                          None, f"{type(exc).__name__}: {text}")
        latency_ms = (time.perf_counter() - start) * 1000.0
        return Sample(arm, phase, seq, resp.status_code, latency_ms, time.time(),
                      resp.headers.get(ID_HEADER[arm]), _header_ms(resp.headers, HEADER_OVERHEAD),
                      _header_ms(resp.headers, HEADER_CALLBACK),
                      None if resp.status_code == 200 else f"HTTP {resp.status_code}")


class UnusableGateway(RuntimeError):
    """The gateway is not answering: measuring further would only repeat the error (and take long)."""


#: this many failed requests in a row end the measurement (a stopped gateway fails at once, a stuck
#: one only after the client timeout: the bound keeps the check short either way)
MAX_FAILURES_IN_A_ROW = 5


class Interleaved:
    """The A/B sequence: ``warmup + pairs`` requests of each arm, in one balanced random order.

    Why not strict pairs (one logged, one unlogged per round): LiteLLM's logging work runs just *after*
    a logged answer, so it slows whichever request comes next. In strict pairs that next request is an
    unlogged one three times out of four, which would make logging look cheaper than it is. In a
    balanced random order the next request is either arm alike, so the spill-over cancels in the
    difference (the throughput blocks charge it to logging instead).

    pytest-benchmark times the logged requests (``target``); the unlogged ones preceding each logged one
    run in ``setup``, untimed by it but timed here like every request. The k-th measured logged request
    is paired with the k-th measured unlogged one for the paired bootstrap.
    """

    def __init__(self, caller: Caller, pairs: int, warmup: int, seed: int = 6) -> None:
        self.caller, self.warmup = caller, warmup
        rng = random.Random(seed)
        head, body = ["logged", "unlogged"] * warmup, ["logged", "unlogged"] * pairs
        rng.shuffle(head)
        rng.shuffle(body)
        order = head + body
        # one segment per logged request: the unlogged requests before it, then it
        self.segments: list[int] = []
        run = 0
        for arm in order:
            if arm == "logged":
                self.segments.append(run)
                run = 0
            else:
                run += 1
        self.trailing = run
        self.samples: list[Sample] = []
        self._done = 0

    def _send(self, arm: str) -> Sample:
        sample = self.caller.send(arm, "ab", len(self.samples))
        self.samples.append(sample)
        recent = self.samples[-MAX_FAILURES_IN_A_ROW:]
        if len(recent) == MAX_FAILURES_IN_A_ROW and not any(s.ok for s in recent):
            raise UnusableGateway(f"{MAX_FAILURES_IN_A_ROW} requests in a row failed "
                                  f"(after {len(self.samples)} sent; last: {sample.error or 'no call id'})")
        return sample

    def setup(self) -> None:
        for _ in range(self.segments[self._done]):
            self._send("unlogged")

    def target(self) -> None:
        self._send("logged")
        self._done += 1

    def finish(self) -> None:
        """Whatever pytest-benchmark did not run (all of it when it is disabled), then the tail."""
        while self._done < len(self.segments):
            self.setup()
            self.target()
        for _ in range(self.trailing):
            self._send("unlogged")
        self.trailing = 0

    def pairs(self) -> list[tuple[Sample, Sample]]:
        """(k-th logged, k-th unlogged) after the warm-up, in time order."""
        lo = [s for s in self.samples if s.arm == "logged"][self.warmup:]
        un = [s for s in self.samples if s.arm == "unlogged"][self.warmup:]
        return list(zip(lo, un))


ABBA = ("logged", "unlogged", "unlogged", "logged")


def throughput_blocks(caller: Caller, block: int, concurrency: int, groups: int = 1,
                      ) -> tuple[list[dict[str, Any]], list[Sample]]:
    """``groups`` ABBA groups of blocks of ``block`` requests all logged or all unlogged, ``concurrency``
    at a time (a linear drift of the machine cancels within a group; the groups are the replicates of
    the capacity figure). Returns per-block wall times and every sample."""
    order = ABBA * groups
    blocks: list[dict[str, Any]] = []
    samples: list[Sample] = []
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="overhead") as pool:
        for b, arm in enumerate(order):
            start = time.perf_counter()
            got = list(pool.map(lambda i, arm=arm, b=b: caller.send(arm, "tp", b * block + i), range(block)))
            wall = time.perf_counter() - start
            blocks.append({"arm": arm, "requests": block, "concurrency": concurrency, "wall_s": round(wall, 4),
                           "ok": sum(s.ok for s in got)})
            samples.extend(got)
    return blocks, samples


def added_p95_point(pairs: Sequence[tuple[Sample, Sample]]) -> float:
    """The added p95 latency of these pairs (logged minus unlogged), without its interval."""
    series = Series.of(pairs, {}, 0.0)  # the pairs where both calls were answered
    if len(series.logged_ms) < 2:
        return float("inf")
    return st.percentile_shift(series.logged_ms, series.unlogged_ms, 95)


def capacity_rounds(caller: Caller, plan: "Plan", threshold_ms: float,
                    ) -> tuple[list[dict[str, Any]], list[Sample]]:
    """Rounds of ``plan.groups`` ABBA groups until the capacity interval is conclusive — wholly below or
    wholly above ``threshold_ms`` — or ``plan.max_rounds`` ran (then it stays inconclusive and fails).

    Why sequential: on a shared machine one round's interval is a few ms wide, so a healthy gateway whose
    logging costs ~2 ms now and then straddles 5 ms; more groups narrow it (1/sqrt(n)). A gateway far
    from the threshold either way is decided by the first round; only the unclear ones cost more time."""
    blocks: list[dict[str, Any]] = []
    samples: list[Sample] = []
    for _ in range(plan.max_rounds):
        got_blocks, got = throughput_blocks(caller, plan.block, plan.concurrency, plan.groups)
        blocks += got_blocks
        samples += got
        interval = st.capacity(blocks).get("added_ms_per_request")
        if interval is None or not all(s.ok for s in got):
            break
        if interval["high"] < threshold_ms or interval["low"] >= threshold_ms:
            break
    return blocks, samples


# --------------------------------------------------------------------------------------------------
# the database side (read-only engine, queries built from db_init's models)


def clock_probes(engine: Engine, tries: int = 7) -> list[tuple[float, float, float]]:
    """(sent, database clock, received) triples, to correct the lag for clock offset between hosts."""
    probes = []
    with engine.connect() as conn:
        for _ in range(tries):
            sent = time.time()
            remote: datetime = conn.execute(select(func.clock_timestamp())).scalar_one()
            probes.append((sent, remote.timestamp(), time.time()))
    return probes


def _chunks(items: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass(frozen=True)
class LoggedRow:
    """What the log holds for one of the logger's request ids: its response rows, and when they were
    written (epoch seconds; None without one)."""

    responses: int
    written: float | None


def logged_rows(engine: Engine, request_ids: Sequence[str]) -> dict[str, LoggedRow]:
    """The request rows of these (logger's own) request ids, each with its response rows (one query per
    chunk; absent: no request row). A request without a response is *found*: check 5 judges it and check 6
    counts it, neither waits for a response that cannot come (both rows are written in one transaction).

    The write time is the response row's ``created_at``, now() of the transaction that wrote both rows. Not
    ``requests.created_at``: on the partitioned layout that is the request's own time (db_init: its partition
    key, from the request id), which would make every lag ~0 however late the row came."""
    found: dict[str, LoggedRow] = {}
    with engine.connect() as conn:
        for chunk in _chunks(list(request_ids)):
            stmt = (select(Request.request_id, func.count(Response.id), func.min(Response.created_at))
                    .select_from(Request).outerjoin(Response, Response.request_id_fk == Request.id)
                    .where(Request.request_id.in_(chunk)).group_by(Request.request_id))
            for key, n, written in conn.execute(stmt):
                found[key] = LoggedRow(int(n), written.timestamp() if written is not None else None)
    return found


def written_at(rows: dict[str, LoggedRow]) -> dict[str, float]:
    """request id → write time, for the rows that have a response (the durability lag's input)."""
    return {rid: row.written for rid, row in rows.items() if row.written is not None}


def created_at_by_call_id(engine: Engine, call_ids: Sequence[str]) -> dict[str, float]:
    """The same for LiteLLM call ids (the control arm's answers: any row found is a row too many)."""
    return _created_at(engine, Request.call_id, call_ids)


def _created_at(engine: Engine, column: Any, ids: Sequence[str]) -> dict[str, float]:
    found: dict[str, float] = {}
    with engine.connect() as conn:
        for chunk in _chunks(list(ids)):
            for key, created_at in conn.execute(select(column, Request.created_at).where(column.in_(chunk))):
                found[key] = created_at.timestamp()
    return found


def wait_for_rows(engine: Engine, request_ids: Sequence[str], timeout_s: float,
                  clock: Callable[[], float] = time.monotonic, poll_s: float = 0.25) -> dict[str, LoggedRow]:
    """Poll until every id has its request row or the time is up; returns what was found."""
    deadline = clock() + timeout_s
    while True:
        found = logged_rows(engine, request_ids)
        if len(found) >= len(set(request_ids)) or clock() >= deadline:
            return found
        time.sleep(poll_s)


def sample_rows(samples: Iterable[Sample]) -> list[dict[str, Any]]:
    """The raw samples as they go into the artifact (call ids are not secrets; nothing else is sent)."""
    return [asdict(s) for s in samples]


# --------------------------------------------------------------------------------------------------
# the whole measurement


@dataclass(frozen=True)
class Plan:
    """How much to send (defaults: 20 warm-up pairs + 200 measured pairs + 12 ABBA groups x 4 blocks x 32
    saturated = 1976 calls, about 35 s on the lab). Why 12 groups of 32: with 6 groups of 24 the capacity
    interval was +-4.5 ms wide on the lab's two shared cores and 2 of 4 healthy runs failed closed."""

    pairs: int = 200
    warmup: int = 20
    block: int = 32
    concurrency: int = 8
    groups: int = 12
    #: rounds of ``groups`` at most, while the capacity interval straddles the threshold
    max_rounds: int = 3
    row_wait_s: float = 15.0


def run_interleaved(ab: Interleaved, plan: Plan, benchmark: Any | None = None) -> list[tuple[Sample, Sample]]:
    """The A/B requests, timed by pytest-benchmark when given (one benchmark round = one logged request,
    so its statistics are the logged arm's latency; ``--benchmark-compare`` compares those)."""
    if benchmark is not None:
        benchmark.pedantic(ab.target, setup=ab.setup, rounds=plan.pairs, warmup_rounds=plan.warmup, iterations=1)
    ab.finish()
    return ab.pairs()



METHOD = {
    "added_latency": (
        "Interleaved A/B on the same gateway host in the same seconds: as many requests to the gateway "
        "(DB logging on) as to its control listener (the same venv and config.yaml without its callbacks, "
        "i.e. without the logger, on another port; started by the check over SSH and stopped after, see "
        "control). No client can opt a call out of the log "
        "(global_disable_no_log_param), so the unlogged arm is a second process, not a request flag. "
        "Sent one at a time, one keep-alive connection per arm, in a balanced random order (so the logging "
        "work that runs just after a logged answer slows the next request whichever arm it belongs to, "
        "and cancels in the difference); the first requests of each arm are warm-up and dropped. "
        "Latency is the client's time from sending to the last byte of the answer. Added latency = "
        "percentile of the logged arm minus the same percentile of the unlogged arm; its 95% confidence "
        "interval comes from a bootstrap over pairs (k-th logged with k-th unlogged request). "
        "Pass: the added p95 (point estimate) below the threshold; the interval is reported beside it. A "
        "miss is measured again with another round of the same calls and judged on all of them (at most "
        "max_rounds): one p95 over a few hundred calls on a shared machine jumps by several ms."),
    "why_more_than_latency": (
        "LiteLLM runs the logging callbacks after the answer is sent, so the client's latency shows only "
        "the part of the logging on the request path. Two more figures account for the rest: the "
        "durability lag (how long until the row exists) and the throughput with every request logged "
        "versus none (the gateway capacity the background work takes)."),
    "durability_lag": (
        "For each logged request: responses.created_at of its rows (found by the logger's own request id "
        "x-poc1-request-id, read-only, query built from db_init's models) minus the client's time of the "
        "answer's last byte, corrected by the measured clock offset between the runner and the database "
        "host. created_at is now() of the transaction that wrote both rows, i.e. its start (not "
        "requests.created_at: on the partitioned layout that is the request's own time): the commit follows it "
        "by the INSERTs' own duration. Rows not present within row_wait_s count as missing. A writer "
        "that cannot keep up shows as a growing lag (backlog slope, ms of lag per s of run). "
        "Pass: lag p95 below the durability-lag threshold, and every logged request has its row."),
    "throughput": (
        "Capacity: ABBA groups of saturated blocks (concurrency above the gateway's cores), every request "
        "of a block to the gateway (logged) or every one to the control listener (unlogged); a linear "
        "drift of the machine cancels within a group. At saturation the wall time per request of a block "
        "is the gateway time each request costs, including the logging work LiteLLM runs after the answer "
        "(which the client's latency cannot see). Per group: logged minus unlogged ms per request; the "
        "groups are the replicates of a Student-t 95% interval. While the interval straddles the threshold, "
        "another round of groups is measured (at most max_rounds): a clear case is decided at once, an "
        "unclear one gets more evidence. Pass: its upper bound below the threshold (the seed's 5 ms), so a "
        "run that stays unclear fails closed rather than passing a slowed gateway."),
    "litellm_headers": (
        "LiteLLM's own figures from each answer: x-litellm-overhead-duration-ms (its time outside the "
        "provider call) and x-litellm-callback-duration-ms (time spent in callbacks before the answer); "
        "recorded beside the A/B figure, not used for the verdict."),
    "validity": (
        "A control-listener request must leave no row (looked up by its x-litellm-call-id; else the "
        "comparison is void), and every request must be answered 200."),
}


def lags_ms(samples: Iterable[Sample], created: dict[str, float], offset_ms: float) -> list[tuple[Sample, float]]:
    """(sample, lag in ms) for every logged sample whose row was found."""
    return [(s, (created[s.call_id] - offset_ms / 1000.0 - s.end_epoch) * 1000.0)
            for s in samples if s.call_id in created]


@dataclass
class Series:
    """The numbers of the interleaved phase: latencies of the pairs where both calls were answered,
    and the durability lag of every answered logged call whose row was found."""

    logged_ms: list[float]
    unlogged_ms: list[float]
    lags: list[tuple[Sample, float]]

    @classmethod
    def of(cls, pairs: Sequence[tuple[Sample, Sample]], created: dict[str, float], offset_ms: float) -> "Series":
        ok = [(a, b) for a, b in pairs if a.ok and b.ok]
        return cls([a.latency_ms for a, _ in ok], [b.latency_ms for _, b in ok],
                   lags_ms((a for a, _ in pairs if a.ok), created, offset_ms))

    @property
    def lag_values(self) -> list[float]:
        return [lag for _, lag in self.lags]


def build_document(*, run_id: str, target: str, plan: Plan, limits: st.Limits,
                   pairs: Sequence[tuple[Sample, Sample]], tp_blocks: list[dict[str, Any]],
                   tp_samples: Sequence[Sample], created: dict[str, float], clock: dict[str, float],
                   duration_s: float, rows: dict[str, LoggedRow]) -> dict[str, Any]:
    """Everything check 6 measured, its statistics and its verdict, as one JSON-able document.

    ``rows``: the logged arm's request rows (``logged_rows``); ``created``: the write time of those with a
    response (the lag) and of any control-arm row (by call id: any is one too many)."""
    logged = [p[0] for p in pairs]
    unlogged = [p[1] for p in pairs]
    series = Series.of(pairs, created, clock["offset_ms"])
    lo_ms, un_ms, ab_lags = series.logged_ms, series.unlogged_ms, series.lags
    all_logged = [s for s in (*logged, *tp_samples) if s.arm == "logged"]
    all_unlogged = [s for s in (*unlogged, *tp_samples) if s.arm == "unlogged"]
    tp_lags = lags_ms((s for s in tp_samples if s.arm == "logged" and s.ok), created, clock["offset_ms"])
    t0 = min((s.end_epoch for s in logged), default=0.0)
    completeness = {
        "logged_sent": len(all_logged), "logged_ok": sum(s.ok for s in all_logged),
        "unlogged_sent": len(all_unlogged), "unlogged_ok": sum(s.ok for s in all_unlogged),
        "logged_rows": sum(1 for s in all_logged if s.ok and s.call_id in rows),
        "unlogged_rows": sum(1 for s in all_unlogged if s.call_id in created),
        "logged_responses": sum(1 for s in all_logged if s.ok and s.call_id in rows
                                and rows[s.call_id].responses == 1),
        "logged_several_responses": sum(1 for s in all_logged if s.ok and s.call_id in rows
                                        and rows[s.call_id].responses > 1),
    }
    lag_stats = st.percentiles([lag for _, lag in ab_lags])
    if len(lo_ms) >= 2:
        added = st.added_latency(lo_ms, un_ms)
    else:
        nan = {"point": float("inf"), "low": float("inf"), "high": float("inf")}
        added = {"shift": {f"p{q}": nan for q in st.QUANTILES}, "pair_differences": st.percentiles([])}
    cap = st.capacity(tp_blocks)
    verdict = st.judge(added, lag_stats, completeness, limits, cap)

    def header_stats(attr: str) -> dict[str, Any]:
        return {arm: st.percentiles([v for s in group if s.ok and (v := getattr(s, attr)) is not None])
                for arm, group in (("logged", logged), ("unlogged", unlogged))}

    return {
        "run_id": run_id,
        "target": target,
        "duration_s": round(duration_s, 2),
        "method": METHOD,
        "plan": asdict(plan),
        "limits": asdict(limits),
        "verdict": verdict.as_dict(),
        "added_ms": {k: v["point"] for k, v in added["shift"].items()},
        "added_latency": added,
        "latency_ms": {"logged": st.percentiles(lo_ms), "unlogged": st.percentiles(un_ms)},
        "litellm_headers": {"overhead_duration_ms": header_stats("litellm_overhead_ms"),
                            "callback_duration_ms": header_stats("litellm_callback_ms")},
        "durability_lag_ms": {
            "interleaved": lag_stats,
            "under_concurrency": st.percentiles([lag for _, lag in tp_lags]),
            "backlog_slope_ms_per_s": st.backlog_slope([s.end_epoch - t0 for s, _ in ab_lags],
                                                       [lag for _, lag in ab_lags]),
            "clock": clock,
        },
        "throughput": st.throughput(tp_blocks),
        "capacity": cap,
        "completeness": completeness,
        "errors": sorted({s.error for s in (*all_logged, *all_unlogged) if s.error})[:10],
        "samples": sample_rows([*(s for p in pairs for s in p), *tp_samples]),
    }
