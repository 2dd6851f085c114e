"""The trend page ``POC-1/runs/index.html``: one self-contained file (inline CSS and SVG, no script, no
external reference) that shows the verdict of every scheduled run, the overhead p95 over time against
its baseline and the 5 ms acceptance limit, and what changed between consecutive runs.

Why hand-written SVG: the page must open anywhere (a CI artifact, a mail attachment) and stay readable
as text in a diff; a dozen lines of SVG do that with no dependency.
"""
from __future__ import annotations

import html
import math
import os
from datetime import datetime, timezone
from pathlib import Path

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


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _badge(verdict: str) -> str:
    """A verdict badge; "GO with waivers" gets its own colour (its class has no spaces)."""
    return f'<span class="badge {_e(verdict.replace(" ", "-"))}">{_e(verdict)}</span>'


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


def overhead_svg(records: list[RunRecord]) -> str:
    """Overhead p95 per run (dots coloured by verdict, ringed when flagged), its baseline, the 5 ms limit."""
    if not records:
        return "<p>No finished run yet.</p>"
    values = [r.overhead.p95_ms for r in records if r.overhead.p95_ms is not None]
    bases = [r.baseline.p95_ms for r in records if r.baseline and r.baseline.p95_ms is not None]
    top = _nice_top(max(values + bases + [ACCEPTANCE_P95_MS]) * 1.1)
    low = min(values + bases + [0.0])  # the added latency can be negative (logging on was faster)
    bottom = -_nice_top(-low * 1.1) if low < 0 else 0.0
    n = len(records)
    pw, ph = _W - _L - _R, _H - _T - _B

    def x(i: int) -> float:
        return _L + (pw / 2 if n == 1 else pw * i / (n - 1))

    def y(v: float) -> float:
        return _T + ph * (top - v) / (top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="overhead-plot" width="{_W}" height="{_H}" '
             f'viewBox="0 0 {_W} {_H}" role="img" aria-label="overhead p95 per run">',
             f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="#fbfcfd" stroke="#e3e7ee"/>']
    step = _nice_top((top - bottom) / 5)
    for k in range(math.ceil(bottom / step), math.floor(top / step) + 1):
        v = round(k * step, 6)
        parts.append(f'<line x1="{_L}" x2="{_L + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eef1f5"/>'
                     f'<text x="{_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    if bottom < 0:
        parts.append(f'<line x1="{_L}" x2="{_L + pw}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#8a94a6"/>')
    parts.append(f'<text x="14" y="{_T + ph / 2}" transform="rotate(-90 14 {_T + ph / 2})" '
                 f'text-anchor="middle">overhead p95 (ms)</text>')
    limit_y = y(ACCEPTANCE_P95_MS)
    parts.append(f'<line x1="{_L}" x2="{_L + pw}" y1="{limit_y:.1f}" y2="{limit_y:.1f}" stroke="#c0392b" '
                 f'stroke-dasharray="6 4"/><text x="{_L + pw - 4}" y="{limit_y - 4:.1f}" text-anchor="end">'
                 f'acceptance limit {ACCEPTANCE_P95_MS:g} ms</text>')
    base_pts = [f"{x(i):.1f},{y(r.baseline.p95_ms):.1f}" for i, r in enumerate(records)
                if r.baseline and r.baseline.p95_ms is not None]
    if base_pts:
        parts.append(f'<polyline class="baseline" points="{" ".join(base_pts)}" fill="none" stroke="#8a94a6" '
                     f'stroke-dasharray="3 3"/>')
    p95_pts = [f"{x(i):.1f},{y(r.overhead.p95_ms):.1f}" for i, r in enumerate(records)
               if r.overhead.p95_ms is not None]
    if len(p95_pts) > 1:
        parts.append(f'<polyline class="p95" points="{" ".join(p95_pts)}" fill="none" stroke="#2d6cdf" '
                     f'stroke-width="2"/>')
    for i, r in enumerate(records):
        label = f"{r.run_id} {r.time} {r.verdict} p95={_ms(r.overhead.p95_ms)} ms"
        if r.overhead.p95_ms is None:
            parts.append(f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{_T + ph - 6}" y2="{_T + ph}" '
                         f'stroke="#8a94a6"><title>{_e(label)} (overhead not measured)</title></line>')
            continue
        colour = {"GO": "#1f8a3b", "GO with waivers": "#b26a00"}.get(r.verdict, "#c0392b")
        ring = (f'<circle cx="{x(i):.1f}" cy="{y(r.overhead.p95_ms):.1f}" r="9" fill="none" stroke="#d9822b" '
                f'stroke-width="3"/>' if r.flagged else "")
        parts.append(f'{ring}<circle class="run" data-run="{_e(r.run_id)}" cx="{x(i):.1f}" '
                     f'cy="{y(r.overhead.p95_ms):.1f}" r="5" fill="{colour}">'
                     f'<title>{_e(label)}</title></circle>')
    for i, anchor in sorted({(0, "start" if n > 1 else "middle"), (n - 1, "end" if n > 1 else "middle")}):
        parts.append(f'<text x="{x(i):.1f}" y="{_H - 22}" text-anchor="{anchor}">'
                     f'{_e(records[i].time[:16].replace("T", " "))}</text>')
    parts.append(f'<text x="{_L + pw / 2}" y="{_H - 6}" text-anchor="middle">run (time order); dashed grey: '
                 f'baseline; orange ring: flagged</text></svg>')
    return "".join(parts)


def _run_link(runs_dir: Path, r: RunRecord) -> str:
    folder = runs_dir / r.folder
    if r.folder and (folder / "evidence" / "report.html").exists():
        return f'<a href="{_e(r.folder)}/evidence/report.html">{_e(r.run_id)}</a>'
    if r.folder and folder.is_dir():
        return f'<a href="{_e(r.folder)}/">{_e(r.run_id)}</a>'
    return f'{_e(r.run_id)} <span class="sub">(folder pruned)</span>'


def _row(runs_dir: Path, r: RunRecord, prev: RunRecord | None, columns: list[str]) -> str:
    checks = "".join(
        f'<td class="{_e(r.checks.get(c, "skipped"))}" title="{_e(c)}: {_e(r.checks.get(c, "absent"))}">'
        f'{_CHECK_SYMBOL.get(r.checks.get(c, ""), DASH)}</td>' for c in columns)
    diff = changes(prev, r)
    if any(a.kind == "versions" for a in r.alarms):  # the alarm itemises the changed versions already
        diff = [c for c in diff if not c.startswith("version")]
    flags = "".join(f"<li>{_e(a.text)}</li>" for a in r.alarms)
    cause = f"<li>{_e(r.cause)}</li>" if r.cause else ""
    regression = "".join(f' <span class="badge flag">{_ALARM_BADGE.get(kind, kind.upper())}</span>'
                         for kind in dict.fromkeys(a.kind for a in r.alarms))
    return (
        f'<tr class="{"flagged" if r.flagged else ""}" id="run-{_e(r.run_id)}">'
        f"<td>{_e(r.time)}</td><td>{_run_link(runs_dir, r)}</td><td>{_e(r.target)}</td>"
        f"<td>{_badge(r.verdict)}{regression}</td>"
        f"{checks}"
        f'<td class="num">{_ms(r.overhead.p50_ms)}</td><td class="num">{_ms(r.overhead.p95_ms)}</td>'
        f'<td class="num">{_ms(r.overhead.p99_ms)}</td>'
        f'<td class="num">{_ms(r.baseline.p95_ms if r.baseline else None)}</td>'
        f"<td><code>{_e((r.versions_digest or '')[:12])}</code></td>"
        f'<td><ul class="chg">{flags}{cause}{"".join(f"<li>{_e(c)}</li>" for c in diff)}</ul></td></tr>')


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
    latest = shown[-1] if shown else None
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    columns = check_columns(shown)
    head = "".join(f'<th title="{_e(c)}">{i}</th>' for i, c in enumerate(columns, 1))
    rows = [_row(runs_dir, r, shown[i - 1] if i else None, columns) for i, r in enumerate(shown)]
    summary = "No run yet."
    if latest:
        summary = (f'Latest run <b>{_e(latest.run_id)}</b> ({_e(latest.time)}, target {_e(latest.target)}): '
                   f"{_badge(latest.verdict)}")
    alarm = ""
    if latest and latest.flagged:
        alarm = ('<div class="alarm"><b>Regression alarm on the latest run</b><ul>'
                 + "".join(f"<li>{_e(a.text)}</li>" for a in latest.alarms) + "</ul></div>")
    incomplete = incomplete_folders(runs_dir)
    inc_html = ("<ul>" + "".join(f"<li><code>{_e(name)}</code> {_e(note)}</li>" for name, note in incomplete)
                + "</ul>") if incomplete else "<p>None.</p>"
    legend = " ".join(f"{i}={_e(c)}" for i, c in enumerate(columns, 1))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>POC-1 scheduled acceptance runs</title>
<style>{_CSS}</style></head><body>
<h1>POC-1 scheduled acceptance runs</h1>
<p class="sub">{len(records)} finished run(s) in history; page written {now}. {summary}</p>
{alarm}
<h2>Overhead p95 over time</h2>
{overhead_svg(shown)}
<h2>Runs (newest first)</h2>
<p class="sub">Checks: {legend}. Overhead figures in ms (added latency of DB logging); baseline = the p95 the
run was compared with.</p>
<table id="runs"><thead><tr><th>time (UTC)</th><th>run id</th><th>target</th><th>verdict</th>{head}
<th>p50</th><th>p95</th><th>p99</th><th>baseline p95</th><th>versions</th>
<th>flags and changes since the previous run</th>
</tr></thead><tbody>
{os.linesep.join(reversed(rows))}
</tbody></table>
<h2>Incomplete runs (no history line)</h2>
{inc_html}
</body></html>
"""


def write(records: list[RunRecord], runs_dir: Path) -> Path:
    """Write index.html atomically (a reader never sees half a page)."""
    target = runs_dir / "index.html"
    tmp = runs_dir / ".index.html.tmp"
    tmp.write_text(render(records, runs_dir), encoding="utf-8")
    os.replace(tmp, target)
    return target
