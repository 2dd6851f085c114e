"""The lab's extra gateway hosts (``make lab-up GATEWAYS=N``) as inventory files, written by ``lab up``.

Why files the lab writes and not more hosts in hosts.yml / inventories/local.yml: those are static and a
lab has 1 to 4 gateways; Ansible reads several inventories as one (``-i A -i B``: groups merge), so each
keeps describing the single-gateway lab and these add gateway-2.. to it:

- ``SUITE_FLEET_INVENTORY`` (after hosts.yml; the suite reads it for ``--hosts=local``): group ``local``'s
  gateway hosts become the members of ``local_gateways`` (``poc1_gateway_group``), each with its own URLs;
- ``PLAYBOOK_FLEET_INVENTORY`` (after inventories/local.yml): more members of ``poc1_gateway``.

A lab of one gateway has neither file (the static inventories are the whole truth).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from lab import layout

HEADER = ("# Written by `python -m lab up` (lab/fleet.py) for a lab of {n} gateway hosts; removed by "
          "`python -m lab down`.\n# Read after {after} (Ansible merges the groups of several inventories).\n")
SUITE_GROUP = "local"
SUITE_GATEWAY_GROUP = "local_gateways"
CONTROL_PORT = 4001


def suite_inventory(gateways: tuple[layout.Host, ...]) -> dict:
    hosts: dict[str, dict] = {layout.GATEWAY.name: {}}  # its variables stay hosts.yml's
    for h in gateways[1:]:
        hosts[h.name] = {
            "ansible_host": h.ip, "ansible_port": 22, "ansible_user": "root",
            "ansible_ssh_private_key_file": str(layout.SSH_KEY),
            "gateway_url": h.url, "gateway_control_url": f"http://{h.ip}:{CONTROL_PORT}",
        }
    return {"all": {"children": {SUITE_GROUP: {
        "vars": {"poc1_gateway_group": SUITE_GATEWAY_GROUP},
        "children": {SUITE_GATEWAY_GROUP: {"hosts": hosts}}}}}}


def playbook_inventory(gateways: tuple[layout.Host, ...]) -> dict:
    return {"all": {"children": {"poc1_gateway": {"hosts": {
        h.playbook_name: {"ansible_host": h.ip} for h in gateways[1:]}}}}}


def _write(path: Path, data: dict, after: str, n: int) -> None:
    path.write_text(HEADER.format(n=n, after=after) + yaml.safe_dump(data, sort_keys=False))


def write(gateways: tuple[layout.Host, ...] = layout.GATEWAYS) -> None:
    """Both files for a lab of ``gateways``; none (removed) for a single gateway."""
    if len(gateways) < 2:
        remove()
        return
    _write(layout.SUITE_FLEET_INVENTORY, suite_inventory(gateways), "hosts.yml", len(gateways))
    _write(layout.PLAYBOOK_FLEET_INVENTORY, playbook_inventory(gateways), "deploy/ansible/inventories/local.yml",
           len(gateways))


def remove() -> None:
    for path in (layout.SUITE_FLEET_INVENTORY, layout.PLAYBOOK_FLEET_INVENTORY):
        path.unlink(missing_ok=True)


def playbook_sources() -> list[Path]:
    """The inventories the playbook reads after inventories/local.yml."""
    return [layout.PLAYBOOK_FLEET_INVENTORY] if layout.PLAYBOOK_FLEET_INVENTORY.is_file() else []


def suite_sources(group: str) -> list[Path]:
    """The inventories the suite reads after hosts.yml for ``--hosts=GROUP``."""
    return [layout.SUITE_FLEET_INVENTORY] if group == SUITE_GROUP and layout.SUITE_FLEET_INVENTORY.is_file() \
        else []
