"""Events, flows and their versions, enrolments (each its own durable timer), enrolment paths.

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
metadata = sa.MetaData()

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


def upgrade() -> None:
    # A frozen copy of the tables as this revision made them (later revisions alter them).
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
