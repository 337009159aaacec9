"""Routing by what a provider can carry: SMTPUTF8 mail skips the ESP APIs (which take only
ASCII addresses), IDN domains go out as A-labels, and a recipient no candidate can carry
fails alone — its ASCII and IDN co-recipients are delivered.

SES is a loopback API recording each request; the relay is the SMTPUTF8-capable sink."""

from __future__ import annotations

import smtplib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.message import DeliveryStatus
from tests.conftest import GatewayThread, Sink, make_config
from tests.providers.mock_api import MockApi, Recorded, Reply, json_reply, running
from tests.routing.support import delivery_of, run_once

CONFIG = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[delivery]
providers = {providers}
retry_schedule = ["5m"]

[providers.ses]
type = "ses"
region = "eu-west-1"
access_key_id = "AKIDTESTKEY"
secret_access_key = "made-for-this-test"
endpoint = "{url}"

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
"""

ASCII, IDN, EAI = "ann@example.org", "bob@bücher.example", "jörg@example.org"
BODY = (
    b"From: <app@example.com>\r\nTo: undisclosed-recipients:;\r\nSubject: capabilities\r\n"
    b"Message-ID: <caps@example.com>\r\n\r\nhello\r\n"
)


def accepted(_: Recorded) -> Reply:
    return json_reply(200, {"MessageId": f"0102{uuid.uuid4().hex}"})


@pytest.fixture
def ses() -> Iterator[MockApi]:
    yield from running(MockApi(None, accepted))


def start(
    tmp_path: Path, factory: Callable[..., GatewayThread], ses: MockApi, sink: Sink, providers: str
) -> GatewayThread:
    config = make_config(tmp_path, CONFIG, providers=providers, url=ses.url, port=sink.port)
    gw = factory(config, clock=FakeClock(), deliver=False)
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail("app@example.com", [ASCII, IDN, EAI], BODY, mail_options=["SMTPUTF8"])
    return gw


def destinations(ses: MockApi) -> list[str]:
    return [r.json()["Destination"]["ToAddresses"][0] for r in ses.requests]


def test_an_uncarriable_recipient_fails_alone_and_idn_goes_out_as_a_labels(
    tmp_path: Path, sink: Sink, ses: MockApi, gateway_factory
) -> None:
    gw = start(tmp_path, gateway_factory, ses, sink, '["ses"]')
    assert run_once(gw) == 3
    assert sorted(destinations(ses)) == ["ann@example.org", "bob@xn--bcher-kva.example"]
    assert delivery_of(gw, ASCII).status is DeliveryStatus.DELIVERED
    assert delivery_of(gw, IDN).status is DeliveryStatus.DELIVERED
    eai = delivery_of(gw, EAI)
    assert eai.status is DeliveryStatus.BOUNCED
    assert eai.last_error == (
        "no provider can carry this delivery: "
        "ses cannot carry SMTPUTF8 mail (a non-ASCII address or header)"
    )
    assert sink.messages == []


def test_routing_skips_a_provider_that_cannot_carry_the_delivery(
    tmp_path: Path, sink: Sink, ses: MockApi, gateway_factory
) -> None:
    gw = start(tmp_path, gateway_factory, ses, sink, '["ses", "relay"]')
    assert run_once(gw) == 3
    assert sorted(destinations(ses)) == ["ann@example.org", "bob@xn--bcher-kva.example"]
    eai = delivery_of(gw, EAI)
    assert eai.status is DeliveryStatus.DELIVERED and eai.provider == "relay"
    [received] = sink.to(EAI)
    assert received.rcpt_tos == [EAI]  # the sink only accepts it with SMTPUTF8
