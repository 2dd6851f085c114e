"""`python -m tools.validate` (what `make validate` runs) on the embedded lab, as a user runs it:
a healthy lab gives GO and exit 0 with the whole bundle packed; a lab whose gateway unit is stopped
gives NO-GO, exit 1, and names the failing checks. Both reports are opened in headless Chromium.

The command is never run with --hosts=lab (the real 192.168.10.x hosts): only the embedded `local` group.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from acceptance import registry
from tests.support import chromium
from tests.support.lab_unit import gateway_unit
from tools import validate as V

ROOT = Path(__file__).resolve().parents[1]
UNIT = "litellm-gateway"
CHECKS = [c.id for c in registry.CHECKS]
SELECTORS = {"verdict": "#poc1-verdict", "rows": "#poc1-checks tbody tr", "links": "#poc1-checks a.artifact",
             "img": "#poc1-histogram", "overhead_error": "#poc1-overhead-error"}
BUNDLE_FILES = {"manifest.json", "report.html", "junit.xml", "pytest_benchmark.json",
                "overhead_benchmark.json", "overhead_histogram.png",
                *(a for c in registry.CHECKS for a in c.artifacts), "POC_COMPLETION_SUMMARY.md",
                "validation.json", "SHA256SUMS", "attestation.intoto.json"}

#: the registry's number of checks (prose and status lines say it)
N = len(registry.CHECKS)


def validate(evidence: Path, *args: str, hosts: str = "local", timeout: float = 600,
             ) -> subprocess.CompletedProcess[str]:
    assert hosts != "lab", "never run against the lab group (real 192.168.10.x hosts)"
    cmd = [sys.executable, "-m", "tools.validate", "--hosts", hosts, "--evidence-dir", str(evidence), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def lab_secrets() -> list[str]:
    from fixtures.inventory import load_target

    return load_target(ROOT / "hosts.yml", "local").secret_values()


def failing_rows(stdout: str) -> dict[str, str]:
    """check id -> cause, from validate's summary lines ``validate:   <id>: FAIL: <cause>``."""
    return dict(re.findall(r"^validate:   (\w+): (?:FAIL|NOT RUN|SKIPPED)(?:: (.*))?$", stdout, re.M))


def rendered(report: Path, tmp: Path) -> tuple[str, dict[str, str], list[str], dict]:
    """(verdict, {check: row text}, link targets, layout) as Chromium renders the report."""
    seen = chromium.render(report, tmp, SELECTORS)
    assert seen.screenshot.stat().st_size > 20_000
    rows = {r["check"]: r["text"] for r in seen.layout["rows"] if r["visible"]}
    hrefs = [a["href"] for a in seen.layout["links"]]
    return seen.layout["verdict"][0]["text"], rows, hrefs, seen.layout


