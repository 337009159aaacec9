"""A running gateway (HTTP API on loopback, the capture provider, a fake clock) with every
provider webhook switched on and keys generated at test time, plus messages already
delivered to post events about."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.clock import FakeClock
from gateway.message import Delivery, Message, new_message_id
from gateway.store.base import DeliveryFilter, MessageEvent, Suppression
from tests.conftest import GatewayThread, make_config

MAILGUN_KEY = "mailgun-signing-key-made-for-this-test"
POSTMARK_USER, POSTMARK_PASSWORD = "postmark", "hook-password-for-tests"
TENANT = "default"

CONFIG = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[http]
enabled = true
port = 0
docs = false

[provider_webhooks.sendgrid]
public_key = "{sendgrid_key}"

[provider_webhooks.mailgun]
signing_key = "{mailgun_key}"

[provider_webhooks.postmark]
username = "{postmark_user}"
password = "{postmark_password}"

{extra}
"""


class WebhookEnv:
    def __init__(
        self, gw: GatewayThread, clock: FakeClock, sendgrid_key: ec.EllipticCurvePrivateKey
    ):
        self.gw = gw
        self.clock = clock
        self.sendgrid_key = sendgrid_key
        port = gw.gateway.http_port
        assert port is not None
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20)

    @property
    def store(self) -> Any:
        return self.gw.gateway.store

    def deliver(self, *recipients: str) -> tuple[str, list[Delivery]]:
        """Queue one message to ``recipients`` and deliver it (capture provider)."""
        now = self.clock.now()
        message = Message(
            id=new_message_id(),
            tenant=TENANT,
            mail_from="news@shop.example",
            raw=b"From: news@shop.example\r\nSubject: Hi\r\n\r\nHello\r\n",
            created_at=now,
        )
        self.gw.call(self.store.enqueue(message, list(recipients), expires_at=now + 86400))
        self.gw.call(self.gw.gateway.dispatcher.run_once())
        return message.id, self.deliveries(message.id)

    def deliveries(self, message_id: str) -> list[Delivery]:
        found: list[Delivery] = self.gw.call(
            self.store.list_deliveries(DeliveryFilter(message_id=message_id))
        )
        return sorted(found, key=lambda d: d.id)

    def suppressions(self) -> dict[str, Suppression]:
        entries = self.gw.call(self.store.list_suppressions(TENANT))
        return {e.address: e for e in entries}

    def timeline(self, message_id: str) -> list[MessageEvent]:
        events: list[MessageEvent] = self.gw.call(self.store.timeline(message_id))
        return events

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post(path, content=body, headers=headers or {})


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def make_env(
    tmp_path: Path, gateway_factory: Callable[..., GatewayThread], extra: str = ""
) -> WebhookEnv:
    key = ec.generate_private_key(ec.SECP256R1())
    config = make_config(
        tmp_path,
        CONFIG,
        sendgrid_key=public_key_b64(key),
        mailgun_key=MAILGUN_KEY,
        postmark_user=POSTMARK_USER,
        postmark_password=POSTMARK_PASSWORD,
        extra=extra,
    )
    clock = FakeClock()
    gw = gateway_factory(config, clock=clock, deliver=False)
    return WebhookEnv(gw, clock, key)


@pytest.fixture
def env(tmp_path: Path, gateway_factory: Callable[..., GatewayThread]) -> Iterator[WebhookEnv]:
    environment = make_env(tmp_path, gateway_factory)
    yield environment
    environment.client.close()
