"""Reading systemd's values: ``@epoch`` timestamps, sizes and durations as the artifacts show them.

The unit's state itself comes from ``host.service(name).show(...)`` (fixtures/host.py): ``show`` and not
the text of ``status``, because ``status`` is for humans (it goes into the artifact as such) and the
pass/fail decision is made on the machine-readable properties.
"""
from __future__ import annotations

UNSET = {"", "[not set]", "18446744073709551615", "infinity"}


def epoch(value: str | None) -> float | None:
    """``@1700000000`` → 1700000000.0; anything else → None."""
    if value and value.startswith("@"):
        try:
            return float(value[1:])
        except ValueError:
            return None
    return None


def human_bytes(value: str | int | None) -> str | None:
    if value is None or str(value) in UNSET:
        return None
    n = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return None


def human_duration(seconds: float | None) -> str | None:
    if seconds is None or seconds < 0:
        return None
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = ([f"{d}d"] if d else []) + ([f"{h}h"] if h or d else []) + [f"{m}min", f"{s}s"]
    return " ".join(parts)