@pytest.mark.lab
def test_healthy_lab_is_go_with_the_whole_bundle(tmp_path: Path, embedded_lab) -> None:  # noqa: ANN001
    evidence = tmp_path / "evidence"
    t0 = time.monotonic()
    res = validate(evidence)
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    manifest = json.loads((evidence / "manifest.json").read_text())
    run_id = manifest["run_id"]
    assert f"validate: run {run_id} against local: verdict GO" in res.stdout
    assert {c["id"]: c["outcome"] for c in manifest["checks"]} == {c: "passed" for c in CHECKS}
    assert f"validate: report  {evidence / 'report.html'}" in res.stdout

    tarball = tmp_path / f"evidence-{run_id}.tar.gz"
    assert f"validate: bundle  {tarball}" in res.stdout
    with tarfile.open(tarball) as tar:
        names = {Path(n).name for n in tar.getnames()}
        assert BUNDLE_FILES <= names, BUNDLE_FILES - names
        secrets = lab_secrets()
        for member in tar.getmembers():
            text = tar.extractfile(member).read().decode("utf-8", "replace")
            assert not [s for s in secrets if s in text], f"a lab secret is in {member.name}"

    suite = ET.parse(evidence / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == (str(len(CHECKS)), "0", "0")

    bench = json.loads((evidence / "pytest_benchmark.json").read_text())
    (b,) = bench["benchmarks"]
    assert b["stats"]["rounds"] == 200  # one round = one logged request, the warm-up excluded
    extra = b["extra_info"]
    assert extra["passed"] is True and extra["added_ms"]["p95"] < extra["limits"]["overhead_ms"]
    doc = json.loads((evidence / "overhead_benchmark.json").read_text())
    assert doc["added_ms"] == extra["added_ms"]
    print(f"\nvalidate wall {wall:.1f} s; check 6 {doc['duration_s']} s;",
          json.dumps({k: doc[k] for k in ("added_ms", "latency_ms", "completeness")}),
          json.dumps(doc["added_latency"]["shift"]["p95"]), json.dumps(doc["durability_lag_ms"]),
          json.dumps({k: v for k, v in doc["throughput"].items() if k != "blocks"}),
          json.dumps(doc["litellm_headers"]))

    if chromium.available():
        verdict, rows, hrefs, layout = rendered(evidence / "report.html", tmp_path)
        assert verdict == "GO"
        assert layout["img"][0]["visible"] and layout["img"][0]["natural"] > 500
        assert list(rows) == CHECKS and all("\tPASS\t" in t for t in rows.values()), rows
        assert hrefs and all((evidence / h).resolve().is_file() for h in hrefs), hrefs


@pytest.mark.lab
def test_stopped_gateway_is_no_go_naming_the_failing_checks(tmp_path: Path,
                                                            embedded_lab) -> None:  # noqa: ANN001
    evidence = tmp_path / "evidence"
    gateway_unit("stop", UNIT)
    try:
        t0 = time.monotonic()
        res = validate(evidence, timeout=300)
        wall = time.monotonic() - t0
    finally:
        gateway_unit("start", UNIT)

    assert res.returncode == 1, res.stdout[-4000:] + res.stderr[-2000:]
    assert "validate: the embedded lab is up but degraded" in res.stdout  # reported, not repaired
    assert re.search(r"^validate: run \S+ against local: verdict NO-GO$", res.stdout, re.M)
    failing = failing_rows(res.stdout)
    # the unit itself, the call through it, and the benchmark on it must be named, each with its cause
    assert {"service_status", "chat_call", "overhead"} <= set(failing), failing
    assert "inactive" in failing["service_status"] or "dead" in failing["service_status"], failing
    assert "10.231.0.18:4000" in failing["chat_call"] and "10.231.0.18:4000" in failing["overhead"]
    assert all(cause and "\n" not in cause for cause in failing.values())
    assert wall < 120, f"a stopped gateway took {wall:.0f} s to judge"
    manifest = json.loads((evidence / "manifest.json").read_text())
    assert manifest["verdict"] == "NO-GO"
    assert (tmp_path / f"evidence-{manifest['run_id']}.tar.gz").is_file()

    if chromium.available():
        verdict, rows, _, layout = rendered(evidence / "report.html", tmp_path)
        assert verdict == "NO-GO"
        assert failing["overhead"] in layout["overhead_error"][0]["text"]
        assert list(rows) == CHECKS
        for cid, cause in failing.items():
            assert "\tFAIL\t" in rows[cid] and cause[:60] in rows[cid], (cid, rows[cid])


# --- without the lab -------------------------------------------------------------------------------------

def test_a_suite_that_cannot_start_is_exit_2_with_the_reason_last(tmp_path: Path) -> None:
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    (evidence / "manifest.json").write_text('{"run_id": "old", "checks": []}')  # a previous run's
    time.sleep(0.05)
    res = validate(evidence, hosts="no_such_group", timeout=120)
    assert res.returncode == V.EXIT_NOTHING, res.stdout[-2000:] + res.stderr[-2000:]
    assert "no such group" in res.stdout + res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last == (f"validate: the suite wrote no new manifest.json in {evidence} (pytest exit 4); "
                    "verdict NO-GO")


def test_a_second_run_into_the_same_bundle_is_refused(tmp_path: Path) -> None:
    evidence = (tmp_path / "evidence").resolve()
    fd = V.lock_bundle(evidence)
    assert fd is not None
    try:
        res = validate(evidence, hosts="no_such_group", timeout=60)
    finally:
        os.close(fd)
    assert res.returncode == V.EXIT_NOTHING
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith(f"validate: another validate run is writing {evidence}")


def test_the_tarball_holds_the_bundle_and_a_secret_is_found_anywhere(tmp_path: Path) -> None:
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    (evidence / ".poc1-evidence").write_text("marker")
    (evidence / "report.html").write_text("<p>ok</p>")
    (evidence / "junit.xml").write_text("<testsuites/>")
    tarball = V.pack(evidence, "RUN1")
    assert tarball == tmp_path / "evidence-RUN1.tar.gz"
    with tarfile.open(tarball) as tar:
        assert sorted(tar.getnames()) == ["evidence/junit.xml", "evidence/report.html"]
    inventory = tmp_path / "hosts.yml"
    inventory.write_text((ROOT / "hosts.yml").read_text().replace(
        "secrets_env_file: /var/lib/poc1-lab/secrets.env", f"secrets_env_file: {tmp_path / 'secrets.env'}"))
    (tmp_path / "secrets.env").write_text("POC1_LAB_MASTER_KEY=sk-topsecret-0123456789abcdef\n"
                                          "POC1_LAB_DB_READER_PASSWORD=pw-reader-42\n")
    (tmp_path / "secrets.env").chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("POC1_LAB_")}
    assert V.leaked_secrets(evidence, "local", inventory, env) == []
    (evidence / "junit.xml").write_text("<failure>password pw-reader-42 rejected</failure>")
    assert V.leaked_secrets(evidence, "local", inventory, env) == ["junit.xml"]


