"""The hook pipeline inside ``Dispatcher.process()``: order, verdicts, and failing plugins."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

from gateway.clock import FakeClock
from gateway.events import Event
from gateway.message import Defer, DeliveryStatus, Message, Skip
from gateway.plugin_manager import hookimpl, make_plugin_manager
from gateway.store.base import DeliveryFilter
from tests.conftest import RELAY_TO_SINK, GatewayThread, Sink, make_config

RELAY = RELAY_TO_SINK

BODY = b"From: app@example.com\r\nTo: user@example.org\r\nSubject: Hooks\r\n\r\nbody\r\n"


def start(
    tmp_path, sink: Sink, gateway_factory, *plugins: object
) -> tuple[GatewayThread, FakeClock]:
    pm = make_plugin_manager(builtins=(), entry_points=False)
    for i, plugin in enumerate(plugins):
        pm.register(plugin, name=f"test-plugin-{i}")
    clock = FakeClock()
    config = make_config(tmp_path, RELAY, port=sink.port)
    return gateway_factory(config, clock=clock, deliver=False, plugin_manager=pm), clock


def submit(gw: GatewayThread, recipient: str = "user@example.org") -> None:
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail("app@example.com", [recipient], BODY)


def only_delivery(gw: GatewayThread):
    (delivery,) = gw.call(gw.gateway.store.list_deliveries(DeliveryFilter()))
    return delivery


class Transforms:
    """Two transforms and a signer: each sees the previous output; signing sees the final."""

    def __init__(self) -> None:
        self.signed: list[bytes] = []

    @hookimpl
    def gateway_transform(self, message: Message) -> bytes:
        return message.raw.replace(b"body", b"body+first")

    @hookimpl
    def gateway_sign(self, message: Message) -> bytes:
        self.signed.append(message.raw)
        return b"X-Signed: yes\r\n"


class SecondTransform:
    @hookimpl
    async def gateway_transform(self, message: Message, delivery) -> bytes:
        return message.raw.replace(
            b"body+first", b"body+first+second to " + delivery.recipient.encode()
        )


def test_transforms_chain_in_order_and_signing_sees_the_final_bytes(
    tmp_path, sink: Sink, gateway_factory
) -> None:
    transforms = Transforms()
    # Registered last = called first: Transforms runs before SecondTransform.
    gw, _ = start(tmp_path, sink, gateway_factory, SecondTransform(), transforms)
    submit(gw)
    assert gw.call(gw.gateway.dispatcher.run_once()) == 1
    (received,) = sink.messages
    assert received.data.startswith(b"X-Signed: yes\r\nReceived: ")
    assert received.data.endswith(b"\r\n\r\nbody+first+second to user@example.org\r\n")
    assert transforms.signed == [received.data.removeprefix(b"X-Signed: yes\r\n")]
    stored = gw.call(gw.gateway.store.get_message(only_delivery(gw).message_id))
    assert stored.raw.endswith(b"\r\n\r\nbody\r\n"), "the spool keeps the original"


class Suppress:
    @hookimpl
    async def gateway_recipient_filter(self, delivery) -> Skip | None:
        return Skip("unsubscribed") if delivery.recipient.startswith("gone@") else None


def test_a_skip_is_recorded_and_nothing_is_sent(tmp_path, sink: Sink, gateway_factory) -> None:
    gw, _ = start(tmp_path, sink, gateway_factory, Suppress())
    submit(gw, "gone@example.org")
    gw.call(gw.gateway.dispatcher.run_once())
    delivery = only_delivery(gw)
    assert (delivery.status, delivery.last_error) == (DeliveryStatus.SKIPPED, "unsubscribed")
    assert sink.messages == []


class Cap:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.now = clock
        self.open_at = 0.0

    @hookimpl
    def gateway_permit(self, route: str) -> Defer | None:
        if self.now() < self.open_at:
            return Defer(self.open_at, f"{route}: daily cap reached")
        return None


def test_a_permit_deferral_waits_without_spending_an_attempt(
    tmp_path, sink: Sink, gateway_factory
) -> None:
    clock = FakeClock()
    cap = Cap(clock.now)
    cap.open_at = clock.now() + 3600
    pm = make_plugin_manager(builtins=(), entry_points=False)
    pm.register(cap, name="cap")
    gw = gateway_factory(
        make_config(tmp_path, RELAY, port=sink.port), clock=clock, deliver=False, plugin_manager=pm
    )
    submit(gw)
    gw.call(gw.gateway.dispatcher.run_once())
    held = only_delivery(gw)
    assert (held.status, held.attempts, held.next_attempt_at) == (
        DeliveryStatus.DEFERRED,
        0,
        cap.open_at,
    )
    assert "daily cap reached" in held.last_error
    clock.advance(3599)
    assert gw.call(gw.gateway.dispatcher.run_once()) == 0
    clock.advance(1)
    gw.call(gw.gateway.dispatcher.run_once())
    assert only_delivery(gw).status is DeliveryStatus.DELIVERED
    assert len(sink.messages) == 1


class Flaky:
    def __init__(self) -> None:
        self.broken = True

    @hookimpl
    def gateway_transform(self, message: Message) -> bytes | None:
        if self.broken:
            raise RuntimeError("template store unreachable")
        return None


def test_a_raising_plugin_defers_and_the_mail_goes_out_once_fixed(
    tmp_path, sink: Sink, gateway_factory
) -> None:
    flaky = Flaky()
    gw, clock = start(tmp_path, sink, gateway_factory, flaky)
    submit(gw)
    gw.call(gw.gateway.dispatcher.run_once())
    delivery = only_delivery(gw)
    assert delivery.status is DeliveryStatus.DEFERRED
    assert "plugin 'test-plugin-0' failed in gateway_transform" in delivery.last_error
    (attempt,) = gw.call(gw.gateway.store.attempts(delivery))
    assert (attempt.provider, attempt.outcome) == ("plugin:test-plugin-0", "error")
    assert sink.messages == []
    flaky.broken = False
    clock.advance(300)
    gw.call(gw.gateway.dispatcher.run_once())
    assert only_delivery(gw).status is DeliveryStatus.DELIVERED
    assert len(sink.messages) == 1


class Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @hookimpl
    async def gateway_delivery_result(self, delivery, status: str) -> None:
        self.seen.append((delivery.recipient, status))


def test_observers_see_each_outcome(tmp_path, sink: Sink, gateway_factory) -> None:
    observer = Observer()
    gw, _ = start(tmp_path, sink, gateway_factory, observer)
    sink.script("user@example.org", "RCPT", ["550 5.1.1 no such user"])
    submit(gw)
    gw.call(gw.gateway.dispatcher.run_once())
    assert observer.seen == [("user@example.org", "bounced")]


class EventObserver:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    async def gateway_event(self, event: Event) -> None:
        self.events.append(event)


def test_delivery_results_are_published_as_normalized_events(
    tmp_path, sink: Sink, gateway_factory
) -> None:
    observer = EventObserver()
    gw, _ = start(tmp_path, sink, gateway_factory, observer)
    sink.script("gone@example.org", "RCPT", ["550 5.1.1 no such user"])
    submit(gw)
    submit(gw, "gone@example.org")
    gw.call(gw.gateway.dispatcher.run_once())
    seen = sorted((e.recipient, e.type, e.bounce, e.sending_domain) for e in observer.events)
    assert seen == [
        ("gone@example.org", "bounced", "hard", "example.com"),
        ("user@example.org", "delivered", "", "example.com"),
    ]
    assert all(e.message_id and e.delivery_id and e.tenant == "default" for e in observer.events)
