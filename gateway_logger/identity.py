"""What runs is what was signed: the sha256 of the code this process loaded, and the versions it runs on.

The code is this package and ``db_init.py``, named by their paths relative to the directory that holds
both (``/opt/litellm`` on the gateway, the repository's root here): every ``*.py`` file directly in
``gateway_logger/``, sorted by path (byte order: ``gateway_logger/__init__.py`` first), then
``db_init.py``. ``code_sha256`` is the sha256 of what ``sha256sum`` prints for those files in that
order, one ``<sha256>  <path>`` line each; on the gateway::

    cd /opt/litellm && sha256sum $(printf '%s\\n' gateway_logger/*.py | LC_ALL=C sort) db_init.py | sha256sum

acceptance/versions.py computes the same digest from the repository's files and the gateway's (check 9).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from collections.abc import Mapping
from pathlib import Path

import psycopg2
import sqlalchemy

import db_init
from gateway_logger.journal import strerror

PACKAGE = "gateway_logger"
SCHEMA_FILE = "db_init.py"
PACKAGE_DIR = Path(__file__).resolve().parent


def package_files(directory: str | Path = PACKAGE_DIR) -> list[str]:
    """The package's files as ``code_sha256`` names them (``gateway_logger/<name>.py``), in its order."""
    names = sorted(p.name for p in Path(directory).glob("*.py") if p.is_file())
    return [f"{PACKAGE}/{name}" for name in names]


def code_files(directory: str | Path = PACKAGE_DIR) -> tuple[str, ...]:
    """Every file of the signed code, in ``code_sha256``'s order: the package's, then db_init.py."""
    return (*package_files(directory), SCHEMA_FILE)


def code_sha256(digests: Mapping[str, str]) -> str:
    """One digest for the code: sha256 of what ``sha256sum`` prints for ``digests`` (path -> sha256 of
    the file): the package's files sorted by path, then db_init.py (see the module's docstring)."""
    order = sorted(n for n in digests if n != SCHEMA_FILE) + [SCHEMA_FILE]
    return hashlib.sha256("".join(f"{digests[n]}  {n}\n" for n in order).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable: {strerror(exc)}"


#: the files of the signed code, in code_sha256's order
CODE_FILES = code_files()
#: path -> sha256 of the code this process loaded: hashed once the package has imported all its modules
#: (``record_loaded``, from ``__init__``), so it is the code that was loaded, not what the files hold later
LOADED_SHA256: dict[str, str] = {}


def record_loaded() -> dict[str, str]:
    """Hash the loaded code into ``LOADED_SHA256`` (once); the package's own files, and db_init.py as it
    was imported."""
    if not LOADED_SHA256:
        LOADED_SHA256.update({name: file_sha256(PACKAGE_DIR.parent / name) for name in package_files()})
        LOADED_SHA256[SCHEMA_FILE] = file_sha256(db_init.__file__)
    return LOADED_SHA256


def build_info() -> dict[str, str]:
    """The labels of ``gateway_logger_build_info``: the code digest and the versions of what it runs on."""
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    return {"code_sha256": code_sha256(record_loaded()), "litellm": version("litellm"),
            "sqlalchemy": sqlalchemy.__version__, "psycopg2": psycopg2.__version__.split()[0],
            "prometheus_client": version("prometheus-client"), "python": platform.python_version()}
