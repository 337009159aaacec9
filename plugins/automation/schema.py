"""The automation tables (SQLAlchemy Core), one definition for SQLite and PostgreSQL.

Every table carries ``tenant``. Times are Unix seconds (``Float``). An enrolment row is also
its own durable timer: ``due_at`` says when its next step runs, and a node that claims it
writes ``lease_owner``/``lease_until`` with a conditional UPDATE, so exactly one node runs it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()
VERSION_TABLE = "automation_alembic_version"

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

events = sa.Table(
    "automation_events",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("event_id", sa.String(200), nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("contact_id", Id, nullable=False),
    sa.Column("properties", Json, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("message_id", sa.String(200), nullable=False, server_default=""),
    sa.Column("at", sa.Float, nullable=False),
    sa.UniqueConstraint("tenant", "event_id", name="uq_automation_events_id"),
    sa.Index("ix_automation_events_contact", "tenant", "contact_id", "name", "at"),
)

flows = sa.Table(
    "automation_flows",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("trigger_event", sa.String(100), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("tenant", "name", name="uq_automation_flows_name"),
    sa.Index("ix_automation_flows_trigger", "tenant", "trigger_event", "status"),
)

flow_versions = sa.Table(
    "automation_flow_versions",
    metadata,
    sa.Column(
        "flow_id", Id, sa.ForeignKey("automation_flows.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("definition", Json, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

enrolments = sa.Table(
    "automation_enrolments",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("flow_id", Id, sa.ForeignKey("automation_flows.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("contact_id", Id, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # see store.STATES
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("due_at", sa.Float, nullable=True),
    sa.Column("wait_event", sa.String(100), nullable=False, server_default=""),
    sa.Column("lease_owner", sa.String(64), nullable=False, server_default=""),
    sa.Column("lease_until", sa.Float, nullable=False, server_default="0"),
    sa.Column("reason", sa.String(100), nullable=False, server_default=""),
    sa.Column("trigger", Json, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.Index("ix_automation_enrolments_due", "state", "due_at"),
    sa.Index("ix_automation_enrolments_contact", "tenant", "contact_id", "flow_id"),
)

path = sa.Table(
    "automation_path",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column(
        "enrolment_id",
        Id,
        sa.ForeignKey("automation_enrolments.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("message_id", sa.String(200), nullable=False, server_default=""),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("ix_automation_path_enrolment", "enrolment_id", "id"),
    sa.Index("ix_automation_path_message", "message_id"),
)
