"""Failover acceptance with an HTTP provider: the primary is the Mailgun API (a mock that
checks every request against Mailgun's published spec) answering 500; traffic moves to the
SMTP secondary, the primary's breaker opens, and closes again once the API recovers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.message import DeliveryStatus
from tests.conftest import Sink, make_config
from tests.providers.mock_api import MockApi, Recorded, Reply, json_reply, running
from tests.providers.spec_check import MAILGUN
from tests.routing.support import SilentServer, attempts_of, delivery_of, run_once, submit

CONFIG = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[delivery]
providers = ["mailgun", "relay"]
retry_schedule = ["5m"]

[providers.mailgun]
type = "mailgun"
api_key = "key-failover"
domain = "mg.example.com"
base_url = "{url}"

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"

[routing.breaker]
failures = 3
cooldown = "30s"
"""


def queued(_: Recorded) -> Reply:
    return json_reply(200, {"id": "<ok.1@mg.example.com>", "message": "Queued. Thank you."})


@pytest.fixture
def mailgun() -> Iterator[MockApi]:
    yield from running(MockApi(MAILGUN, queued))


def test_http_500s_fail_over_open_the_breaker_and_it_closes_on_recovery(
    tmp_path: Path, mailgun: MockApi, sink: Sink, gateway_factory
) -> None:
    clock = FakeClock()
    config = make_config(tmp_path, CONFIG, url=mailgun.url, port=sink.port)
    gw = gateway_factory(config, clock=clock, deliver=False)
    mailgun.scripted = [json_reply(500, {"message": "internal error"})] * 3
    for i in range(1, 4):
        submit(gw, f"u{i}@example.org")
        assert run_once(gw) == 1
        assert [(a.provider, a.outcome) for a in attempts_of(gw, f"u{i}@example.org")] == [
            ("mailgun", "soft_fail"),
            ("relay", "sent"),
        ]
    assert gw.gateway.router.breaker_states()["mailgun"] == "open"
    assert len(mailgun.requests) == 3
    assert all(not r.problems for r in mailgun.requests)  # well-formed requests, refused

    submit(gw, "u4@example.org")
    assert run_once(gw) == 1
    assert len(mailgun.requests) == 3  # not even tried while open
    assert [a.provider for a in attempts_of(gw, "u4@example.org")] == ["relay"]

    clock.advance(30)
    submit(gw, "u5@example.org")
    assert run_once(gw) == 1
    recovered = delivery_of(gw, "u5@example.org")
    assert (recovered.status, recovered.provider) == (DeliveryStatus.DELIVERED, "mailgun")
    assert recovered.provider_message_id == "ok.1@mg.example.com"
    assert gw.gateway.router.breaker_states()["mailgun"] == "closed"
    # each message went out once: u1-u4 at the relay only, u5 at Mailgun only
    assert [len(sink.to(f"u{i}@example.org")) for i in range(1, 6)] == [1, 1, 1, 1, 0]
    assert len(mailgun.requests) == 4


def test_an_api_that_never_answers_the_request_is_not_failed_over(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    """The request went out and no response came: Mailgun may have queued the message, so
    the relay must not send a second copy now; the delivery waits for the retry schedule."""
    silent = SilentServer()
    silent.start()
    try:
        config = make_config(
            tmp_path,
            CONFIG.replace('base_url = "{url}"', 'base_url = "{url}"\ntimeout = 1'),
            url=f"http://127.0.0.1:{silent.port}",
            port=sink.port,
        )
        gw = gateway_factory(config, clock=FakeClock(), deliver=False)
        submit(gw, "t1@example.org")
        assert run_once(gw) == 1
        waiting = delivery_of(gw, "t1@example.org")
        assert waiting.status is DeliveryStatus.DEFERRED
        (only,) = attempts_of(gw, "t1@example.org")
        assert (only.provider, only.outcome) == ("mailgun", "soft_fail")
        assert "ReadTimeout" in only.detail
        assert sink.to("t1@example.org") == []
        assert silent.connections == 1
    finally:
        silent.stop()
