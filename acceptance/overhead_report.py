"""Check 6's section of the sign-off report: its pass criteria, figures and histogram, inline.

Why here and not in the report: the figures are check 6's (acceptance/check_overhead.py hands this to the
report through the ``pytest_poc1_report_section`` hook), so evidence_writers/report.py knows nothing about
them. Everything is read from the check's own artifacts in the bundle (overhead_benchmark.json and the
picture), so the section cannot say anything the bundle does not.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from markupsafe import Markup

from evidence_writers.result import CheckResult
from evidence_writers.sections import ReportSection
from evidence_writers.templating import render_html

TEMPLATES = Path(__file__).resolve().parent / "templates"
TITLE = "DB-logging overhead (check 6)"
ARMS = ("logged", "unlogged")


def _read(bundle: Path, name: str) -> Any:
    try:
        return json.loads((bundle / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def figures(doc: dict[str, Any]) -> dict[str, Any]:
    """The template's rows and facts from overhead_benchmark.json (absent values stay None)."""
    shift = (doc.get("added_latency") or {}).get("shift") or {}
    lat = doc.get("latency_ms") or {}
    hdr = (doc.get("litellm_headers") or {}).get("overhead_duration_ms") or {}
    cb = (doc.get("litellm_headers") or {}).get("callback_duration_ms") or {}
    lag = doc.get("durability_lag_ms") or {}
    rows = []
    for q in ("p50", "p95", "p99"):
        s = shift.get(q) or {}
        rows.append({"q": q, "latency": [(lat.get(arm) or {}).get(q) for arm in ARMS],
                     "point": s.get("point"),
                     "ci": (s["low"], s["high"]) if "low" in s else None,
                     "lag": (lag.get("interleaved") or {}).get(q),
                     "headers": [(src.get(arm) or {}).get(q) for src in (hdr, cb) for arm in ARMS]})
    tp, comp = doc.get("throughput") or {}, doc.get("completeness") or {}
    facts = [
        ("throughput, logging on", (tp.get("logged") or {}).get("rps"), " req/s"),
        ("throughput, logging off", (tp.get("unlogged") or {}).get("rps"), " req/s"),
        ("wall time added per logged request (throughput blocks)", tp.get("added_wall_ms_per_request"),
         " ms"),
        ("durability lag under concurrency, p95", (lag.get("under_concurrency") or {}).get("p95"), " ms"),
        ("durability lag trend (backlog)", lag.get("backlog_slope_ms_per_s"), " ms per s"),
        ("clock offset database - runner", (lag.get("clock") or {}).get("offset_ms"), " ms"),
        ("requests (logged / unlogged, incl. throughput)",
         f"{comp.get('logged_sent', '?')} / {comp.get('unlogged_sent', '?')}", None),
        ("rows found for logged / for control-listener requests",
         f"{comp.get('logged_rows', '?')} / {comp.get('unlogged_rows', '?')}", None),
        ("check duration", doc.get("duration_s"), " s"),
    ]
    return {"criteria": (doc.get("verdict") or {}).get("criteria") or [], "rows": rows, "facts": facts,
            "method": doc.get("method") or {}}


def section(result: CheckResult, bundle: Path) -> ReportSection:
    """The section from the check's artifacts as it declares them (JSON, then the picture)."""
    from acceptance.check_overhead import CHECK

    json_name, png_name = CHECK.artifacts
    doc = _read(bundle, json_name)
    doc = doc if isinstance(doc, dict) else None
    png = (bundle / png_name).read_bytes() if (bundle / png_name).is_file() else None
    context: dict[str, Any] = {"doc": doc, "png": base64.b64encode(png).decode() if png else None,
                               "criteria": [], "rows": [], "facts": [], "method": {}}
    if doc and "verdict" in doc:
        context.update(figures(doc))
    return ReportSection(TITLE, Markup(render_html("overhead_section.html.j2", TEMPLATES, **context)))
