"""The trend page ``POC-1/runs/index.html``: one self-contained file (inline CSS and SVG, no script, no
external reference) that shows the verdict of every scheduled run, the overhead p95 over time against
its baseline and the 5 ms acceptance limit, and what changed between consecutive runs.

Why inline SVG from a template (evidence_writers/templates/trend_plot.svg.j2, trend_page.html.j2): the
page must open anywhere (a CI artifact, a mail attachment) and stay readable as text in a diff; this
module only computes the coordinates and the rows, Jinja2 (autoescaped) writes the markup.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from markupsafe import Markup

from evidence_writers.templating import render_html
from tools.files import atomic_write
from tools.history import RunRecord, changes, check_columns

ACCEPTANCE_P95_MS = 5.0  # the closeout pack's "<5 ms DB logging overhead"
INCOMPLETE_MARKER = "INCOMPLETE"

_W, _H, _L, _R, _T, _B = 960, 300, 60, 20, 20, 40  # plot size and margins (px)

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d2430;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5b6575;margin:0 0 16px}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600;color:#fff;white-space:nowrap}
.GO{background:#1f8a3b} .GO-with-waivers{background:#b26a00} .NO-GO{background:#c0392b}
.flag{background:#d9822b}
.alarm{border-left:6px solid #d9822b;background:#fff4e6;padding:10px 14px;margin:12px 0}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #e3e7ee;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f4f6f9;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.passed{color:#1f8a3b} td.failed,td.error{color:#c0392b;font-weight:600} td.skipped{color:#8a94a6}
tr.flagged td{background:#fff8ef}
ul.chg{margin:0;padding-left:16px;overflow-wrap:anywhere} code{font-size:12px}
svg text{font:11px system-ui,sans-serif;fill:#5b6575}
"""

DASH = "\u2013"
_ALARM_BADGE = {"overhead": "REGRESSION", "versions": "VERSIONS CHANGED"}
_CHECK_SYMBOL = {"passed": "\u2713", "failed": "\u2717", "error": "!", "skipped": DASH}
_COLOUR = {"GO": "#1f8a3b", "GO with waivers": "#b26a00"}


def _ms(value: float | None) -> str:
    return DASH if value is None else f"{value:.3f}"


