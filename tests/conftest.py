"""Fixtures shared by the project's own tests."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map from the internet
# the project's tests share the one-gateway lab (tests/test_lab_fleet.py builds a fleet and puts it back)
os.environ.setdefault("POC1_LAB_GATEWAYS", "1")
os.environ.setdefault("POC1_LAB_PARTITION", "")  # and its plain log tables (the fleet test partitions its own)

from tests.support import (
    netguard,  # noqa: E402
    pgserver,  # noqa: E402
)
from tests.support.pgserver import PgServer  # noqa: E402

netguard.install()  # Python sockets in the project's tests reach only loopback and the lab's bridge


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``lab_teardown`` break the lab the others need: they run last, in their own order."""
    items.sort(key=lambda item: item.get_closest_marker("lab_teardown") is not None)  # stable sort


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """A real PostgreSQL cluster on 127.0.0.1, for the whole session."""
    with pgserver.running() as server:
        yield server


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgServer]:
    """A cluster of the requesting module's own (module scope: one per module), for tests that stop,
    freeze or restart PostgreSQL without disturbing the session's ``pg``."""
    with pgserver.running() as server:
        yield server


@pytest.fixture()
def log_db(own_pg: PgServer) -> str:
    """A fresh log database with the schema, on the module's own cluster (modules that keep their log on
    the session's ``pg`` define their own ``log_db``)."""
    import db_init

    url = own_pg.create_database(f"log_{uuid.uuid4().hex[:8]}")
    db_init.create(url)
    return url


@pytest.fixture()
def fresh_db(pg: PgServer) -> str:
    """An empty database of its own for one test; returns its SQLAlchemy URL."""
    return pg.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def embedded_lab():
    """The embedded two-host lab, brought up idempotently by `python -m lab up` (builds the rootfs cache
    on a cold machine); yields its LabDescription. Left up at the end: the ``lab_teardown`` tests
    (tests/test_lab_teardown.py, run last) or `make lab-down` take it down."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "lab", "up"], cwd=repo, capture_output=True, text=True,
                          timeout=1500, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        cause = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        pytest.fail(f"embedded lab: {cause}", pytrace=False)
    import lab

    yield lab.describe()
