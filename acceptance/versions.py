"""The versions lock of a run: what exactly was signed off.

Why: the closeout pack asks to "lock versions" (LiteLLM, SQLAlchemy, psycopg2, PostgreSQL); a sign-off is
only reproducible with the code and config that actually ran on the gateway, so the hashes of
db_init.py / config.yaml / the gateway_logger package on the gateway (every file, and the logger's
code_sha256) are recorded beside the repository's.
Collected once after the checks, over the run's existing connections, each step bounded; a part that
cannot be collected is recorded as {"error": cause}, never raised.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import platform
import re
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import text

from fixtures.context import Hosts, RunContext
from fixtures.inventory import Target
from fixtures.errors import CheckFailure, Unavailable, first_line, one_line

ROOT = Path(__file__).resolve().parents[1]
SCHEMA, CONFIG, LOGGER = "db_init.py", "config.yaml", "gateway_logger/"


def logger_files(root: Path = ROOT) -> list[str]:
    """The logger package's files as the signature names them: ``gateway_logger/<name>.py``, every
    ``*.py`` file directly in the package directory, sorted by path (gateway_logger/identity.py's rule)."""
    return sorted(LOGGER + p.name for p in (root / LOGGER).glob("*.py") if p.is_file())


def signed_files(root: Path = ROOT) -> tuple[str, ...]:
    """Every file the suite's commit signs for the gateway, in the order they are shown."""
    return (SCHEMA, CONFIG, *logger_files(root))


REPO_FILES = signed_files()
_HEX64 = re.compile(r"[0-9a-f]{64}")


def code_sha256(files: Mapping[str, str]) -> str | None:
    """The logger's ``code_sha256`` (what its ``build_info`` metric and start line say) from the digests of
    ``files`` (name -> sha256; config.yaml is not part of it): sha256 of what ``sha256sum`` prints for the
    package's files sorted by path, then db_init.py. None when a file of it is missing or unreadable."""
    package = sorted(n for n in files if n.startswith(LOGGER) and n != LOGGER)
    names = [*package, SCHEMA]
    if not package or LOGGER in files or any(not _HEX64.fullmatch(str(files.get(n))) for n in names):
        return None
    return hashlib.sha256("".join(f"{files[n]}  {n}\n" for n in names).encode()).hexdigest()

#: runs on the gateway with the gateway's own interpreter; argv = name=path pairs to hash
_GATEWAY_PROBE = r"""
import hashlib, importlib.metadata as md, json, os, platform, sys
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
files = {}
for arg in sys.argv[1:]:
    name, path = arg.split('=', 1)
    if not name.endswith('/'):
        files[name] = sha(path)
        continue
    try:  # a directory: every *.py file directly in it, as name + file name
        found = sorted(n for n in os.listdir(path)
                       if n.endswith('.py') and os.path.isfile(os.path.join(path, n)))
    except OSError as e:
        files[name] = 'unreadable: ' + (e.strerror or str(e))
        continue
    files.update({name + n: sha(os.path.join(path, n)) for n in found})
print(json.dumps({'os': osr.get('PRETTY_NAME'), 'python': platform.python_version(),
                  'litellm': v('litellm'), 'sqlalchemy': v('SQLAlchemy', 'sqlalchemy'),
                  'psycopg2': v('psycopg2-binary', 'psycopg2'), 'files': files}))
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


def gateway_path(vars_: Mapping[str, Any], name: str) -> str:
    """Where a signed file (``db_init.py``, ``config.yaml``, ``gateway_logger/...``) is on the gateway."""
    if name == CONFIG:
        return str(vars_["gateway_config_path"])
    return f"{str(vars_['gateway_app_dir']).rstrip('/')}/{name}"


def repo_files(root: Path = ROOT) -> dict[str, str]:
    """name -> sha256 of every signed file in the repository."""
    return {name: sha256_of(root / name) for name in signed_files(root)}


def differences(repo: Mapping[str, str], gateway: Mapping[str, str]) -> list[tuple[str, str]]:
    """The signed files that differ, as (name, what) in the order of ``signed_files``: changed
    (``sha256 <12 hex>, the repository's <12 hex>``), unreadable, missing on the gateway, or on the gateway
    but not in the repository (a module the repository does not have is code it does not sign)."""
    out: list[tuple[str, str]] = []
    unreadable_dirs = [n for n in gateway if n.endswith("/") and str(gateway[n]).startswith("unreadable")]
    extra = sorted(n for n in gateway if n not in repo)
    for name in [*repo, *extra]:
        have, want = gateway.get(name), repo.get(name)
        if have == want:
            continue
        if have is not None and str(have).startswith("unreadable"):
            out.append((name, str(have)))
        elif have is None:
            if not any(name.startswith(d) for d in unreadable_dirs):
                out.append((name, "missing on the gateway"))
        elif want is None:
            out.append((name, f"sha256 {str(have)[:12]}, not in the repository"))
        else:
            out.append((name, f"sha256 {str(have)[:12]}, the repository's {str(want)[:12]}"))
    return out


def files_match(repo: Mapping[str, str], gateway: Mapping[str, str]) -> dict[str, bool | None]:
    """db_init.py, config.yaml and the logger package (``gateway_logger/``: every file the same, none
    missing, none added) equal to the repository's; None: not read on the gateway."""
    if not gateway:
        return {SCHEMA: None, CONFIG: None, LOGGER: None}
    differ = {name for name, _ in differences(repo, gateway)}
    return {SCHEMA: SCHEMA not in differ, CONFIG: CONFIG not in differ,
            LOGGER: not any(n.startswith(LOGGER) for n in differ)}


def gateway_versions(target: Target, hosts: Hosts) -> dict[str, Any]:
    """What the target's gateway host runs: its python's packages, the deployed files (``RunContext.view``
    gives each gateway host of a fleet its target and hosts)."""
    v = target.vars
    files = {SCHEMA: gateway_path(v, SCHEMA), LOGGER: gateway_path(v, LOGGER).rstrip("/"),
             CONFIG: gateway_path(v, CONFIG)}
    args = " ".join(shlex.quote(f"{k}={p}") for k, p in files.items())
    cmd = f"{shlex.quote(str(v['gateway_python']))} -c {shlex.quote(_GATEWAY_PROBE)} {args}"
    try:
        res = hosts.gateway.run(cmd)
    except CheckFailure as exc:
        return {"error": str(exc)}
    if res.rc != 0:
        return {"error": one_line(f"{v['gateway_python']} exited {res.rc}: {res.stderr.strip()}")}
    try:
        out = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "unreadable answer from the gateway's python"}
    out["files"] = found = dict(out.get("files") or {})
    out["paths"] = {name: gateway_path(v, name) for name in {*found, *REPO_FILES}}
    out["code_sha256"] = code_sha256(found)
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
    gateway = gateway_versions(*ctx.view(ctx.gateway_names[0]))
    repo = repo_files()
    gw_files = gateway.get("files", {}) if isinstance(gateway.get("files"), dict) else {}
    lock = {
        "suite": {**git_commit(), "files": repo, "code_sha256": code_sha256(repo)},
        "runner": runner_versions(),
        "gateway": gateway,
        "db": db_versions(ctx),
        "files_match": files_match(repo, gw_files),
    }
    if ctx.target.fleet:  # the other gateway hosts of a fleet, by inventory name ("gateway" is the first)
        lock["other_gateways"] = {name: gateway_versions(*ctx.view(name)) for name in ctx.gateway_names[1:]}
    return lock
