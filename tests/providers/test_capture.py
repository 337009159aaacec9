"""The capture provider: its ``delivered`` event names the outbox file relative to the outbox,
never the server's absolute path, wherever events are shown (API timeline, webhooks, console)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.tenants import hash_api_key
from tests.conftest import GatewayThread, make_config
from tests.ops.conftest import ADMIN_KEY

CONFIG = """
[http]
enabled = true
port = 0
rate_limit = 0

[tenants.acme]
[[tenants.acme.api_keys]]
name = "ops"
key_hash = "{key_hash}"
scopes = ["admin"]

[delivery]
providers = ["capture"]
"""


def test_delivered_event_names_the_outbox_file_not_its_path(
    tmp_path: Path, gateway_factory: Callable[..., GatewayThread]
) -> None:
    gw = gateway_factory(
        make_config(tmp_path, CONFIG, key_hash=hash_api_key(ADMIN_KEY)), deliver=False
    )
    with httpx.Client(
        base_url=f"http://127.0.0.1:{gw.gateway.http_port}",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as client:
        sent = client.post(
            "/v1/messages",
            json={"from": "a@acme.test", "to": ["b@example.org"], "subject": "s", "text": "x"},
        )
        assert sent.status_code == 202, sent.text
        assert gw.call(gw.gateway.dispatcher.run_once()) == 1
        shown = client.get(f"/v1/messages/{sent.json()['id']}").json()
    (delivered,) = [e for e in shown["events"] if e["type"] == "delivered"]
    (eml,) = (tmp_path / "data" / "outbox").glob("*.eml")
    assert delivered["detail"] == f"captured to {eml.name}"
    assert str(tmp_path) not in str(shown)
    recent = [e.detail for e in gw.gateway.metrics.recent_events if e.type == "delivered"]
    assert recent == [f"captured to {eml.name}"]  # what the console and webhooks are given
