"""The acceptance suite's own pytest hooks (``install``: by the acceptance plugin and the report plugin).

``pytest_poc1_report_section``: each check may contribute its part of the sign-off report from its own
module (``@pytest.hookimpl def pytest_poc1_report_section(result, bundle)``); the check modules are
registered as plugins for it (``register_checks``), so evidence_writers/report.py imports no check.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from evidence_writers.result import CheckResult
    from evidence_writers.sections import ReportSection

hookspec = pluggy.HookspecMarker("pytest")
PREFIX = "pytest_poc1_"


@hookspec
def pytest_poc1_report_section(result: "CheckResult", bundle: Path) -> "ReportSection | None":
    """The report section of the check ``result`` is about (None: not this implementation's check).

    Called once per check the run had to pass (``result.outcome`` None: it did not run), in the
    registry's order; ``bundle`` is the evidence directory its artifacts are in.
    """


def install(pluginmanager: pluggy.PluginManager) -> None:
    """These hooks, and every check module implementing one, on ``pluginmanager`` (idempotent)."""
    caller = getattr(pluginmanager.hook, "pytest_poc1_report_section", None)
    if caller is None or caller.spec is None:
        pluginmanager.add_hookspecs(sys.modules[__name__])
    register_checks(pluginmanager)


def register_checks(pluginmanager: pluggy.PluginManager) -> None:
    """Register every check module that implements one of these hooks (once)."""
    from acceptance import registry

    for cid, module in registry.MODULES.items():
        if any(name.startswith(PREFIX) for name in vars(module)) and not pluginmanager.is_registered(module):
            pluginmanager.register(module, f"poc1-check-{cid}")


def standalone_hook() -> Any:
    """The hooks outside a pytest run (a report rendered from a bundle on disk, the tests)."""
    pm = pluggy.PluginManager("pytest")
    install(pm)
    return pm.hook
