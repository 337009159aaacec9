"""Campaigns, their runs and one send row per recipient and run.

Revision ID: c0002
Revises: c0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "c0002"
down_revision = "c0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "campaign_campaigns",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("template_id", Id, nullable=False),
        sa.Column("template_version", sa.Integer, nullable=True),
        sa.Column("variables", Json, nullable=False),
        sa.Column("list_ids", Json, nullable=False),
        sa.Column("exclude_segment_ids", Json, nullable=False),
        sa.Column("topic_id", Id, nullable=True),
        sa.Column("from_email", sa.String(320), nullable=False),
        sa.Column("from_name", sa.String(200), nullable=False, server_default=""),
        sa.Column("reply_to", sa.String(320), nullable=False, server_default=""),
        sa.Column("stream", sa.String(100), nullable=False),
        sa.Column("scheduled_at", sa.Float, nullable=True),
        sa.Column("throttle_per_hour", sa.Integer, nullable=True),
        sa.Column("window", Json, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_campaign_campaigns_status", "campaign_campaigns", ["status"])
    op.create_table(
        "campaign_runs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column(
            "campaign_id",
            Id,
            sa.ForeignKey("campaign_campaigns.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("due_at", sa.Float, nullable=False),
        sa.Column("template_version", sa.Integer, nullable=False),
        sa.Column("cursor", Id, nullable=False, server_default="0"),
        sa.Column("planned", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_owner", sa.String(100), nullable=False, server_default=""),
        sa.Column("lease_until", sa.Float, nullable=False, server_default="0"),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("fanned_out_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.UniqueConstraint("campaign_id", "number", name="uq_campaign_runs_number"),
    )
    op.create_index("ix_campaign_runs_due", "campaign_runs", ["status", "due_at"])
    op.create_table(
        "campaign_sends",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("campaign_id", Id, nullable=False),
        sa.Column(
            "run_id", Id, sa.ForeignKey("campaign_runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("contact_id", Id, nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False, server_default=""),
        sa.Column("message_id", sa.String(100), nullable=False, server_default=""),
        sa.Column("not_before", sa.Float, nullable=True),
        sa.Column("variant", sa.String(50), nullable=False, server_default=""),
        sa.Column("list_id", Id, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint(
            "campaign_id", "run_id", "contact_id", name="uq_campaign_sends_contact"
        ),
    )
    op.create_index("ix_campaign_sends_run_status", "campaign_sends", ["run_id", "status", "id"])
    op.create_index("ix_campaign_sends_message", "campaign_sends", ["message_id"])


def downgrade() -> None:
    op.drop_table("campaign_sends")
    op.drop_table("campaign_runs")
    op.drop_table("campaign_campaigns")
