"""``gateway_modify_routes``: plugins see each delivery's candidates and may reorder or remove
them before anything is sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.message import Delivery, DeliveryStatus, Message
from gateway.plugin_manager import hookimpl, make_plugin_manager
from tests.conftest import Sink
from tests.routing.support import attempts_of, delivery_of, run_once, start_gateway, submit


@pytest.fixture
def second_sink() -> Iterator[Sink]:
    server = Sink()
    server.start()
    yield server
    server.stop()


class Affinity:
    """Sends example.net mail through the secondary only; removes everything for void.test."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str]]] = []

    @hookimpl
    def gateway_modify_routes(
        self, gateway: Any, message: Message, delivery: Delivery, routes: list[str]
    ) -> None:
        assert gateway.router is not None and message.id == delivery.message_id
        self.seen.append((delivery.recipient, list(routes)))
        if delivery.domain == "example.net":
            routes.remove("primary")
        elif delivery.domain == "void.test":
            routes.clear()


class Reverser:
    @hookimpl
    async def gateway_modify_routes(self, routes: list[str]) -> None:
        routes.reverse()


class Misspeller:
    @hookimpl
    def gateway_modify_routes(self, routes: list[str]) -> None:
        routes.insert(0, "primray")


def plugins(*impls: object) -> Any:
    pm = make_plugin_manager(builtins=(), entry_points=False)
    for i, impl in enumerate(impls):
        pm.register(impl, name=f"routes{i}")
    return pm


def test_a_plugin_removes_a_candidate_or_all_of_them(
    tmp_path: Path, sink: Sink, second_sink: Sink, gateway_factory
) -> None:
    affinity = Affinity()
    gw, clock = start_gateway(
        gateway_factory,
        tmp_path,
        primary=sink.port,
        secondary=second_sink.port,
        plugin_manager=plugins(affinity),
    )
    submit(gw, "a@example.org", "b@example.net", "c@void.test")
    assert run_once(gw) == 3
    assert sorted(affinity.seen) == [
        ("a@example.org", ["primary", "secondary"]),
        ("b@example.net", ["primary", "secondary"]),
        ("c@void.test", ["primary", "secondary"]),
    ]
    assert len(sink.to("a@example.org")) == 1
    assert len(second_sink.to("b@example.net")) == 1 and sink.to("b@example.net") == []
    held = delivery_of(gw, "c@void.test")
    assert held.status is DeliveryStatus.DEFERRED and held.attempts == 0
    assert held.next_attempt_at == clock.now() + 300
    assert "gateway_modify_routes left no provider" in held.last_error
    assert attempts_of(gw, "c@void.test") == []


def test_an_async_plugin_reorders_the_candidates(
    tmp_path: Path, sink: Sink, second_sink: Sink, gateway_factory
) -> None:
    gw, _ = start_gateway(
        gateway_factory,
        tmp_path,
        primary=sink.port,
        secondary=second_sink.port,
        plugin_manager=plugins(Reverser()),
    )
    submit(gw, "a@example.org")
    assert run_once(gw) == 1
    assert [a.provider for a in attempts_of(gw, "a@example.org")] == ["secondary"]
    assert sink.to("a@example.org") == []


def test_an_unknown_provider_name_defers_with_the_name(
    tmp_path: Path, sink: Sink, second_sink: Sink, gateway_factory
) -> None:
    gw, _ = start_gateway(
        gateway_factory,
        tmp_path,
        primary=sink.port,
        secondary=second_sink.port,
        plugin_manager=plugins(Misspeller()),
    )
    submit(gw, "a@example.org")
    assert run_once(gw) == 1
    deferred = delivery_of(gw, "a@example.org")
    assert deferred.status is DeliveryStatus.DEFERRED
    assert "no provider named 'primray'" in deferred.last_error
    assert sink.to("a@example.org") == [] and second_sink.to("a@example.org") == []
