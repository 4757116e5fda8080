"""Create the videos table.

Revision ID: 0001
Revises:
Create Date: 2026-11-21 00:02:58+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "videos",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative_prompt", sa.Text(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("prior_source", sa.String(16), nullable=False),
        sa.Column("prior_image_path", sa.Text(), nullable=False),
        sa.Column("prior_image_sha256", sa.String(64), nullable=False),
        sa.Column("preset", sa.String(64), nullable=False),
        sa.Column("weights_fingerprint", sa.String(64), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("guidance", sa.Float(), nullable=True),
        sa.Column("true_cfg", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("window_layout", sa.JSON(), nullable=False),
        sa.Column("output_path", sa.Text(), nullable=False),
        sa.Column("output_sha256", sa.String(64), nullable=False),
        sa.Column("output_bytes", sa.BigInteger(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("fps", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("stage_timings", sa.JSON(), nullable=False),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("library_versions", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_videos")),
        sa.UniqueConstraint("output_path", name=op.f("uq_videos_output_path")),
        sa.CheckConstraint(
            "prior_source IN ('user', 'generate', 'retrieve')",
            name=op.f("ck_videos_prior_source"),
        ),
    )
    op.create_index(op.f("ix_videos_created_at"), "videos", ["created_at"])
    op.create_index(op.f("ix_videos_output_sha256"), "videos", ["output_sha256"])


def downgrade() -> None:
    op.drop_index(op.f("ix_videos_output_sha256"), table_name="videos")
    op.drop_index(op.f("ix_videos_created_at"), table_name="videos")
    op.drop_table("videos")
