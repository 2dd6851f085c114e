"""Tests of the scheduled regression runner (tools/regression.py, tools/history.py, tools/trend_page.py).

Most tests inject the "run the suite" step (a fake bundle producer writing a manifest like the suite's)
to exercise the runner's own logic: folders, history, alarms, retention, lock, kill-safety. The kill and
lock tests run the runner as a real process and its fake suite as a real child process, so signals,
process groups and flock behave as in production. The lab test at the end does two real runs of the real
suite against the embedded lab.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from acceptance import registry

from tools import regression as R
from tools.history import CHECK_IDS, AlarmPolicy, read_history

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
SHOT_W, SHOT_H = 1280, 1000


# --------------------------------------------------------------------------------------------------
# fakes: a bundle like the suite's (manifest.json + overhead_benchmark.json), written on demand

#: the registry's number of checks (prose and status lines say it)
N = len(registry.CHECKS)


def manifest(run_id: str, *, verdict: str = "GO", digest: str = "lock-a", versions: dict | None = None,
             outcomes: dict[str, str] | None = None) -> dict:
    outcomes = outcomes or {}
    return {
        "run_id": run_id, "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:01:00Z",
        "target": "local", "hosts": {}, "verdict": verdict,
        "checks": [{"id": c, "title": c, "outcome": outcomes.get(c, "passed"),
                    "cause": None if outcomes.get(c, "passed") == "passed" else f"{c} broke (fake)",
                    "artifacts": [], "duration_s": 0.1} for c in CHECK_IDS],
        "artifacts": [], "versions": versions or {"litellm": "1.0", "lock": digest},
        "versions_digest": digest,
    }


def write_bundle(evidence: Path, run_id: str, p95: float | None, **kw) -> None:
    evidence.mkdir(parents=True, exist_ok=True)
    (evidence / "manifest.json").write_text(json.dumps(manifest(run_id, **kw)))
    if p95 is not None:
        (evidence / "overhead_benchmark.json").write_text(json.dumps(
            {"added_ms": {"p50": round(p95 / 2, 3), "p95": p95, "p99": round(p95 * 1.5, 3)}}))


def fake_producer(p95: float | None = 1.0, rc: int = 0, **kw) -> R.Producer:
    def produce(run: R.SuiteRun) -> int:
        run.log.write("fake suite: writing the bundle\n")
        write_bundle(run.evidence_dir, f"fake{run.run_id[-8:]}", p95, **kw)
        return rc
    return produce


def settings(runs: Path, **kw) -> R.Settings:
    policy = kw.pop("policy", AlarmPolicy(threshold_pct=50, threshold_ms=1.0, window=5, min_runs=1))
    return R.Settings(hosts="local", runs_dir=runs, policy=policy, **kw)


def quiet_run(s: R.Settings, producer: R.Producer) -> R.Outcome:
    with open(os.devnull, "w") as out:
        return R.run_once(s, producer, out=out)


# The runner as a real process, with a fake suite as its real child (tools.regression's own
# subprocess producer, so process group, PR_SET_PDEATHSIG and the output tee are the production code).
FAKE_SUITE = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    evidence, spec = Path(sys.argv[1]), json.loads(sys.argv[2])
    (evidence / "partial.txt").write_text(str(os.getpid()))
    print("fake suite pid", os.getpid(), flush=True)
    for name in spec.get("echo_env", []):  # a careless suite printing secrets
        print(f"{name}={os.environ[name]} Authorization: Bearer {os.environ[name]}", flush=True)
    deadline = time.monotonic() + spec.get("hold_s", 0)
    while time.monotonic() < deadline and not Path(spec.get("release", "/nonexistent")).exists():
        time.sleep(0.05)
    sys.path.insert(0, spec["repo"])
    from tests.test_regression import write_bundle
    write_bundle(evidence, "sub" + os.environ["POC1_RUN_ID"][-8:], spec.get("p95", 1.0))
""")

