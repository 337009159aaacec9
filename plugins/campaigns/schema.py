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
