"""A gateway with the tracking plugins on, its HTTP endpoints on a loopback port, relaying to
the real sink; mail is submitted over SMTP (or the HTTP API) and delivered with
``run_once`` under a ``FakeClock``, so every test controls time without sleeping."""

from __future__ import annotations

import email
import smtplib
from collections.abc import Callable, Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx

from gateway.clock import FakeClock
from gateway.store.base import DeliveryFilter, MessageEvent
from gateway.tenants import generate_api_key, hash_api_key
from tests.conftest import GatewayThread, Received, Sink, make_config

BASE_URL = "https://t.example.test"
KEY1 = "first-key-0123456789abcdef0123456789"
KEY2 = "second-key-0123456789abcdef012345678"
API_KEY = generate_api_key()

CONFIG = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[http]
enabled = true
port = 0
rate_limit = 0.0

[tracking]
base_url = "{base_url}"
signing_key = "{signing_key}"
token_lifetime = "30d"

[tracking.keys]
{keys}

[tenants.default]
smtp_networks = ["127.0.0.1/32"]

[[tenants.default.api_keys]]
name = "app"
key_hash = "{key_hash}"
scopes = ["admin"]

[delivery]
providers = ["relay"]
retry_schedule = ["5m"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"

{plugins}
"""

ALL_PLUGINS = "[plugins.click_tracking]\n[plugins.open_pixel]\n[plugins.list_unsubscribe]\n"


class Tracked:
    """The running gateway, its clock, the sink and an httpx client for ``/t/...``."""

    def __init__(self, gw: GatewayThread, clock: FakeClock, sink: Sink) -> None:
        self.gw = gw
        self.clock = clock
        self.sink = sink
        port = gw.gateway.http_port
        assert port is not None
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def send(self, raw: bytes, *recipients: str, sender: str = "app@example.com") -> None:
        with smtplib.SMTP("127.0.0.1", self.gw.port("dev")) as client:
            client.sendmail(sender, list(recipients), raw)

    def deliver(self) -> int:
        return self.gw.call(self.gw.gateway.dispatcher.run_once())

    def received(self, recipient: str) -> Received:
        (message,) = self.sink.to(recipient)
        return message

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        """GET a tracking URL from a message (its base is the public name, not loopback)."""
        assert url.startswith(BASE_URL + "/t/"), url
        return self.http.get(url.removeprefix(BASE_URL), **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        assert url.startswith(BASE_URL + "/t/"), url
        return self.http.post(url.removeprefix(BASE_URL), **kwargs)

    def events(self, message_id: str) -> list[MessageEvent]:
        return [
            e
            for e in self.gw.call(self.gw.gateway.store.timeline(message_id))
            if e.type in ("opened", "clicked", "unsubscribed")
        ]

    def message_ids(self) -> list[str]:
        deliveries = self.gw.call(self.gw.gateway.store.list_deliveries(DeliveryFilter()))
        return sorted({d.message_id for d in deliveries})

    def deliveries(self) -> list[Any]:
        return self.gw.call(self.gw.gateway.store.list_deliveries(DeliveryFilter(limit=1000)))


def tracking_config(
    tmp_path: Path,
    sink_port: int,
    plugins: str = ALL_PLUGINS,
    keys: dict[str, str] | None = None,
    signing_key: str = "k1",
) -> Any:
    keys = keys if keys is not None else {"k1": KEY1}
    return make_config(
        tmp_path,
        CONFIG,
        base_url=BASE_URL,
        signing_key=signing_key,
        keys="\n".join(f'{k} = "{v}"' for k, v in keys.items()),
        key_hash=hash_api_key(API_KEY),
        port=sink_port,
        plugins=plugins,
    )


def tracked_gateways(
    tmp_path: Path, sink: Sink, gateway_factory: Callable[..., GatewayThread]
) -> Iterator[Callable[..., Tracked]]:
    """Body of each test module's ``tracked_factory`` fixture."""
    made: list[Tracked] = []

    def factory(**kwargs: Any) -> Tracked:
        clock = FakeClock()
        config = tracking_config(tmp_path, sink.port, **kwargs)
        tracked = Tracked(gateway_factory(config, clock=clock, deliver=False), clock, sink)
        made.append(tracked)
        return tracked

    yield factory
    for tracked in made:
        tracked.http.close()


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=policy.SMTP)
    assert isinstance(message, EmailMessage)
    return message


def html_of(data: bytes) -> str:
    part = parse(data).get_body(("html",))
    assert part is not None
    return str(part.get_content())


def text_of(data: bytes) -> str:
    part = parse(data).get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def mime(html: str, *, encoding: str = "quoted-printable", text: str | None = None) -> bytes:
    """A message with an HTML part (and a text part) in the given transfer encoding."""
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = "app@example.com"
    message["To"] = "ann@example.org"
    message["Subject"] = "Links"
    if text is not None:
        message.set_content(text, cte="quoted-printable")
        message.add_alternative(html, subtype="html", cte=encoding)
    else:
        message.set_content(html, subtype="html", cte=encoding)
    return message.as_bytes()
