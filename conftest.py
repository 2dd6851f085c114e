"""Root conftest: the acceptance suite's options, and its plugin for runs that collect acceptance/.

    pytest --hosts=local                  # the acceptance checks against the embedded lab (default group)
    pytest tests                          # the project's own tests (no evidence is touched)
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never let LiteLLM fetch its cost map from the internet, in any process this suite starts.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parent
pytest_plugins = ("acceptance.overhead_options", "evidence_writers.report")  # check 6 options; report.html


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("poc1", "POC-1 acceptance suite")
    group.addoption("--hosts", default="local", metavar="GROUP",
                    help="inventory group to sign off (default: local, the embedded lab)")
    group.addoption("--inventory", default=str(ROOT / "hosts.yml"), metavar="PATH",
                    help="Ansible-compatible YAML inventory (default: hosts.yml at the repository root)")
    group.addoption("--extra-inventory", action="append", default=[], metavar="PATH",
                    help="another inventory read after --inventory, groups merged (as ansible -i A -i B); "
                         "for --hosts=local with the default inventory, the embedded lab's fleet file "
                         "(lab/fleet.py) when the lab has several gateways")
    group.addoption("--evidence-dir", default=str(ROOT / "POC-1" / "evidence"), metavar="DIR",
                    help="where the artifacts and manifest.json go; emptied at the start (default: POC-1/evidence)")
    group.addoption("--unit-state", default=None, metavar="PATH",
                    help="where check 1 keeps the gateway unit's start between runs, to fail a restart since "
                         "the previous run (default: unit-state-GROUP.json beside the evidence dir)")
    group.addoption("--ssh-accept-new", action="store_true", default=False,
                    help="trust an unknown SSH host key on first use and add it to known_hosts "
                         "(a changed key is always refused)")


def pytest_configure(config: pytest.Config) -> None:
    from acceptance import plugin

    plugin.configure(config)
