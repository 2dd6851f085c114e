"""A fleet: several gateway hosts behind one database (acceptance/fleet.py, lab/fleet.py) — without a lab.

The inventory forms of a fleet (per-host URLs, shared URLs refused, the lab's fleet file read after
hosts.yml), how one check's per-host parts fold into its one result, and the report's row per host.
Nothing here dials a host (the lab test that runs a fleet is in tests/test_lab_fleet.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from acceptance import fleet, registry
from acceptance.plugin import SEVERITY
from evidence_writers import report
from evidence_writers.result import CheckResult, host_artifact
from fixtures.inventory import InventoryError, load_target
from lab import fleet as lab_fleet
from lab import layout
from tests.support.acceptance_run import ROOT

ENV = {"T_INV_MASTER": "master-value-123456", "T_INV_READER": "reader-value-123456"}
LAB_ENV = {"POC1_LAB_MASTER_KEY": "sk-lab-master-not-real-0001", "POC1_LAB_DB_READER_PASSWORD": "reader-not-real"}


def fleet_inventory(tmp_path: Path, urls: dict[str, str], **group_vars: object) -> Path:
    key = tmp_path / "key"
    key.write_text("not a real key")
    hosts = {name: {"ansible_host": f"127.0.0.{30 + i}", "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(key), **({"gateway_url": url} if url else {})}
             for i, (name, url) in enumerate(urls.items())}
    vars_ = {"gateway_service": "litellm-gateway", "db_name": "litellm_db", "db_user": "litellm_user",
             "db_reader_user": "poc1_reader", "known_hosts_file": str(tmp_path / "kh"),
             "master_key_env": "T_INV_MASTER", "db_reader_password_env": "T_INV_READER", **group_vars}
    data = {"all": {"children": {"edge": {"vars": vars_, "children": {
        "gateway": {"hosts": hosts},
        "db": {"hosts": {"pg": {"ansible_host": "127.0.0.40", "ansible_user": "root",
                                "ansible_ssh_private_key_file": str(key)}}}}}}}}
    path = tmp_path / "fleet.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_each_gateway_host_has_its_own_urls(tmp_path: Path) -> None:
    inv = fleet_inventory(tmp_path, {"gw-a": "http://127.0.0.30:4000", "gw-b": "http://127.0.0.31:4000"},
                          gateway_control_url=None)
    t = load_target(inv, "edge", environ=ENV)
    assert t.fleet and [g.name for g in t.gateways] == ["gw-a", "gw-b"]
    b = t.for_gateway("gw-b")
    assert (b.gateway.name, b.gateway.address, b.vars["gateway_url"]) == ("gw-b", "127.0.0.31",
                                                                         "http://127.0.0.31:4000")
    assert b.gateway_db_client_address == "127.0.0.31"  # the sessions checks 2 and 7 look for are gw-b's
    assert t.for_gateway("gw-a").vars["gateway_url"] == "http://127.0.0.30:4000"
    assert t.overhead_gateway == "gw-a"  # check 6 on the first unless the group names one


def test_gateway_hosts_sharing_a_url_are_refused_naming_the_host(tmp_path: Path) -> None:
    """A load balancer's URL as the group's gateway_url: each host's checks would be answered by any host."""
    inv = fleet_inventory(tmp_path, {"gw-a": "", "gw-b": ""}, gateway_url="http://127.0.0.50:4000")
    with pytest.raises(InventoryError) as err:
        load_target(inv, "edge", environ=ENV)
    msg = str(err.value)
    assert "hosts.gw-b.gateway_url" in msg and "gw-a" in msg and "\n" not in msg


def test_overhead_gateway_must_be_a_gateway_host(tmp_path: Path) -> None:
    urls = {"gw-a": "http://127.0.0.30:4000", "gw-b": "http://127.0.0.31:4000"}
    assert load_target(fleet_inventory(tmp_path, urls, overhead_gateway="gw-b"), "edge",
                       environ=ENV).overhead_gateway == "gw-b"
    with pytest.raises(InventoryError, match="overhead_gateway.*'gw-z' is not a gateway host"):
        load_target(fleet_inventory(tmp_path, urls, overhead_gateway="gw-z"), "edge", environ=ENV)


