"""The sign-off report as a person sees it: pytest-html writes it through evidence_writers/report.py,
real headless Chromium renders it, and the assertions are on the rendered page.

The run behind the report here is a small pytest session whose manifest and bundle are written by
the test (a GO run and a NO-GO run), so every rule of the page is checked without the lab; the
report of a real lab run is checked the same way in tests/test_validate.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from acceptance import overhead_stats, registry
from evidence_writers import report
from evidence_writers import verdict as rule
from evidence_writers.result import CheckResult
from tests.support import chromium
from tests.support.evidence_bundles import pytest_html_session  # real pytest-html with the report plugin

ROOT = Path(__file__).resolve().parents[1]
SELECTORS = {"summary": "#poc1-summary", "verdict": "#poc1-verdict", "rows": "#poc1-checks tbody tr",
             "links": "#poc1-checks a.artifact", "environment": "#environment tr", "img": "#poc1-histogram",
             "signoff": "#poc1-signoff"}


def manifest(outcomes: dict[str, str], causes: dict[str, str] | None = None) -> dict:
    causes = causes or {}
    checks = [{"id": c.id, "title": c.title, "outcome": outcomes[c.id], "cause": causes.get(c.id),
               "artifacts": list(c.artifacts), "duration_s": 0.1}
              for c in registry.CHECKS if c.id in outcomes]
    arts = [{"path": a, "sha256": "0" * 64, "size": 1, "check": c["id"], "outcome": c["outcome"], "time": "t"}
            for c in checks for a in c["artifacts"]]
    return {"run_id": "20260101T000000Z-feedbeef", "started": "s", "finished": "f", "target": "local",
            "hosts": {"gateway": "10.231.0.18", "db": "10.231.0.19"}, "verdict": "?", "checks": checks,
            "artifacts": arts, "versions_digest": "ab" * 32,
            "versions": {"suite": {"commit": "c0ffee" * 6 + "abcd", "dirty": False},
                         "gateway": {"litellm": "1.108.7", "sqlalchemy": "2.1.9", "psycopg2": "2.9.10",
                                     "python": "3.11.2", "os": "Debian GNU/Linux 12 (bookworm)"},
                         "db": {"postgresql": "15.14", "os": {"error": "ssh db: timed out"}}}}


def write_bundle(bundle: Path, m: dict) -> None:
    """The files the manifest names, a check-6 document built by the real statistics, its picture."""
    bundle.mkdir(parents=True, exist_ok=True)
    for art in m["artifacts"]:
        (bundle / art["path"]).write_text("artifact\n")
    rng = np.random.default_rng(7)
    on, off = rng.normal(17, 2, 200), rng.normal(16.5, 2, 200)
    added = overhead_stats.added_latency(on, off)
    lag = overhead_stats.percentiles(rng.gamma(2, 4, 200))
    comp = {"logged_sent": 280, "logged_ok": 280, "unlogged_sent": 280, "unlogged_ok": 280,
            "logged_rows": 280, "unlogged_rows": 0}
    doc = {"added_latency": added, "latency_ms": {"logged": overhead_stats.percentiles(on),
                                                 "unlogged": overhead_stats.percentiles(off)},
           "durability_lag_ms": {"interleaved": lag, "backlog_slope_ms_per_s": 0.1},
           "verdict": overhead_stats.judge(added, lag, comp, overhead_stats.Limits()).as_dict(),
           "completeness": comp, "method": {"added_latency": "interleaved A/B"}}
    (bundle / "overhead_benchmark.json").write_text(json.dumps(doc))
    png = overhead_stats.histogram_png(on, off, rng.gamma(2, 4, 200))
    (bundle / "overhead_histogram.png").write_bytes(png)
    (bundle / "manifest.json").write_text(json.dumps(m))


# --- the rules, on the HTML the plugin renders -----------------------------------------------------------

ALL = {c.id: "passed" for c in registry.CHECKS}


def row(rows: list[CheckResult], cid: str) -> CheckResult:
    (found,) = [r for r in rows if r.id == cid]
    return found


def test_all_passed_is_go_and_anything_less_is_no_go() -> None:
    assert list(ALL)[:6] == ["service_status", "gateway_db_connect", "chat_call", "db_rows", "join_check",
                             "overhead"]  # the closeout pack's five, then check 6, then any later ones
    assert rule.decide_manifest(manifest(ALL)).verdict == "GO"
    for cid in ALL:
        assert rule.decide_manifest(manifest({**ALL, cid: "failed"})).verdict == "NO-GO", cid
    without_6 = {k: v for k, v in ALL.items() if k != "overhead"}
    rows = report.check_rows(manifest(without_6))
    assert rule.decide_manifest(manifest(without_6)).verdict == "NO-GO"
    assert [r.id for r in rows] == list(ALL)
    assert row(rows, "overhead").shown() == "NOT RUN" and row(rows, "overhead").cause == "the check did not run"
    assert row(report.check_rows(manifest({**ALL, "join_check": "skipped"})), "join_check").shown() == "SKIPPED"


def test_rows_link_every_artifact_of_their_check_relative_to_the_report(tmp_path: Path) -> None:
    rows = report.check_rows(manifest(ALL))
    assert row(rows, "db_rows").artifacts == ["requests_head.txt", "responses_head.txt"]
    assert row(rows, "overhead").artifacts == ["overhead_benchmark.json", "overhead_histogram.png"]
    html = report.summary_html(rows, tmp_path / "evidence", tmp_path)
    assert 'href="evidence/join_check.txt"' in html
    html = report.summary_html(rows, tmp_path, tmp_path)
    assert 'href="join_check.txt"' in html


def test_a_waived_failure_is_a_waived_row_and_the_verdict_says_so() -> None:
    m = manifest({**ALL, "db_tls": "failed"}, {"db_tls": "TLSv1.1 session"})
    waiver = {"check": "db_tls", "justification": "legacy <client>", "approved_by": "J. Doe",
              "expires": "2026-12-31"}
    m["waivers"] = {"applied": [waiver],
                    "ignored": [{"check": "overhead", "reason": "not needed: the check passed"}]}
    rows, decision = report.check_rows(m), rule.decide_manifest(m)
    assert row(rows, "db_tls").shown(decision.waived) == "WAIVED" and row(rows, "db_tls").cause == "TLSv1.1 session"
    assert decision.verdict == "GO with waivers"
    html = report.waivers_html(m)
    assert '<tr data-check="db_tls" class="applied">' in html and "legacy &lt;client&gt;" in html
    assert '<tr data-check="overhead" class="ignored">' in html and "not needed: the check passed" in html
    assert report.waivers_html(manifest(ALL)) == '<p id="poc1-waivers-none">No waiver applied.</p>'
    # a waiver of a check that did not run changes nothing
    m_not_run = manifest({k: v for k, v in ALL.items() if k != "db_tls"})
    m_not_run["waivers"] = {"applied": [waiver]}
    rows, decision = report.check_rows(m_not_run), rule.decide_manifest(m_not_run)
    assert row(rows, "db_tls").shown(decision.waived) == "NOT RUN" and decision.verdict == "NO-GO"


def test_causes_are_escaped_and_shown_only_for_failures() -> None:
    m = manifest({**ALL, "chat_call": "failed"}, {"chat_call": "HTTP 500: <script>x</script>",
                                                  "service_status": "stale cause"})
    html = report.summary_html(report.check_rows(m), Path("/b"), Path("/b"))
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<script>x" not in html
    assert "stale cause" not in html


# --- the page in Chromium --------------------------------------------------------------------------------

chromium_only = pytest.mark.skipif(not chromium.available(), reason="no /usr/bin/chromium on this machine")


@chromium_only
@pytest.mark.parametrize("broken", [None, "gateway_db_connect"])
def test_report_as_rendered_by_chromium(tmp_path: Path, broken: str | None) -> None:
    outcomes = dict(ALL)
    causes = {}
    if broken:
        outcomes[broken] = "failed"
        causes[broken] = "journal: no 'database connection established' line since the unit started"
    bundle = tmp_path / "evidence"
    m = manifest(outcomes, causes)
    write_bundle(bundle, m)
    page = pytest_html_session(tmp_path, bundle)
    seen = chromium.render(page, tmp_path, SELECTORS)
    assert seen.screenshot.stat().st_size > 20_000
    lay = seen.layout

    verdict = "NO-GO" if broken else "GO"
    (v,) = lay["verdict"]
    assert v["visible"] and v["text"] == verdict
    rows = lay["rows"]
    assert [r["check"] for r in rows] == [c.id for c in registry.CHECKS]
    for r in rows:
        assert r["visible"], r
        shown = "FAIL" if r["check"] == broken else "PASS"
        assert f"\t{shown}\t" in r["text"], r["text"]
    if broken:
        (row,) = [r for r in rows if r["check"] == broken]
        assert causes[broken] in row["text"]
    # the summary opens the page: above pytest-html's environment table
    assert lay["summary"][0]["top"] < min(e["top"] for e in lay["environment"])
    # every link resolves to a file of the bundle
    hrefs = [a["href"] for a in lay["links"]]
    assert len(hrefs) == sum(len(c.artifacts) for c in registry.CHECKS)  # check 6: JSON + picture
    for href in hrefs:
        assert (page.parent / href).resolve().is_file(), href
        assert (page.parent / href).resolve().parent == bundle.resolve()
    # the histogram is inline and decodes
    (img,) = lay["img"]
    assert img["visible"] and img["natural"] > 500
    assert 'src="data:image/png;base64,' in page.read_text()
    # environment: run id, target, hosts, versions lock, git commit; nested values are text, not objects
    env = "\n".join(e["text"] for e in lay["environment"])
    for expected in ("20260101T000000Z-feedbeef", "gateway: 10.231.0.18", "litellm (gateway): 1.108.7",
                     "PostgreSQL: 15.14", "db OS: error: ssh db: timed out", "c0ffee"):
        assert expected in env
    assert "[object Object]" not in env
    sign = lay["signoff"][0]["text"]
    assert f"verdict\t{verdict}" in sign and "run by\t" in sign and "@" in sign and "date\t20" in sign
