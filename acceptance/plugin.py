"""The pytest plugin of the acceptance suite: target selection, check order, per-check outcome records,
artifacts written pass or fail, and manifest.json at the end.

Activated by the root conftest.py only when the run collects acceptance/ (a bare ``pytest`` or
``pytest --hosts=NAME``), so ``pytest tests`` never touches the evidence directory.
The HTML report reads ``config.stash[PLUGIN_KEY]``: ``ctx`` (target, bundle; ``ctx.evidence``: each check's
``CheckResult``, evidence_writers/result.py) and ``manifest`` (after the run).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from acceptance import fleet, hookspecs, registry, versions
from evidence_writers.bundle import EvidenceDirError
from evidence_writers.manifest import build_manifest
from evidence_writers.redaction import SecretLeak
from evidence_writers.result import CheckResult
from fixtures.context import RUN_KEY, RunContext
from fixtures.errors import CheckFailure, first_line, one_line
from fixtures.inventory import InventoryError, load_target

ROOT = Path(__file__).resolve().parents[1]
ACCEPTANCE_DIR = ROOT / "acceptance"
PLUGIN_KEY = pytest.StashKey["AcceptancePlugin"]()
SEVERITY = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
CAUSE_LIMIT = 500  # characters of a one-line cause (two-part causes, e.g. journal + probe, must both fit)


def is_acceptance_run(config: pytest.Config) -> bool:
    """True if any collection argument is acceptance/, inside it, or a directory containing it."""
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (base / str(arg).split("::", 1)[0]).resolve()
        if path == ACCEPTANCE_DIR or ACCEPTANCE_DIR in path.parents or path in ACCEPTANCE_DIR.parents:
            return True
    return False


def artifact_kind(name: str) -> str:
    """The kind of a declared artifact by its name: .json → json, .png → binary, else text."""
    return "json" if name.endswith(".json") else "binary" if name.endswith(".png") else "text"


def check_id(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("check")
    return str(marker.args[0]) if marker and marker.args else None


def configure(config: pytest.Config) -> None:
    """Called from the root conftest's pytest_configure. Bad inventory → UsageError (exit 4), one line."""
    if not is_acceptance_run(config):
        return
    base = Path(config.invocation_params.dir)
    inventory = base / config.getoption("inventory")
    group = config.getoption("hosts")
    extras = [base / p for p in config.getoption("extra_inventory")]
    if not extras and inventory.resolve() == (ROOT / "hosts.yml").resolve():
        from lab import fleet  # the embedded lab of several gateways adds gateway-2.. to group local

        extras = fleet.suite_sources(group)
    try:
        target = load_target(inventory, group, extra_sources=tuple(extras))
    except InventoryError as exc:
        raise pytest.UsageError(f"inventory: {exc}") from None
    ctx = RunContext(target=target, evidence_dir=(base / config.getoption("evidence_dir")).resolve(),
                     accept_new_host_keys=bool(config.getoption("ssh_accept_new")))
    if not config.option.collectonly:
        try:
            ctx.bundle.prepare()
        except (EvidenceDirError, OSError) as exc:
            raise pytest.UsageError(f"--evidence-dir: {exc}") from None
    config.stash[RUN_KEY] = ctx
    plugin = AcceptancePlugin(config, ctx)
    config.stash[PLUGIN_KEY] = plugin
    config.pluginmanager.register(plugin, "poc1-acceptance")
    config.pluginmanager.import_plugin("fixtures.plugin")
    hookspecs.install(config.pluginmanager)  # each check's report section (pytest_poc1_report_section)


class _Progress:
    """What pytest reported so far about one check (over its setup, call and teardown)."""

    def __init__(self) -> None:
        self.outcome: str | None = None
        self.cause: str | None = None
        self.duration = 0.0

    def fail(self, outcome: str, cause: str) -> None:
        if self.outcome not in ("failed", "error"):  # the first failure explains the others
            self.outcome, self.cause = outcome, cause


