"""Per-lab secrets: generated at lab-up, kept only in a root-only file outside git, handed to the suite by
the environment-variable names of docs/ARCHITECTURE.md."""
from __future__ import annotations

import os
import secrets as _random

from lab import layout


def generate() -> dict[str, str]:
    values = {
        layout.MASTER_KEY_ENV: "sk-" + _random.token_urlsafe(32),
        layout.DB_PASSWORD_ENV: _random.token_urlsafe(24),
        layout.DB_READER_PASSWORD_ENV: _random.token_urlsafe(24),
        layout.UPSTREAM_API_KEY_ENV: "sk-upstream-" + _random.token_hex(16),
    }
    layout.STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_env_file(layout.SECRETS_FILE, values)
    return values


def write_env_file(path: os.PathLike[str] | str, values: dict[str, str]) -> None:
    """NAME=value lines, created 0600 before anything is written into it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.writelines(f"{k}={v}\n" for k, v in values.items())


def load() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in layout.SECRETS_FILE.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            values[k.strip()] = v.strip()
    return values


def scrub(text: str, values: dict[str, str]) -> str:
    for v in values.values():
        if v:
            text = text.replace(v, "***")
    return text
