"""Scoped suppression end to end in one gateway: a one-click unsubscribe from a broadcast
stream stops that stream only; a complaint stops everything; plugins may add scopes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.events import Event, publish
from gateway.plugin_manager import hookimpl
from gateway.store.base import Suppression
from tests.conftest import GatewayThread, Sink
from tests.plugins.tracking_env import ALL_PLUGINS, Tracked, parse, tracked_gateways

STREAMS = """
[plugins.suppression]

[tenants.default.streams.newsletter]
kind = "broadcast"
"""


@pytest.fixture
def tracked_factory(
    tmp_path: Path, sink: Sink, gateway_factory: Callable[..., GatewayThread]
) -> Iterator[Callable[..., Tracked]]:
    yield from tracked_gateways(tmp_path, sink, gateway_factory)


def mail(stream: str = "") -> bytes:
    header = f"X-Gateway-Stream: {stream}\r\n" if stream else ""
    return (
        f"From: app@example.com\r\nTo: ann@example.org\r\nSubject: Hi\r\n{header}\r\nHello\r\n"
    ).encode()


def outcomes(t: Tracked) -> list[tuple[str, str, str]]:
    """(stream, status, last_error) of every delivery, oldest first."""
    out = []
    for d in sorted(t.deliveries(), key=lambda d: d.id):
        message = t.gw.call(t.gw.gateway.store.get_message(d.message_id))
        out.append((message.stream, d.status.value, d.last_error))
    return out


def test_unsubscribe_from_a_broadcast_stream_spares_transactional_mail_until_a_complaint(
    tracked_factory: Callable[..., Tracked],
) -> None:
    t = tracked_factory(plugins=ALL_PLUGINS + STREAMS)
    t.send(mail("newsletter"), "ann@example.org")
    t.deliver()
    (first,) = t.sink.to("ann@example.org")
    url = parse(first.data)["List-Unsubscribe"].strip("<>")
    assert t.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    (entry,) = t.gw.call(t.gw.gateway.store.list_suppressions("default"))
    assert (entry.address, entry.reason, entry.scope) == (
        "ann@example.org",
        "unsubscribe",
        "stream:newsletter",
    )

    t.send(mail("newsletter"), "ann@example.org")
    t.send(mail(), "ann@example.org")
    t.deliver()
    assert outcomes(t)[1:] == [
        ("newsletter", "skipped", "unsubscribed (stream:newsletter)"),
        ("transactional", "delivered", ""),
    ]

    gateway = t.gw.gateway
    complaint = Event(type="complained", tenant="default", recipient="ann@example.org", at=0.0)
    t.gw.call(publish(gateway, complaint))
    added = [e for e in gateway.metrics.recent_events if e.type == "suppressed"]
    assert [(e.data["reason"], e.data["scope"], e.stream) for e in added] == [
        ("unsubscribe", "stream:newsletter", "newsletter"),
        ("complaint", "tenant", "transactional"),
    ]
    t.send(mail("newsletter"), "ann@example.org")
    t.send(mail(), "ann@example.org")
    t.deliver()
    assert outcomes(t)[3:] == [
        ("newsletter", "skipped", "complained"),
        ("transactional", "skipped", "complained"),
    ]


class ListScopes:
    """What the audience layer will do: its lists are scopes of their own."""

    @hookimpl
    def gateway_suppression_scopes(self, message: Any) -> list[str]:
        return ["list:vip"] if message.stream == "newsletter" else []


def test_plugins_add_scopes_with_gateway_suppression_scopes(
    tracked_factory: Callable[..., Tracked],
) -> None:
    t = tracked_factory(plugins=ALL_PLUGINS + STREAMS)
    t.gw.gateway.pm.register(ListScopes(), name="list_scopes")
    t.gw.call(
        t.gw.gateway.store.add_suppressions(
            [
                Suppression(
                    tenant="default",
                    address="ann@example.org",
                    reason="manual",
                    created_at=0.0,
                    scope="list:vip",
                )
            ]
        )
    )
    t.send(mail("newsletter"), "ann@example.org")
    t.send(mail(), "ann@example.org")
    t.deliver()
    assert outcomes(t) == [
        ("newsletter", "skipped", "suppressed (list:vip)"),
        ("transactional", "delivered", ""),
    ]


def test_an_ignored_reason_in_one_scope_does_not_hide_another_scope(
    tracked_factory: Callable[..., Tracked],
) -> None:
    config = STREAMS.replace(
        "[plugins.suppression]\n", '[plugins.suppression]\nignore_reasons = ["bounce"]\n'
    )
    t = tracked_factory(plugins=ALL_PLUGINS + config)
    entries = [
        Suppression(tenant="default", address="ann@example.org", reason="bounce", created_at=0.0),
        Suppression(
            tenant="default",
            address="ann@example.org",
            reason="unsubscribe",
            created_at=0.0,
            scope="stream:newsletter",
        ),
    ]
    t.gw.call(t.gw.gateway.store.add_suppressions(entries))
    t.send(mail("newsletter"), "ann@example.org")
    t.send(mail(), "ann@example.org")
    t.deliver()
    assert outcomes(t) == [
        ("newsletter", "skipped", "unsubscribed (stream:newsletter)"),
        ("transactional", "delivered", ""),
    ]
