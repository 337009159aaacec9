"""The whole loop through a running gateway: a message sent with the HTTP API (tags and
metadata) goes out through the mailgun provider to the spec-checking mock — tags, metadata
and our ids carried — and the provider's signed webhook about it comes back, bounces the
delivery, suppresses the recipient and shows in the message's timeline."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.clock import FakeClock
from gateway.message import DeliveryStatus
from gateway.store.base import DeliveryFilter
from gateway.tenants import generate_api_key, hash_api_key
from gateway.webhook_auth import mailgun_signature
from tests.conftest import GatewayThread, make_config
from tests.providers.mock_api import MockApi, Recorded, Reply, json_reply, running
from tests.providers.spec_check import MAILGUN, SPECS, multipart_parts

SIGNING_KEY = "mailgun-webhook-key-for-the-end-to-end-test"
API_KEY = generate_api_key()

CONFIG = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[http]
enabled = true
port = 0
docs = false

[tenants.acme]
sending_domains = ["shop.test"]
[[tenants.acme.api_keys]]
name = "app"
key_hash = "{key_hash}"
scopes = ["send", "read"]

[delivery]
providers = ["mailgun"]

[providers.mailgun]
type = "mailgun"
api_key = "key-e2e"
domain = "mg.shop.test"
base_url = "{url}"

[provider_webhooks.mailgun]
signing_key = "{signing_key}"
"""


def queued(_: Recorded) -> Reply:
    return json_reply(200, {"id": "<e2e.1@mg.shop.test>", "message": "Queued. Thank you."})


@pytest.fixture
def mailgun() -> Iterator[MockApi]:
    yield from running(MockApi(MAILGUN, queued))


def test_api_send_to_mailgun_and_its_webhook_back(
    tmp_path: Path, mailgun: MockApi, gateway_factory: Callable[..., GatewayThread]
) -> None:
    config = make_config(
        tmp_path,
        CONFIG,
        key_hash=hash_api_key(API_KEY),
        url=mailgun.url,
        signing_key=SIGNING_KEY,
    )
    clock = FakeClock()
    gw = gateway_factory(config, clock=clock, deliver=False)
    base = f"http://127.0.0.1:{gw.gateway.http_port}"
    with httpx.Client(base_url=base, timeout=20) as client:
        response = client.post(
            "/v1/messages",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={
                "from": "news@shop.test",
                "to": ["ann@example.org"],
                "subject": "Spring sale",
                "text": "Hello Ann",
                "tags": ["spring"],
                "metadata": {"campaign": "c-42"},
            },
        )
        assert response.status_code == 202, response.text
        message_id = response.json()["id"]
        gw.call(gw.gateway.dispatcher.run_once())
        [delivery] = gw.call(gw.gateway.store.list_deliveries(DeliveryFilter()))
        assert delivery.status == DeliveryStatus.DELIVERED
        assert delivery.provider_message_id == "e2e.1@mg.shop.test"
        [request] = mailgun.requests
        assert request.problems == []
        fields = {
            name: value
            for name, value, _ in multipart_parts(request.headers["Content-Type"], request.body)
        }
        assert fields["o:tag"] == b"spring"
        assert fields["v:campaign"] == b"c-42"
        assert fields["v:gw_message_id"] == message_id.encode()
        assert fields["v:gw_delivery_id"] == str(delivery.id).encode()
        assert b"Subject: Spring sale" in fields["message"]

        # Mailgun reports a permanent failure, with the variables it was given.
        event = json.loads(
            (SPECS / "webhook-samples/mailgun/event-data--failed-permanent.json").read_text()
        )
        event.update(id=secrets.token_hex(8), recipient="ann@example.org", timestamp=clock.now())
        event["message"]["headers"]["message-id"] = delivery.provider_message_id
        event["user-variables"] = {
            "campaign": "c-42",
            "gw_message_id": message_id,
            "gw_delivery_id": str(delivery.id),
        }
        stamp, token = str(int(clock.now())), secrets.token_hex(25)
        signature = {
            "timestamp": stamp,
            "token": token,
            "signature": mailgun_signature(SIGNING_KEY, stamp, token),
        }
        hook = client.post("/webhooks/mailgun", json={"signature": signature, "event-data": event})
        assert hook.status_code == 200, hook.text
        assert hook.json() == {"accepted": 1, "duplicates": 0, "unmatched": 0}

        status = client.get(
            f"/v1/messages/{message_id}", headers={"Authorization": f"Bearer {API_KEY}"}
        ).json()
        [recipient] = status["recipients"]
        assert recipient["status"] == "bounced"
        assert "bounced" in [e["type"] for e in status["events"]]
    [entry] = gw.call(gw.gateway.store.list_suppressions("acme"))
    assert (entry.address, entry.reason) == ("ann@example.org", "bounce")
