"""Alembic environment for the log schema: always run by ``db_init.py create`` on its own connection.

The models (``db_init.Base.metadata``) are the target; ``alembic revision --autogenerate`` against a
database at head writes the next migration from them.
"""
from __future__ import annotations

import sys
from pathlib import Path

from alembic import context

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import db_init  # noqa: E402

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # the alembic CLI: open one from POC1_DB_URL
    import os

    engine = db_init.make_engine(os.environ[db_init.URL_ENV])
    connection = engine.connect()

# COMPARE_OPTS (version table, type/server-default comparison, reflection filter): autogenerate sees
# the same differences as ``db_init.py validate``
context.configure(connection=connection, target_metadata=db_init.Base.metadata,
                  transaction_per_migration=False, **db_init.COMPARE_OPTS)
with context.begin_transaction():
    context.run_migrations()
