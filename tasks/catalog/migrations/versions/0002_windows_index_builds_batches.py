"""Per-window render records, retrieval index builds, bulk batches and their rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 09:10:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("csv_path", sa.Text(), nullable=False),
        sa.Column("csv_sha256", sa.String(64), nullable=False),
        sa.Column("out_dir", sa.Text(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.CheckConstraint(
            "status IN ('running', 'done', 'failed')", name=op.f("ck_batches_status")
        ),
    )
    op.create_index(op.f("ix_batches_started_at"), "batches", ["started_at"])
    op.create_index(op.f("ix_batches_csv_sha256"), "batches", ["csv_sha256"])

    with op.batch_alter_table("videos") as batch:
        batch.add_column(
            sa.Column("windows_mode", sa.String(16), nullable=False, server_default="chained")
        )
        batch.add_column(sa.Column("content_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("prior_details", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("thumbnail_path", sa.Text(), nullable=True))
        batch.add_column(sa.Column("batch_id", sa.String(32), nullable=True))
        batch.create_unique_constraint(op.f("uq_videos_content_key"), ["content_key"])
        batch.create_foreign_key(
            op.f("fk_videos_batch_id_batches"), "batches", ["batch_id"], ["id"]
        )
        batch.create_check_constraint(
            op.f("ck_videos_windows_mode"), "windows_mode IN ('chained', 'parallel')"
        )
        batch.create_index(op.f("ix_videos_batch_id"), ["batch_id"])
    with op.batch_alter_table("videos") as batch:
        batch.alter_column("windows_mode", server_default=None)

    op.create_table(
        "video_windows",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("video_id", sa.String(32), nullable=False),
        sa.Column("window_index", sa.Integer(), nullable=False),
        sa.Column("frame_start", sa.Integer(), nullable=False),
        sa.Column("frame_end", sa.Integer(), nullable=False),
        sa.Column("latent_start", sa.Integer(), nullable=False),
        sa.Column("latent_end", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("gpu_id", sa.String(64), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_video_windows")),
        sa.ForeignKeyConstraint(
            ["video_id"],
            ["videos.id"],
            name=op.f("fk_video_windows_video_id_videos"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("video_id", "window_index", name=op.f("uq_video_windows_video_id")),
    )
    op.create_index(op.f("ix_video_windows_video_id"), "video_windows", ["video_id"])

    op.create_table(
        "index_builds",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("corpus", sa.Text(), nullable=False),
        sa.Column("index_dir", sa.Text(), nullable=False),
        sa.Column("model_id", sa.String(255), nullable=False),
        sa.Column("dimension", sa.Integer(), nullable=True),
        sa.Column("count", sa.Integer(), nullable=True),
        sa.Column("embedded", sa.Integer(), nullable=True),
        sa.Column("skipped", sa.JSON(), nullable=True),
        sa.Column("index_type", sa.String(64), nullable=True),
        sa.Column("recall", sa.Float(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_index_builds")),
        sa.UniqueConstraint("version", name=op.f("uq_index_builds_version")),
        sa.CheckConstraint(
            "status IN ('running', 'published', 'failed')", name=op.f("ck_index_builds_status")
        ),
    )
    op.create_index(op.f("ix_index_builds_started_at"), "index_builds", ["started_at"])

    op.create_table(
        "batch_rows",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(32), nullable=False),
        sa.Column("row_number", sa.Integer(), nullable=False),
        sa.Column("row_key", sa.String(255), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("content_key", sa.String(64), nullable=True),
        sa.Column("video_id", sa.String(32), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_rows")),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_batch_rows_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["video_id"], ["videos.id"], name=op.f("fk_batch_rows_video_id_videos")
        ),
        sa.UniqueConstraint("batch_id", "row_number", name=op.f("uq_batch_rows_batch_id")),
        sa.CheckConstraint(
            "status IN ('pending', 'done', 'skipped', 'failed', 'rejected')",
            name=op.f("ck_batch_rows_status"),
        ),
    )
    op.create_index(op.f("ix_batch_rows_batch_id"), "batch_rows", ["batch_id"])
    op.create_index(op.f("ix_batch_rows_status"), "batch_rows", ["status"])
    op.create_index(op.f("ix_batch_rows_content_key"), "batch_rows", ["content_key"])


def downgrade() -> None:
    op.drop_table("batch_rows")
    op.drop_table("index_builds")
    op.drop_table("video_windows")
    with op.batch_alter_table("videos") as batch:
        batch.drop_index(op.f("ix_videos_batch_id"))
        batch.drop_constraint(op.f("ck_videos_windows_mode"), type_="check")
        batch.drop_constraint(op.f("fk_videos_batch_id_batches"), type_="foreignkey")
        batch.drop_constraint(op.f("uq_videos_content_key"), type_="unique")
        for column in ("batch_id", "thumbnail_path", "prior_details", "content_key", "windows_mode"):
            batch.drop_column(column)
    op.drop_table("batches")
