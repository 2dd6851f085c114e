"""What `up` needs from the runner, checked (and installed) before anything is built."""
from __future__ import annotations

import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from lab import layout
from lab.errors import LabError
from lab.shell import run

#: runner command -> Debian package that provides it
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "ip": "iproute2",
    "nsenter": "util-linux",
    "ssh-keygen": "openssh-client",
    "openssl": "openssl",  # the lab's CA for the database link (lab/tls.py)
}
GIB = 1024 ** 3


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (namespaces, bridge, mounts): run it as root")


def install_missing_tools() -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    print(f"lab: installing {' '.join(missing)} on the runner", flush=True)
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    run(["apt-get", "update", "-q"], what="apt-get update on the runner", timeout=300, check=False, env=env)
    run(["apt-get", "install", "-y", "-q", *missing], what="apt-get install on the runner", timeout=600, env=env)


def require_disk(cold: bool) -> None:
    """Cold: the cache takes ~2 GB (rootfs, .debs, wheels). Warm: overlays take a few hundred MB."""
    need = 4 * GIB if cold else 1 * GIB
    for path in (layout.CACHE_DIR, layout.STATE_DIR):
        probe = path
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if free < need:
            raise LabError(f"not enough disk: {probe} has {free / GIB:.1f} GB free, the lab needs "
                           f"{need / GIB:.0f} GB")


def debian_mirror() -> str:
    """The runner's own Debian mirror (the one its apt uses), else deb.debian.org."""
    texts = []
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if f.is_file():
            texts.append(f.read_text(errors="replace"))
    text = "\n".join(texts)
    for uri in re.findall(r"^\s*(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+)", text, re.M):
        if re.search(r"/debian/?$", uri):
            return uri.rstrip("/")
    return layout.DEFAULT_MIRROR


def require_mirror(mirror: str) -> None:
    for suite in sorted({layout.GATEWAY_BASE.suite, layout.DB_BASE.suite}):
        _require_release(mirror, suite)


def _require_release(mirror: str, suite: str) -> None:
    url = f"{mirror}/dists/{suite}/Release"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15) as resp:
            resp.read(0)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LabError(f"Debian mirror unreachable ({url}): {reason}") from None
