"""What the logger costs a saturated gateway, and how long a row takes to be stored — one run, side by side.

Three proxies of the same build, each with its own stand-in model, started once:
``none`` (config.yaml without callbacks), ``noop`` (a callback that does nothing: what LiteLLM's own
callback machinery costs) and ``logger`` (config.yaml as deployed). Saturated throughput: 16 keep-alive
clients for ``SATURATE_S`` per slot, the arms interleaved in rounds (order rotated each round), ``none``
twice per round: the spread of ``none``/``none`` is the run's own noise floor. Ratios are per round, then
the median. Durability lag (answer -> the row's ``created_at``, which is its transaction's start) of the
logger arm at 1 and 10 requests/s (open loop) and under saturation. Memory: the proxies' RSS peak.
"""
from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

import db_init
from acceptance.overhead_stats import percentiles
from tests.support.gateway import CONFIG, MODEL, Gateway
from tests.support.proc import cpu_seconds, memory_mib
from tools.polling import poll_until

CLIENTS = 16
SATURATE_S = 6.0
ROUNDS = 5
ARMS = ("none", "noop", "logger")
NOOP_MODULE = '''"""A LiteLLM callback that does nothing: the cost of LiteLLM's callback machinery alone."""
from litellm.integrations.custom_logger import CustomLogger

instance = CustomLogger()
'''


def _config(directory: Path, callbacks: str | None) -> Path:
    config = yaml.safe_load(CONFIG.read_text())
    if callbacks is None:
        config["litellm_settings"].pop("callbacks", None)
    else:
        config["litellm_settings"]["callbacks"] = callbacks
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def arms(bench_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Gateway]]:
    made: dict[str, Gateway] = {}
    try:
        for arm in ARMS:
            directory = tmp_path_factory.mktemp(f"arm-{arm}")
            gw = Gateway(bench_db)
            if arm == "none":
                gw.config = _config(directory, None)
            elif arm == "noop":
                (gw.app_path).mkdir(parents=True, exist_ok=True)
                (gw.app_path / "poc1_noop_callback.py").write_text(NOOP_MODULE)
                gw.config = _config(directory, "poc1_noop_callback.instance")
            made[arm] = gw.start()
        yield made
    finally:
        for gw in made.values():
            gw.cleanup()


# -- a load generator cheap enough to leave the cores to the gateway: raw HTTP/1.1 keep-alive ------------

@dataclass
class Load:
    answered: list[tuple[float, str | None]] = field(default_factory=list)  # (answered epoch, request id)
    failures: int = 0


def _request(gw: Gateway, n: int) -> bytes:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": f"cost {n}"}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
            f"Authorization: Bearer {gw.master_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
                    load: Load) -> None:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    if lines[0].split(" ")[1] == "200":
        load.answered.append((time.time(), headers.get("x-poc1-request-id")))
    else:
        load.failures += 1


