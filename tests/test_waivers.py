"""Waivers the InSpec way (POC-1/waivers.yml): a waived measured failure gives "GO with waivers" until its
expiry and NO-GO after; unknown, expired, malformed and not-needed waivers are ignored and said; no
waiver stands in for a check that did not run. Through the real parser, build_manifest, the report
(a real pytest-html session), the summary, tools.verify, and two real runs of tools.validate.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from acceptance import registry
from evidence_writers import verdict as rule
from evidence_writers import waivers as W
from evidence_writers.bundle import REPORT, SUMMARY
from evidence_writers.manifest import build_manifest
from evidence_writers.result import CheckResult
from tests.support.evidence_bundles import ROOT, full_bundle, validate_nowhere, waiver_file

IDS = [c.id for c in registry.CHECKS]
GOOD = {
    "justification": "shared CI runner; re-measured on the real lab",
    "approved_by": "J. Doe",
    "expires": "2026-12-31",
}


def manifest_with(outcomes: dict[str, str | None], waivers: dict, started: str) -> dict:
    checks = [CheckResult(c, c, o) for c, o in outcomes.items() if o is not None]
    return build_manifest(
        run_id="r",
        started=started,
        finished=started,
        target="local",
        hosts={},
        checks=checks,
        required=IDS,
        missing=[],
        artifacts=[],
        versions={},
        waivers=waiver_file(waivers),
    )


def all_passed(**changes: str | None) -> dict[str, str | None]:
    return {**{c: "passed" for c in IDS}, **changes}


def test_the_shipped_file_has_no_active_waiver_and_its_example_is_valid() -> None:
    path = ROOT / "POC-1" / "waivers.yml"
    loaded = W.load(path)
    assert loaded.entries == [] and loaded.problems == [] and loaded.sha256
    assert W.configured_path({}) == path and W.configured_path({"POC1_WAIVERS": "/x.yml"}) == Path("/x.yml")
    text = path.read_text()
    example = text[text.index("An entry looks like this") :].splitlines()[2:]
    entries, problems = W.parse(yaml.safe_load("\n".join(ln.removeprefix("# ") for ln in example)))
    assert (
        problems == [] and [e.check for e in entries] == ["overhead"] and entries[0].expires == "2026-12-31"
    )


def test_a_waived_failure_is_go_with_waivers_until_its_expiry_and_no_go_after() -> None:
    outcomes = all_passed(overhead="failed")
    on_expiry = manifest_with(outcomes, {"overhead": GOOD}, "2026-12-31T23:59:00+00:00")
    assert on_expiry["verdict"] == rule.GO_WITH_WAIVERS == rule.decide_manifest(on_expiry).verdict
    assert on_expiry["waivers"]["applied"] == [{"check": "overhead", **GOOD}]
    assert "waived: overhead" in on_expiry["verdict_basis"]
    after = manifest_with(outcomes, {"overhead": GOOD}, "2027-01-01T00:00:01+00:00")
    assert after["verdict"] == rule.NO_GO and after["waivers"]["applied"] == []
    assert after["waivers"]["ignored"] == [
        {"check": "overhead", "reason": "expired on 2026-12-31 (run of 2027-01-01): ignored"}
    ]
    # judged on the run's UTC date: 23:30 on the 31st in UTC-2 is already the 1st in UTC
    late = manifest_with(outcomes, {"overhead": GOOD}, "2026-12-31T23:30:00-02:00")
    assert late["verdict"] == rule.NO_GO


@pytest.mark.parametrize(
    "outcome,reason",
    [
        (None, "the check did not run: a waiver cannot stand in for a check that did not run"),
        ("skipped", "the check did not judge (outcome skipped): only a measured failure can be waived"),
        ("error", "the check did not judge (outcome error): only a measured failure can be waived"),
        ("passed", "not needed: the check passed"),
    ],
)
def test_only_a_measured_failure_can_be_waived(outcome: str | None, reason: str) -> None:
    m = manifest_with(all_passed(db_tls=outcome), {"db_tls": GOOD}, "2026-06-01T00:00:00+00:00")
    assert m["waivers"]["applied"] == [] and m["waivers"]["ignored"] == [
        {"check": "db_tls", "reason": reason}
    ]
    assert m["verdict"] == (rule.GO if outcome == "passed" else rule.NO_GO)
    # a hand-edited "applied" list cannot excuse it either: the rule only waives a "failed" outcome
    m["waivers"]["applied"] = [{"check": "db_tls", **GOOD}]
    assert rule.decide_manifest(m).verdict == (
        rule.GO_WITH_WAIVERS if outcome == "failed" else rule.GO if outcome == "passed" else rule.NO_GO
    )


def test_unknown_and_malformed_waivers_are_ignored_and_said() -> None:
    entries = {
        "no_such_check": GOOD,
        "db_tls": {**GOOD, "approved_by": ""},
        "join_check": {**GOOD, "expires": "next week"},
        "chat_call": "yes please",
    }
    m = manifest_with(
        all_passed(db_tls="failed", join_check="failed", chat_call="failed"),
        entries,
        "2026-06-01T00:00:00+00:00",
    )
    assert m["verdict"] == rule.NO_GO and m["waivers"]["applied"] == []
    assert {i["check"]: i["reason"] for i in m["waivers"]["ignored"]} == {
        "no_such_check": "unknown check (not in the registry): ignored",
        "db_tls": "entry lacks approved_by: ignored",
        "join_check": "expires 'next week' is not a date (YYYY-MM-DD): ignored",
        "chat_call": "entry is not a mapping: ignored",
    }


@pytest.mark.parametrize(
    "content,reason",
    [
        ("overhead: [unclosed\n", "waivers.yml unreadable ("),
        ("- overhead\n", "the file is not a mapping of check id -> waiver: ignored"),
    ],
)
def test_a_broken_file_applies_no_waiver_and_says_why_in_one_line(
    tmp_path: Path, content: str, reason: str
) -> None:
    path = tmp_path / "waivers.yml"
    path.write_text(content)
    loaded = W.load(path)
    assert loaded.entries == []
    (problem,) = loaded.problems
    assert problem["reason"].startswith(reason) and "\n" not in problem["reason"]
    assert W.load(tmp_path / "absent.yml").entries == [] and W.load(tmp_path / "absent.yml").problems == []


def test_the_configured_file_is_what_every_run_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "waivers.yml"
    path.write_text(yaml.safe_dump({"overhead": GOOD}))
    monkeypatch.setenv("POC1_WAIVERS", str(path))
    checks = [CheckResult(c, c, "failed" if c == "overhead" else "passed") for c in IDS]
    m = build_manifest(
        run_id="r",
        started="2026-06-01T00:00:00+00:00",
        finished="f",
        target="local",
        hosts={},
        checks=checks,
        required=IDS,
        missing=[],
        artifacts=[],
        versions={},
    )
    assert m["verdict"] == rule.GO_WITH_WAIVERS and m["waivers"]["file"] == str(path)


def test_a_waived_bundle_lists_the_waiver_in_manifest_report_and_summary_and_verifies(tmp_path: Path) -> None:
    waivers = waiver_file({"overhead": GOOD, "no_such_check": GOOD})
    evidence, tarball = full_bundle(tmp_path, outcomes={"overhead": "failed"}, waivers=waivers)
    m = json.loads((evidence / "manifest.json").read_text())
    assert m["verdict"] == "GO with waivers" and [w["check"] for w in m["waivers"]["applied"]] == ["overhead"]
    html = (evidence / REPORT).read_text()
    assert 'id="poc1-verdict">GO with waivers<' in html and 'class="verdict GO-with-waivers"' in html
    assert re.search(
        r'<tr data-check="overhead" class="applied">.*?WAIVED.*?shared CI runner.*?J\. Doe.*?'
        r"2026-12-31",
        html,
    )
    assert re.search(r'<tr data-check="no_such_check" class="ignored">.*?unknown check', html)
    assert re.search(r'<tr data-check="overhead"><td>6</td>.*?class="outcome WAIVED">WAIVED<', html)
    summary = (evidence / SUMMARY).read_text()
    assert "- `overhead` waived: shared CI runner; re-measured on the real lab (approved by J. Doe" in summary
    assert "- Ignored: `no_such_check`: unknown check (not in the registry): ignored" in summary
    st = json.loads((evidence / "attestation.intoto.json").read_text())["predicate"]
    assert st["result"] == "WARNED" and st["warnedTests"] == ["overhead"] and st["failedTests"] == []
    res = subprocess.run(
        [sys.executable, "-m", "tools.verify", str(tarball)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "verdict GO with waivers" in res.stdout, res.stdout + res.stderr

    m["waivers"]["applied"].append({"check": "db_tls", **GOOD})  # added by hand, no entry behind it
    from tools.verify import Findings, check_verdict

    found = Findings()
    check_verdict(m, found)
    assert any(
        "applied waivers ['db_tls', 'overhead'] do not follow from its waiver entries" in f
        for f in found.failures
    ), found.failures


def test_validate_with_waivers_for_every_failure_is_go_with_waivers_and_after_expiry_no_go(
    tmp_path: Path,
) -> None:
    """Two real runs against a loopback target where nothing listens: every check fails."""
    valid, expired = tmp_path / "valid.yml", tmp_path / "expired.yml"
    valid.write_text(yaml.safe_dump({c: {**GOOD, "expires": "2999-12-31"} for c in IDS}))
    expired.write_text(yaml.safe_dump({c: {**GOOD, "expires": "2000-01-01"} for c in IDS}))

    res, _ = validate_nowhere(tmp_path, tmp_path / "a" / "evidence", f"--waivers={valid}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert re.search(r"^validate: run \S+ against nowhere: verdict GO with waivers$", res.stdout, re.M)
    m = json.loads((tmp_path / "a" / "evidence" / "manifest.json").read_text())
    assert {c["outcome"] for c in m["checks"]} == {"failed"}
    assert sorted(w["check"] for w in m["waivers"]["applied"]) == sorted(IDS)

    res, _ = validate_nowhere(tmp_path, tmp_path / "b" / "evidence", f"--waivers={expired}")
    assert res.returncode == 1
    m = json.loads((tmp_path / "b" / "evidence" / "manifest.json").read_text())
    assert m["verdict"] == "NO-GO" and m["waivers"]["applied"] == []
    assert all(i["reason"].startswith("expired on 2000-01-01") for i in m["waivers"]["ignored"])
    assert (
        "- Ignored: `overhead`: expired on 2000-01-01" in (tmp_path / "b" / "evidence" / SUMMARY).read_text()
    )
