"""requests.call_id: LiteLLM's call id gets its own indexed column; request_id becomes the gateway's own.

Why (POC-1/FINDINGS.md): a client may send ``x-litellm-call-id``, so the call id is not unique per
HTTP request. Keyed on it, two calls with the same id became one row, ids sharing their first 128
characters collided, and a success overwrote an earlier failure of another call. From this revision
the logger writes one row per HTTP request under its own id (``request_id``) and keeps the call id
here. Rows written before keep their request_id, which was their call id: it is copied.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("call_id", sa.String(256), nullable=True))
    op.execute("UPDATE requests SET call_id = request_id")
    op.alter_column("requests", "call_id", nullable=False)
    op.create_index("ix_requests_call_id", "requests", ["call_id"])


def downgrade() -> None:
    op.drop_index("ix_requests_call_id", table_name="requests")
    op.drop_column("requests", "call_id")
