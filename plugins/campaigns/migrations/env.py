"""Alembic's entry point: migrate on the connection the audience engine hands over, recording
the revision in the campaigns' own version table."""

from alembic import context
from gateway_plugins.campaigns.engine import MIGRATIONS
from gateway_plugins.campaigns.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    version_table=MIGRATIONS.version_table,
)
with context.begin_transaction():
    context.run_migrations()
