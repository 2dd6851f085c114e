"""Baseline: the schema of the first POC-1 databases (the seed's eleven and ten columns).

Databases made before migrations existed are stamped at this revision by ``db_init.py create``;
nothing to do for them.

Revision ID: 0001
"""
revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
