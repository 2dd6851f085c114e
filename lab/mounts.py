"""Finding and removing mounts the lab (or a killed run of it) left under its directories."""
from __future__ import annotations

import subprocess
from pathlib import Path


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def under(*roots: Path) -> list[str]:
    """Mount points at or below any of ``roots``, deepest first (from /proc/self/mountinfo)."""
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            for root in roots:
                r = str(root)
                if point == r or point.startswith(r.rstrip("/") + "/"):
                    found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all(*roots: Path) -> list[str]:
    """Unmount everything below ``roots`` (lazily if busy); returns what is still mounted."""
    for _ in range(3):
        points = under(*roots)
        if not points:
            return []
        for point in points:
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
    return under(*roots)