class AcceptancePlugin:
    def __init__(self, config: pytest.Config, ctx: RunContext) -> None:
        self.config = config
        self.ctx = ctx
        self.manifest: dict[str, Any] | None = None
        self.manifest_path: Path | None = None
        self._progress: dict[str, _Progress] = {}
        self._t0 = time.monotonic()

    # -- collection ------------------------------------------------------------------------------------
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """A fleet (several gateway hosts): each check about a gateway runs once per gateway host (test id =
        the host's name); check 6 only on the one gateway ``overhead_gateway`` names (acceptance/fleet.py)."""
        target = self.ctx.target
        if not target.fleet or "gateway" not in metafunc.fixturenames:
            return
        marker = metafunc.definition.get_closest_marker("check")
        cid = str(marker.args[0]) if marker and marker.args else None
        names = fleet.gateways_of(cid, target)
        metafunc.parametrize("gateway", names, ids=names)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            cid = check_id(item)
            if cid is not None and cid not in registry.BY_ID:
                raise pytest.UsageError(f"{item.nodeid}: unknown check id {cid!r} "
                                        f"(registry: {', '.join(registry.BY_ID)})")
        gateways = {g.name: i for i, g in enumerate(self.ctx.target.gateways)}

        def order(it: pytest.Item) -> tuple[int, int]:
            params = getattr(it, "callspec", None)
            host = params.params.get("gateway") if params is not None else None
            return (registry.RUN_ORDER.get(check_id(it) or "", len(registry.RUN_ORDER)), gateways.get(host, 0))

        items.sort(key=order)  # check by check, each over the gateway hosts (check 1 last on every host)

    def pytest_report_header(self) -> list[str]:
        t = self.ctx.target
        hosts = ", ".join(f"{h.name} {h.address}" for h in (*t.gateways, t.db))
        return [f"POC-1 acceptance: target {t.group} from {t.inventory} ({hosts}); "
                f"evidence: {self.ctx.evidence_dir}"]

    # -- outcome of each check -------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]):
        report = yield
        cid = check_id(item)
        if cid is None:
            return report
        progress = self._progress.setdefault(item.nodeid, _Progress())
        progress.duration += call.duration
        redact = self.ctx.redactor.text
        if report.failed:
            exc = call.excinfo.value if call.excinfo else None
            if isinstance(exc, CheckFailure):
                cause = one_line(redact(str(exc)), CAUSE_LIMIT)
                report.longrepr = f"[{cid}] {cause}"
            else:
                cause = one_line(redact(first_line(exc) if exc else "failed"), CAUSE_LIMIT)
                report.longrepr = redact(str(report.longrepr))
            progress.fail("failed" if report.when == "call" else "error", cause)
        elif report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            if progress.outcome is None:
                progress.outcome, progress.cause = "skipped", one_line(redact(str(reason)))
        elif report.when == "call" and progress.outcome is None:
            progress.outcome = "passed"
        report.sections = [(k, redact(v)) for k, v in report.sections]
        if report.when == "teardown":
            params = getattr(item, "callspec", None)
            gateway = params.params.get("gateway") if params is not None else None
            host = fleet.part_host(cid, self.ctx.target, str(gateway)) if gateway else None
            self._finish(cid, progress, host)
        return report

    def _finish(self, cid: str, progress: _Progress, host: str | None = None) -> None:
        """Write the check's artifacts (with its outcome) and fold this test's outcome into its result; in a
        fleet run, this test is one gateway host's part (fleet.fold)."""
        outcome = progress.outcome or "error"
        cause = progress.cause if outcome != "passed" else None
        spec = registry.BY_ID[cid]
        evidence = self.ctx.evidence_for(cid, spec.title, host)
        for name in spec.artifacts:
            kind = artifact_kind(name)
            if evidence.artifact_name(name) not in evidence.documents and kind != "binary":  # a picture
                # cannot say why it is absent
                doc = evidence.json(name) if kind == "json" else evidence.text(name)
                note = f"check {cid} ended before writing this artifact"
                if kind == "json":
                    doc["note"] = note
                else:
                    doc.add(note)
        written: list[str] = []
        for doc in evidence.documents.values():
            try:
                self.ctx.bundle.write_document(doc, outcome, cause)
                written.append(doc.name)
            except (SecretLeak, OSError, ValueError) as exc:
                outcome, cause = "error", one_line(f"evidence {doc.name}: {first_line(exc)}")
        if evidence.outcome is None or SEVERITY[outcome] > SEVERITY[evidence.outcome]:
            evidence.outcome, evidence.cause = outcome, cause
        order = list(evidence.documents).index
        evidence.artifacts = sorted(set(evidence.artifacts) | set(written), key=order)
        evidence.duration_s += progress.duration
        if host is not None:
            evidence = fleet.fold(self.ctx.evidence_for(cid, spec.title), evidence, SEVERITY, CAUSE_LIMIT)
        for name in evidence.artifacts:  # the artifact records carry their check's final outcome
            if name in self.ctx.bundle.records:
                self.ctx.bundle.records[name].outcome = evidence.outcome

    @property
    def results(self) -> list[CheckResult]:
        """The results of the checks that ran, in the registry's order."""
        done = [r for r in self.ctx.evidence.values() if r.outcome is not None]
        return sorted(done, key=lambda r: registry.ORDER[r.id])

    # -- end of run ------------------------------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.config.option.collectonly:
            self.ctx.close()
            return
        try:
            t0 = time.monotonic()
            lock = versions.collect(self.ctx)
            versions_s = time.monotonic() - t0
            self.manifest = build_manifest(
                run_id=self.ctx.run_id, started=self.ctx.started,
                finished=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                target=self.ctx.target.group,
                hosts={h.name: h.address for h in (*self.ctx.target.gateways, self.ctx.target.db)},
                checks=self.results, required=[c.id for c in registry.CHECKS], missing=[],
                artifacts=sorted(self.ctx.bundle.records.values(),
                                 key=lambda a: (registry.ORDER.get(a.check, 99), a.path)),
                versions=lock,
                extra={"inventory": str(self.ctx.target.inventory),
                       "timings": {"wall_s": round(time.monotonic() - self._t0, 3),
                                   "versions_s": round(versions_s, 3)}},
            )
            self.manifest_path = self.ctx.bundle.write_manifest(self.manifest)
        finally:
            self.ctx.close()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        tr.section("POC-1 acceptance")
        for rec in self.results:
            line = f"{rec.outcome.upper():7} {rec.id:19} {rec.duration_s:6.2f}s"
            tr.write_line(line + (f"  {rec.cause}" if rec.cause else ""))
        if self.manifest is not None:
            missing = self.manifest["missing_checks"]
            tr.write_line(f"verdict: {self.manifest['verdict']} ({self.manifest['verdict_basis']})"
                          + (f"; missing checks: {', '.join(missing)}" if missing else ""))
            tr.write_line(f"evidence: {self.manifest_path}")