# --- sealing, refusals and monitoring hooks on real runs against a loopback target nobody listens on --------

def _prom(path: Path) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(path.read_text()) for s in fam.samples}


def test_nagios_line_prometheus_textfile_and_a_signature_from_the_environment(tmp_path: Path) -> None:
    from tests.support.evidence_bundles import validate_nowhere

    key = tmp_path / "signer"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ci", "-f", str(key)], check=True,
                   timeout=30)
    allowed = tmp_path / "allowed_signers"
    pub = " ".join(key.with_suffix(".pub").read_text().split()[:2])
    allowed.write_text(f'ci namespaces="poc1-acceptance" {pub}\n')
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    res, _ = validate_nowhere(tmp_path, tmp_path / "evidence", "--nagios", f"--prom-file={textfiles}",
                              env_extra={"POC1_SIGNING_KEY": str(key)})
    assert res.returncode == 2, res.stdout + res.stderr[-3000:]  # CRITICAL
    (line,) = res.stdout.splitlines()  # the status line only; the suite's output went to stderr
    assert line.startswith(f"POC1 ACCEPTANCE CRITICAL - NO-GO: 0 of {N} registered checks passed; failed: "
                           "service_status, gateway_db_connect")
    assert "(run 20" in line and f"target nowhere) | checks_passed=0;;;0;{N}" in line
    assert "validate: run " in res.stderr and "verdict NO-GO" in res.stderr
    prom = _prom(textfiles / "poc1_acceptance.prom")
    assert prom[("poc1_acceptance_verdict", (("target", "nowhere"), ("verdict", "NO-GO")))] == 1
    assert prom[("poc1_acceptance_verdict", (("target", "nowhere"), ("verdict", "GO")))] == 0
    for cid in CHECKS:
        assert prom[("poc1_acceptance_check_outcome", (("check", cid), ("outcome", "failed"),
                                                       ("target", "nowhere")))] == 1
    assert prom[("poc1_acceptance_last_run_timestamp_seconds", (("target", "nowhere"),))] > 1.7e9
    manifest = json.loads((tmp_path / "evidence" / "manifest.json").read_text())
    tarball = tmp_path / f"evidence-{manifest['run_id']}.tar.gz"
    ok = subprocess.run([sys.executable, "-m", "tools.verify", str(tarball), f"--allowed-signers={allowed}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and 'signature for ci with ED25519' in ok.stdout, ok.stdout + ok.stderr


def test_a_signing_key_that_does_not_work_packs_nothing_and_says_why(tmp_path: Path) -> None:
    from tests.support.evidence_bundles import validate_nowhere

    missing = tmp_path / "no-such-key"
    res, _ = validate_nowhere(tmp_path, tmp_path / "evidence", f"--signing-key={missing}")
    assert res.returncode == V.EXIT_NOTHING
    assert res.stdout.strip().splitlines()[-1] == (f"validate: signing key {missing}: no such file: bundle "
                                                   "not packed; verdict NO-GO")
    assert not list(tmp_path.glob("evidence-*.tar.gz"))
    assert not (tmp_path / "evidence" / "SHA256SUMS").exists()
    assert json.loads((tmp_path / "evidence" / "validation.json").read_text())["verdict"] == "NO-GO"


def test_a_bundle_holding_a_secret_is_refused_and_validation_json_says_so(tmp_path: Path) -> None:
    from tests.support.evidence_bundles import validate_nowhere

    # a master key that is also a test name: JUnit XML and the report hold it verbatim
    res, _ = validate_nowhere(tmp_path, tmp_path / "evidence", master="test_service_status")
    assert res.returncode == V.EXIT_NO_GO
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("validate: a secret of group nowhere is in ") and "junit.xml" in last
    assert "test_service_status" not in last
    doc = json.loads((tmp_path / "evidence" / "validation.json").read_text())
    assert doc["verdict"] == "NO-GO" and doc["cause"].startswith("a secret of group nowhere is in ")
    assert not list(tmp_path.glob("evidence-*.tar.gz"))


def test_the_textfile_carries_check_6s_figures_from_the_manifest(tmp_path: Path) -> None:
    from tests.support.evidence_bundles import build_bundle
    from tools import monitoring

    manifest = build_bundle(tmp_path / "evidence", outcomes={"db_tls": "failed"})
    status = monitoring.Status(target="local", verdict=manifest["verdict"], run_id=manifest["run_id"],
                               manifest=manifest, finished=1_796_000_000.0)
    path = monitoring.write_textfile(tmp_path / "poc1.prom", status)
    prom = _prom(path)
    details = next(c for c in manifest["checks"] if c["id"] == "overhead")["details"]
    local = ("target", "local")
    added = prom[("poc1_acceptance_overhead_added_p95_seconds", (("bound", "point"), local))]
    assert added == pytest.approx(details["added_p95_ms"] / 1000)
    high = prom[("poc1_acceptance_capacity_added_per_request_seconds", (("bound", "high"), local))]
    assert high == pytest.approx(details["capacity_added_ms"]["high"] / 1000)
    assert prom[("poc1_acceptance_throughput_requests_per_second", (("arm", "logged"), local))] == 73.2
    assert prom[("poc1_acceptance_check_outcome", (("check", "db_tls"), ("outcome", "failed"), local))] == 1
    assert prom[("poc1_acceptance_verdict", (local, ("verdict", "NO-GO")))] == 1
    assert prom[("poc1_acceptance_last_run_timestamp_seconds", (local,))] == 1_796_000_000.0
    assert not [k for k in prom if k[0].startswith("poc1_acceptance_regression_alarm")]  # only regression
