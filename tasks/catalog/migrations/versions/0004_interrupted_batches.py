"""Batches may end ``interrupted``: their run stopped (killed, Ctrl-C) before every row was made.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 06:30:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _statuses(*statuses: str) -> str:
    return "status IN (" + ", ".join(f"'{status}'" for status in statuses) + ")"


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_constraint(op.f("ck_batches_status"), type_="check")
        batch.create_check_constraint(op.f("ck_batches_status"), _statuses("running", "done", "failed", "interrupted"))


def downgrade() -> None:
    op.execute("UPDATE batches SET status = 'failed' WHERE status = 'interrupted'")
    with op.batch_alter_table("batches") as batch:
        batch.drop_constraint(op.f("ck_batches_status"), type_="check")
        batch.create_check_constraint(op.f("ck_batches_status"), _statuses("running", "done", "failed"))
