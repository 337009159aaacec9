"""Fixtures for the campaigns plugin: the audience's engines (SQLite and PostgreSQL with a
schema per test) and its gateway factory, with the campaign tables migrated beside them."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import pytest
from gateway_plugins.audience.engine import create_engine, migrate
from gateway_plugins.campaigns.engine import migrate_campaigns
from gateway_plugins.campaigns.template_store import TemplateStore

from gateway.clock import FakeClock
from tests.conftest import GatewayThread, Sink, make_config
from tests.plugins.audience import conftest as audience_fixtures
from tests.plugins.audience.conftest import AUDIENCE_CONFIG, AudienceGateway, key_tables
from tests.plugins.audience.databases import Database
from tests.plugins.audience.pages_env import pages_toml

# The audience's fixtures, offered here too.
audience_db = audience_fixtures.audience_db
receiver = audience_fixtures.receiver

POSTAL = "Acme Inc.\\n1 Main Street\\nSpringfield 12345"
CAMPAIGNS = (
    "[plugins.campaigns]\n"
    "require_verified_domain = false\n"
    "poll_interval = 0.05\n"
    f'postal_addresses = {{ acme = "{POSTAL}" }}\n'
    "[tenants.acme.streams.news]\n"
    'kind = "broadcast"\n'
)


@pytest.fixture
async def template_store(audience_db: Database) -> AsyncIterator[TemplateStore]:
    engine = create_engine(audience_db.url, schema=audience_db.schema)
    await migrate(engine, schema=audience_db.schema)
    await migrate_campaigns(engine, schema=audience_db.schema)
    yield TemplateStore(engine, FakeClock(1_800_000_000.0))
    await engine.dispose()


@pytest.fixture
def campaigns_gateway(
    audience_db: Database,
    tmp_path: Path,
    sink: Sink,
    gateway_factory: Callable[..., GatewayThread],
) -> Iterator[Callable[..., AudienceGateway]]:
    """``campaigns_gateway(extra_toml, plugins=[...])``: the audience gateway (pages on) with
    ``[plugins.campaigns]``, a broadcast stream ``news`` for acme, and ``plugins`` as
    ``[gateway] plugins``."""
    made: list[AudienceGateway] = []

    def factory(extra: str = "", plugins: Sequence[str] = ()) -> AudienceGateway:
        toml = (
            f"plugins = {json.dumps(list(plugins))}\n"
            + AUDIENCE_CONFIG % {"port": sink.port}
            + key_tables()
            + audience_db.toml()
            + pages_toml()
            + CAMPAIGNS
            + extra
        )
        clock = FakeClock(time.time())
        gw = gateway_factory(make_config(tmp_path, toml), clock=clock)
        made.append(AudienceGateway(gw, clock))
        return made[-1]

    yield factory
    for started in made:
        started.close()
