"""Production prerequisite (issue 7): the logger's own metrics say nothing was lost and the link is up.

The logger serves Prometheus metrics on 127.0.0.1 of the gateway host only (``POC1_LOGGER_METRICS_PORT``,
inventory var ``logger_metrics_port``, default 9464); the check reads them over the suite's SSH session
with the gateway's own Python, so no port is opened to the network. It reads them twice: once when the
run starts (fixture ``logger_metrics_baseline``, acceptance/conftest.py) and here, after the overhead
benchmark, so the pool figures of this run are the difference of the two (when the gateway did not restart
in between). The report shows them in its environment table (``pytest_poc1_report_section`` below).

Artifact logger_metrics.txt: the raw ``gateway_logger_*`` lines of both scrapes, then the parsed figures:
rows written/spooled/dropped, queue and spool depth, connection state, batch write latency (histogram),
and pool reuse = 1 - new connections / checkouts, since the logger started and during this run.
Pass = no row dropped since the logger started, and the logger connected to its database.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest

from acceptance.spec import CheckSpec
from evidence_writers.result import CheckResult
from evidence_writers.sections import ReportSection
from fixtures.context import Hosts
from fixtures.errors import CheckFailure, one_line
from fixtures.inventory import Target

CHECK = CheckSpec("logger_metrics", "Logger metrics: no row dropped, database connected, pool reuse",
                  order=8, artifacts=("logger_metrics.txt",), run_last=1)
pytestmark = CHECK.mark

ARTIFACT = "logger_metrics.txt"
PORT_VAR, DEFAULT_PORT = "logger_metrics_port", 9464
PREFIX = "gateway_logger_"
#: run on the gateway by its own Python (always there, unlike curl); no proxy, 5 s bound
FETCH = (
    "import sys, urllib.request as u; sys.stdout.write(u.build_opener(u.ProxyHandler({})).open("
    "'http://127.0.0.1:%d/metrics' % int(sys.argv[1]), timeout=5).read().decode())"
)


@dataclass(frozen=True)
class Scrape:
    """One reading of the metrics: the raw lines kept for the artifact, the values parsed."""

    at: float
    lines: tuple[str, ...]
    values: dict[str, float] = field(default_factory=dict)
    buckets: tuple[tuple[float, float], ...] = ()  #: (upper bound, cumulative count) of batch writes

    @classmethod
    def parse(cls, text: str, at: float) -> "Scrape":
        from prometheus_client.parser import text_string_to_metric_families

        values: dict[str, float] = {}
        buckets: list[tuple[float, float]] = []
        for family in text_string_to_metric_families(text):
            if not family.name.startswith(PREFIX):
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets.append((float(sample.labels["le"]), sample.value))
                elif not sample.labels:
                    values[sample.name.removeprefix(PREFIX)] = sample.value
        lines = tuple(ln for ln in text.splitlines() if ln.startswith(PREFIX))
        return cls(at, lines, values, tuple(sorted(buckets)))

    def get(self, name: str) -> int:
        return int(self.values.get(name, 0))

    @property
    def started(self) -> float | None:
        return self.values.get("start_time_seconds")


def port(target: Target) -> int:
    return int(target.vars.get(PORT_VAR) or DEFAULT_PORT)


def scrape(target: Target, hosts: Hosts) -> Scrape:
    """The metrics as the gateway host sees them on its loopback, or a one-line CheckFailure."""
    python = str(target.vars.get("gateway_python") or "python3")
    cmd = f"{shlex.quote(python)} -I -c {shlex.quote(FETCH)} {port(target)}"
    res = hosts.gateway.run(cmd)
    if not res.ok:
        err = [ln for ln in res.stderr.splitlines() if ln.strip()]
        raise CheckFailure(
            one_line(
                f"logger metrics not readable on gateway {target.gateway.address} at "
                f"127.0.0.1:{port(target)}: {err[-1] if err else f'exit {res.rc}'}",
                300,
            )
        )
    found = Scrape.parse(res.stdout, time.time())
    if "rows_dropped_total" not in found.values:
        raise CheckFailure(
            f"127.0.0.1:{port(target)} on gateway {target.gateway.address} answers, but without "
            f"{PREFIX}* metrics (another service on that port, or an older logger)"
        )
    return found


def take_baseline(target: Target, hosts: Hosts) -> "Scrape | str":
    """The reading at the start of the run (fixture ``logger_metrics_baseline``); never fails the run:
    the one-line reason is returned instead."""
    try:
        return scrape(target, hosts)
    except Exception as exc:  # noqa: BLE001 - the first check must not fail for this one's sake
        return one_line(str(exc) or type(exc).__name__, 200)


def reuse(checkouts: int, connects: int) -> float | None:
    """Share of checkouts served by a pooled connection (1 - new connections / checkouts)."""
    return 1 - connects / checkouts if checkouts > 0 else None


def reuse_text(checkouts: int, connects: int) -> str:
    ratio = reuse(checkouts, connects)
    shown = f"{ratio:.1%}" if ratio is not None else "n/a (no checkout)"
    return f"{shown} ({connects} new connection{'s' if connects != 1 else ''} / {checkouts} checkouts)"


def bucket_bound(buckets: tuple[tuple[float, float], ...], q: float) -> float | None:
    """Upper bound of the histogram bucket holding quantile ``q`` (a histogram gives no more)."""
    total = buckets[-1][1] if buckets else 0
    for le, count in buckets:
        if total and count >= q * total:
            return le
    return None


def judge(now: Scrape) -> str | None:
    """The one-line cause of a failure, or None."""
    causes = []
    dropped = now.get("rows_dropped_total")
    if dropped:
        started = datetime.fromtimestamp(now.started or 0, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        causes.append(
            f"gateway_logger dropped {dropped} row{'s' if dropped != 1 else ''} since it started at "
            f"{started} (rejected {now.get('rows_rejected_total')}, queue max {now.get('queue_max')}, "
            f"spool max {now.get('spool_max_rows')} rows, spooled {now.get('rows_spooled_total')})"
        )
    if "writer_alive" not in now.values:
        causes.append("gateway_logger exports no writer_alive gauge: a logger without its writer's "
                      "supervision (not this repository's)")
    elif now.values.get("writer_alive") != 1:
        causes.append(f"gateway_logger's writer is not alive (writer_alive="
                      f"{now.values.get('writer_alive'):g}): rows are queued and nothing writes them")
    beat = now.values.get("writer_heartbeat_seconds")
    stale_after = now.values.get("heartbeat_stale_after_seconds")
    if beat is not None and stale_after and now.at - beat > stale_after:
        causes.append(f"gateway_logger's writer heartbeat is stale: last turn {now.at - beat:.1f} s before "
                      f"the scrape (limit {stale_after:g} s): it is stuck")
    if not now.get("connected"):
        causes.append(
            f"gateway_logger is not connected to its database (connection losses since start: "
            f"{now.get('connection_losses_total')}, rows waiting: queue {now.get('queue_depth')}, "
            f"spool {now.get('spool_rows')})"
        )
    return "; ".join(causes) or None


def figures(now: Scrape, base: Scrape | str | None) -> tuple[list[str], dict]:
    """Readable lines and manifest details: lifetime figures, and this run's when the baseline allows."""
    co, cn = now.get("pool_checkouts_total"), now.get("pool_connects_total")
    batches = int(now.buckets[-1][1]) if now.buckets else 0
    p50, p95 = bucket_bound(now.buckets, 0.5), bucket_bound(now.buckets, 0.95)
    lines = [
        f"logger started: {_utc(now.started or 0)}",
        f"rows written {now.get('rows_written_total')}, replaced {now.get('rows_replaced_total')}, duplicate "
        f"{now.get('rows_duplicate_total')}, spooled {now.get('rows_spooled_total')}, replayed "
        f"{now.get('rows_replayed_total')}, dropped {now.get('rows_dropped_total')}",
        f"waiting now: queue {now.get('queue_depth')} (max {now.get('queue_max')}), spool "
        f"{now.get('spool_rows')} (max {now.get('spool_max_rows')}), in flight {now.get('in_flight')}",
        f"database connection: {'up' if now.get('connected') else 'DOWN'}, losses since start "
        f"{now.get('connection_losses_total')}",
        f"batch writes: {batches}, p50 <= {_ms(p50)}, p95 <= {_ms(p95)} (histogram bucket bounds), "
        f"max {_ms(now.values.get('batch_seconds_max'))}",
        f"pool reuse since the logger started: {reuse_text(co, cn)}",
        f"workers with a running logger: {now.get('workers')}; writer alive "
        f"{now.values.get('writer_alive', 'not exported')}, last turn "
        f"{now.at - now.values['writer_heartbeat_seconds']:.1f} s before the scrape"
        if "writer_heartbeat_seconds" in now.values else "writer heartbeat: not exported",
    ]
    details = {
        "rows_written": now.get("rows_written_total"),
        "rows_spooled": now.get("rows_spooled_total"),
        "rows_dropped": now.get("rows_dropped_total"),
        "queue_depth": now.get("queue_depth"),
        "connected": bool(now.get("connected")),
        "pool_checkouts": co,
        "pool_connects": cn,
        "reuse_ratio": _round(reuse(co, cn)),
        "batches": batches,
        "workers": now.get("workers"),
        "writer_alive": now.values.get("writer_alive"),
    }
    if isinstance(base, Scrape) and base.started == now.started:
        rco, rcn = co - base.get("pool_checkouts_total"), cn - base.get("pool_connects_total")
        rows = now.get("rows_written_total") - base.get("rows_written_total")
        lines.append(
            f"pool reuse during this run ({now.at - base.at:.0f} s, {rows} rows written): "
            f"{reuse_text(rco, rcn)}"
        )
        details.update(
            run_pool_checkouts=rco,
            run_pool_connects=rcn,
            run_reuse_ratio=_round(reuse(rco, rcn)),
            run_rows_written=rows,
        )
    else:
        why = "the logger restarted during the run"
        if not isinstance(base, Scrape):
            why = base or "no reading at the start of the run"
        lines.append(f"pool reuse during this run: not measured ({why})")
        details["run_not_measured"] = why
    return lines, details


