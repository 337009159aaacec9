"""Confirmation and fresh-link mails sent (the per-address daily cap).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audience_link_mails",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column(
            "contact_id",
            Id,
            sa.ForeignKey("audience_contacts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("sent_at", sa.Float, nullable=False),
    )
    op.create_index(
        "ix_audience_link_mails_contact", "audience_link_mails", ["contact_id", "sent_at"]
    )


def downgrade() -> None:
    op.drop_table("audience_link_mails")