def _nice_top(value: float) -> float:
    """A round axis maximum at or above ``value``."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * exp >= value:
            return step * exp
    return 10 * exp


def _f(v: float) -> str:
    return f"{v:.1f}"


@dataclass
class Plot:
    """Every coordinate of the overhead plot, in pixels (formatted), for trend_plot.svg.j2."""

    w: int = _W
    h: int = _H
    left: int = _L
    top: int = _T
    pw: int = _W - _L - _R
    ph: int = _H - _T - _B
    ticks: list[dict[str, str]] = field(default_factory=list)
    zero_y: str | None = None
    limit: str = f"{ACCEPTANCE_P95_MS:g}"
    limit_y: str = ""
    limit_label_y: str = ""
    baseline: str = ""
    p95_line: str = ""
    points: list[dict[str, Any]] = field(default_factory=list)
    time_labels: list[dict[str, str]] = field(default_factory=list)

    @property
    def right(self) -> int:
        return self.left + self.pw

    @property
    def bottom(self) -> int:
        return self.top + self.ph

    @property
    def mid_y(self) -> float:
        return self.top + self.ph / 2

    @classmethod
    def of(cls, records: list[RunRecord]) -> "Plot":
        plot = cls()
        values = [r.overhead.p95_ms for r in records if r.overhead.p95_ms is not None]
        bases = [r.baseline.p95_ms for r in records if r.baseline and r.baseline.p95_ms is not None]
        top = _nice_top(max(values + bases + [ACCEPTANCE_P95_MS]) * 1.1)
        low = min(values + bases + [0.0])  # the added latency can be negative (logging on was faster)
        bottom = -_nice_top(-low * 1.1) if low < 0 else 0.0
        n = len(records)

        def x(i: int) -> float:
            return _L + (plot.pw / 2 if n == 1 else plot.pw * i / (n - 1))

        def y(v: float) -> float:
            return _T + plot.ph * (top - v) / (top - bottom)

        step = _nice_top((top - bottom) / 5)
        for k in range(math.ceil(bottom / step), math.floor(top / step) + 1):
            v = round(k * step, 6)
            plot.ticks.append({"y": _f(y(v)), "label_y": _f(y(v) + 4), "label": f"{v:g}"})
        plot.zero_y = _f(y(0)) if bottom < 0 else None
        plot.limit_y, plot.limit_label_y = _f(y(ACCEPTANCE_P95_MS)), _f(y(ACCEPTANCE_P95_MS) - 4)
        plot.baseline = " ".join(f"{_f(x(i))},{_f(y(r.baseline.p95_ms))}" for i, r in enumerate(records)
                                 if r.baseline and r.baseline.p95_ms is not None)
        p95 = [f"{_f(x(i))},{_f(y(r.overhead.p95_ms))}" for i, r in enumerate(records)
               if r.overhead.p95_ms is not None]
        plot.p95_line = " ".join(p95) if len(p95) > 1 else ""
        for i, r in enumerate(records):
            plot.points.append({
                "cx": _f(x(i)), "cy": None if r.overhead.p95_ms is None else _f(y(r.overhead.p95_ms)),
                "run_id": r.run_id, "flagged": r.flagged, "colour": _COLOUR.get(r.verdict, "#c0392b"),
                "label": f"{r.run_id} {r.time} {r.verdict} p95={_ms(r.overhead.p95_ms)} ms"})
        for i, anchor in sorted({(0, "start" if n > 1 else "middle"), (n - 1, "end" if n > 1 else "middle")}):
            plot.time_labels.append({"x": _f(x(i)), "anchor": anchor,
                                     "text": records[i].time[:16].replace("T", " ")})
        return plot


def overhead_svg(records: list[RunRecord]) -> str:
    """Overhead p95 per run (dots coloured by verdict, ringed when flagged), its baseline, the 5 ms limit."""
    return render_html("trend_plot.svg.j2", plot=Plot.of(records) if records else None)


def _link(runs_dir: Path, r: RunRecord) -> str | None:
    folder = runs_dir / r.folder
    if r.folder and (folder / "evidence" / "report.html").exists():
        return f"{r.folder}/evidence/report.html"
    if r.folder and folder.is_dir():
        return f"{r.folder}/"
    return None


def _row(runs_dir: Path, r: RunRecord, prev: RunRecord | None, columns: list[str]) -> dict[str, Any]:
    diff = changes(prev, r)
    if any(a.kind == "versions" for a in r.alarms):  # the alarm itemises the changed versions already
        diff = [c for c in diff if not c.startswith("version")]
    return {
        "record": r, "link": _link(runs_dir, r), "changes": diff,
        "badges": [_ALARM_BADGE.get(kind, kind.upper()) for kind in dict.fromkeys(a.kind for a in r.alarms)],
        "checks": [{"id": c, "cls": r.checks.get(c, "skipped"), "outcome": r.checks.get(c, "absent"),
                    "symbol": _CHECK_SYMBOL.get(r.checks.get(c, ""), DASH)} for c in columns],
        "p50": _ms(r.overhead.p50_ms), "p95": _ms(r.overhead.p95_ms), "p99": _ms(r.overhead.p99_ms),
        "baseline": _ms(r.baseline.p95_ms if r.baseline else None),
        "digest": (r.versions_digest or "")[:12],
    }


def incomplete_folders(runs_dir: Path) -> list[tuple[str, str]]:
    """Run folders still carrying the INCOMPLETE marker (a run died, or is running now)."""
    found = []
    for marker in sorted(runs_dir.glob(f"*/{INCOMPLETE_MARKER}")):
        try:
            note = marker.read_text(encoding="utf-8").strip().splitlines()
        except OSError:
            note = []
        found.append((marker.parent.name, note[-1] if note else ""))
    return found


def render(records: list[RunRecord], runs_dir: Path, *, max_rows: int = 500) -> str:
    shown = records[-max_rows:]
    columns = check_columns(shown)
    rows = [_row(runs_dir, r, shown[i - 1] if i else None, columns) for i, r in enumerate(shown)]
    return render_html(
        "trend_page.html.j2", css=_CSS, total=len(records), latest=shown[-1] if shown else None,
        now=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), columns=columns,
        rows=list(reversed(rows)), svg=Markup(overhead_svg(shown)), incomplete=incomplete_folders(runs_dir))


def write(records: list[RunRecord], runs_dir: Path) -> Path:
    """Write index.html atomically (a reader never sees half a page)."""
    target = runs_dir / "index.html"
    atomic_write(target, render(records, runs_dir))
    return target