def test_the_labs_fleet_file_adds_its_gateways_to_group_local(tmp_path: Path) -> None:
    """What `lab up` with POC1_LAB_GATEWAYS=3 writes, read after hosts.yml as the suite reads it."""
    extra = tmp_path / "fleet-hosts.yml"
    extra.write_text(yaml.safe_dump(lab_fleet.suite_inventory(layout.ALL_GATEWAYS[:3])))
    t = load_target(ROOT / "hosts.yml", "local", environ=LAB_ENV, extra_sources=(extra,))
    assert [(g.name, g.address) for g in t.gateways] == [
        ("gateway", "10.231.0.18"), ("gateway-2", "10.231.0.20"), ("gateway-3", "10.231.0.21")]
    assert [t.for_gateway(g.name).vars["gateway_url"] for g in t.gateways] == [g.url for g in layout.ALL_GATEWAYS[:3]]
    assert [t.for_gateway(g.name).vars["gateway_control_url"] for g in t.gateways] == [
        f"http://{g.ip}:4001" for g in layout.ALL_GATEWAYS[:3]]
    assert t.db.address == "10.231.0.19"
    # the same file never touches the real lab's group
    lab = load_target(ROOT / "hosts.yml", "lab", environ={"LITELLM_MASTER_KEY": "x", "POC1_DB_READER_PASSWORD": "y"},
                      extra_sources=(extra,))
    assert [g.address for g in lab.gateways] == ["192.168.10.18"]


def test_playbook_fleet_file_adds_gateways_to_poc1_gateway() -> None:
    data = lab_fleet.playbook_inventory(layout.ALL_GATEWAYS[:2])
    assert data["all"]["children"]["poc1_gateway"]["hosts"] == {"lab-gateway-2": {"ansible_host": "10.231.0.20"}}


def test_machine_names_fit_nspawns_veth_names() -> None:
    """vb-MACHINE is cut at 15 characters: two hosts' veths must not collide."""
    veths = [h.veth for h in layout.ALL_HOSTS]
    assert len(set(veths)) == len(veths) and all(len(v) <= 15 for v in veths)


def _part(cid: str, host: str, outcome: str, cause: str | None = None) -> CheckResult:
    part = CheckResult(cid, registry.BY_ID[cid].title, outcome=outcome, cause=cause, host=host,
                       artifacts=[host_artifact("service_status.txt", host)], duration_s=0.5)
    part.details["active_state"] = "active" if outcome == "passed" else "inactive"
    return part


def test_one_failing_host_fails_the_check_and_names_the_host() -> None:
    whole = CheckResult("service_status", registry.BY_ID["service_status"].title)
    fleet.fold(whole, _part("service_status", "gw-a", "passed"), SEVERITY, 500)
    assert whole.outcome == "passed" and whole.cause is None
    fleet.fold(whole, _part("service_status", "gw-b", "failed", "litellm-gateway is inactive (dead)"),
               SEVERITY, 500)
    assert whole.outcome == "failed" and whole.cause == "gw-b: litellm-gateway is inactive (dead)"
    assert whole.artifacts == ["service_status.gw-a.txt", "service_status.gw-b.txt"]
    assert list(whole.details["hosts"]) == ["gw-a", "gw-b"] and whole.duration_s == 1.0
    assert whole.details["hosts"]["gw-b"]["details"] == {"active_state": "inactive"}


def test_the_report_shows_a_row_per_host(tmp_path: Path) -> None:
    whole = CheckResult("service_status", registry.BY_ID["service_status"].title)
    for host, outcome in (("gw-a", "passed"), ("gw-b", "failed")):
        fleet.fold(whole, _part("service_status", host, outcome, None if outcome == "passed" else "dead"),
                   SEVERITY, 500)
    html = report.summary_html([CheckResult.from_dict(whole.as_dict())], tmp_path, tmp_path)
    assert 'data-host="gw-a"' in html and 'data-host="gw-b"' in html
    row_b = html.split('data-host="gw-b"', 1)[1].split("</tr>", 1)[0]
    assert "FAIL" in row_b and "dead" in row_b and "service_status.gw-b.txt" in row_b


def test_check_6_runs_on_one_named_gateway_the_others_on_each(tmp_path: Path) -> None:
    urls = {"gw-a": "http://127.0.0.30:4000", "gw-b": "http://127.0.0.31:4000"}
    t = load_target(fleet_inventory(tmp_path, urls, overhead_gateway="gw-b"), "edge", environ=ENV)
    assert fleet.gateways_of("overhead", t) == ["gw-b"]
    assert all(fleet.gateways_of(c.id, t) == ["gw-a", "gw-b"] for c in registry.CHECKS if c.id != "overhead")
    assert fleet.part_host("overhead", t, "gw-b") is None and fleet.part_host("db_rows", t, "gw-b") == "gw-b"


def test_host_artifact_names_stay_plain_file_names() -> None:
    assert host_artifact("chat_call.json", "gateway-2") == "chat_call.gateway-2.json"
    assert host_artifact("x", "a/b c") == "x.a_b_c"
