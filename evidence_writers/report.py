"""The sign-off report: pytest-html hooks that open report.html with what a signer reads first.

Top of the page, in this order: the verdict and every check of acceptance/registry.py (the closeout
pack's five, the overhead check, and any added after them: PASS/FAIL/WAIVED, one-line cause, links into
the bundle), the waivers (applied, and ignored with the reason), the overhead figures and histogram
(inline, so the one file can be mailed), the sign-off block, then pytest-html's environment table
(target, hosts, versions lock, run id, git commit, and any rows a check puts in its manifest details
under ``environment``, e.g. the logger's pool reuse) and its per-test table. Everything comes from the
run's manifest (acceptance/plugin.py) and check 6's overhead_benchmark.json, so the report cannot say
anything the bundle does not.

Active only when pytest-html writes a report for an acceptance run (``--html``); inert otherwise.
"""
from __future__ import annotations

import base64
import getpass
import json
import os
import socket
from collections.abc import Collection
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any, Sequence

import pytest

from acceptance import registry
from evidence_writers import verdict as rule
from evidence_writers.result import CheckResult, of_manifest

REPORT_TITLE = "POC-1 sign-off: LiteLLM Gateway + SQLAlchemy logging"
OVERHEAD_JSON = "overhead_benchmark.json"
OVERHEAD_PNG = "overhead_histogram.png"

#: pytest-html puts its environment table above the summary; the signer reads the verdict first
CSS = """
body { display: flex; flex-direction: column; }
body > #title, body > p { order: 0; }
body > .summary { order: 1; }
body > #environment-header, body > #environment { order: 2; }
body > #results-table { order: 3; }
body > footer { order: 4; }
.poc1 { font-size: 13px; margin: 0 0 18px 0; color: #000; }
.poc1 table { border-collapse: collapse; margin: 6px 0 12px 0; }
.poc1 th, .poc1 td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
.poc1 th { background: #f0f0f0; }
.poc1 .PASS { color: #fff; background: #2e7d32; font-weight: bold; }
.poc1 .FAIL, .poc1 .NOT-RUN, .poc1 .SKIPPED { color: #fff; background: #c62828; font-weight: bold; }
.poc1 .verdict { font-size: 22px; font-weight: bold; padding: 6px 14px; display: inline-block; color: #fff; }
.poc1 .verdict.GO { background: #2e7d32; }
.poc1 .verdict.GO-with-waivers, .poc1 .WAIVED { color: #fff; background: #b26a00; font-weight: bold; }
.poc1 .verdict.NO-GO { background: #c62828; }
.poc1 img.histogram { max-width: 100%; border: 1px solid #ddd; }
.poc1 td.num { text-align: right; font-family: monospace; }
.poc1 .method { max-width: 1000px; color: #333; }
"""


def check_rows(manifest: dict[str, Any]) -> list[CheckResult]:
    """Every check the run had to pass, in order, each with its outcome in this run (NOT RUN if absent)."""
    return of_manifest(manifest)


def css_class(decision: str) -> str:
    return decision.replace(" ", "-")


def waivers_html(manifest: dict[str, Any]) -> str:
    """Each applied waiver (who, until when, why) and each ignored one with its reason."""
    section = manifest.get("waivers") or {}
    applied, ignored = section.get("applied") or [], section.get("ignored") or []
    if not applied and not ignored:
        return '<p id="poc1-waivers-none">No waiver applied.</p>'
    rows = "".join(
        f'<tr data-check="{escape(w["check"])}" class="applied"><td><code>{escape(w["check"])}</code></td>'
        f'<td class="outcome WAIVED">WAIVED</td><td>{escape(w["justification"])}</td>'
        f'<td>{escape(w["approved_by"])}</td><td>{escape(w["expires"])}</td></tr>' for w in applied)
    for i in ignored:
        cid, reason = escape(str(i.get("check"))), escape(str(i.get("reason")))
        rows += (f'<tr data-check="{cid}" class="ignored"><td><code>{cid}</code></td><td>ignored</td>'
                 f'<td colspan="3">{reason}</td></tr>')
    return ('<table id="poc1-waivers"><thead><tr><th>check</th><th>waiver</th><th>justification</th>'
            f"<th>approved by</th><th>expires</th></tr></thead><tbody>{rows}</tbody></table>")


