"""The arithmetic of check 6 on synthetic samples whose answer is known by construction."""
from __future__ import annotations

import numpy as np
import pytest

from acceptance import overhead_stats as st


def test_percentiles_of_a_known_sample() -> None:
    p = st.percentiles(range(1, 101))
    assert (p["n"], p["p50"], p["p95"], p["p99"], p["min"], p["max"]) == (100, 50.5, 95.05, 99.01, 1, 100)
    assert st.percentiles([])["p95"] is None


def test_a_constant_shift_is_recovered_with_a_tight_interval() -> None:
    rng = np.random.default_rng(1)
    control = rng.gamma(4.0, 3.0, 300) + 10.0
    shift = st.quantile_shift(control + 3.0, control, 95)
    assert shift.point == pytest.approx(3.0)
    assert shift.low == pytest.approx(3.0) and shift.high == pytest.approx(3.0)


def test_no_difference_gives_an_interval_around_zero() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(20, 2, 400), rng.normal(20, 2, 400)
    shift = st.quantile_shift(a, b, 95)
    assert shift.low < 0 < shift.high
    assert abs(shift.point) < 1.5


def test_a_slow_tail_moves_the_p95_but_not_the_median() -> None:
    rng = np.random.default_rng(3)
    control = rng.normal(15, 0.5, 400)
    treated = control.copy()
    treated[rng.permutation(400)[:40]] += 12.0  # 10 % of the logged requests pay 12 ms
    added = st.added_latency(treated, control)
    assert added["shift"]["p50"]["point"] < 0.5
    assert added["shift"]["p95"]["point"] > 5.0
    assert added["shift"]["p95"]["low"] > 2.0


def test_unpaired_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="equal length"):
        st.quantile_shift([1.0, 2.0, 3.0], [1.0, 2.0], 95)


def test_backlog_slope_sees_a_growing_queue() -> None:
    t = np.linspace(0, 10, 200)
    assert st.backlog_slope(t, 5 + 50 * t) == pytest.approx(50.0)
    assert st.backlog_slope(t, np.full(200, 7.0)) == pytest.approx(0.0, abs=1e-6)
    assert st.backlog_slope([1.0], [1.0]) is None


def test_clock_offset_trusts_the_shortest_round_trip() -> None:
    # remote clock 0.250 s ahead; the noisy probe (long round trip) would say otherwise
    probes = [(100.0, 100.300, 100.100), (200.0, 200.2505, 200.001)]
    off = st.clock_offset(probes)
    assert off["offset_ms"] == pytest.approx(250.0)
    assert off["uncertainty_ms"] == pytest.approx(0.5)


def test_throughput_charges_the_wall_time_difference_to_each_logged_request() -> None:
    blocks = [{"arm": "logged", "requests": 50, "wall_s": 1.0}, {"arm": "unlogged", "requests": 50, "wall_s": 0.8},
              {"arm": "logged", "requests": 50, "wall_s": 1.0}, {"arm": "unlogged", "requests": 50, "wall_s": 0.8}]
    tp = st.throughput(blocks)
    assert tp["logged"]["rps"] == 50.0 and tp["unlogged"]["rps"] == 62.5
    assert tp["added_wall_ms_per_request"] == pytest.approx(4.0)


COMPLETE = {"logged_sent": 200, "logged_ok": 200, "unlogged_sent": 200, "unlogged_ok": 200,
            "logged_rows": 200, "unlogged_rows": 0, "logged_responses": 200, "logged_several_responses": 0}


def _blocks(logged_ms: list[float], unlogged_ms: list[float], requests: int = 32) -> list[dict]:
    """ABBA groups whose blocks took these ms per request (one logged/unlogged pair of values per group)."""
    out = []
    for lo, un in zip(logged_ms, unlogged_ms):
        for arm, ms in (("logged", lo), ("unlogged", un), ("unlogged", un), ("logged", lo)):
            out.append({"arm": arm, "requests": requests, "wall_s": ms * requests / 1000.0})
    return out


