"""POC_COMPLETION_SUMMARY.md: the completion summary in the form the seed signed off with (status, each
success criterion with its evidence file, key metrics, performance analysis, versions lock, risk items,
GO / NO-GO decision), written from manifest.json alone.

Why from the manifest alone: the summary is then a pure function of a hashed file, so ``tools.verify``
regenerates it and compares byte for byte; nothing in it can claim more than the run recorded. A figure
the manifest does not hold is not shown, and the seed's claims no check measures are listed as "not
measured" with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import jinja2

from evidence_writers import verdict as rule
from evidence_writers.bundle import SUMMARY

TEMPLATE = "POC_COMPLETION_SUMMARY.md.j2"
STATUS = {
    "passed": "PASSED",
    "failed": "FAILED",
    "error": "FAILED (error)",
    "skipped": "FAILED (skipped)",
    None: "NOT RUN",
}
_MD_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\`*[]<|"})
#: recorded details that identify rather than measure (kept in the manifest, left out of the summary)
_IDENTIFIERS = ("_id", "_ids", "_pk", "histogram", "memory_source", "logger_last", "level", "resamples")


@dataclass(frozen=True)
class Metric:
    """One figure a check records in its manifest details, and how the check measured it."""

    check: str
    path: str  # dotted key in details
    label: str
    method: str
    unit: str = ""


METRICS: tuple[Metric, ...] = (
    Metric("service_status", "active_state", "Gateway unit ActiveState", "`systemctl show` over SSH"),
    Metric("service_status", "sub_state", "Gateway unit SubState", "`systemctl show` over SSH"),
    Metric(
        "service_status",
        "uptime",
        "Gateway unit uptime at check time",
        "since ActiveEnterTimestamp (`systemctl show`)",
    ),
    Metric("service_status", "n_restarts", "Gateway unit restarts (NRestarts)", "`systemctl show`"),
    Metric("service_status", "memory", "Gateway memory", "see memory_source in the manifest"),
    Metric(
        "gateway_db_connect",
        "journal_connection_lines",
        "Logger connection lines since the unit started",
        "journal of the unit's current invocation",
    ),
    Metric(
        "gateway_db_connect",
        "sessions_from_gateway",
        "Live DB sessions from the gateway",
        "pg_stat_activity, read-only reader",
    ),
    Metric("gateway_db_connect", "server_version", "PostgreSQL server_version", "`SHOW server_version`"),
    Metric("chat_call", "status", "Runbook chat call HTTP status", "POST /v1/chat/completions"),
    Metric("chat_call", "latency_ms", "Runbook chat call latency", "client wall time of the one call", " ms"),
    Metric(
        "chat_call",
        "overhead_ms_reported",
        "LiteLLM overhead reported for that call",
        "x-litellm-overhead-duration-ms header",
        " ms",
    ),
    Metric("chat_call", "stream_status", "Streamed call HTTP status", "same call with stream=true"),
    Metric(
        "chat_call",
        "stream_time_to_first_token_ms",
        "Streamed call time to first token",
        "first SSE event after sending",
        " ms",
    ),
    Metric(
        "db_rows",
        "plain.total_tokens",
        "Tokens logged for the plain call",
        "responses row linked to its x-poc1-request-id",
    ),
    Metric(
        "db_rows",
        "stream.total_tokens",
        "Tokens logged for the streamed call",
        "responses row linked to its x-poc1-request-id",
    ),
    Metric("join_check", "run_calls.calls", "This run's calls judged", "checks 3 and 6, by request_id"),
    Metric("join_check", "run_calls.without_response", "This run's calls without a response row",
           "left join"),
    Metric("join_check", "run_calls.several_responses", "This run's calls with several response rows",
           "group by request"),
    Metric("join_check", "window.requests_in_window", "Rows written in the run's window", "created_at index"),
    Metric("join_check", "window.requests_without_response", "Requests of the window without a response",
           "not exists, created_at index"),
    Metric(
        "overhead",
        "added_p95_ms",
        "Added client latency p95 (logging on - off)",
        "interleaved A/B against the control listener",
        " ms",
    ),
    Metric(
        "overhead",
        "capacity_added_ms",
        "Gateway time added per logged request (capacity)",
        "saturated ABBA groups, logging on vs off, 95% t-interval",
    ),
    Metric(
        "overhead",
        "durability_lag_p95_ms",
        "Durability lag p95 (response -> row)",
        "row created_at minus answer time, clock offset corrected",
        " ms",
    ),
    Metric(
        "overhead", "throughput_rps.logged", "Throughput, logging on", "fixed-concurrency blocks", " req/s"
    ),
    Metric(
        "overhead",
        "throughput_rps.unlogged",
        "Throughput, logging off (control listener)",
        "fixed-concurrency blocks",
        " req/s",
    ),
    Metric("overhead", "requests", "Requests sent by check 6", "count"),
    Metric("db_tls", "sessions", "Gateway DB sessions seen", "pg_stat_ssl"),
    Metric("db_tls", "encrypted", "Of them encrypted", "pg_stat_ssl"),
    Metric("db_tls", "versions", "TLS versions", "pg_stat_ssl"),
    Metric(
        "logger_metrics",
        "rows_written",
        "Rows written by the logger since it started",
        "logger metrics scraped over SSH",
    ),
    Metric("logger_metrics", "rows_dropped", "Rows dropped by the logger", "logger metrics scraped over SSH"),
    Metric(
        "logger_metrics", "reuse_ratio", "DB pool reuse since the logger started", "1 - connects / checkouts"
    ),
    Metric("logger_metrics", "run_reuse_ratio", "DB pool reuse during this run", "1 - connects / checkouts"),
)

#: the seed summary's claims that no check of this suite measures, and why
NOT_MEASURED: tuple[tuple[str, str], ...] = (
    (
        "Service uptime 99.9%+ during testing period",
        "the suite reads the unit's state and restart count once per run, not availability over a period",
    ),
    ("CPU time of the gateway (seed: 2min 35s)", "no check reads CPU time"),
    ("Cost per call (seed: $0.00046)", "the cost column is logged but no check judges it"),
    (
        "Average request latency including model inference (seed: 206.8 ms)",
        "as such; the runbook call's latency and check 6's percentiles are in the key metrics",
    ),
    ("Connection pool size 5/5, pre-ping", "no check reads the pool configuration"),
    (
        "Better performance than the previous (Prisma) baseline",
        "check 6 compares logging on vs off on the same gateway, not against Prisma",
    ),
    (
        "Migration complexity, secret management, backups, high availability",
        "outside what the acceptance checks measure",
    ),
)


def dig(data: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, Mapping):
            return None
        data = data.get(part)
    return data


def md(value: Any) -> str:
    """Text for Markdown (inline or a table cell): one line, the characters that change rendering escaped."""
    return " ".join(str("" if value is None else value).split()).translate(_MD_SPECIAL)


def fmt(value: Any, unit: str = "") -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value) or "none"
    return f"{value}{unit}"


def interval(value: Any, unit: str = " ms") -> str | None:
    """A recorded {point, low, high} as "point ms (95% CI low .. high ms)"; None if it is not one."""
    if isinstance(value, Mapping) and all(k in value for k in ("point", "low", "high")):
        return f"{value['point']}{unit} (95% CI {value['low']} .. {value['high']}{unit})"
    return None


def ratio(value: Any) -> str:
    """A recorded ratio, with its percentage beside it (the value itself stays as recorded)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value} ({value * 100:.1f} %)"
    return fmt(value)