async def _saturate(gw: Gateway, seconds: float, clients: int = CLIENTS) -> Load:
    load = Load()
    stop_at = time.monotonic() + seconds

    async def client(c: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        n = 0
        try:
            while time.monotonic() < stop_at:
                await _exchange(reader, writer, _request(gw, c * 1_000_000 + n), load)
                n += 1
        finally:
            writer.close()

    await asyncio.gather(*(client(c) for c in range(clients)))
    return load


async def _open_loop(gw: Gateway, rate: float, seconds: float) -> Load:
    """``rate`` requests/s on their schedule whatever the answers do, each on a connection of its own (an
    idle keep-alive connection would be closed by the server between two sends at 1 request/s)."""
    load = Load()

    async def one(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            await _exchange(reader, writer, _request(gw, n), load)
        finally:
            writer.close()

    start, tasks = time.monotonic(), []
    for n in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    return load


def _lags_ms(db_url: str, load: Load, wait_s: float = 10.0) -> list[float]:
    """answer -> created_at of each answered request's row, in ms (waits for the rows to be written)."""
    answered = {rid: at for at, rid in load.answered if rid}
    ids = list(answered)
    engine = db_init.make_engine(db_url)

    def stored() -> dict[str, float]:
        found: dict[str, float] = {}
        with engine.connect() as conn:
            for i in range(0, len(ids), 5000):
                rows = conn.execute(select(db_init.Request.request_id, db_init.Request.created_at)
                                    .where(db_init.Request.request_id.in_(ids[i:i + 5000])))
                found.update((rid, created.timestamp()) for rid, created in rows)
        return found

    try:
        _, found = poll_until(stored, lambda got: len(got) == len(answered), timeout=wait_s)
    finally:
        engine.dispose()
    assert len(found) == len(answered), f"{len(answered) - len(found)} answered requests have no row"
    return [(found[rid] - at) * 1000 for rid, at in answered.items()]


def _lag_figures(lags: list[float]) -> dict[str, float | int | None]:
    figures = percentiles(lags)
    return {k: figures[k] for k in ("p50", "p95", "p99", "n")}


def _metrics(gw: Gateway) -> dict[str, Any]:
    """The logger's metric families from its metrics port, by name."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=10).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def _histograms(gw: Gateway) -> dict[str, dict[float, float]]:
    """The logger's two lag histograms (cumulative bucket counts by upper bound)."""
    return {name: {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}
            for name, family in _metrics(gw).items()
            if name in ("gateway_logger_handover_seconds", "gateway_logger_write_lag_seconds")}


def _writer_cpu_s(gw: Gateway) -> float | None:
    """The logger's ``writer_cpu_seconds`` gauge (its writer thread's CPU)."""
    family = _metrics(gw).get("gateway_logger_writer_cpu_seconds")
    return float(family.samples[0].value) if family is not None else None


def _quantile_ms(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The q-quantile of what was observed between two scrapes, interpolated within its bucket."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    target, lower, below = q * counts[-1], 0.0, 0.0
    for bound, cum in zip(bounds, counts):
        if cum >= target:
            if bound == float("inf"):
                return lower * 1000
            return (lower + (bound - lower) * (target - below) / max(cum - below, 1e-9)) * 1000
        lower, below = bound, cum
    return None


def _cpu_s(gw: Gateway) -> float:
    """CPU seconds (user + system, all threads) the proxy process has used."""
    assert gw.proxy is not None
    return cpu_seconds(f"/proc/{gw.proxy.pid}/stat")


def _met(value: float, goal: float, noise: float) -> bool | str:
    """Whether ``value >= goal``; a miss smaller than the run's noise floor is said as such."""
    return True if value >= goal else "within noise" if value >= goal - noise else False


def test_saturated_capacity_and_durability_lag(arms: dict[str, Gateway], bench_db: str, bench_results: dict,
                                              bench_goals: list) -> None:
    for gw in arms.values():  # warm-up: imports, pools, the first rows
        asyncio.run(_saturate(gw, 2.0))
    rps: dict[str, list[float]] = {"none": [], "none again": [], "noop": [], "logger": []}
    cpu_ms: dict[str, list[float]] = {slot: [] for slot in rps}  # the proxy's CPU per answered request
    writer_ms: list[float] = []  # ... of which the logger's writer thread (its writer_cpu_seconds gauge)
    saturated = Load()
    slots = ["none", "noop", "logger", "none again"]
    for r in range(ROUNDS):
        order = slots[r % len(slots):] + slots[:r % len(slots)]
        for slot in order:
            gw = arms[slot.split()[0]]
            cpu0 = _cpu_s(gw)
            w0 = _writer_cpu_s(gw) if slot == "logger" else None
            load = asyncio.run(_saturate(gw, SATURATE_S))
            assert load.failures == 0, f"{slot}: {load.failures} requests not answered 200"
            rps[slot].append(len(load.answered) / SATURATE_S)
            cpu_ms[slot].append((_cpu_s(gw) - cpu0) * 1000 / len(load.answered))
            if w0 is not None and (w1 := _writer_cpu_s(gw)) is not None:
                writer_ms.append((w1 - w0) * 1000 / len(load.answered))
            if slot == "logger":
                saturated.answered += load.answered
    ratio = {name: [a / b for a, b in zip(rps[x], rps[y])]
             for name, x, y in (("logger / noop", "logger", "noop"), ("noop / none", "noop", "none"),
                                ("logger / none", "logger", "none"), ("none / none (noise)", "none again", "none"))}
    # CPU per request: what bounds a saturated gateway's capacity, far less noisy than requests/s
    ratio |= {f"CPU {name}": [b / a for a, b in zip(cpu_ms[x], cpu_ms[y])]
              for name, x, y in (("noop / logger", "logger", "noop"), ("none / none again (noise)", "none again", "none"))}
    noise = statistics.median(abs(1 - q) for q in ratio["none / none (noise)"])
    cpu_noise = statistics.median(abs(1 - q) for q in ratio["CPU none / none again (noise)"])
    figures: dict[str, Any] = {f"{slot} requests/s (median of {ROUNDS})": round(statistics.median(v), 1)
                               for slot, v in rps.items()}
    for name, qs in ratio.items():
        figures[f"{name} ratio"] = f"{statistics.median(qs):.3f} ({min(qs):.3f}-{max(qs):.3f})"
    figures["noise floor (median |1 - none/none|)"] = round(noise, 3)
    for slot, v in cpu_ms.items():
        figures[f"{slot} proxy CPU ms per request (median)"] = round(statistics.median(v), 3)
    figures["CPU noise floor (median |1 - none/none|)"] = round(cpu_noise, 3)
    share = statistics.median(w / c for w, c in zip(writer_ms, cpu_ms["logger"])) if writer_ms else None
    if writer_ms:
        figures["logger writer thread CPU ms per request (median)"] = round(statistics.median(writer_ms), 3)
        figures["writer's share of the logger proxy's CPU (median)"] = round(share, 4)

    lag = {f"saturated ({CLIENTS} clients)": _lags_ms(bench_db, saturated)}
    before = _histograms(arms["logger"])
    eight = asyncio.run(_saturate(arms["logger"], SATURATE_S * 2, clients=8))
    lag["concurrency 8"] = _lags_ms(bench_db, eight)
    after = _histograms(arms["logger"])
    split = {f"{part} p{int(q * 100)} ms": round(v, 1) if (v := _quantile_ms(before.get(f"gateway_logger_{part}_seconds", {}),
                                                                           after.get(f"gateway_logger_{part}_seconds", {}), q)) is not None else None
             for part in ("handover", "write_lag") for q in (0.5, 0.95)}
    for rate, seconds in ((1.0, 40.0), (10.0, 20.0)):
        lag[f"{rate:g} request/s"] = _lags_ms(bench_db, asyncio.run(_open_loop(arms["logger"], rate, seconds)))
    for name, lags in lag.items():
        figures[f"durability lag ms at {name}"] = _lag_figures(lags)
    figures["at concurrency 8, the lag's parts (the logger's histograms): LiteLLM's hand-over, the logger's write"] = split
    for arm, gw in arms.items():
        figures[f"{arm} proxy memory MiB"] = memory_mib(gw.proxy.pid)
    bench_results[f"saturated gateway ({CLIENTS} clients, {ROUNDS} rounds x {SATURATE_S:g} s per arm)"] = figures

    capacity = statistics.median(ratio["logger / noop"])
    bench_goals.append(("gateway capacity, logger / do-nothing callback (saturated requests/s)",
                        f"{capacity:.3f} (noise floor {noise:.3f})", ">= 0.97", _met(capacity, 0.97, noise)))
    by_cpu = statistics.median(ratio["CPU noop / logger"])
    bench_goals.append(("gateway capacity by CPU per request, do-nothing callback / logger (saturated)",
                        f"{by_cpu:.3f} (noise floor {cpu_noise:.3f})", ">= 0.97", _met(by_cpu, 0.97, cpu_noise)))
    if share is not None:
        bench_goals.append(("gateway capacity by accounting: 1 - the writer thread's share of the proxy's CPU "
                            "(saturated)", f"{1 - share:.3f}", ">= 0.97", 1 - share >= 0.97))
    one = percentiles(lag["1 request/s"])["p95"]
    bench_goals.append(("durability lag p95, 1 request/s", f"{one:.1f} ms", "<= 20 ms", one <= 20))
    ten = percentiles(lag["10 request/s"])["p95"]
    bench_goals.append(("durability lag p95, 10 requests/s", f"{ten:.1f} ms", "<= 50 ms", ten <= 50))
    eight95 = percentiles(lag["concurrency 8"])["p95"]
    bench_goals.append(("durability lag p95, concurrency 8 (saturated)", f"{eight95:.1f} ms (LiteLLM's hand-over "
                        f"p95 {split['handover p95 ms']} ms, the logger's write p95 {split['write_lag p95 ms']} ms)",
                        "<= 50 ms", eight95 <= 50))
    assert all(len(v) == ROUNDS for v in rps.values())