CHEAP = st.capacity(_blocks([15.0, 15.4, 14.8, 15.2], [14.9, 15.1, 14.9, 15.0]))


def _added(point: float) -> dict:
    return {"shift": {"p95": {"point": point, "low": point - 1, "high": point + 1}}}


def test_judge_passes_only_when_every_criterion_holds() -> None:
    limits = st.Limits(overhead_ms=5.0, durability_lag_ms=100.0)
    good = st.judge(_added(1.2), {"p95": 12.0}, COMPLETE, limits, CHEAP)
    assert good.passed and good.cause is None
    # a passing criterion's detail (artifact, report) states the comparison that holds, not the failure's
    details = {c.name: c.detail for c in good.criteria}
    assert details["added p95 latency"].endswith(" < 5 ms")
    assert details["capacity: gateway time added per logged request"].endswith(" below 5 ms")
    assert " not below " not in details["capacity: gateway time added per logged request"]
    assert details["durability lag p95"] == "12.0 ms < 100 ms"
    assert "void" not in details["no row for a control-listener request"]

    unmeasured = st.judge(_added(1.2), {"p95": 12.0}, COMPLETE, limits, None)
    assert not unmeasured.passed and unmeasured.cause == (
        "capacity: gateway time added per logged request not measured (the saturated blocks did not run or "
        "were too few)")

    costly = st.judge(_added(1.2), {"p95": 12.0}, COMPLETE, limits,
                      st.capacity(_blocks([45.0, 44.0, 46.0, 45.5], [15.0, 14.5, 15.5, 15.0])))
    assert not costly.passed and costly.cause.startswith(
        "capacity: gateway time added per logged request 30.12 ms (95% CI ")

    unclear = st.judge(_added(1.2), {"p95": 12.0}, COMPLETE, limits,
                       st.capacity(_blocks([16.0, 25.0, 14.0, 22.0], [15.0, 15.0, 15.0, 15.0])))
    interval = unclear.criteria[1].measured
    assert not unclear.passed and interval is not None and "not below 5 ms" in unclear.cause  # fails closed

    lost = st.judge(_added(1.0), {"p95": 12.0}, dict(COMPLETE, logged_responses=180), limits, CHEAP)
    assert not lost.passed and "every logged request has exactly one response row 180 of 200" in lost.cause

    slow = st.judge(_added(7.5), {"p95": 12.0}, COMPLETE, limits, CHEAP)
    assert not slow.passed and slow.cause.startswith("added p95 latency 7.50 ms")

    lagging = st.judge(_added(1.0), {"p95": 900.0}, COMPLETE, limits, CHEAP)
    assert not lagging.passed and "durability lag p95 900.0 ms >= 100 ms" in lagging.cause

    no_rows = st.judge(_added(1.0), {"p95": None}, dict(COMPLETE, logged_rows=0), limits, CHEAP)
    assert not no_rows.passed and "not measured" in no_rows.cause and "0 of 200 rows" in no_rows.cause

    void = st.judge(_added(0.0), {"p95": 3.0}, dict(COMPLETE, unlogged_rows=200), limits, CHEAP)
    assert not void.passed and "A/B comparison is void" in void.cause


def test_capacity_interval_is_a_student_t_over_the_abba_groups() -> None:
    cap = st.capacity(_blocks([16.0, 17.0, 15.0], [14.0, 15.0, 14.0]))
    assert cap["groups"] == 3 and cap["added_ms_per_request_by_group"] == [2.0, 2.0, 1.0]
    iv = cap["added_ms_per_request"]
    # mean 5/3, sd 0.577, se 0.333, t(2) = 4.303
    assert iv["point"] == pytest.approx(1.667, abs=1e-3)
    assert (iv["low"], iv["high"]) == (pytest.approx(1.667 - 1.434, abs=2e-3), pytest.approx(1.667 + 1.434, abs=2e-3))
    assert "added_ms_per_request" not in st.capacity(_blocks([16.0], [14.0]))  # one group: no interval


