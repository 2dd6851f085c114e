"""One cgroup per container (lab-notes: on this hybrid-cgroup machine two containers started from one
parent cgroup share init.scope and ssh.service and break each other)."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from lab import layout


def dirs(name: str) -> list[Path]:
    """Cgroup ``name`` in each hierarchy: hybrid (name=systemd + unified) here, else the plain v2 tree."""
    roots = [root for root in layout.CGROUP_ROOTS if root.is_dir()]
    if not roots and Path("/sys/fs/cgroup/cgroup.controllers").exists():
        roots = [Path("/sys/fs/cgroup")]
    return [root / name for root in roots]


def enter_prefix(name: str) -> str:
    """Shell text that moves the shell into cgroup ``name`` (every hierarchy) before it execs."""
    steps = []
    for d in dirs(name):
        q = shlex.quote(str(d))
        steps.append(f"mkdir -p {q} && echo $$ > {q}/cgroup.procs")
    return " && ".join(steps) if steps else "true"


def pids(name: str) -> set[int]:
    """Every process still inside cgroup ``name`` (any depth, any hierarchy)."""
    found: set[int] = set()
    for d in dirs(name):
        for here, _, files in os.walk(d):  # os.walk skips directories that vanish meanwhile
            if "cgroup.procs" in files:
                try:
                    found.update(int(p) for p in Path(here, "cgroup.procs").read_text().split())
                except OSError:
                    pass
    return found


def remove(name: str) -> list[str]:
    """rmdir the cgroup trees depth first; returns what could not be removed."""
    left: list[str] = []
    for d in dirs(name):
        if not d.exists():
            continue
        for here, _, _ in sorted(os.walk(d), key=lambda w: w[0].count("/"), reverse=True):
            try:
                os.rmdir(here)
            except OSError:
                pass
        if d.exists():
            left.append(f"{d} (still has processes)")
    return left