def _checks(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(c.get("id")): c for c in manifest.get("checks") or [] if isinstance(c, Mapping)}


def _evidence(manifest: Mapping[str, Any], cid: str, rec: Mapping[str, Any] | None) -> list[str]:
    names = list((rec or {}).get("artifacts") or [])
    names += [
        a["path"] for a in manifest.get("artifacts") or [] if a.get("check") == cid and a["path"] not in names
    ]
    return names


def _recorded(details: Mapping[str, Any]) -> list[str]:
    """Every short scalar a check recorded (flattened), for the criterion's "Key Metrics" line."""
    out: list[str] = []

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if k == "environment" or k.endswith(_IDENTIFIERS):
                continue
            if isinstance(v, Mapping):
                walk(v, f"{prefix}{k}.")
            elif v is not None and len(str(v)) <= 80:
                out.append(f"{prefix}{k} {fmt(v)}")

    walk(details, "")
    return out


def criteria(manifest: Mapping[str, Any], decision: rule.Decision) -> list[dict[str, Any]]:
    checks = _checks(manifest)
    waivers = {w["check"]: w for w in (manifest.get("waivers") or {}).get("applied") or []}
    titles = {
        c["id"]: c.get("title") for c in manifest.get("required_checks") or [] if isinstance(c, Mapping)
    }
    rows = []
    for cid in dict.fromkeys([*rule.required_of(manifest), *checks]):
        rec = checks.get(cid)
        outcome = rec.get("outcome") if rec else None
        status = STATUS.get(outcome, str(outcome).upper())
        if cid in decision.waived:
            status = "FAILED - WAIVED"
        rows.append(
            {
                "id": cid,
                "title": (rec or {}).get("title") or titles.get(cid) or cid,
                "status": status,
                "evidence": _evidence(manifest, cid, rec),
                "result": "passed"
                if outcome == "passed"
                else ((rec or {}).get("cause") or "the check did not run"),
                "metrics": _recorded((rec or {}).get("details") or {}),
                "waiver": waivers.get(cid),
                "duration": (rec or {}).get("duration_s"),
                # a fleet run: each gateway host's part of the check (acceptance/fleet.py)
                "gateways": [{"host": host, "status": STATUS.get(part.get("outcome"), "NOT RUN"),
                              "result": "passed" if part.get("outcome") == "passed" else part.get("cause")}
                             for host, part in (((rec or {}).get("details") or {}).get("hosts") or {}).items()
                             if isinstance(part, Mapping)],
            }
        )
    return rows


