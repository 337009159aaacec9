"""The campaign tables (SQLAlchemy Core), in the audience's database, one definition for
SQLite and PostgreSQL.

They have their own Alembic chain (``migrations/``, version table
``campaigns_alembic_version``) beside the audience's, so the two plugins migrate apart. Times
are Unix seconds (``Float``); every table carries ``tenant`` and every query filters on it.
"""

from __future__ import annotations

import sqlalchemy as sa
from gateway_plugins.audience.schema import Id, Json

metadata = sa.MetaData()

templates = sa.Table(
    "campaign_templates",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.String(2000), nullable=False, server_default=""),
    sa.Column("latest_version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("tenant", "name", name="uq_campaign_templates_name"),
)

template_versions = sa.Table(
    "campaign_template_versions",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column(
        "template_id",
        Id,
        sa.ForeignKey("campaign_templates.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("preheader", sa.Text, nullable=False, server_default=""),
    sa.Column("html", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("text_derived", sa.Boolean, nullable=False),
    sa.Column("variables", Json, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("template_id", "version", name="uq_campaign_template_versions"),
)

campaigns = sa.Table(
    "campaign_campaigns",
    metadata,
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
    sa.Index("ix_campaign_campaigns_status", "status"),
)

runs = sa.Table(
    "campaign_runs",
    metadata,
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
    sa.Index("ix_campaign_runs_due", "status", "due_at"),
)

sends = sa.Table(
    "campaign_sends",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("campaign_id", Id, nullable=False),
    sa.Column("run_id", Id, sa.ForeignKey("campaign_runs.id", ondelete="CASCADE"), nullable=False),
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
    sa.UniqueConstraint("campaign_id", "run_id", "contact_id", name="uq_campaign_sends_contact"),
    sa.Index("ix_campaign_sends_run_status", "run_id", "status", "id"),
    sa.Index("ix_campaign_sends_message", "message_id"),
)