def signer() -> str:
    """Who ran it: the login behind sudo if any, at this host."""
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"{user}@{socket.gethostname()}"


def _link(name: str, bundle: Path, report_dir: Path) -> str:
    href = os.path.relpath(bundle / name, report_dir)
    return f'<a class="artifact" href="{escape(href)}">{escape(name)}</a>'


def summary_html(rows: Sequence[CheckResult], bundle: Path, report_dir: Path,
                 waived: Collection[str] = ()) -> str:
    body = []
    for n, r in enumerate(rows, 1):
        links = " ".join(_link(a, bundle, report_dir) for a in r.artifacts) or "&mdash;"
        shown = r.shown(waived)
        cause = escape(r.cause) if r.cause and shown != "PASS" else ""
        body.append(
            f'<tr data-check="{escape(r.id)}"><td>{n}</td><td>{escape(r.title)}<br>'
            f'<code>{escape(r.id)}</code></td><td class="outcome {shown.replace(" ", "-")}">{shown}</td>'
            f'<td class="cause">{cause}</td><td>{links}</td></tr>')
    return ('<table id="poc1-checks"><thead><tr><th>#</th><th>check</th><th>result</th><th>cause</th>'
            "<th>artifacts</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>")


def _fmt(value: Any, unit: str = " ms") -> str:
    if value is None:
        return "&mdash;"
    if isinstance(value, float):
        return f"{value:.2f}{unit}"
    return f"{escape(str(value))}{unit}"


