"""The lab's private segment: bridge br-poc1 (10.231.0.1/24, the runner's side) that systemd-nspawn plugs
each container's veth into. Nothing is routed beyond it: the hosts have no default route."""
from __future__ import annotations

from pathlib import Path

from lab import layout
from lab.layout import Host
from lab.shell import run


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def create_bridge() -> None:
    run(["ip", "link", "add", layout.BRIDGE, "type", "bridge"], what=f"creating bridge {layout.BRIDGE}")
    run(["ip", "addr", "add", f"{layout.RUNNER_IP}/{layout.PREFIX_LEN}", "dev", layout.BRIDGE],
        what=f"addressing bridge {layout.BRIDGE}")
    run(["ip", "link", "set", layout.BRIDGE, "up"], what=f"bringing bridge {layout.BRIDGE} up")


def remove() -> list[str]:
    """Delete the veths and the bridge (leftovers of a killed run too); returns links still present."""
    for host in layout.ALL_HOSTS:
        if link_exists(host.veth):
            run(["ip", "link", "del", host.veth], what=f"deleting {host.veth}", check=False)
    if link_exists(layout.BRIDGE):
        run(["ip", "link", "del", layout.BRIDGE], what=f"deleting bridge {layout.BRIDGE}", check=False)
    return [n for n in (layout.BRIDGE, *(h.veth for h in layout.ALL_HOSTS)) if link_exists(n)]


def set_link(host: Host, up: bool) -> None:
    """Cut (or restore) a host's only network link, on the runner's side: a network partition."""
    run(["ip", "link", "set", host.veth, "up" if up else "down"], what=f"{host.name}: setting {host.veth}")


def host0_network_file(host: Host) -> str:
    """systemd-networkd config for the container side; sorts before the rootfs's 80-container-host0."""
    return (f"[Match]\nName=host0\n\n[Network]\nAddress={host.ip}/{layout.PREFIX_LEN}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\nLLDP=no\n")