def key_metrics(manifest: Mapping[str, Any]) -> list[dict[str, str]]:
    checks = _checks(manifest)
    out = []
    for m in METRICS:
        rec = checks.get(m.check)
        details = (rec or {}).get("details") or {}
        value = dig(details, m.path)
        if value is None:
            continue
        method = m.method
        if m.path == "memory" and details.get("memory_source"):
            method = str(details["memory_source"])
        if m.path == "added_p95_ms" and isinstance(details.get("added_p95_ci_ms"), list):
            low, high = details["added_p95_ci_ms"][:2]
            shown = f"{value} ms (95% CI {low} .. {high} ms)"
        elif interval(value) is not None:
            shown = str(interval(value))
        else:
            shown = ratio(value) if m.path.endswith("reuse_ratio") else fmt(value, m.unit)
        out.append(
            {
                "label": m.label,
                "value": shown,
                "method": method,
                "check": m.check,
                "status": STATUS.get(rec.get("outcome"), "?"),
                "evidence": _evidence(manifest, m.check, rec),
            }
        )
    return out


def performance(manifest: Mapping[str, Any]) -> dict[str, Any]:
    rec = _checks(manifest).get("overhead")
    details = (rec or {}).get("details") or {}
    return {
        "ran": rec is not None,
        "status": STATUS.get((rec or {}).get("outcome")),
        "cause": (rec or {}).get("cause"),
        "added": details.get("added_p95_ms"),
        "ci": details.get("added_p95_ci_ms"),
        "lag": details.get("durability_lag_p95_ms"),
        "rps": details.get("throughput_rps") or {},
        "requests": details.get("requests"),
        "capacity": interval(details.get("capacity_added_ms")),
        "evidence": _evidence(manifest, "overhead", rec),
    }


def _ok(checks: Mapping[str, Any], cid: str) -> str:
    return STATUS.get((checks.get(cid) or {}).get("outcome"))


def risks(manifest: Mapping[str, Any]) -> list[dict[str, str]]:
    """Risk items of the seed and what this run measured of each (a missing figure says so)."""
    checks = _checks(manifest)

    def d(cid: str, path: str) -> Any:
        return dig((checks.get(cid) or {}).get("details") or {}, path)

    items: list[tuple[str, str, str | None]] = []
    added, ci = d("overhead", "added_p95_ms"), d("overhead", "added_p95_ci_ms")
    items.append(
        (
            "Performance: DB logging overhead",
            "overhead",
            None
            if added is None
            else f"added p95 {added} ms"
            + (f" (95% CI {ci[0]} .. {ci[1]} ms)" if isinstance(ci, list) else "")
            + (
                f"; capacity: {cap} per logged request"
                if (cap := interval(d("overhead", "capacity_added_ms")))
                else ""
            ),
        )
    )
    counts = [
        (label, d("join_check", k))
        for k, label in (
            ("run_calls.calls", "this run's calls"),
            ("run_calls.without_response", "of them without a response"),
            ("run_calls.several_responses", "with several"),
            ("window.requests_without_response", "requests of the run's window without a response"),
            ("window.requests_with_several_responses", "with several"),
        )
    ]
    items.append(
        (
            "Data integrity: request -> response",
            "join_check",
            ", ".join(f"{k} {v}" for k, v in counts if v is not None) or None,
        )
    )
    enc, ses = d("db_tls", "encrypted"), d("db_tls", "sessions")
    items.append(
        (
            "Network security: TLS to the database",
            "db_tls",
            None
            if enc is None
            else f"{enc} of {ses} gateway sessions encrypted ({fmt(d('db_tls', 'versions') or [])})",
        )
    )
    dropped = d("logger_metrics", "rows_dropped")
    items.append(
        ("Logger data loss", "logger_metrics", None if dropped is None else f"{dropped} rows dropped")
    )
    reuse = d("logger_metrics", "run_reuse_ratio") or d("logger_metrics", "reuse_ratio")
    items.append(
        (
            "Connection pool efficiency (seed: 99.8% reuse)",
            "logger_metrics",
            None if reuse is None else f"reuse {ratio(reuse)}",
        )
    )
    out = [
        {
            "item": item,
            "check": cid,
            "measured": figure or "not measured in this run",
            "result": _ok(checks, cid),
        }
        for item, cid, figure in items
    ]
    match = dig(manifest.get("versions") or {}, "files_match")
    seen = {k: v for k, v in match.items() if isinstance(v, bool)} if isinstance(match, Mapping) else {}
    out.append(
        {
            "item": "Code drift: the gateway runs the repository's files",
            "check": "versions lock",
            "measured": ", ".join(f"{k} {'matches' if v else 'DIFFERS'}" for k, v in seen.items())
            or "not measured in this run",
            "result": "recorded (not part of the verdict)",
        }
    )
    return out


