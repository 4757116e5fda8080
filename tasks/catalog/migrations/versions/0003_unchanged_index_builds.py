"""Index builds may end ``unchanged``: they name the current version they found up to date.

An ``unchanged`` row shares its ``version`` with the build that made that version, so the
uniqueness of ``index_builds.version`` now holds for the other rows only (a partial unique index).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 04:52:32+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MADE_BY_ONE_BUILD = sa.text("status <> 'unchanged'")


def upgrade() -> None:
    with op.batch_alter_table("index_builds") as batch:
        batch.drop_constraint(op.f("uq_index_builds_version"), type_="unique")
        batch.drop_constraint(op.f("ck_index_builds_status"), type_="check")
        batch.create_check_constraint(
            op.f("ck_index_builds_status"), "status IN ('running', 'published', 'unchanged', 'failed')"
        )
        batch.create_index(
            op.f("uq_index_builds_version"), ["version"], unique=True,
            sqlite_where=_MADE_BY_ONE_BUILD, postgresql_where=_MADE_BY_ONE_BUILD,
        )


def downgrade() -> None:
    op.execute("DELETE FROM index_builds WHERE status = 'unchanged'")
    with op.batch_alter_table("index_builds") as batch:
        batch.drop_index(op.f("uq_index_builds_version"))
        batch.drop_constraint(op.f("ck_index_builds_status"), type_="check")
        batch.create_check_constraint(op.f("ck_index_builds_status"), "status IN ('running', 'published', 'failed')")
        batch.create_unique_constraint(op.f("uq_index_builds_version"), ["version"])