def test_histogram_is_a_png_with_both_panels() -> None:
    rng = np.random.default_rng(4)
    data = st.histogram_png(rng.normal(16, 1, 200), rng.normal(15, 1, 200), rng.gamma(2, 3, 200), title="t")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(data[16:20], "big")
    assert width == 12 * 90  # two panels at 90 dpi


# --- the interleaving schedule (no gateway: a caller that records what it was asked to send) --------------

from acceptance import overhead_probe as probe  # noqa: E402


class RecordingCaller(probe.Caller):
    def __init__(self, fail_from: int | None = None) -> None:
        super().__init__(clients={}, run_id="r")
        self.sent: list[str] = []
        self.fail_from = fail_from

    def send(self, arm: str, phase: str, seq: int) -> probe.Sample:
        self.sent.append(arm)
        failed = self.fail_from is not None and len(self.sent) > self.fail_from
        return probe.Sample(arm, phase, seq, 0 if failed else 200, 1.0, 0.0, None if failed else f"id{seq}",
                            None, None, "ConnectError: refused" if failed else None)


class DisabledBenchmark:
    """pytest-benchmark with --benchmark-disable: pedantic runs setup + target once."""

    def pedantic(self, target, setup, rounds, warmup_rounds, iterations):  # noqa: ANN001
        setup()
        target()


def test_interleaving_is_balanced_and_the_follower_of_a_logged_call_is_either_arm() -> None:
    caller = RecordingCaller()
    ab = probe.Interleaved(caller, pairs=200, warmup=20)
    pairs = probe.run_interleaved(ab, probe.Plan(pairs=200, warmup=20), DisabledBenchmark())
    assert caller.sent.count("logged") == caller.sent.count("unlogged") == 220
    assert len(pairs) == 200 and all(a.arm == "logged" and b.arm == "unlogged" for a, b in pairs)
    assert pairs[0][0].seq >= 20 and pairs[0][1].seq >= 20  # warm-up dropped from both arms
    followers = [caller.sent[i + 1] for i, arm in enumerate(caller.sent[:-1]) if arm == "logged"]
    share = followers.count("unlogged") / len(followers)
    assert 0.4 < share < 0.6, share  # strict pairs would give 0.75


def test_a_gateway_that_stops_answering_ends_the_measurement_early() -> None:
    caller = RecordingCaller(fail_from=30)
    ab = probe.Interleaved(caller, pairs=200, warmup=20)
    with pytest.raises(probe.UnusableGateway, match="5 requests in a row failed .*ConnectError"):
        probe.run_interleaved(ab, probe.Plan(pairs=200, warmup=20))
    assert len(caller.sent) == 35


def test_the_plan_comes_from_the_command_line_and_refuses_what_cannot_measure() -> None:
    """--overhead-pairs / --overhead-groups make the plan (recorded in the artifact); too few is a usage error."""
    import pytest

    from acceptance import overhead_options
    from acceptance.overhead_probe import Plan

    class Config:
        def __init__(self, **given: int) -> None:
            self.given = {"overhead_pairs": Plan.pairs, "overhead_groups": Plan.groups, **given}

        def getoption(self, name: str) -> int:
            return self.given[name]

    assert overhead_options.plan(Config()) == Plan()
    assert overhead_options.plan(Config(overhead_pairs=50, overhead_groups=2)) == Plan(pairs=50, groups=2)
    with pytest.raises(pytest.UsageError, match="--overhead-groups 1: need at least 2"):
        overhead_options.plan(Config(overhead_groups=1))
    with pytest.raises(pytest.UsageError, match="--overhead-pairs 19: need at least 20"):
        overhead_options.plan(Config(overhead_pairs=19))