def versions(manifest: Mapping[str, Any]) -> list[tuple[str, str]]:
    v = manifest.get("versions") or {}
    rows = [
        ("LiteLLM (gateway)", dig(v, "gateway.litellm")),
        ("SQLAlchemy (gateway)", dig(v, "gateway.sqlalchemy")),
        ("psycopg2 (gateway)", dig(v, "gateway.psycopg2")),
        ("Python (gateway)", dig(v, "gateway.python")),
        ("Gateway OS", dig(v, "gateway.os")),
        ("PostgreSQL", dig(v, "db.postgresql")),
        ("Database host OS", dig(v, "db.os")),
        ("Suite commit", dig(v, "suite.commit")),
        ("Suite uncommitted changes", dig(v, "suite.dirty")),
    ]
    for part in ("gateway", "db"):
        if dig(v, f"{part}.error"):
            rows.append((f"{part} (not collected)", dig(v, f"{part}.error")))
    rows.append(("versions_digest (sha256)", manifest.get("versions_digest")))
    return [
        (k, fmt(val) if not isinstance(val, Mapping) else "; ".join(f"{a}: {b}" for a, b in val.items()))
        for k, val in rows
        if val is not None
    ]


def status_lines(decision: rule.Decision) -> tuple[str, str]:
    met, total = len(decision.passed), decision.total
    if decision.verdict == rule.GO:
        return "COMPLETE - ALL SUCCESS CRITERIA MET", "PASSED"
    if decision.verdict == rule.GO_WITH_WAIVERS:
        return (
            f"COMPLETE WITH WAIVERS - {met} OF {total} SUCCESS CRITERIA MET, {len(decision.waived)} WAIVED",
            "PASSED WITH WAIVERS",
        )
    return f"NOT COMPLETE - {met} OF {total} SUCCESS CRITERIA MET", "FAILED"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["md"] = md
    env.filters["rps"] = lambda v: "not measured" if v is None else f"{v} req/s"
    env.filters["links"] = lambda names: ", ".join(f"[evidence/{md(n)}]({n})" for n in names)
    return env


def render(manifest: Mapping[str, Any]) -> str:
    """The summary's Markdown; the same manifest always gives the same bytes."""
    decision = rule.decide_manifest(manifest)
    status, final = status_lines(decision)
    waivers = manifest.get("waivers") or {}
    started = str(manifest.get("started") or "")
    hosts = manifest.get("hosts") or {}
    view: dict[str, Callable[..., Any] | Any] = {
        "m": manifest,
        "decision": decision,
        "status": status,
        "final": final,
        "rule": rule,
        "date": started[:10] or "unknown",
        "criteria": criteria(manifest, decision),
        "metrics": key_metrics(manifest),
        "perf": performance(manifest),
        "versions": versions(manifest),
        "risks": risks(manifest),
        "not_measured": NOT_MEASURED,
        "applied": waivers.get("applied") or [],
        "ignored": waivers.get("ignored") or [],
        "waiver_file": waivers.get("file"),
        "artifacts": manifest.get("artifacts") or [],
        "hosts_text": ("(" + ", ".join(f"{k} {v}" for k, v in hosts.items()) + ")") if hosts else "",
        "summary_name": SUMMARY,
    }
    text = _environment().get_template(TEMPLATE).render(**view)
    return text if text.endswith("\n") else text + "\n"
