"""CSV imports with their per-row errors, and the hashed addresses of erased contacts.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audience_imports",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column(
            "list_id",
            Id,
            sa.ForeignKey("audience_lists.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("file_name", sa.String(255), nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("counts", Json, nullable=False),
        sa.Column("error", sa.String(2000), nullable=False, server_default=""),
        sa.Column("columns", Json, nullable=False),
        sa.Column("attested_by", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.UniqueConstraint(
            "tenant", "list_id", "mode", "content_hash", name="uq_audience_imports_content"
        ),
    )
    op.create_table(
        "audience_import_errors",
        sa.Column(
            "import_id",
            Id,
            sa.ForeignKey("audience_imports.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("row", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(32), primary_key=True),
        sa.Column("message", sa.String(500), nullable=False),
        sa.Column("fields", Json, nullable=False),
    )
    op.create_table(
        "audience_erased",
        sa.Column("tenant", sa.String(100), primary_key=True),
        sa.Column("email_hash", sa.String(64), primary_key=True),
        sa.Column("erased_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audience_erased")
    op.drop_table("audience_import_errors")
    op.drop_table("audience_imports")