def overhead_html(doc: dict[str, Any] | None, png: bytes | None) -> str:
    """The figures of check 6 and its histogram, inline."""
    if not doc:
        return "<p>Check 6 left no overhead_benchmark.json: no figures.</p>"
    if "verdict" not in doc:  # the measurement ended early (e.g. the gateway stopped answering)
        return (f'<p id="poc1-overhead-error">Not measured: '
                f'{escape(str(doc.get("error") or "the check ended before its figures were computed"))}</p>')
    parts = []
    verdict_ = doc.get("verdict") or {}
    if verdict_.get("criteria"):
        crit = "".join(
            f'<tr><td>{escape(c["name"])}</td><td class="num">{_fmt(c["measured"], "")}</td>'
            f'<td>{escape(c["limit"])}</td><td class="outcome {"PASS" if c["ok"] else "FAIL"}">'
            f'{"PASS" if c["ok"] else "FAIL"}</td></tr>' for c in verdict_["criteria"])
        parts.append('<table id="poc1-overhead-criteria"><thead><tr><th>criterion</th><th>measured</th>'
                     f"<th>limit</th><th>result</th></tr></thead><tbody>{crit}</tbody></table>")
    shift = (doc.get("added_latency") or {}).get("shift") or {}
    lat = doc.get("latency_ms") or {}
    hdr = (doc.get("litellm_headers") or {}).get("overhead_duration_ms") or {}
    cb = (doc.get("litellm_headers") or {}).get("callback_duration_ms") or {}
    lag = (doc.get("durability_lag_ms") or {})
    rows = []
    for q in ("p50", "p95", "p99"):
        s = shift.get(q) or {}
        ci = f"{s['low']:.2f} .. {s['high']:.2f}" if "low" in s else "&mdash;"
        rows.append(
            f"<tr><td>{q}</td>"
            + "".join(f'<td class="num">{_fmt((lat.get(arm) or {}).get(q))}</td>'
                      for arm in ("logged", "unlogged"))
            + f'<td class="num">{_fmt(s.get("point"))}</td><td class="num">{ci}</td>'
            + f'<td class="num">{_fmt((lag.get("interleaved") or {}).get(q))}</td>'
            + "".join(f'<td class="num">{_fmt((src.get(arm) or {}).get(q))}</td>'
                      for src in (hdr, cb) for arm in ("logged", "unlogged"))
            + "</tr>")
    parts.append(
        '<table id="poc1-overhead-figures"><thead><tr><th rowspan="2"></th>'
        '<th colspan="2">client latency</th>'
        '<th colspan="2">added (on &minus; off)</th><th rowspan="2">durability lag</th>'
        '<th colspan="2">LiteLLM x-litellm-overhead-duration-ms</th>'
        '<th colspan="2">LiteLLM x-litellm-callback-duration-ms</th></tr>'
        "<tr><th>logging on</th><th>logging off</th><th>point</th><th>95% CI</th>"
        "<th>on</th><th>off</th><th>on</th><th>off</th></tr></thead><tbody>" + "".join(rows)
        + "</tbody></table>")
    tp = doc.get("throughput") or {}
    comp = doc.get("completeness") or {}
    facts = [
        ("throughput, logging on", _fmt((tp.get("logged") or {}).get("rps"), " req/s")),
        ("throughput, logging off", _fmt((tp.get("unlogged") or {}).get("rps"), " req/s")),
        ("wall time added per logged request (throughput blocks)", _fmt(tp.get("added_wall_ms_per_request"))),
        ("durability lag under concurrency, p95", _fmt((lag.get("under_concurrency") or {}).get("p95"))),
        ("durability lag trend (backlog)", _fmt(lag.get("backlog_slope_ms_per_s"), " ms per s")),
        ("clock offset database - runner", _fmt((lag.get("clock") or {}).get("offset_ms"))),
        ("requests (logged / unlogged, incl. throughput)",
         f"{comp.get('logged_sent', '?')} / {comp.get('unlogged_sent', '?')}"),
        ("rows found for logged / for control-listener requests",
         f"{comp.get('logged_rows', '?')} / {comp.get('unlogged_rows', '?')}"),
        ("check duration", _fmt(doc.get("duration_s"), " s")),
    ]
    parts.append('<table id="poc1-overhead-facts"><tbody>' + "".join(
        f'<tr><td>{escape(k)}</td><td class="num">{v}</td></tr>' for k, v in facts) + "</tbody></table>")
    if png:
        data = base64.b64encode(png).decode()
        parts.append(f'<img class="histogram" id="poc1-histogram" alt="overhead histogram" '
                     f'src="data:image/png;base64,{data}">')
    method = doc.get("method") or {}
    if method:
        parts.append('<details class="method"><summary>Method</summary><dl>' + "".join(
            f"<dt>{escape(k.replace('_', ' '))}</dt><dd>{escape(v)}</dd>" for k, v in method.items())
            + "</dl></details>")
    return "".join(parts)


