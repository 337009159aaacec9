"""Alembic's entry point: migrate on the connection the audience engine hands over.

Migrations never open their own connection (``engine.migrate`` passes one in
``config.attributes["connection"]``), so they run through the same async driver and the same
``search_path`` as the application.
"""

from alembic import context
from gateway_plugins.audience.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