def environment_rows(details: dict) -> dict[str, str]:
    """The rows this check adds to the report's environment table, from its manifest details (a bundle
    from before the report hook kept them ready-made under ``environment``)."""
    if isinstance(details.get("environment"), dict):
        return {str(k): str(v) for k, v in details["environment"].items()}
    rows = {
        "Logger rows (since start)": f"written {details.get('rows_written')}, spooled "
        f"{details.get('rows_spooled')}, dropped {details.get('rows_dropped')}",
        "Logger DB pool reuse (since start)": reuse_text(int(details.get("pool_checkouts") or 0),
                                                         int(details.get("pool_connects") or 0)),
    }
    if "run_pool_checkouts" in details:
        rows["Logger DB pool reuse (this run)"] = reuse_text(int(details["run_pool_checkouts"]),
                                                             int(details.get("run_pool_connects") or 0))
    else:
        rows["Logger DB pool reuse (this run)"] = f"not measured ({details.get('run_not_measured')})"
    return rows


@pytest.hookimpl
def pytest_poc1_report_section(result: CheckResult, bundle: Path) -> ReportSection | None:
    """The logger's rows and pool reuse in the report's environment table (no visible section)."""
    if result.id != CHECK.id or not result.details:
        return None
    return ReportSection(environment=environment_rows(result.details))


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:g} ms"


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def test_logger_metrics(
    logger_metrics_baseline: "Scrape | str | None", target: Target, hosts: Hosts, evidence: CheckResult
) -> None:
    doc = evidence.text(ARTIFACT)
    doc.add(
        f"# gateway_logger metrics on gateway {target.gateway.address}, read over SSH from 127.0.0.1:"
        f"{port(target)}/metrics (inventory group {target.group}); pass = no row dropped since the logger "
        "started and the database connection up"
    )
    base = logger_metrics_baseline
    now = scrape(target, hosts)
    if isinstance(base, Scrape):
        doc.section(f"at the start of the run ({_utc(base.at)})", list(base.lines))
    doc.section(f"now ({_utc(now.at)})", list(now.lines))
    lines, details = figures(now, base)
    doc.section("figures", lines)
    evidence.details.update(details)
    cause = judge(now)
    doc.add(f"result: {cause or 'no row dropped, connected'}")
    if cause:
        raise CheckFailure(cause)


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")
