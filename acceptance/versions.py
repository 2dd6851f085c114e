"""The versions lock of a run: what exactly was signed off.

Why: the closeout pack asks to "lock versions" (LiteLLM, SQLAlchemy, psycopg2, PostgreSQL); a sign-off is
only reproducible with the code and config that actually ran on the gateway, so the hashes of
db_init.py / config.yaml / gateway_logger.py on the gateway are recorded beside the repository's.
Collected once after the checks, over the run's existing connections, each step bounded; a part that
cannot be collected is recorded as {"error": cause}, never raised.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import platform
import shlex
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import text

from fixtures.context import RunContext
from fixtures.errors import CheckFailure, Unavailable, first_line, one_line

ROOT = Path(__file__).resolve().parents[1]
REPO_FILES = ("db_init.py", "config.yaml", "gateway_logger.py")

#: runs on the gateway with the gateway's own interpreter; argv = name=path pairs to hash
_GATEWAY_PROBE = r"""
import hashlib, importlib.metadata as md, json, platform, sys
def v(*names):
    for n in names:
        try:
            return md.version(n)
        except Exception:
            pass
    return None
def sha(p):
    try:
        with open(p, 'rb') as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        return 'unreadable: ' + (e.strerror or str(e))
osr = {}
try:
    for line in open('/etc/os-release'):
        k, _, val = line.strip().partition('=')
        osr[k] = val.strip('"')
except OSError:
    pass
files = dict(a.split('=', 1) for a in sys.argv[1:])
print(json.dumps({'os': osr.get('PRETTY_NAME'), 'python': platform.python_version(),
                  'litellm': v('litellm'), 'sqlalchemy': v('SQLAlchemy', 'sqlalchemy'),
                  'psycopg2': v('psycopg2-binary', 'psycopg2'),
                  'files': {k: sha(p) for k, p in files.items()}}))
"""


def os_pretty_name(os_release: str) -> str | None:
    for line in os_release.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "PRETTY_NAME":
            return value.strip().strip('"')
    return None


def sha256_of(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


def _pkg(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def git_commit(root: Path = ROOT) -> dict[str, Any]:
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip() != ""
        return {"commit": head, "dirty": dirty}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": one_line(first_line(exc))}


def runner_versions() -> dict[str, Any]:
    try:
        osname = os_pretty_name(Path("/etc/os-release").read_text())
    except OSError:
        osname = None
    return {"os": osname, "python": platform.python_version(),
            "packages": {n: _pkg(n) for n in ("pytest", "paramiko", "SQLAlchemy", "psycopg2-binary", "httpx",
                                              "PyYAML", "pytest-html")}}


def gateway_versions(ctx: RunContext) -> dict[str, Any]:
    v = ctx.target.vars
    files = {
        "db_init.py": f"{v['gateway_app_dir'].rstrip('/')}/db_init.py",
        "gateway_logger.py": f"{v['gateway_app_dir'].rstrip('/')}/gateway_logger.py",
        "config.yaml": str(v["gateway_config_path"]),
    }
    args = " ".join(shlex.quote(f"{k}={p}") for k, p in files.items())
    cmd = f"{shlex.quote(str(v['gateway_python']))} -c {shlex.quote(_GATEWAY_PROBE)} {args}"
    try:
        res = ctx.hosts.gateway.run(cmd)
    except CheckFailure as exc:
        return {"error": str(exc)}
    if res.rc != 0:
        return {"error": one_line(f"{v['gateway_python']} exited {res.rc}: {res.stderr.strip()}")}
    try:
        out = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "unreadable answer from the gateway's python"}
    out["paths"] = files
    return out


def db_versions(ctx: RunContext) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        res = ctx.hosts.db.run("cat /etc/os-release")
        out["os"] = os_pretty_name(res.stdout) if res.ok else None
    except CheckFailure as exc:
        out["os"] = {"error": str(exc)}
    try:
        with ctx.db.read("server version") as conn:
            out["postgresql"] = conn.execute(text("SHOW server_version")).scalar_one()
            out["postgresql_full"] = conn.execute(text("SELECT version()")).scalar_one()
    except (CheckFailure, Unavailable) as exc:
        out["postgresql"] = {"error": str(exc)}
    return out


def collect(ctx: RunContext) -> dict[str, Any]:
    gateway = gateway_versions(ctx)
    repo_files = {name: sha256_of(ROOT / name) for name in REPO_FILES}
    gw_files = gateway.get("files", {}) if isinstance(gateway.get("files"), dict) else {}
    return {
        "suite": {**git_commit(), "files": repo_files},
        "runner": runner_versions(),
        "gateway": gateway,
        "db": db_versions(ctx),
        "files_match": {name: (gw_files.get(name) == repo_files[name]) if name in gw_files else None
                        for name in REPO_FILES},
    }
