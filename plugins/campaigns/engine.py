"""The campaigns' migrations, run on the audience's engine after the audience's own."""

from __future__ import annotations

from gateway_plugins.audience.engine import Migrations, migrate
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Migrations("gateway_plugins.campaigns:migrations", "campaigns_alembic_version")


async def migrate_campaigns(engine: AsyncEngine, *, schema: str = "") -> None:
    """Bring the campaign tables to the newest revision (the audience's must be current)."""
    await migrate(engine, schema=schema, migrations=MIGRATIONS)
