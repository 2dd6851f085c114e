"""What /proc says of a process or one of its threads (the benchmarks' CPU and memory figures)."""
from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(stat: str | Path) -> float:
    """CPU seconds (user + system) from a ``/proc/<pid>/stat`` or ``/proc/<pid>/task/<tid>/stat`` file."""
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> dict[str, float]:
    """Resident set size now and at its peak (VmRSS, VmHWM), MiB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: round(int(status[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}
