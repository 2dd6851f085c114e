"""The sign-off report: pytest-html hooks that open report.html with what a signer reads first.

Top of the page, in this order: the verdict and every check the run had to pass (PASS/FAIL/WAIVED,
one-line cause, links into the bundle), the waivers (applied, and ignored with the reason), the sections
the checks contribute through the ``pytest_poc1_report_section`` hook (acceptance/hookspecs.py; e.g. check
6's overhead figures and histogram, inline, so the one file can be mailed), the sign-off block, then
pytest-html's environment table (target, hosts, versions lock, run id, git commit, and the rows sections
add, e.g. the logger's pool reuse) and its per-test table. Everything comes from the run's manifest and
the bundle's files, so the report cannot say anything the bundle does not; the markup is Jinja2 templates
(evidence_writers/templates/report_*.html.j2, autoescaped), and this module imports no check.

Active only when pytest-html writes a report for an acceptance run (``--html``); inert otherwise.
"""
from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Collection
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import pytest

from evidence_writers import verdict as rule
from evidence_writers.result import CheckResult, of_manifest
from evidence_writers.sections import ReportSection
from evidence_writers.templating import html_environment

REPORT_TITLE = "POC-1 sign-off: LiteLLM Gateway + SQLAlchemy logging"

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


def _template(name: str, **context: Any) -> str:
    return html_environment().get_template(name).render(**context).strip()


def check_rows(manifest: dict[str, Any]) -> list[CheckResult]:
    """Every check the run had to pass, in order, each with its outcome in this run (NOT RUN if absent)."""
    return of_manifest(manifest)


def _href(bundle: Path, report_dir: Path) -> Any:
    return lambda name: os.path.relpath(bundle / name, report_dir)


def summary_html(rows: Sequence[CheckResult], bundle: Path, report_dir: Path,
                 waived: Collection[str] = ()) -> str:
    """The table of checks: result (WAIVED for a waived failure), cause unless passed, artifact links."""
    decision = rule.Decision("", (), tuple(waived), (), (), 0)
    return _template("report_checks.html.j2", results=rows, decision=decision, href=_href(bundle, report_dir))


def waivers_html(manifest: dict[str, Any]) -> str:
    """Each applied waiver (who, until when, why) and each ignored one with its reason."""
    section = manifest.get("waivers") or {}
    return _template("report_waivers.html.j2", applied=section.get("applied") or [],
                     ignored=section.get("ignored") or [])


def signer() -> str:
    """Who ran it: the login behind sudo if any, at this host."""
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"{user}@{socket.gethostname()}"


def sections(manifest: dict[str, Any], bundle: Path, hook: Any = None) -> list[ReportSection]:
    """What the checks contribute (``pytest_poc1_report_section``), in the order of the checks."""
    if hook is None:
        from acceptance.hookspecs import standalone_hook

        hook = standalone_hook()
    found: list[ReportSection] = []
    for result in check_rows(manifest):
        found += [s for s in hook.pytest_poc1_report_section(result=result, bundle=bundle) if s]
    return found


def _flat(value: Any) -> Any:
    """pytest-html shows one level of a mapping; deeper values (e.g. {"error": ...}) become text."""
    if isinstance(value, dict):
        return {str(k): _flat_text(v) for k, v in value.items()}
    return _flat_text(value)


def _flat_text(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_flat_text(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def environment(manifest: dict[str, Any], found: Sequence[ReportSection] | None = None) -> dict[str, Any]:
    """Entries for pytest-html's environment table: the run's facts, then the sections' rows (default:
    the sections the checks give for ``manifest`` with no bundle files)."""
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
    for section in sections(manifest, Path(os.devnull)) if found is None else found:
        env.update({str(k): _flat(v) for k, v in section.environment.items() if str(k) not in env})
    return env


def render(manifest: dict[str, Any], bundle: Path, report_dir: Path, *, who: str, when: str,
           found: Sequence[ReportSection] | None = None) -> str:
    """The whole block that opens the report (``found``: the checks' sections, default from the hook)."""
    decision = rule.decide_manifest(manifest)
    suite = (manifest.get("versions") or {}).get("suite") or {}
    commit = suite.get("commit", "unknown") + (" (uncommitted changes)" if suite.get("dirty") else "")
    shown = sections(manifest, bundle) if found is None else found
    return _template(
        "report_summary.html.j2", css=CSS, manifest=manifest, decision=decision, results=check_rows(manifest),
        href=_href(bundle, report_dir), applied=(manifest.get("waivers") or {}).get("applied") or [],
        ignored=(manifest.get("waivers") or {}).get("ignored") or [],
        sections=[s for s in shown if s.title], rule=rule.RULE, registered=len(rule.required_of(manifest)),
        who=who, when=when, commit=commit)


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
    from acceptance.hookspecs import install

    install(session.config.pluginmanager)
    found = sections(manifest, plugin.ctx.evidence_dir, session.config.hook)
    prefix.append(render(manifest, plugin.ctx.evidence_dir, report_dir, who=signer(), when=when, found=found))
    try:
        from pytest_metadata.plugin import metadata_key
    except ImportError:
        return
    session.config.stash[metadata_key].update(environment(manifest, found))
