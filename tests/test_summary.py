"""POC_COMPLETION_SUMMARY.md, written with every manifest: the seed's structure, every figure from the run,
the seed's unmeasured claims only as "not measured". Read here as a reviewer reads it (its lines), for a
GO bundle built through the evidence API, a GO with waivers, a check that did not run, and the NO-GO of
a real run of the suite against a loopback target where nothing listens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from acceptance import registry
from evidence_writers import summary
from evidence_writers.bundle import SUMMARY
from tests.support.evidence_bundles import build_bundle, validate_nowhere, waiver_file

SEED_CLAIMS = ("99.9", "$0.00046", "206.8", "2min 35s", "Prisma", "5/5")

#: the registry's number of checks (prose and status lines say it)
N = len(registry.CHECKS)


def lines(evidence: Path) -> list[str]:
    return (evidence / SUMMARY).read_text(encoding="utf-8").splitlines()


def section(text_lines: list[str], heading: str) -> list[str]:
    """From ``heading`` to the next heading of its level or above."""
    start = text_lines.index(heading)
    level = heading.split(" ", 1)[0]
    end = next(
        (
            i
            for i in range(start + 1, len(text_lines))
            if re.match(r"#+ ", text_lines[i]) and len(text_lines[i].split(" ", 1)[0]) <= len(level)
        ),
        len(text_lines),
    )
    return text_lines[start:end]


def criterion(text_lines: list[str], n: int) -> list[str]:
    start = next(i for i, ln in enumerate(text_lines) if ln.startswith(f"### {n}. "))
    end = next(i for i in range(start + 1, len(text_lines)) if text_lines[i].startswith("#"))
    return text_lines[start:end]


def table(text_lines: list[str]) -> list[list[str]]:
    """Body rows of the Markdown tables in ``text_lines`` (split on unescaped pipes; headers left out)."""
    rows = [
        ln
        for i, ln in enumerate(text_lines)
        if ln.startswith("| ") and not (i + 1 < len(text_lines) and text_lines[i + 1].startswith("|---"))
    ]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows]


def test_a_go_summary_reads_like_the_seed_with_this_runs_figures(tmp_path: Path) -> None:
    evidence = tmp_path / "evidence"
    m = build_bundle(evidence)
    text = lines(evidence)
    assert text[0] == "# POC-1 LiteLLM SQLAlchemy Integration - COMPLETION SUMMARY"
    assert "Date: 2026-12-01" in text and "Status: COMPLETE - ALL SUCCESS CRITERIA MET" in text
    assert "Final Validation: PASSED" in text and f"Verdict: **GO** ({N} of {N} registered checks passed)" in text
    assert ("Run `20261201T094909Z-d2f172ff` against inventory group `local` (gateway 10.231.0.18, "
            "db 10.231.0.19),") in text
    for n, spec in enumerate(registry.CHECKS, 1):
        block = criterion(text, n)
        assert block[0] == f"### {n}. {summary.md(spec.title)}"
        assert "- Status: PASSED" in block and "- Result: passed" in block
        evidence_line = next(ln for ln in block if ln.startswith("- Evidence: "))
        rec = next(c for c in m["checks"] if c["id"] == spec.id)
        for art in rec["artifacts"]:
            assert f"[evidence/{art}]({art})" in evidence_line
            assert (evidence / art).is_file()

    metrics = {row[0]: row for row in table(section(text, "## Key Metrics (measured in this run)"))}
    overhead = next(c for c in m["checks"] if c["id"] == "overhead")["details"]
    low, high = overhead["added_p95_ci_ms"]
    assert metrics["Added client latency p95 (logging on - off)"][1] == (
        f"{overhead['added_p95_ms']} ms (95% CI {low} .. {high} ms)"
    )
    assert metrics["Throughput, logging on"][1] == "73.2 req/s"
    cap = overhead["capacity_added_ms"]
    assert metrics["Gateway time added per logged request (capacity)"][1] == (
        f"{cap['point']} ms (95% CI {cap['low']} .. {cap['high']} ms)")
    assert metrics["Tokens logged for the streamed call"][1] == "11"
    assert metrics["DB pool reuse during this run"][1] == "1.0 (100.0 %)"
    manifest_text = json.dumps(m)
    for row in metrics.values():  # every figure shown is one the manifest holds
        first = re.match(r"-?\d+(\.\d+)?", row[1])
        assert first is None or first.group(0) in manifest_text, row

    perf = section(text, "## Performance Analysis")
    assert any(f"added client latency p95 {overhead['added_p95_ms']} ms" in ln for ln in perf), perf
    assert any(f"{overhead['durability_lag_p95_ms']} ms" in ln for ln in perf)
    versions = dict((r[0], r[1]) for r in table(section(text, "## Versions Lock")))
    assert (
        versions["LiteLLM (gateway)"] == "1.108.7"
        and versions["versions_digest (sha256)"] == m["versions_digest"]
    )
    risks = {r[0]: r for r in table(section(text, "### Measured in this run"))}
    assert risks["Logger data loss"][1:] == ["0 rows dropped", "`logger_metrics`", "PASSED"]
    assert (
        f"**GO DECISION: PROCEED.** Every one of the {N} success criteria passed in run "
        "`20261201T094909Z-d2f172ff`." in text
    )


def test_the_seeds_unmeasured_claims_appear_only_as_not_measured(tmp_path: Path) -> None:
    evidence = tmp_path / "evidence"
    build_bundle(evidence)
    text = lines(evidence)
    for claim in SEED_CLAIMS:
        where = [ln for ln in text if claim in ln]
        assert where, claim
        assert all("not measured:" in ln for ln in where), (claim, where)
    not_measured = table(section(text, "### Not measured"))
    assert any(
        row[0] == "Service uptime 99.9%+ during testing period" and row[1].startswith("not measured: ")
        for row in not_measured
    )
    assert not any("<5ms" in ln or "< 5 ms" in ln for ln in text)  # no limit claimed the manifest lacks


def test_the_summary_is_the_manifests_alone_and_regenerates_byte_for_byte(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    m = build_bundle(a)
    build_bundle(b)  # another run with the same facts (artifact write times differ)
    written = (a / SUMMARY).read_text(encoding="utf-8")
    assert written == summary.render(json.loads((a / "manifest.json").read_text())) == summary.render(m)
    assert written == (b / SUMMARY).read_text(encoding="utf-8")
    m["checks"][0]["details"]["n_restarts"] = 3
    assert "| Gateway unit restarts (NRestarts) | 3 |" in summary.render(m)


def test_a_no_go_summary_of_a_real_run_says_why_and_claims_no_figure(tmp_path: Path) -> None:
    evidence = tmp_path / "evidence"
    res, target = validate_nowhere(tmp_path, evidence)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    m = json.loads((evidence / "manifest.json").read_text())
    text = lines(evidence)
    assert f"Status: NOT COMPLETE - 0 OF {N} SUCCESS CRITERIA MET" in text and "Final Validation: FAILED" in text
    why = section(text, "## Final Recommendation")
    assert why[2] == "**NO-GO DECISION: DO NOT PROCEED.** Why:"
    for c in m["checks"]:
        assert f"- `{c['id']}` FAILED: {summary.md(c['cause'])}" in why, c["id"]
        assert f"- Result: {summary.md(c['cause'])}" in criterion(text, registry.ORDER[c["id"]] + 1)
    overhead_cause = next(c["cause"] for c in m["checks"] if c["id"] == "overhead")
    assert any(
        ln.startswith("Not measured in this run: check 6 ended before its figures (FAILED: ")
        and summary.md(overhead_cause)[:60] in ln
        for ln in section(text, "## Performance Analysis")
    )
    for row in table(section(text, "## Key Metrics (measured in this run)")):  # e.g. the refused call's time
        assert row[3].endswith(" FAILED"), row
    risks = table(section(text, "### Measured in this run"))
    assert all(r[1] == "not measured in this run" for r in risks), risks
    for value in target.env.values():
        assert value not in "\n".join(text)


def test_a_waived_failure_reads_go_with_waivers_naming_the_waiver(tmp_path: Path) -> None:
    evidence = tmp_path / "evidence"
    waivers = waiver_file(
        {
            "overhead": {
                "justification": "2-core CI runner | re-measured on the real lab",
                "approved_by": "J. Doe",
                "expires": "2026-12-31",
            }
        }
    )
    build_bundle(
        evidence,
        outcomes={"overhead": "failed"},
        causes={"overhead": "added p95 7.1 ms >= 5 ms"},
        waivers=waivers,
    )
    text = lines(evidence)
    assert f"Status: COMPLETE WITH WAIVERS - {N - 1} OF {N} SUCCESS CRITERIA MET, 1 WAIVED" in text
    assert "Final Validation: PASSED WITH WAIVERS" in text
    block = criterion(text, registry.ORDER["overhead"] + 1)
    assert "- Status: FAILED - WAIVED" in block and "- Result: added p95 7.1 ms >= 5 ms" in block
    assert "- Waiver: approved by J. Doe, expires 2026-12-31:" in block
    assert (
        "- `overhead` waived: 2-core CI runner \\| re-measured on the real lab (approved by J. Doe, "
        "expires 2026-12-31)"
    ) in section(text, "## Waivers")
    assert any(ln.startswith("**GO WITH WAIVERS: PROCEED, with the waivers above.**") for ln in text)


def test_a_check_that_did_not_run_is_not_run_and_no_go(tmp_path: Path) -> None:
    evidence = tmp_path / "evidence"
    build_bundle(evidence, outcomes={"db_tls": None})
    text = lines(evidence)
    block = criterion(text, registry.ORDER["db_tls"] + 1)
    assert "- Status: NOT RUN" in block and "- Result: the check did not run" in block
    assert "- Evidence: none (the check left no artifact)" in block
    assert "- `db_tls` NOT RUN: the check did not run" in text
    risks = {r[0]: r for r in table(section(text, "### Measured in this run"))}
    assert risks["Network security: TLS to the database"][1:] == [
        "not measured in this run",
        "`db_tls`",
        "NOT RUN",
    ]


@pytest.mark.parametrize(
    "cause", ["HTTP 500 | <script>alert(1)</script> *bold* [x](y)", "`code` and a\\backslash"]
)
def test_recorded_text_cannot_change_the_markdown(tmp_path: Path, cause: str) -> None:
    evidence = tmp_path / "evidence"
    build_bundle(evidence, outcomes={"chat_call": "failed"}, causes={"chat_call": cause})
    text = lines(evidence)
    result = next(ln for ln in criterion(text, 3) if ln.startswith("- Result: "))
    assert result == f"- Result: {summary.md(cause)}"
    unescaped = re.sub(r"\\(.)", "", result)
    assert not re.search(r"[`*<\[\]|]", unescaped), result


def test_a_secret_in_a_cause_never_reaches_the_summary(tmp_path: Path) -> None:
    secret = "pw-Zq9-" + "x" * 20
    evidence = tmp_path / "evidence"
    build_bundle(
        evidence,
        outcomes={"db_tls": "failed"},
        causes={"db_tls": f"login with {secret} refused"},
        secrets=(secret,),
    )
    text = (evidence / SUMMARY).read_text()
    assert secret not in text and "login with \\*\\*\\* refused" in text
