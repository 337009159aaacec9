"""The addresses an import has seen so far (duplicates found in the database, not in memory).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audience_import_keys",
        sa.Column(
            "import_id",
            Id,
            sa.ForeignKey("audience_imports.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("key_hash", sa.LargeBinary(16), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("audience_import_keys")
