"""The host object the checks use (fixtures/host.py), against the embedded lab over real SSH: arguments are
quoted, services read through ``systemctl show``, files by digest, and a failure names the host."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures import ssh
from fixtures.errors import CheckFailure
from fixtures.host import Host
from fixtures.inventory import load_target
from fixtures.lazy import Lazy

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gateway(embedded_lab) -> Iterator[Host]:  # noqa: ANN001
    target = load_target(REPO / "hosts.yml", "local")
    spec = target.hosts["gateway"]
    session = Lazy("ssh gateway", lambda: ssh.connect(spec, target.known_hosts_file), lambda s: s.close())
    yield Host(spec, session.get)
    session.close()


def test_run_quotes_every_argument(gateway: Host) -> None:
    nasty = "it's; echo INJECTED $(id -u) `id -u` \"q\" *"
    res = gateway.run("printf '%%s\\n' %s", nasty)
    assert res.ok and res.stdout == nasty + "\n"  # printed as one argument, nothing ran


def test_service_show_and_state(gateway: Host) -> None:
    unit = gateway.service("litellm-gateway")
    props, shown = unit.show(("ActiveState", "MainPID", "ActiveEnterTimestamp"))
    assert props["ActiveState"] == "active" and int(props["MainPID"]) > 1
    assert props["ActiveEnterTimestamp"].startswith("@")  # epoch form: systemd >= 248
    assert shown.transcript().startswith("$ systemctl show litellm-gateway")
    assert unit.is_active
    assert not gateway.service("poc1-no-such-unit").is_active


def test_file_digest_matches_the_deployed_unit(gateway: Host) -> None:
    unit_file = gateway.file("/etc/systemd/system/litellm-gateway.service")
    assert unit_file.exists
    repo_unit = (REPO / "deploy/litellm-gateway.service").read_bytes()
    assert unit_file.sha256 == hashlib.sha256(repo_unit).hexdigest()
    missing = gateway.file("/nonexistent/poc1")
    assert not missing.exists and missing.sha256 is None
    with pytest.raises(CheckFailure, match=r"^gateway \(10\.231\.0\.18\): `cat /nonexistent/poc1` failed: "):
        _ = missing.content


def test_a_command_past_its_deadline_fails_naming_the_host(gateway: Host) -> None:
    with pytest.raises(CheckFailure, match=r"^ssh gateway \(10\.231\.0\.18:22\): command timed out after 1 s"
                                           r": sleep 5$"):
        gateway.run("sleep 5", timeout=1)
