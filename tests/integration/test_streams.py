"""Message streams end to end: chosen over SMTP (listener, user, stripped header) and HTTP,
stored on the message, shown in its status, carried by events and metrics, routed to the
stream's own providers, and List-Unsubscribe and tracking defaults applied per stream."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.clock import FakeClock
from gateway.config import ConfigError
from gateway.passwords import hash_password
from gateway.store.base import DeliveryFilter
from gateway.tenants import generate_api_key, hash_api_key
from tests.conftest import GatewayThread, Sink, make_config
from tests.plugins.tracking_env import BASE_URL, KEY1, parse

API_KEY = generate_api_key()
PASSWORD = "correct horse battery staple"

CONFIG = """
[smtp]
listeners = [
  {{ name = "dev", port = 0, tls = "none", insecure_auth = true }},
  {{ name = "news", port = 0, tls = "none", insecure_auth = true, stream = "newsletter" }},
]

[http]
enabled = true
port = 0
rate_limit = 0.0

[tracking]
base_url = "{base_url}"
signing_key = "k1"
[tracking.keys]
k1 = "{key1}"

[tenants.default]
smtp_networks = ["127.0.0.1/32"]

[[tenants.default.smtp_users]]
username = "promo-app"
password_hash = "{password_hash}"
stream = "promos"

[[tenants.default.api_keys]]
name = "app"
key_hash = "{key_hash}"
scopes = ["admin"]

[tenants.default.streams.newsletter]
kind = "broadcast"

[tenants.default.streams.promos]
kind = "broadcast"
providers = ["bulk"]
tracking = {{ opens = true, clicks = false }}

[tenants.default.webhooks.crm]
url = "http://127.0.0.1:9/hooks"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[delivery]
providers = ["relay"]
retry_schedule = ["5m"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"

[providers.bulk]
type = "smtp"
host = "127.0.0.1"
port = {bulk_port}
tls = "none"

[plugins.click_tracking]
[plugins.list_unsubscribe]
"""

HTML = (
    "From: app@example.com\r\nTo: ann@example.org\r\nSubject: Hi\r\n"
    "Content-Type: text/html; charset=utf-8\r\n{extra}\r\n"
    '<html><body><a href="https://shop.example.com/sale">Sale</a></body></html>\r\n'
)


@pytest.fixture
def bulk_sink() -> Iterator[Sink]:
    server = Sink()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def streams_gateway(
    tmp_path: Path, sink: Sink, bulk_sink: Sink, gateway_factory
) -> Iterator[GatewayThread]:
    config = make_config(
        tmp_path,
        CONFIG,
        base_url=BASE_URL,
        key1=KEY1,
        password_hash=hash_password(PASSWORD, log2_n=10),
        key_hash=hash_api_key(API_KEY),
        port=sink.port,
        bulk_port=bulk_sink.port,
    )
    yield gateway_factory(config, clock=FakeClock(), deliver=False)


def smtp_send(gw: GatewayThread, listener: str, raw: str, login: bool = False) -> None:
    with smtplib.SMTP("127.0.0.1", gw.port(listener)) as client:
        if login:
            client.login("promo-app", PASSWORD)
        client.sendmail("app@example.com", ["ann@example.org"], raw.encode())


def streams_by_message(gw: GatewayThread) -> dict[str, str]:
    deliveries = gw.call(gw.gateway.store.list_deliveries(DeliveryFilter(limit=100)))
    out = {}
    for d in deliveries:
        message = gw.call(gw.gateway.store.get_message(d.message_id))
        assert message is not None
        out[message.id] = message.stream
    return out


def test_smtp_picks_the_stream_from_header_user_and_listener(
    streams_gateway: GatewayThread, sink: Sink, bulk_sink: Sink
) -> None:
    gw = streams_gateway
    smtp_send(gw, "dev", HTML.format(extra=""))
    smtp_send(gw, "dev", HTML.format(extra="X-Gateway-Stream: Newsletter\r\n"))
    smtp_send(gw, "news", HTML.format(extra=""))
    smtp_send(gw, "news", HTML.format(extra=""), login=True)
    assert sorted(streams_by_message(gw).values()) == [
        "newsletter",
        "newsletter",
        "promos",
        "transactional",
    ]
    with pytest.raises(smtplib.SMTPDataError) as refused:
        smtp_send(gw, "dev", HTML.format(extra="X-Gateway-Stream: nope\r\n"))
    assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error
    gw.call(gw.gateway.dispatcher.run_once())
    # The stream's own providers: promos went to the bulk relay, the rest to the main one.
    assert len(bulk_sink.messages) == 1 and len(sink.messages) == 3
    for received in [*sink.messages, *bulk_sink.messages]:
        assert b"x-gateway-stream" not in received.data.lower()
    by_list_unsubscribe = sorted(
        "List-Unsubscribe" in parse(m.data) for m in [*sink.messages, *bulk_sink.messages]
    )
    assert by_list_unsubscribe == [False, True, True, True]  # every broadcast message has it
    # promos does not track clicks; newsletter does; transactional does too (the default).
    promo = parse(bulk_sink.messages[0].data)
    assert "https://shop.example.com/sale" in promo.get_body(("html",)).get_content()
    for m in sink.messages:
        assert "shop.example.com" not in parse(m.data).get_body(("html",)).get_content()


def test_http_stream_field_status_events_and_metrics(streams_gateway: GatewayThread) -> None:
    gw = streams_gateway
    url = f"http://127.0.0.1:{gw.gateway.http_port}"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {
        "from": "app@example.com",
        "to": ["ann@example.org"],
        "subject": "News",
        "text": "hello",
        "stream": "newsletter",
    }
    sent = httpx.post(f"{url}/v1/messages", json=body, headers=auth)
    assert sent.status_code == 202, sent.text
    unknown = httpx.post(f"{url}/v1/messages", json={**body, "stream": "nope"}, headers=auth)
    assert unknown.status_code == 422 and unknown.json()["field"] == "stream"
    status = httpx.get(f"{url}/v1/messages/{sent.json()['id']}", headers=auth).json()
    assert status["stream"] == "newsletter"
    plain = httpx.post(f"{url}/v1/messages", json={**body, "stream": None}, headers=auth)
    assert plain.status_code == 202
    listed = httpx.get(f"{url}/v1/messages", params={"stream": "newsletter"}, headers=auth)
    assert [m["id"] for m in listed.json()["data"]] == [sent.json()["id"]]
    stats = httpx.get(f"{url}/v1/stats", params={"stream": "newsletter"}, headers=auth).json()
    assert stats["by_status"] == {"queued": 1}
    every = httpx.get(f"{url}/v1/stats", headers=auth).json()
    assert every["by_stream"] == {"newsletter": {"queued": 1}, "transactional": {"queued": 1}}
    gw.call(gw.gateway.dispatcher.run_once())
    events = gw.call(gw.gateway.store.list_webhook_events("default"))
    assert sorted(b'"stream":"newsletter"' in e.payload for e in events) == [False, True]
    text = httpx.get(f"{url}/metrics").text
    assert 'gateway_events_total{stream="newsletter",tenant="default",type="delivered"} 1.0' in text


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ("[tenants.default.streams.transactional]\nkind = 'broadcast'\n", "kind"),
        ("[tenants.default.streams.News]\n", "stream name"),
        ("[tenants.default.streams.news]\nlist_unsubscribe = false\n", "always has"),
        ("[tenants.default.streams.news]\nproviders = ['nope']\n", "no provider"),
    ],
)
def test_stream_configuration_errors_name_the_key(tmp_path: Path, table: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        make_config(tmp_path, table)
