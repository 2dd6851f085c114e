"""Fixtures shared by the project's own tests."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map from the internet

from tests.support.pgserver import PgServer  # noqa: E402


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """A real PostgreSQL cluster on 127.0.0.1, for the whole session."""
    server = PgServer().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture()
def fresh_db(pg: PgServer) -> str:
    """An empty database of its own for one test; returns its SQLAlchemy URL."""
    return pg.create_database(f"t_{uuid.uuid4().hex[:12]}")