def signoff_html(manifest: dict[str, Any], decision: str, who: str, when: str) -> str:
    commit = ((manifest.get("versions") or {}).get("suite") or {})
    rev = commit.get("commit", "unknown") + (" (uncommitted changes)" if commit.get("dirty") else "")
    facts = [("verdict", f'<span class="verdict {css_class(decision)}">{decision}</span>'),
             ("rule", escape(f"{rule.RULE} ({len(registry.CHECKS)} registered checks)")),
             ("date", escape(when)), ("run by", escape(who)), ("run id", escape(str(manifest.get("run_id")))),
             ("target", escape(str(manifest.get("target")))), ("git commit", escape(rev))]
    return '<table id="poc1-signoff"><tbody>' + "".join(
        f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</tbody></table>"


def _flat(value: Any) -> Any:
    """pytest-html shows one level of a mapping; deeper values (e.g. {"error": ...}) become text."""
    if isinstance(value, dict):
        return {str(k): _flat_text(v) for k, v in value.items()}
    return _flat_text(value)


def _flat_text(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_flat_text(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def environment(manifest: dict[str, Any]) -> dict[str, Any]:
    """Entries for pytest-html's environment table."""
    versions = manifest.get("versions") or {}
    suite = versions.get("suite") or {}
    gw = versions.get("gateway") or {}
    db = versions.get("db") or {}
    lock = {
        "litellm (gateway)": gw.get("litellm"), "SQLAlchemy (gateway)": gw.get("sqlalchemy"),
        "psycopg2 (gateway)": gw.get("psycopg2"), "Python (gateway)": gw.get("python"),
        "gateway OS": gw.get("os"), "PostgreSQL": db.get("postgresql"), "db OS": db.get("os"),
        "versions_digest": manifest.get("versions_digest"),
    }
    if gw.get("error"):
        lock["gateway"] = gw["error"]
    env = {
        "Run id": _flat(manifest.get("run_id")),
        "Target group": _flat(manifest.get("target")),
        "Hosts": _flat(manifest.get("hosts") or {}),
        "Versions lock": _flat({k: v for k, v in lock.items() if v is not None}),
        "Git commit": _flat(suite.get("commit", suite.get("error", "unknown")))
        + (" (uncommitted changes)" if suite.get("dirty") else ""),
        "Started / finished": f"{manifest.get('started')} / {manifest.get('finished')}",
    }
    for check in manifest.get("checks", []):  # a check may add rows: details.environment {label: text}
        extra = (check.get("details") or {}).get("environment")
        if isinstance(extra, dict):
            env.update({str(k): _flat(v) for k, v in extra.items() if str(k) not in env})
    return env


def render(manifest: dict[str, Any], bundle: Path, report_dir: Path, *, who: str, when: str) -> str:
    """The whole block that opens the report."""
    rows = check_rows(manifest)
    judged = rule.decide_manifest(manifest)
    decision = judged.verdict
    doc = None
    try:
        doc = json.loads((bundle / OVERHEAD_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    png = (bundle / OVERHEAD_PNG).read_bytes() if (bundle / OVERHEAD_PNG).is_file() else None
    return (f'<style>{CSS}</style><div class="poc1" id="poc1-summary">'
            f'<h2>Verdict: <span class="verdict {css_class(decision)}" '
            f'id="poc1-verdict">{decision}</span></h2>'
            f"<h3>Validation checks</h3>{summary_html(rows, bundle, report_dir, judged.waived)}"
            f"<h3>Waivers</h3>{waivers_html(manifest)}"
            f"<h3>DB-logging overhead (check 6)</h3>{overhead_html(doc, png)}"
            f"<h3>Sign-off</h3>{signoff_html(manifest, decision, who, when)}</div>")


# --------------------------------------------------------------------------------------------------
# pytest-html hooks


def _acceptance(config: pytest.Config) -> Any | None:
    from acceptance.plugin import PLUGIN_KEY

    return config.stash.get(PLUGIN_KEY, None)


def pytest_html_report_title(report: Any) -> None:
    report.title = REPORT_TITLE


def pytest_html_results_summary(prefix: list[str], summary: list[str], postfix: list[str],
                                session: pytest.Session) -> None:
    plugin = _acceptance(session.config)
    if plugin is None or plugin.manifest is None:
        return
    manifest = plugin.manifest
    html_path = Path(session.config.getoption("htmlpath")).expanduser()
    report_dir = (Path(session.config.invocation_params.dir) / html_path).resolve().parent
    when = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    prefix.append(render(manifest, plugin.ctx.evidence_dir, report_dir, who=signer(), when=when))
    try:
        from pytest_metadata.plugin import metadata_key
    except ImportError:
        return
    session.config.stash[metadata_key].update(environment(manifest))