DRIVER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from tools import regression as R
    from tools.history import AlarmPolicy
    runs, suite, spec = Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    produce = R.subprocess_producer(lambda run: [sys.executable, suite, str(run.evidence_dir), spec])
    s = R.Settings(hosts="local", runs_dir=runs, policy=AlarmPolicy(min_runs=1))
    sys.exit(R.run_once(s, produce).exit_code)
""")


def start_runner(tmp: Path, runs: Path, env: dict[str, str] | None = None, **spec) -> subprocess.Popen[str]:
    (tmp / "fake_suite.py").write_text(FAKE_SUITE)
    (tmp / "driver.py").write_text(DRIVER)
    spec["repo"] = str(REPO)
    return subprocess.Popen([sys.executable, str(tmp / "driver.py"), str(REPO), str(runs),
                             str(tmp / "fake_suite.py"), json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def folders(runs: Path) -> list[Path]:
    return R.run_folders(runs) if runs.is_dir() else []


# --------------------------------------------------------------------------------------------------
# chromium: screenshot and DOM of the trend page


def chromium(page: Path, tmp: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"chromium-profile-{time.monotonic_ns()}"
    return subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           f"--window-size={SHOT_W},{SHOT_H}", *mode, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=90)


def assert_page_renders(page: Path, tmp: Path, run_ids: list[str]) -> str:
    """Screenshot: a PNG of the window size that is not blank. DOM: every run id present. Returns DOM."""
    from PIL import Image

    shot = tmp / "trend.png"
    proc = chromium(page, tmp, f"--screenshot={shot}")
    assert shot.exists(), f"chromium wrote no screenshot: {proc.stderr[-500:]}"
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size == (SHOT_W, SHOT_H)
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        non_white = sum(n for n, c in colours if sum(c) < 740)
    assert len(colours) > 50, "screenshot is (nearly) one colour"
    assert non_white > 0.02 * SHOT_W * SHOT_H, "screenshot is (nearly) blank"
    dom = chromium(page, tmp, "--dump-dom").stdout
    assert "overhead-plot" in dom
    for rid in run_ids:
        assert rid in dom, f"run {rid} missing from the rendered trend page"
    return dom


# --------------------------------------------------------------------------------------------------
# tests with an injected bundle producer


def test_two_scheduled_runs_make_two_folders_two_lines_and_a_page_showing_both(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = quiet_run(settings(runs), fake_producer(p95=1.0))
    second = quiet_run(settings(runs),
                       fake_producer(p95=1.1, outcomes={"chat_call": "failed"}, verdict="NO-GO"))

    assert (first.exit_code, second.exit_code) == (R.EXIT_GO, R.EXIT_NO_GO)
    assert [p.name for p in folders(runs)] == [first.folder.name, second.folder.name]
    for o in (first, second):
        assert o.folder.name.endswith("-" + o.record.run_id)
        assert (o.folder / "evidence" / "manifest.json").exists()
        assert not (o.folder / R.INCOMPLETE).exists()
        assert json.loads((o.folder / "regression.json").read_text())["run_id"] == o.record.run_id
    lines = (runs / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2
    rec = [json.loads(ln) for ln in lines]
    assert [r["run_id"] for r in rec] == [first.record.run_id, second.record.run_id]
    assert rec[0]["verdict"] == "GO" and rec[1]["verdict"] == "NO-GO"
    assert rec[1]["checks"]["chat_call"] == "failed" and rec[1]["checks"]["service_status"] == "passed"
    assert rec[0]["overhead"] == {"p50_ms": 0.5, "p95_ms": 1.0, "p99_ms": 1.5}
    assert rec[0]["versions_digest"] == "lock-a" and rec[0]["target"] == "local"
    assert "chat_call broke" in rec[1]["cause"]

    page = runs / "index.html"
    html = page.read_text()
    assert "check chat_call: passed -&gt; failed" in html and "verdict GO -&gt; NO-GO" in html
    for ref in ("<script", "<link", "src=", "url("):
        assert ref not in html, f"trend page is not self-contained: {ref}"
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed (make deps installs it)")
    dom = assert_page_renders(page, tmp_path, [first.record.run_id, second.record.run_id])
    assert dom.count('class="run"') == 2  # one plotted point per run


def test_plot_keeps_every_point_inside_its_frame_even_negative_or_over_the_limit(tmp_path: Path) -> None:
    import re

    from tools import trend_page

    runs = tmp_path / "runs"
    for p95 in (-0.8, 0.3, 7.5):  # added latency can be negative; 7.5 ms is over the 5 ms limit
        quiet_run(settings(runs), fake_producer(p95=p95))
    svg = trend_page.overhead_svg(read_history(runs / "history.jsonl"))
    frame = re.search(r'<rect x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)"', svg)
    top, height = float(frame.group(1)), float(frame.group(2))
    ys = [float(v) for v in re.findall(r'<circle class="run"[^>]* cy="([-\d.]+)"', svg)]
    assert len(ys) == 3 and all(top <= v <= top + height for v in ys), (ys, top, height)
    assert ys[0] > ys[1] > ys[2]  # higher overhead is drawn higher up


def test_injected_overhead_regression_is_flagged_and_exits_nonzero(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    base = quiet_run(settings(runs), fake_producer(p95=1.2))
    bad = quiet_run(settings(runs), fake_producer(p95=4.8))  # still under 5 ms: GO, but a regression

    assert base.exit_code == R.EXIT_GO and bad.exit_code == R.EXIT_REGRESSION
    hist = read_history(runs / "history.jsonl")
    assert [a.kind for a in hist[-1].alarms] == ["overhead"]
    assert hist[-1].verdict == "GO" and hist[-1].baseline.p95_ms == 1.2
    assert "4.800 ms" in hist[-1].alarms[0].text and "1.200 ms" in hist[-1].alarms[0].text
    page = (runs / "index.html").read_text()
    assert "Regression alarm on the latest run" in page and "REGRESSION" in page
    # a flagged run does not become part of the baseline: the next normal run is compared with 1.2 ms
    after = quiet_run(settings(runs), fake_producer(p95=1.3))
    assert after.exit_code == R.EXIT_GO and after.record.baseline.p95_ms == 1.2


def test_small_or_sub_threshold_changes_raise_no_alarm(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    policy = AlarmPolicy(threshold_pct=50, threshold_ms=1.0, window=3, min_runs=2)
    assert quiet_run(settings(runs, policy=policy), fake_producer(p95=0.2)).exit_code == R.EXIT_GO
    # no baseline yet (1 of 2 GO runs): even a large jump is not judged
    second = quiet_run(settings(runs, policy=policy), fake_producer(p95=3.0))
    assert second.exit_code == R.EXIT_GO and second.record.baseline.p95_ms is None
    # baseline = median(0.2, 3.0) = 1.6; 2.5 ms is +56% but only +0.9 ms: under the absolute floor
    third = quiet_run(settings(runs, policy=policy), fake_producer(p95=2.5))
    assert third.record.baseline.p95_ms == 1.6 and third.exit_code == R.EXIT_GO


def test_versions_lock_change_is_flagged_with_the_changed_component(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    before, after = {"litellm": "1.108.0", "postgres": "15.8"}, {"litellm": "1.109.0", "postgres": "15.8"}
    quiet_run(settings(runs), fake_producer(digest="aaa", versions=before))
    moved = quiet_run(settings(runs), fake_producer(digest="bbb", versions=after))
    assert moved.exit_code == R.EXIT_REGRESSION
    assert [a.kind for a in moved.record.alarms] == ["versions"]
    assert "litellm: 1.108.0 -> 1.109.0" in moved.record.alarms[0].text
    assert "postgres" not in moved.record.alarms[0].text
    page = (runs / "index.html").read_text()
    assert "litellm: 1.108.0 -&gt; 1.109.0" in page and "VERSIONS CHANGED" in page
    old_sha, new_sha = "a" * 64, "b" * 64
    quiet_run(settings(runs), fake_producer(digest="ccc", versions={"files": {"db_init.py": old_sha}}))
    hashed = quiet_run(settings(runs),
                       fake_producer(digest="ddd", versions={"files": {"db_init.py": new_sha}}))
    assert f"files.db_init.py: {'a' * 12} -> {'b' * 12}" in hashed.record.alarms[0].text
    assert old_sha not in hashed.record.alarms[0].text


def test_pinned_baseline_overrides_the_rolling_median(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = quiet_run(settings(runs), fake_producer(p95=3.0))
    msg = R.pin_baseline(runs, first.record.run_id, runs / "baseline.json")
    assert "3.000 ms" in msg
    (runs / "baseline.json").write_text(json.dumps({"p95_ms": 0.5, "note": "accepted after tuning"}))
    flagged = quiet_run(settings(runs), fake_producer(p95=3.0))
    assert flagged.exit_code == R.EXIT_REGRESSION
    assert flagged.record.baseline.source.startswith("pinned file baseline.json")
    (runs / "baseline.json").write_text("{}")
    assert quiet_run(settings(runs), fake_producer()).exit_code == R.EXIT_SETTINGS


def test_suite_that_leaves_no_manifest_is_a_no_go_line_with_its_cause(tmp_path: Path) -> None:
    runs = tmp_path / "runs"

    def broken(run: R.SuiteRun) -> int:
        run.log.write("validate: gateway: cannot reach 10.231.0.18:22 (timed out)\n")
        return 2

    out = quiet_run(settings(runs), broken)
    assert out.exit_code == R.EXIT_NO_GO
    (rec,) = read_history(runs / "history.jsonl")
    assert rec.verdict == "NO-GO" and rec.checks == {}
    assert rec.cause == ("the suite wrote no manifest.json (exit 2): "
                         "validate: gateway: cannot reach 10.231.0.18:22 (timed out)")


def test_retention_keeps_the_last_n_and_never_the_newest_go(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    go = quiet_run(settings(runs, keep=2), fake_producer())
    broken = {"join_check": "failed"}
    nogos = [quiet_run(settings(runs, keep=2), fake_producer(verdict="NO-GO", outcomes=broken))
             for _ in range(3)]
    kept = [p.name for p in folders(runs)]
    assert kept == [go.folder.name, nogos[1].folder.name, nogos[2].folder.name]
    assert len(read_history(runs / "history.jsonl")) == 4  # history is never pruned
    page = (runs / "index.html").read_text()
    assert page.count("(folder pruned)") == 1 and nogos[0].record.run_id in page


def test_killed_run_leaves_history_intact_and_its_folder_incomplete(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    done = start_runner(tmp_path, runs)
    assert done.wait(timeout=60) == 0, done.stdout.read()
    history_before = (runs / "history.jsonl").read_bytes()

    victim = start_runner(tmp_path, runs, hold_s=60)
    wait_for(lambda: len(folders(runs)) == 2 and (folders(runs)[-1] / "evidence" / "partial.txt").exists(),
             what="the second run's fake suite to start")
    dying = folders(runs)[-1]
    suite_pid = int((dying / "evidence" / "partial.txt").read_text())
    victim.send_signal(signal.SIGKILL)  # the worst case: no handler runs at all
    victim.wait(timeout=10)

    assert (runs / "history.jsonl").read_bytes() == history_before
    assert (dying / R.INCOMPLETE).exists()
    wait_for(lambda: not pid_alive(suite_pid), timeout=10, what="the orphaned suite to die with its runner")

    after = start_runner(tmp_path, runs)  # the lock died with the killed runner
    assert after.wait(timeout=60) == 0, after.stdout.read()
    hist = read_history(runs / "history.jsonl")
    assert len(hist) == 2 and dying.name not in {r.folder for r in hist}
    page = (runs / "index.html").read_text()
    assert "Incomplete runs" in page and dying.name in page


def test_terminated_run_stops_its_suite_and_says_why(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    victim = start_runner(tmp_path, runs, hold_s=60)
    wait_for(lambda: folders(runs) and (folders(runs)[-1] / "evidence" / "partial.txt").exists(),
             what="the fake suite to start")
    suite_pid = int((folders(runs)[-1] / "evidence" / "partial.txt").read_text())
    victim.send_signal(signal.SIGTERM)  # what systemd sends on stop or TimeoutStartSec
    assert victim.wait(timeout=30) == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM" in victim.stdout.read()
    assert not pid_alive(suite_pid)
    marker = (folders(runs)[-1] / R.INCOMPLETE).read_text()
    assert "killed by SIGTERM" in marker
    assert not (runs / "history.jsonl").exists()


def test_overlapping_start_is_refused_with_one_line(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    release = tmp_path / "release"
    holder = start_runner(tmp_path, runs, hold_s=60, release=str(release))
    wait_for(lambda: folders(runs) and (folders(runs)[-1] / "evidence" / "partial.txt").exists(),
             what="the first run to start")
    second = start_runner(tmp_path, runs)
    assert second.wait(timeout=30) == R.EXIT_LOCKED
    out = second.stdout.read().strip().splitlines()
    assert len(out) == 1 and "another run holds" in out[0] and f"pid {holder.pid}" in out[0]
    assert len(folders(runs)) == 1  # the refused run created nothing
    release.touch()
    assert holder.wait(timeout=60) == 0
    assert len(read_history(runs / "history.jsonl")) == 1


def test_secrets_printed_by_the_suite_are_kept_out_of_the_runners_log_and_output(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    secrets = {"POC1_LAB_MASTER_KEY": "sk-" + os.urandom(12).hex(),
               "POC1_LAB_DB_READER_PASSWORD": os.urandom(9).hex()}  # the `local` group's names
    proc = start_runner(tmp_path, runs, env=secrets, echo_env=list(secrets))
    assert proc.wait(timeout=60) == 0
    out = proc.stdout.read()
    (rec,) = read_history(runs / "history.jsonl")
    log = (runs / rec.folder / "suite.log").read_text()
    assert "POC1_LAB_MASTER_KEY=***" in log and "Bearer ***" in log  # the lines are there, redacted
    for value in secrets.values():
        assert value not in log and value not in out


def test_half_written_history_line_from_elsewhere_does_not_break_the_next_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    quiet_run(settings(runs), fake_producer())
    with open(runs / "history.jsonl", "a") as fh:
        fh.write('{"run_id": "torn", "verd')  # e.g. a hand edit or a copy cut short
    out = quiet_run(settings(runs), fake_producer())
    assert out.exit_code == R.EXIT_GO
    assert [r.run_id for r in read_history(runs / "history.jsonl")][-1] == out.record.run_id
    assert len(read_history(runs / "history.jsonl")) == 2


# --------------------------------------------------------------------------------------------------
# the verdict validate gave (issue 12 point 5), the one verdict rule, monitoring hooks


def test_a_bundle_validate_refused_is_no_go_with_its_cause_in_the_history(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real validate through the runner's own producer: every check of a target where nothing
    listens fails and is waived (manifest: GO with waivers), and its master key is a string JUnit XML holds
    verbatim, so validate refuses the bundle; the history must say NO-GO and why."""
    from tests.support.evidence_bundles import nowhere

    target = nowhere(tmp_path, master="test_service_status")
    for name, value in target.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("POC1_WAIVERS", raising=False)
    waivers = tmp_path / "waivers.yml"
    waivers.write_text(json.dumps({c: {"justification": "j", "approved_by": "a", "expires": "2999-01-01"}
                                   for c in CHECK_IDS}))
    s = R.Settings(hosts="nowhere", runs_dir=tmp_path / "runs", policy=AlarmPolicy(min_runs=1),
                   suite_args=[f"--inventory={target.inventory}", f"--waivers={waivers}"])
    out = quiet_run(s, R.subprocess_producer())
    assert out.exit_code == R.EXIT_NO_GO
    manifest = json.loads((out.folder / "evidence" / "manifest.json").read_text())
    assert manifest["verdict"] == "GO with waivers"
    (rec,) = read_history(tmp_path / "runs" / "history.jsonl")
    assert rec.verdict == "NO-GO"
    assert rec.cause.startswith("validate refused the bundle: a secret of group nowhere is in "), rec.cause
    assert "junit.xml" in rec.cause


