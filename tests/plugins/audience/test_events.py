"""Black-box: hard bounces and complaints from the event path mark the contact, and the change
reaches the sender's webhook as ``contact.status_changed`` (through ``gateway_contact_event``);
a Redis spool with an embedded SQLite audience is refused unless single-node is declared."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest
from gateway_plugins.audience import ONE_CLICK_LIST
from gateway_plugins.audience.model import ConsentEvidence
from standardwebhooks.webhooks import Webhook

from gateway.config import ConfigError
from gateway.events import ContactEvent, Event, publish, publish_contact_event
from gateway.plugin_manager import hookimpl
from gateway.server import Gateway
from tests.conftest import Sink, make_config, wait_until
from tests.ops.conftest import new_secret
from tests.plugins.audience.conftest import AudienceGateway, Receiver


def test_a_hard_bounce_marks_the_contact_and_the_sender_hears_of_it(
    audience_gateway: Callable[..., AudienceGateway], sink: Sink, receiver: Receiver
) -> None:
    secret = new_secret()
    running = audience_gateway(
        f'[tenants.acme.webhooks.crm]\nurl = "{receiver.url}"\nsecret = "{secret}"\n'
        'events = ["contact.status_changed"]\n'
    )
    gw = running.gw
    gone, _ = gw.call(running.store.upsert_contact("acme", "Gone@Example.org"))
    kept, _ = gw.call(running.store.upsert_contact("acme", "ann@example.org"))
    sink.script("gone@example.org", "RCPT", ["550 5.1.1 no such user"])
    with smtplib.SMTP("127.0.0.1", gw.port("dev"), timeout=20) as client:
        client.sendmail(
            "app@acme.test",
            ["ann@example.org", "gone@example.org"],
            "From: app@acme.test\r\nSubject: hi\r\n\r\nbody\r\n",
        )
    wait_until(lambda: len(receiver.received()) >= 1, 20, "a contact webhook")
    [request] = receiver.received()
    payload = Webhook(secret).verify(request.body, request.headers)
    assert payload["type"] == "contact.status_changed"
    assert payload["data"]["contact_id"] == gone.id
    assert payload["data"]["data"]["status"] == "bounced"
    assert gw.call(running.store.get_contact("acme", gone.id)).status == "bounced"
    assert gw.call(running.store.get_contact("acme", kept.id)).status == "active"


def test_complaints_outrank_bounces_and_soft_bounces_change_nothing(
    audience_gateway: Callable[..., AudienceGateway],
) -> None:
    running = audience_gateway()
    gw, store = running.gw, running.store
    ann, _ = gw.call(store.upsert_contact("acme", "ann@example.org"))
    seen: list[ContactEvent] = []

    class Observer:
        @staticmethod
        def gateway_contact_event(event: ContactEvent) -> None:
            seen.append(event)

    hookimpl(Observer.gateway_contact_event)
    gw.gateway.pm.register(Observer, name="observer")

    def event(kind: str, bounce: str = "") -> Event:
        return Event(
            type=kind,  # type: ignore[arg-type]
            tenant="acme",
            recipient="ANN@example.org",
            at=running.clock.now(),
            bounce=bounce,  # type: ignore[arg-type]
        )

    gw.call(publish(gw.gateway, event("bounced", "soft"), record=False))
    gw.call(publish(gw.gateway, event("unsubscribed"), record=False))
    assert gw.call(store.get_contact("acme", ann.id)).status == "active"
    gw.call(publish(gw.gateway, event("complained"), record=False))
    gw.call(publish(gw.gateway, event("bounced", "hard"), record=False))
    assert gw.call(store.get_contact("acme", ann.id)).status == "complained"
    assert [(e.type, e.source, e.data["status"]) for e in seen] == [
        ("status_changed", "complaint", "complained")
    ]

    # An observer that raises is logged, never raised to the code that changed the contact.
    class Broken:
        @staticmethod
        def gateway_contact_event(event: ContactEvent) -> None:
            raise RuntimeError("observer bug")

    hookimpl(Broken.gateway_contact_event)
    gw.gateway.pm.register(Broken, name="broken")
    gw.call(
        publish_contact_event(
            gw.gateway,
            ContactEvent(type="imported", tenant="acme", contact_id=ann.id, email="", at=0.0),
        )
    )


def test_a_one_click_unsubscribe_for_a_list_ends_that_subscription_only(
    audience_gateway: Callable[..., AudienceGateway],
) -> None:
    running = audience_gateway()
    gw, store = running.gw, running.store
    ann, _ = gw.call(store.upsert_contact("acme", "ann@example.org"))
    evidence = ConsentEvidence(method="api")
    news = gw.call(store.create_list("acme", "News", opt_in="single", visibility="public"))
    deals = gw.call(store.create_list("acme", "Deals", opt_in="single", visibility="public"))
    for listed in (news, deals):
        gw.call(store.subscribe("acme", listed.id, ann.id, status="active", evidence=evidence))
    seen: list[ContactEvent] = []

    class Observer:
        @staticmethod
        def gateway_contact_event(event: ContactEvent) -> None:
            seen.append(event)

    hookimpl(Observer.gateway_contact_event)
    gw.gateway.pm.register(Observer, name="observer")

    def unsubscribed(data: dict[str, str], tenant: str = "acme", metadata: bool = False) -> None:
        event = Event(
            type="unsubscribed",
            tenant=tenant,
            recipient="Ann@Example.org",
            at=running.clock.now(),
            message_id="m1",
            **({"metadata": data} if metadata else {"data": data}),  # type: ignore[arg-type]
        )
        gw.call(publish(gw.gateway, event, record=False))

    unsubscribed({})  # no list named: not the audience's to change
    unsubscribed({ONE_CLICK_LIST: str(news.id)}, tenant="globex")  # another tenant's event
    unsubscribed({ONE_CLICK_LIST: "999"})  # no such list
    assert {s.status for s in gw.call(store.subscriptions_of("acme", ann.id))} == {"active"}
    unsubscribed({ONE_CLICK_LIST: str(news.id)}, metadata=True)
    states = {
        s.list_id: (s.status, s.source) for s in gw.call(store.subscriptions_of("acme", ann.id))
    }
    assert states == {news.id: ("unsubscribed", "one-click"), deals.id: ("active", "api")}
    assert gw.call(store.get_contact("acme", ann.id)).status == "active"
    assert [(e.type, e.list_id, e.source) for e in seen] == [("unsubscribed", news.id, "one-click")]


@pytest.mark.parametrize("single_node", [False, True])
def test_a_redis_spool_with_an_sqlite_audience_needs_single_node(
    tmp_path: Path, single_node: bool
) -> None:
    toml = (
        '[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:1/0"\n'
        f"[plugins.audience]\nsingle_node = {json.dumps(single_node)}\n"
    )
    config = make_config(tmp_path, toml)
    if single_node:
        Gateway(config)  # configured; the Redis store is only reached at start
        return
    with pytest.raises(ConfigError, match=r"plugins\.audience\.url: the spool is shared in Redis"):
        Gateway(config)
