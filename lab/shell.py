"""Running the runner's tools with a bound on time and a one-line cause on failure."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from lab.errors import LabError

#: the environment for tools started by the lab: no secrets of the caller leak into them
CLEAN_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TERM", "SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE",
                  "PIP_DEFAULT_TIMEOUT", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_FIND_LINKS", "PIP_INDEX_URL",
                  "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in CLEAN_ENV_KEYS if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.update(extra)
    return env


#: lines systemd-nspawn prints on every exit here (lab-notes): never the cause of anything
HARMLESS = ("Attempted to remove disk file system", "Failed to dump process list")


def last_line(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [ln.strip() for ln in (text or "").splitlines()
             if ln.strip() and not any(h in ln for h in HARMLESS)]
    return lines[-1] if lines else ""


def run(cmd: Sequence[str | Path], *, what: str, timeout: float = 60, check: bool = True,
        input: str | None = None, log: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; on failure raise LabError("<what>: <last line of its output>").

    With ``log`` the output goes to that file (long builds) and the cause is its last line.
    """
    args = [str(c) for c in cmd]
    try:
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as out:
                proc = subprocess.run(args, stdin=subprocess.DEVNULL if input is None else None,
                                      input=input, stdout=out, stderr=subprocess.STDOUT, text=True,
                                      timeout=timeout, env=env or clean_env())
            proc.stdout = ""
        else:
            proc = subprocess.run(args, input=input, capture_output=True, text=True, timeout=timeout,
                                  env=env or clean_env(),
                                  stdin=subprocess.DEVNULL if input is None else None)
    except subprocess.TimeoutExpired:
        raise LabError(f"{what}: no result within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise LabError(f"{what}: command not found: {args[0]}") from None
    if check and proc.returncode != 0:
        if log is not None:
            cause = last_line(log.read_text(errors="replace")[-4000:])
        else:
            cause = last_line(proc.stderr) or last_line(proc.stdout)
        raise LabError(f"{what}: {cause or f'exit code {proc.returncode}'}")
    return proc
