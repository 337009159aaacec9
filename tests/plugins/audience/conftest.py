"""Fixtures for the audience plugin: an ``AudienceStore`` migrated on each engine."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from gateway_plugins.audience import audience_of
from gateway_plugins.audience.engine import create_engine, migrate
from gateway_plugins.audience.store import AudienceStore

from gateway.clock import FakeClock
from gateway.tenants import generate_api_key, hash_api_key
from tests.conftest import GatewayThread, Sink, make_config
from tests.ops.conftest import Receiver
from tests.plugins.audience.databases import ENGINES, Database, database

KEYS = {
    ("acme", "reader"): (generate_api_key(), ["read"]),
    ("acme", "sender"): (generate_api_key(), ["send"]),
    ("acme", "admin"): (generate_api_key(), ["admin"]),
    ("globex", "admin"): (generate_api_key(), ["admin"]),
}


@pytest.fixture(params=ENGINES)
def audience_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with database(request.param, tmp_path) as db:
        yield db


@pytest.fixture
async def audience_store(audience_db: Database) -> AsyncIterator[AudienceStore]:
    engine = create_engine(audience_db.url, schema=audience_db.schema)
    await migrate(engine, schema=audience_db.schema)
    store = AudienceStore(engine, FakeClock())
    yield store
    await store.close()


class AudienceGateway:
    """A running gateway with ``[plugins.audience]`` on one engine, the HTTP API and keys of
    every scope for tenants ``acme`` and ``globex``; ``client(tenant, key)`` logs in."""

    def __init__(self, gw: GatewayThread, clock: FakeClock) -> None:
        self.gw = gw
        self.clock = clock
        self.url = f"http://127.0.0.1:{gw.gateway.http_port}"
        self._clients: list[httpx.Client] = []

    @property
    def store(self) -> AudienceStore:
        return audience_of(self.gw.gateway).store

    def client(self, tenant: str = "acme", key: str = "admin") -> httpx.Client:
        client = httpx.Client(
            base_url=self.url,
            timeout=30,
            headers={"Authorization": f"Bearer {KEYS[(tenant, key)][0]}"},
        )
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()


def key_tables() -> str:
    return "".join(
        f'[[tenants.{t}.api_keys]]\nname = "{name}"\nkey_hash = "{hash_api_key(key)}"\n'
        f"scopes = {json.dumps(scopes)}\n"
        for (t, name), (key, scopes) in KEYS.items()
    )


AUDIENCE_CONFIG = """
[smtp]
listeners = [{ name = "dev", port = 0, tls = "none", insecure_auth = true }]

[http]
enabled = true
port = 0
rate_limit = 0

[tenants.acme]
sending_domains = ["acme.test"]
smtp_networks = ["127.0.0.1/32"]

[tenants.globex]

[delivery]
providers = ["relay"]
retry_schedule = ["1m"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = %(port)d
tls = "none"
"""


@pytest.fixture
def audience_gateway(
    audience_db: Database, tmp_path: Path, sink: Sink, gateway_factory: Callable[..., GatewayThread]
) -> Iterator[Callable[..., AudienceGateway]]:
    """A factory: ``audience_gateway(extra_toml)`` starts the gateway (stopped by
    ``gateway_factory``)."""
    made: list[AudienceGateway] = []

    def factory(extra: str = "") -> AudienceGateway:
        toml = AUDIENCE_CONFIG % {"port": sink.port} + key_tables() + audience_db.toml() + extra
        clock = FakeClock(time.time())  # now: webhook verifiers check timestamps
        started = AudienceGateway(gateway_factory(make_config(tmp_path, toml), clock=clock), clock)
        made.append(started)
        return started

    yield factory
    for started in made:
        started.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    server.thread.join(10)
