"""Streams in the store, the same on every engine: the stream is kept on the message, and
transactional deliveries are claimed before broadcast ones, however old the broadcast ones are."""

from __future__ import annotations

import msgspec

from gateway.store.base import MessageEvent, MessageQuery, Store
from tests.store.conftest import HOUR, T0, message


def streamed(n: int, stream: str, at: float = T0):  # type: ignore[no-untyped-def]
    return msgspec.structs.replace(message(n, at=at), stream=stream)


async def test_the_stream_is_kept_on_the_message(store: Store) -> None:
    await store.enqueue(
        streamed(1, "news"), ["a@example.org"], expires_at=T0 + HOUR, broadcast=True
    )
    await store.enqueue(message(2), ["b@example.org"], expires_at=T0 + HOUR)
    got = await store.get_message("msg-1")
    assert got is not None and got.stream == "news"
    other = await store.get_message("msg-2")
    assert other is not None and other.stream == "transactional"
    record = await store.message_record("default", "msg-1")
    assert record is not None and record.stream == "news"
    listed = await store.list_messages(MessageQuery(tenant="default", stream="news"))
    assert [r.id for r in listed] == ["msg-1"]
    (claimed_first, claimed_second) = await store.claim(T0, limit=10)
    assert claimed_first.message.stream == "transactional"
    assert claimed_second.message.stream == "news" and claimed_second.delivery.broadcast


async def test_transactional_deliveries_are_claimed_before_older_broadcast_ones(
    store: Store,
) -> None:
    recipients = [f"n{i}@example.org" for i in range(20)]
    await store.enqueue(
        streamed(1, "news", at=T0 - 600), recipients, expires_at=T0 + HOUR, broadcast=True
    )
    await store.enqueue(message(2, at=T0 - 1), ["reset@example.org"], expires_at=T0 + HOUR)
    first = await store.claim(T0, limit=5)
    assert first[0].delivery.recipient == "reset@example.org"
    assert len(first) == 5 and all(c.delivery.broadcast for c in first[1:])
    # A broadcast budget caps what is claimed from the broadcast lane, not the transactional.
    await store.enqueue(message(3), ["receipt@example.org"], expires_at=T0 + HOUR)
    second = await store.claim(T0, limit=10, broadcast_limit=0)
    assert [c.delivery.recipient for c in second] == ["receipt@example.org"]
    third = await store.claim(T0, limit=10, broadcast_limit=3)
    assert len(third) == 3 and all(c.delivery.broadcast for c in third)


async def test_a_retried_broadcast_delivery_stays_in_its_lane(store: Store) -> None:
    from gateway.message import DeliveryStatus
    from gateway.store.base import DeliveryUpdate

    await store.enqueue(
        streamed(1, "news"), ["a@example.org"], expires_at=T0 + HOUR, broadcast=True
    )
    (claimed,) = await store.claim(T0, limit=10)
    await store.complete(
        [
            DeliveryUpdate(
                delivery_id=claimed.delivery.id,
                shard=claimed.delivery.shard,
                status=DeliveryStatus.DEFERRED,
                next_attempt_at=T0 + 10,
            )
        ],
        T0,
    )
    await store.enqueue(message(2, at=T0 + 5), ["t@example.org"], expires_at=T0 + HOUR)
    again = await store.claim(T0 + 20, limit=10)
    assert [c.delivery.recipient for c in again] == ["t@example.org", "a@example.org"]
    assert again[1].delivery.broadcast
    assert await store.next_due() is None


async def test_stats_by_stream_and_engagement_by_classification(store: Store) -> None:
    await store.enqueue(
        streamed(1, "news"), ["a@example.org"], expires_at=T0 + HOUR, broadcast=True
    )
    await store.enqueue(message(2), ["b@example.org"], expires_at=T0 + HOUR)
    for kind, label in [("clicked", "human"), ("clicked", "machine"), ("opened", "human")]:
        await store.record_event(
            MessageEvent(
                message_id="msg-1", at=T0, type=kind, recipient="a@example.org",  # type: ignore[arg-type]
                classification=label,
            )
        )  # fmt: skip
    everything = await store.delivery_stats("default", T0, T0 + 1)
    assert everything.by_stream == {"news": {"queued": 1}, "transactional": {"queued": 1}}
    assert everything.engagement == {"clicked": {"human": 1, "machine": 1}, "opened": {"human": 1}}
    news = await store.delivery_stats("default", T0, T0 + 1, stream="news")
    assert news.by_status == {"queued": 1} and news.by_stream == {"news": {"queued": 1}}
    plain = await store.delivery_stats("default", T0, T0 + 1, stream="transactional")
    assert plain.engagement == {}
