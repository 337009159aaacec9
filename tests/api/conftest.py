"""A gateway with the HTTP API on a loopback port, two tenants with keys of every scope, and
real httpx clients. Mail goes to the real sink SMTP server (``tests.conftest.sink``)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.clock import FakeClock
from gateway.message import DeliveryStatus
from gateway.store.base import DeliveryFilter
from gateway.tenants import generate_api_key, hash_api_key
from tests.conftest import GatewayThread, Sink, make_config, wait_until

KEYS = {
    ("acme", "sender"): (generate_api_key(), ["send"]),
    ("acme", "reader"): (generate_api_key(), ["read"]),
    ("acme", "admin"): (generate_api_key(), ["admin"]),
    ("globex", "admin"): (generate_api_key(), ["admin"]),
    ("globex", "operator"): (generate_api_key(), ["read", "operator"]),
}


def _key_tables(tenant: str) -> str:
    return "\n".join(
        f'[[tenants.{t}.api_keys]]\nname = "{name}"\nkey_hash = "{hash_api_key(key)}"\n'
        f"scopes = {scopes!r}\n".replace("'", '"')
        for (t, name), (key, scopes) in KEYS.items()
        if t == tenant
    )


API_CONFIG = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]
max_message_size = 200000

[http]
enabled = true
port = 0
max_body_size = 300000
rate_limit = {rate_limit}
rate_burst = {rate_burst}

[tenants.acme]
sending_domains = ["acme.test"]
{acme_keys}

[tenants.globex]
{globex_keys}

[delivery]
providers = ["relay"]
retry_schedule = ["1m"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
"""


class Api:
    """The running gateway and its HTTP address; ``client(tenant, key)`` gives a logged-in
    httpx client (closed by the fixture)."""

    def __init__(self, gw: GatewayThread, clock: FakeClock, sink: Sink) -> None:
        self.gw = gw
        self.clock = clock
        self.sink = sink
        port = gw.gateway.http_port
        assert port is not None
        self.url = f"http://127.0.0.1:{port}"
        self._clients: list[httpx.Client] = []

    def client(self, tenant: str = "acme", key: str = "admin", **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {KEYS[(tenant, key)][0]}"}
        return self.anonymous(headers=headers, **kwargs)

    def anonymous(self, **kwargs: Any) -> httpx.Client:
        client = httpx.Client(base_url=self.url, timeout=30, **kwargs)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def deliveries(self, message_id: str | None = None) -> list[Any]:
        return self.gw.call(
            self.gw.gateway.store.list_deliveries(DeliveryFilter(message_id=message_id, limit=5000))
        )

    def wait_delivered(self, message_id: str, count: int = 1) -> None:
        wait_until(
            lambda: (
                [d.status for d in self.deliveries(message_id)]
                == [DeliveryStatus.DELIVERED] * count
            ),
            what=f"{count} deliveries of {message_id}",
        )


def api_config(
    tmp_path: Path, sink_port: int, rate_limit: float = 0.0, rate_burst: int = 100
) -> Any:
    return make_config(
        tmp_path,
        API_CONFIG,
        port=sink_port,
        rate_limit=rate_limit,
        rate_burst=rate_burst,
        acme_keys=_key_tables("acme"),
        globex_keys=_key_tables("globex"),
    )


@pytest.fixture
def api_factory(
    tmp_path: Path, sink: Sink, gateway_factory: Callable[..., GatewayThread]
) -> Iterator[Callable[..., Api]]:
    made: list[Api] = []

    def factory(rate_limit: float = 0.0, rate_burst: int = 100, deliver: bool = True) -> Api:
        config = api_config(tmp_path, sink.port, rate_limit, rate_burst)
        clock = FakeClock()
        api = Api(gateway_factory(config, clock=clock, deliver=deliver), clock, sink)
        made.append(api)
        return api

    yield factory
    for api in made:
        api.close()


@pytest.fixture
def api(api_factory: Callable[..., Api]) -> Api:
    return api_factory()


@pytest.fixture(scope="module")
def idle_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One gateway per module, not delivering, for tests that must leave the spool empty
    (refusals): starting a gateway per case would dominate the run time."""
    sink = Sink()
    sink.start()
    clock = FakeClock()
    gw = GatewayThread(api_config(tmp_path_factory.mktemp("api"), sink.port), clock, False)
    api = Api(gw.start(), clock, sink)
    yield api
    api.close()
    gw.stop()
    sink.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
