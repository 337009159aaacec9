"""The audience tables (SQLAlchemy Core), one definition for SQLite and PostgreSQL.

Every table carries ``tenant`` and every query filters on it. Times are Unix seconds
(``Float``), like the rest of the gateway. The Alembic migrations in ``migrations/versions``
build exactly this schema; a contract test compares the two on both engines.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

Json = sa.JSON().with_variant(JSONB(), "postgresql")
"""JSON documents: ``jsonb`` on PostgreSQL (indexable, comparable), JSON text on SQLite."""

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""SQLite only auto-increments an ``INTEGER PRIMARY KEY``."""

tenant_salts = sa.Table(
    "audience_tenant_salts",
    metadata,
    sa.Column("tenant", sa.String(100), primary_key=True),
    sa.Column("salt", sa.LargeBinary(64), nullable=False),
)

contacts = sa.Table(
    "audience_contacts",
    metadata,
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
    sa.Index("ix_audience_contacts_tenant_created", "tenant", "created_at"),
)

lists = sa.Table(
    "audience_lists",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("opt_in", sa.String(8), nullable=False),
    sa.Column("visibility", sa.String(8), nullable=False),
    sa.Column("description", sa.String(2000), nullable=False, server_default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("tenant", "name", name="uq_audience_lists_name"),
)

topics = sa.Table(
    "audience_topics",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.String(2000), nullable=False, server_default=""),
    sa.Column("default_frequency", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("tenant", "name", name="uq_audience_topics_name"),
)

subscriptions = sa.Table(
    "audience_subscriptions",
    metadata,
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column(
        "list_id", Id, sa.ForeignKey("audience_lists.id", ondelete="CASCADE"), primary_key=True
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
    sa.Index("ix_audience_subscriptions_contact", "contact_id"),
)

topic_preferences = sa.Table(
    "audience_topic_preferences",
    metadata,
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column(
        "topic_id", Id, sa.ForeignKey("audience_topics.id", ondelete="CASCADE"), primary_key=True
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
    sa.Index("ix_audience_topic_preferences_contact", "contact_id"),
)

consent_log = sa.Table(
    "audience_consent_log",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    # No foreign key: the log outlives an erased contact for its retention period.
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
    sa.Index("ix_audience_consent_log_contact", "tenant", "contact_id"),
)

segments = sa.Table(
    "audience_segments",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    # A segment narrows its list; deleting the list deletes the segment rather than widen it.
    sa.Column("list_id", Id, sa.ForeignKey("audience_lists.id", ondelete="CASCADE"), nullable=True),
    sa.Column("filter", Json, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("tenant", "name", name="uq_audience_segments_name"),
)

imports = sa.Table(
    "audience_imports",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column(
        "list_id", Id, sa.ForeignKey("audience_lists.id", ondelete="CASCADE"), nullable=False
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

import_errors = sa.Table(
    "audience_import_errors",
    metadata,
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

import_keys = sa.Table(
    "audience_import_keys",
    metadata,
    sa.Column(
        "import_id",
        Id,
        sa.ForeignKey("audience_imports.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("key_hash", sa.LargeBinary(16), primary_key=True),
)
"""The folded addresses a running import has seen (as a 16-byte BLAKE2b, never the address),
so ``duplicate_in_file`` is found in the database and the importer's memory stays flat
however long the file; emptied when the import ends."""

erased = sa.Table(
    "audience_erased",
    metadata,
    sa.Column("tenant", sa.String(100), primary_key=True),
    sa.Column("email_hash", sa.String(64), primary_key=True),
    sa.Column("erased_at", sa.Float, nullable=False),
)
"""Erased contacts, kept only as the HMAC of their folded address, so an import cannot add
them back."""

link_mails = sa.Table(
    "audience_link_mails",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column(
        "contact_id", Id, sa.ForeignKey("audience_contacts.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("sent_at", sa.Float, nullable=False),
    sa.Index("ix_audience_link_mails_contact", "contact_id", "sent_at"),
)
"""Confirmation and fresh-link mails sent, to cap them per address per day on every node."""
