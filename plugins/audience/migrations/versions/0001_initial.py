"""Contacts, lists, topics, subscriptions, topic preferences, consent log, tenant salts.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audience_tenant_salts",
        sa.Column("tenant", sa.String(100), primary_key=True),
        sa.Column("salt", sa.LargeBinary(64), nullable=False),
    )
    op.create_table(
        "audience_contacts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("email_key", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("locale", sa.String(35), nullable=False, server_default=""),
        sa.Column("timezone", sa.String(64), nullable=False, server_default=""),
        sa.Column("attributes", Json, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("tenant", "email_key", name="uq_audience_contacts_email"),
    )
    op.create_index(
        "ix_audience_contacts_tenant_created", "audience_contacts", ["tenant", "created_at"]
    )
    op.create_table(
        "audience_lists",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("opt_in", sa.String(8), nullable=False),
        sa.Column("visibility", sa.String(8), nullable=False),
        sa.Column("description", sa.String(2000), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_audience_lists_name"),
    )
    op.create_table(
        "audience_topics",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.String(2000), nullable=False, server_default=""),
        sa.Column("default_frequency", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_audience_topics_name"),
    )
    op.create_table(
        "audience_subscriptions",
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column(
            "list_id",
            Id,
            sa.ForeignKey("audience_lists.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "contact_id",
            Id,
            sa.ForeignKey("audience_contacts.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_audience_subscriptions_contact", "audience_subscriptions", ["contact_id"])
    op.create_table(
        "audience_topic_preferences",
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column(
            "topic_id",
            Id,
            sa.ForeignKey("audience_topics.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "contact_id",
            Id,
            sa.ForeignKey("audience_contacts.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("subscribed", sa.Boolean, nullable=False),
        sa.Column("frequency", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index(
        "ix_audience_topic_preferences_contact", "audience_topic_preferences", ["contact_id"]
    )
    op.create_table(
        "audience_consent_log",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("contact_id", Id, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("list_id", Id, nullable=True),
        sa.Column("topic_id", Id, nullable=True),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("form_id", sa.String(200), nullable=False, server_default=""),
        sa.Column("ip_hash", sa.String(64), nullable=False, server_default=""),
        sa.Column("user_agent_hash", sa.String(64), nullable=False, server_default=""),
        sa.Column("statement_version", sa.String(100), nullable=False, server_default=""),
        sa.Column("statement_hash", sa.String(64), nullable=False, server_default=""),
        sa.Column("collected_at", sa.Float, nullable=True),
        sa.Column("confirmed_at", sa.Float, nullable=True),
        sa.Column("import_id", sa.String(100), nullable=False, server_default=""),
        sa.Column("attested_by", sa.String(200), nullable=False, server_default=""),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index(
        "ix_audience_consent_log_contact", "audience_consent_log", ["tenant", "contact_id"]
    )


def downgrade() -> None:
    for table in (
        "audience_consent_log",
        "audience_topic_preferences",
        "audience_subscriptions",
        "audience_topics",
        "audience_lists",
        "audience_contacts",
        "audience_tenant_salts",
    ):
        op.drop_table(table)
