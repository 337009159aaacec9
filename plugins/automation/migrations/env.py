"""Alembic's entry point: migrate on the connection the automation engine hands over, with
a version table of its own so it shares a database with the audience."""

from alembic import context
from gateway_plugins.automation.schema import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    version_table=VERSION_TABLE,
)
with context.begin_transaction():
    context.run_migrations()
