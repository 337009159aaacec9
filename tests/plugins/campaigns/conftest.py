"""Fixtures for the campaigns plugin: the audience's engines (SQLite and PostgreSQL with a
schema per test) and its gateway factory, with the campaign tables migrated beside them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from gateway_plugins.audience.engine import create_engine, migrate
from gateway_plugins.campaigns.engine import migrate_campaigns
from gateway_plugins.campaigns.template_store import TemplateStore

from gateway.clock import FakeClock
from tests.plugins.audience import conftest as audience_fixtures
from tests.plugins.audience.conftest import AudienceGateway
from tests.plugins.audience.databases import Database

# The audience's fixtures, offered here too.
audience_db = audience_fixtures.audience_db
audience_gateway = audience_fixtures.audience_gateway
receiver = audience_fixtures.receiver

CAMPAIGNS = "[plugins.campaigns]\n"


@pytest.fixture
async def template_store(audience_db: Database) -> AsyncIterator[TemplateStore]:
    engine = create_engine(audience_db.url, schema=audience_db.schema)
    await migrate(engine, schema=audience_db.schema)
    await migrate_campaigns(engine, schema=audience_db.schema)
    yield TemplateStore(engine, FakeClock(1_800_000_000.0))
    await engine.dispose()


@pytest.fixture
def campaigns_gateway(
    audience_gateway: Callable[..., AudienceGateway],
) -> Callable[..., AudienceGateway]:
    """``campaigns_gateway(extra_toml)``: the audience gateway with ``[plugins.campaigns]``."""

    def factory(extra: str = "") -> AudienceGateway:
        return audience_gateway(CAMPAIGNS + extra)

    return factory
