"""One client sending message after message: what each message costs the spool writer.

Accepting a message due now stores it with its deliveries already claimed by the accepting
worker (one fsync'd transaction), and recording the outcome is the only other write: no claim
round trip, no "is anything due?" look-up after every delivery. A message with more
recipients than free delivery slots still goes through the queue.
"""

from __future__ import annotations

import smtplib

from gateway.message import DeliveryStatus
from gateway.store.base import DeliveryFilter
from gateway.store.sqlite import SqliteStore
from tests.conftest import RELAY_TO_SINK, GatewayThread, Sink, make_config, wait_until

# Two delivery slots ([delivery] holds retry_schedule).
CONFIG = RELAY_TO_SINK.replace(
    'retry_schedule = ["5m"]', 'retry_schedule = ["5m"]\nconcurrency = 2'
)


def body(n: int) -> bytes:
    return (
        f"From: App <app@example.com>\r\nTo: <user{n}@example.org>\r\nSubject: {n}\r\n\r\n"
        f"message {n}\r\n"
    ).encode()


def statuses(gw: GatewayThread) -> list[DeliveryStatus]:
    return [d.status for d in gw.call(gw.gateway.store.list_deliveries(DeliveryFilter()))]


def test_a_sequential_session_costs_two_spool_operations_per_message(
    tmp_path, sink: Sink, gateway_factory
) -> None:
    gw: GatewayThread = gateway_factory(make_config(tmp_path, CONFIG, port=sink.port))
    store = gw.gateway.store
    assert isinstance(store, SqliteStore)
    messages = 20
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail("app@example.com", ["user0@example.org"], body(0))
        wait_until(lambda: statuses(gw) == [DeliveryStatus.DELIVERED], what="the first")
        before = store.stats()["operations"]
        for n in range(1, messages + 1):
            client.sendmail("app@example.com", [f"user{n}@example.org"], body(n))
            wait_until(lambda n=n: len(sink.messages) == n + 1, what=f"message {n} at the sink")
        wait_until(
            lambda: statuses(gw).count(DeliveryStatus.DELIVERED) == messages + 1,
            what="every outcome recorded",
        )
        operations = store.stats()["operations"] - before
        # Two per message: the accept (deliveries claimed in it) and the outcome. The idle
        # dispatcher may look for due mail once a second meanwhile.
        assert operations <= 2 * messages + 4, f"{operations} spool operations for {messages}"

        # Three recipients, two free slots: stored queued, claimed by the dispatcher as
        # slots allow, all delivered.
        client.sendmail(
            "app@example.com", ["a@example.org", "b@example.org", "c@example.org"], body(99)
        )
    wait_until(
        lambda: statuses(gw).count(DeliveryStatus.DELIVERED) == messages + 4,
        what="the three-recipient message delivered",
    )
    assert len(sink.messages) == messages + 4