def test_a_go_manifest_from_a_failing_suite_or_against_the_rule_is_no_go(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    crashed = quiet_run(settings(runs), fake_producer(rc=1))  # no validation.json: not validate's bundle
    assert crashed.exit_code == R.EXIT_NO_GO and crashed.record.verdict == "NO-GO"
    assert crashed.record.cause.startswith("the suite exited 1 although its manifest says GO")
    edited = quiet_run(settings(runs), fake_producer(outcomes={"db_tls": "failed"}))  # verdict left at GO
    assert edited.record.verdict == "NO-GO"
    assert edited.record.cause == "manifest.json records 'GO' but the rule gives NO-GO"


def test_monitoring_hooks_say_ok_warning_critical_unknown(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    runs = tmp_path / "runs"
    cases = [(fake_producer(p95=1.0), 0, f"POC1 ACCEPTANCE OK - GO: {N} of {N} registered checks passed"),
             (fake_producer(p95=9.0), 1, f"POC1 ACCEPTANCE WARNING - GO: {N} of {N} registered checks passed; "
                                         "overhead alarm: overhead p95 9.000 ms"),
             (fake_producer(verdict="NO-GO", outcomes={"chat_call": "failed"}), 2,
              f"POC1 ACCEPTANCE CRITICAL - NO-GO: {N - 1} of {N} registered checks passed; failed: chat_call; cause: "
              "chat_call: chat_call broke (fake)")]
    prom = tmp_path / "poc1.prom"
    for producer, code, start in cases:
        outcome = quiet_run(settings(runs), producer)
        capsys.readouterr()
        assert R.monitor(outcome, "local", prom, nagios=True) == code
        (line,) = capsys.readouterr().out.splitlines()
        assert line.startswith(start), line
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(prom.read_text()) for s in f.samples}
        alarm = samples[("poc1_acceptance_regression_alarm", (("kind", "overhead"), ("target", "local")))]
        assert alarm == (1 if code == 1 else 0)
        no_go = ("poc1_acceptance_verdict", (("target", "local"), ("verdict", "NO-GO")))
        assert samples[no_go] == (code == 2)
    locked = R.Outcome(R.EXIT_LOCKED, None, None, cause="another run holds x/.lock (pid 1); not starting")
    assert R.monitor(locked, "local", None, nagios=True) == 3
    assert capsys.readouterr().out == ("POC1 ACCEPTANCE UNKNOWN - another run holds x/.lock (pid 1); "
                                       "not starting (target local)\n")
    assert R.monitor(locked, "local", None, nagios=False) == R.EXIT_LOCKED


def test_the_real_runner_with_nagios_prints_one_line(tmp_path: Path) -> None:
    from tests.support.evidence_bundles import nowhere

    target = nowhere(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "POC1_"))}
    env.update(target.env, LITELLM_LOCAL_MODEL_COST_MAP="True")
    proc = subprocess.run([sys.executable, "-m", "tools.regression", "--hosts", "nowhere", "--runs-dir",
                           str(tmp_path / "runs"), "--nagios", f"--suite-arg=--inventory={target.inventory}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr[-3000:]
    (line,) = proc.stdout.splitlines()
    assert line.startswith(f"POC1 ACCEPTANCE CRITICAL - NO-GO: 0 of {N} registered checks passed")
    assert "regression: run " in proc.stderr and "validate: run " in proc.stderr


def test_the_trend_page_shows_go_with_waivers_apart(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    waived = {"chat_call": "failed"}

    def produce(run: R.SuiteRun) -> int:
        write_bundle(run.evidence_dir, f"w{run.run_id[-8:]}", 1.0, verdict="GO with waivers", outcomes=waived)
        m = json.loads((run.evidence_dir / "manifest.json").read_text())
        m["waivers"] = {"applied": [{"check": "chat_call", "justification": "j", "approved_by": "a",
                                     "expires": "2999-01-01"}]}
        (run.evidence_dir / "manifest.json").write_text(json.dumps(m))
        return 0

    out = quiet_run(settings(runs), produce)
    assert out.exit_code == R.EXIT_GO and out.record.verdict == "GO with waivers"
    page = (runs / "index.html").read_text()
    assert '<span class="badge GO-with-waivers">GO with waivers</span>' in page


# --------------------------------------------------------------------------------------------------
# two real runs of the real suite against the embedded lab


@pytest.mark.lab
def test_two_real_runs_against_the_embedded_lab(embedded_lab, tmp_path: Path) -> None:  # noqa: ANN001
    """The real entry point, the real suite, the real lab, twice; the second run with an injected
    regression (a pinned baseline far below the first run's p95) must be flagged and exit 3.

    The suite's own overhead limit is lifted here (LEAN_SUITE_ARGS): this test is about the scheduling
    machinery, and 50 pairs on a shared 2-core runner are too noisy to hold a 5 ms line (check 6 has its
    own tests)."""
    runs = tmp_path / "runs"
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")

    def real_run(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "tools.regression", "--hosts", "local", "--runs-dir", str(runs),
               "--suite-timeout", "600", *LEAN_SUITE_ARGS, *extra]
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)

    first = real_run()
    (rec1,) = read_history(runs / "history.jsonl")
    assert first.returncode == R.EXIT_GO, f"{rec1.cause}\n{first.stdout[-3000:]}"
    assert rec1.overhead.p95_ms is not None and rec1.versions_digest

    pinned = tmp_path / "pinned-baseline.json"
    pinned.write_text(json.dumps({"p95_ms": rec1.overhead.p95_ms - 100.0, "note": "injected by the test"}))
    second = real_run("--baseline-file", str(pinned))
    hist = read_history(runs / "history.jsonl")
    assert len(hist) == 2 and len(folders(runs)) == 2, second.stdout[-3000:]
    rec2 = hist[1]
    assert rec2.verdict == "GO", f"{rec2.cause}\n{second.stdout[-3000:]}"
    assert second.returncode == R.EXIT_REGRESSION, second.stdout[-3000:]
    assert [a.kind for a in rec2.alarms] == ["overhead"]  # same lab, same lock: no versions alarm
    assert rec2.versions_digest == rec1.versions_digest
    assert "regression: ALARM overhead" in second.stdout

    for rec in hist:
        assert set(rec.checks) == set(CHECK_IDS) and set(rec.checks.values()) == {"passed"}
        bundle = runs / rec.folder / "evidence"
        assert json.loads((bundle / "manifest.json").read_text())["run_id"] == rec.run_id
        assert (bundle / "report.html").exists() and (bundle / "overhead_benchmark.json").exists()
        assert not (runs / rec.folder / R.INCOMPLETE).exists()
    if CHROMIUM.exists():
        dom = assert_page_renders(runs / "index.html", tmp_path, [r.run_id for r in hist])
        assert "REGRESSION" in dom


#: passed through tools.regression to tools.validate (and on to pytest): the lab is already up (the
#: embedded_lab fixture), a short benchmark, and check 6's limits lifted (see the test's docstring)
LEAN_SUITE_ARGS: list[str] = ["--suite-arg=--no-lab-up", "--suite-arg=--overhead-pairs=50",
                              "--suite-arg=--overhead-groups=2",
                              "--suite-arg=--overhead-threshold-ms=1000",
                              "--suite-arg=--durability-lag-threshold-ms=10000"]
