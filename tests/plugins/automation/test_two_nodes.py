"""Two gateway nodes sharing Redis (the spool) and PostgreSQL (audience and flows), one
clock: events arrive at either node, and each due step runs exactly once — every contact gets
exactly one mail, every enrolment ends completed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.clock import FakeClock
from tests.conftest import GatewayThread, Sink, make_config, wait_until
from tests.plugins.audience.conftest import AUDIENCE_CONFIG, KEYS, key_tables
from tests.plugins.audience.databases import Database, database
from tests.redisserver import RedisServer

STORE = '[store]\nbackend = "redis"\nurl = "{url}"\nprefix = "{prefix}"\nlease = "3s"\n'
FLOW = {
    "name": "reminder",
    "trigger": {"event": "cart_abandoned"},
    "steps": [
        {"type": "wait", "duration": "1h"},
        {"type": "send", "from": "shop@acme.test", "subject": "Your cart", "text": "Still there"},
    ],
}
COUNT = 120


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[Database]:
    """Set up before (so torn down after) the gateways that use it."""
    with database("postgresql", tmp_path) as db:
        yield db


def test_two_nodes_run_each_due_step_once(
    postgres: Database,
    tmp_path: Path,
    sink: Sink,
    gateway_factory: Callable[..., GatewayThread],
    redis_server: RedisServer,
    redis_prefix: str,
) -> None:
    clock = FakeClock(time.time())
    db = postgres
    toml = (
        AUDIENCE_CONFIG % {"port": sink.port}
        + key_tables()
        + db.toml()
        + "[plugins.automation]\npoll_interval = 0.02\nbatch = 5\n"
        + STORE.format(url=redis_server.url, prefix=redis_prefix)
    )
    nodes = [gateway_factory(make_config(tmp_path / name, toml), clock=clock) for name in "ab"]
    auth = {"Authorization": f"Bearer {KEYS[('acme', 'admin')][0]}"}
    clients = [
        httpx.Client(base_url=f"http://127.0.0.1:{n.gateway.http_port}", headers=auth, timeout=30)
        for n in nodes
    ]
    try:
        assert clients[0].post("/v1/flows", json=FLOW).status_code == 201
        for i in range(COUNT):  # alternate, as a load balancer would
            answer = clients[i % 2].post(
                "/v1/events",
                json={"id": f"e{i}", "name": "cart_abandoned", "email": f"c{i}@example.org"},
            )
            assert answer.json()["enrolled"], answer.text
        clock.advance(3600)
        wait_until(lambda: len(sink.messages) >= COUNT, 60, "one mail per contact")
        flow = clients[1].get("/v1/flows/1").json()
        wait_until(
            lambda: (
                clients[1].get("/v1/flows/1").json()["stats"]["ended"]
                == [{"state": "completed", "reason": "completed", "count": COUNT}]
            ),
            30,
            "every enrolment completed",
        )
        recipients = sorted(m.rcpt_tos[0] for m in sink.messages)
        assert recipients == sorted(f"c{i}@example.org" for i in range(COUNT))
        assert flow["stats"]["enrolled"] == COUNT
    finally:
        for client in clients:
            client.close()
