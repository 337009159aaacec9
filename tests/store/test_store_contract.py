"""The ``Store`` contract (gateway/store/base.py), run against SQLite and Redis alike.

Engine-specific behaviour has its own files: tests/unit/test_sqlite_store.py (group commit,
shards) and tests/store/test_redis_store.py (leases, persistence check, URLs).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.dispatch import Dispatcher
from gateway.message import Attempt, Delivery, DeliveryStatus, SendResult
from gateway.providers import OutboundMessage, Provider
from gateway.routing import Router
from gateway.store.base import (
    DeliveryFilter,
    DeliveryUpdate,
    IdempotencyClaim,
    IdempotencyConflict,
    MessageEvent,
    MessageMeta,
    MessageQuery,
    Store,
    StoreError,
    Suppression,
)
from tests.conftest import make_config
from tests.store.conftest import HOUR, LEASE, T0, Backend, message, until


def sent(delivery: Delivery, *, at: float = T0) -> DeliveryUpdate:
    return DeliveryUpdate(
        delivery_id=delivery.id,
        shard=delivery.shard,
        status=DeliveryStatus.DELIVERED,
        provider="relay",
        provider_message_id="Q1",
        attempts=[Attempt(at=at, provider="relay", outcome="sent", detail="250 ok")],
    )


def _recipients(deliveries: list[Delivery]) -> set[str]:
    return {d.recipient for d in deliveries}


# --- enqueue, claim, complete ------------------------------------------------------------------


async def test_enqueue_makes_one_queued_delivery_per_recipient(store: Store) -> None:
    deliveries = await store.enqueue(
        message(1), ["a@example.org", "B@Example.NET"], expires_at=T0 + HOUR
    )
    assert [d.recipient for d in deliveries] == ["a@example.org", "B@Example.NET"]
    assert {d.status for d in deliveries} == {DeliveryStatus.QUEUED}
    assert all(d.next_attempt_at == T0 and d.expires_at == T0 + HOUR for d in deliveries)
    assert len({d.id for d in deliveries}) == 2
    assert await store.get_message("msg-1") == message(1)
    assert await store.get_message("msg-missing") is None
    listed = await store.list_deliveries(DeliveryFilter(message_id="msg-1"))
    assert [(d.id, d.recipient, d.status) for d in listed] == [
        (d.id, d.recipient, d.status) for d in deliveries
    ]


async def test_message_bytes_and_envelope_survive_exactly(store: Store) -> None:
    odd = message("odd", mail_from="")
    odd.raw = bytes(range(256)) * 3 + b"\r\n.\r\n"
    odd.smtp_utf8 = True
    odd.source = "dsn"
    odd.created_at = T0 + 0.123456
    await store.enqueue(odd, ["ü@example.org"], expires_at=T0 + HOUR)
    assert await store.get_message("msg-odd") == odd
    (claimed,) = await store.claim(T0 + 1, limit=1)
    assert claimed.message == odd
    assert claimed.delivery.recipient == "ü@example.org"


async def test_a_duplicate_message_id_fails_and_changes_nothing(store: Store) -> None:
    await store.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
    with pytest.raises(StoreError):
        await store.enqueue(message(1), ["b@example.org"], expires_at=T0 + HOUR)
    assert _recipients(await store.list_deliveries(DeliveryFilter())) == {"a@example.org"}


async def test_claim_takes_due_deliveries_oldest_first_and_only_once(store: Store) -> None:
    await store.enqueue(
        message("later"), ["l@example.org"], expires_at=T0 + HOUR, not_before=T0 + 60
    )
    await store.enqueue(message("second", at=T0 - 5), ["s@example.org"], expires_at=T0 + HOUR)
    await store.enqueue(message("first", at=T0 - 10), ["f@example.org"], expires_at=T0 + HOUR)

    claimed = await store.claim(T0, limit=10)
    assert [c.delivery.recipient for c in claimed] == ["f@example.org", "s@example.org"]
    assert all(c.delivery.status is DeliveryStatus.SENDING for c in claimed)
    assert claimed[0].message == message("first", at=T0 - 10)
    assert await store.claim(T0, limit=10) == [], "a claimed delivery is not handed out twice"
    assert [c.delivery.recipient for c in await store.claim(T0 + 60, limit=10)] == ["l@example.org"]


async def test_claim_respects_the_limit(store: Store) -> None:
    await store.enqueue(message(1), [f"r{i}@example.org" for i in range(5)], expires_at=T0 + HOUR)
    assert len(await store.claim(T0, limit=3)) == 3
    assert len(await store.claim(T0, limit=3)) == 2


async def test_concurrent_claims_never_hand_out_a_delivery_twice(backend: Backend) -> None:
    writer = await backend.open()
    for n in range(20):
        await writer.enqueue(
            message(n), [f"r{n}-{i}@example.org" for i in range(5)], expires_at=T0 + HOUR
        )
    # SQLite workers own shards; the contract is about stores sharing one queue.
    claimers = [writer, writer] if backend.name == "sqlite" else [writer, await backend.open()]
    batches = await asyncio.gather(*(s.claim(T0, limit=7) for s in claimers for _ in range(10)))
    ids = [c.delivery.id for batch in batches for c in batch]
    assert len(ids) == 100 and len(set(ids)) == 100


async def test_complete_records_state_and_attempts_atomically(store: Store) -> None:
    (delivery,) = await store.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
    await store.claim(T0, limit=1)
    two_tries = [
        Attempt(at=T0, provider="down", outcome="soft_fail", detail="down: cannot connect"),
        Attempt(at=T0 + 1, provider="relay", outcome="soft_fail", detail="451 4.3.0 later"),
    ]
    await store.complete(
        [
            DeliveryUpdate(
                delivery_id=delivery.id,
                shard=delivery.shard,
                status=DeliveryStatus.DEFERRED,
                next_attempt_at=T0 + 300,
                last_error="451 4.3.0 later",
                provider="relay",
                attempts=two_tries,
            )
        ],
        now=T0 + 2,
    )
    (deferred,) = await store.list_deliveries(DeliveryFilter())
    assert deferred.status is DeliveryStatus.DEFERRED
    assert deferred.next_attempt_at == T0 + 300
    assert deferred.last_error == "451 4.3.0 later"
    assert deferred.updated_at == T0 + 2
    assert deferred.attempts == 1, "one dispatch round, however many providers it tried"
    assert await store.attempts(deferred) == two_tries
    assert await store.next_due() == T0 + 300
    assert await store.claim(T0 + 299, limit=1) == []

    assert len(await store.claim(T0 + 300, limit=1)) == 1
    await store.complete([sent(delivery, at=T0 + 300)], now=T0 + 301)
    (done,) = await store.list_deliveries(DeliveryFilter())
    assert (done.status, done.attempts, done.provider_message_id) == (
        DeliveryStatus.DELIVERED,
        2,
        "Q1",
    )
    assert [a.outcome for a in await store.attempts(done)] == ["soft_fail", "soft_fail", "sent"]
    assert await store.next_due() is None
    assert await store.claim(T0 + 10 * HOUR, limit=10) == [], "delivered is never claimed again"


async def test_a_policy_deferral_does_not_count_as_an_attempt(store: Store) -> None:
    (delivery,) = await store.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
    await store.claim(T0, limit=1)
    await store.complete(
        [
            DeliveryUpdate(
                delivery_id=delivery.id,
                shard=delivery.shard,
                status=DeliveryStatus.DEFERRED,
                next_attempt_at=T0 + 60,
                last_error="rate cap",
            )
        ],
        now=T0,
    )
    (deferred,) = await store.list_deliveries(DeliveryFilter())
    assert deferred.attempts == 0
    assert await store.attempts(deferred) == []


async def test_next_due_is_the_earliest_waiting_delivery(store: Store) -> None:
    assert await store.next_due() is None
    await store.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR, not_before=T0 + 90)
    await store.enqueue(message(2), ["b@example.org"], expires_at=T0 + HOUR, not_before=T0 + 30)
    assert await store.next_due() == T0 + 30
    await store.claim(T0 + 30, limit=10)
    assert await store.next_due() == T0 + 90, "sending deliveries are not waiting"


async def test_deliveries_of_a_dead_process_return_to_the_queue(backend: Backend) -> None:
    first = await backend.open()
    await first.enqueue(message(1), ["a@example.org", "b@example.org"], expires_at=T0 + HOUR)
    await first.enqueue(message(2), ["c@example.org"], expires_at=T0 + HOUR, not_before=T0 + 600)
    await first.claim(T0, limit=10)
    await backend.crash(first)  # both stay ``sending`` in the store

    later = T0 + LEASE + 1  # past any lease the dead process held
    second = await backend.reader()
    assert (await second.counts())[DeliveryStatus.SENDING] == 2
    assert await second.recover(later) == 2
    counts = await second.counts()
    assert counts[DeliveryStatus.SENDING] == 0
    assert counts[DeliveryStatus.DEFERRED] == 2 and counts[DeliveryStatus.QUEUED] == 1
    recovered = await second.list_deliveries(DeliveryFilter(message_id="msg-1"))
    assert all("interrupted" in d.last_error for d in recovered)
    assert all(d.next_attempt_at == later for d in recovered)
    again = await second.claim(later, limit=10)
    assert sorted(c.delivery.recipient for c in again) == ["a@example.org", "b@example.org"]


# --- operator filters and actions -----------------------------------------------------------


async def _mixed_queue(store: Store) -> None:
    await store.enqueue(message(1), ["Alice@Example.org", "bob@example.net"], expires_at=T0 + HOUR)
    await store.enqueue(message(2), ["carol@EXAMPLE.ORG"], expires_at=T0 + HOUR)
    await store.enqueue(message(3), ["dave@example.com"], expires_at=T0 + HOUR, not_before=T0 + 99)
    claimed = {c.delivery.recipient: c.delivery for c in await store.claim(T0, limit=10)}
    bob, carol = claimed["bob@example.net"], claimed["carol@EXAMPLE.ORG"]
    await store.complete(
        [
            sent(claimed["Alice@Example.org"]),
            DeliveryUpdate(
                delivery_id=bob.id,
                shard=bob.shard,
                status=DeliveryStatus.BOUNCED,
                last_error="550 5.1.1 no such user",
                attempts=[Attempt(at=T0, provider="relay", outcome="hard_fail")],
            ),
            DeliveryUpdate(
                delivery_id=carol.id,
                shard=carol.shard,
                status=DeliveryStatus.DEFERRED,
                next_attempt_at=T0 + 300,
                last_error="451 later",
                attempts=[Attempt(at=T0, provider="relay", outcome="soft_fail")],
            ),
        ],
        now=T0,
    )


async def test_list_deliveries_filters(store: Store) -> None:
    await _mixed_queue(store)
    assert len(await store.list_deliveries(DeliveryFilter())) == 4
    by_status = await store.list_deliveries(
        DeliveryFilter(statuses=[DeliveryStatus.BOUNCED, DeliveryStatus.QUEUED])
    )
    assert _recipients(by_status) == {"bob@example.net", "dave@example.com"}
    by_recipient = await store.list_deliveries(DeliveryFilter(recipient="ALICE@example.ORG"))
    assert _recipients(by_recipient) == {"Alice@Example.org"}, "recipient is case-insensitive"
    by_domain = await store.list_deliveries(DeliveryFilter(domain=" Example.ORG "))
    assert _recipients(by_domain) == {"Alice@Example.org", "carol@EXAMPLE.ORG"}
    by_message = await store.list_deliveries(DeliveryFilter(message_id="msg-1"))
    assert _recipients(by_message) == {"Alice@Example.org", "bob@example.net"}
    combined = await store.list_deliveries(
        DeliveryFilter(domain="example.org", statuses=[DeliveryStatus.DEFERRED])
    )
    assert _recipients(combined) == {"carol@EXAMPLE.ORG"}
    assert await store.list_deliveries(DeliveryFilter(tenant="nobody")) == []
    assert len(await store.list_deliveries(DeliveryFilter(tenant="default"))) == 4
    newest_first = await store.list_deliveries(DeliveryFilter(limit=2))
    assert [d.message_id for d in newest_first] == ["msg-3", "msg-2"]


async def test_counts_by_status(store: Store) -> None:
    await _mixed_queue(store)
    counts = await store.counts()
    assert set(counts) == set(DeliveryStatus), "every status is present, zero or not"
    assert {s: n for s, n in counts.items() if n} == {
        DeliveryStatus.DELIVERED: 1,
        DeliveryStatus.BOUNCED: 1,
        DeliveryStatus.DEFERRED: 1,
        DeliveryStatus.QUEUED: 1,
    }


async def test_retry_now_makes_undelivered_deliveries_due(store: Store) -> None:
    await _mixed_queue(store)
    now = T0 + 2 * HOUR  # past every expiry: retried deliveries get a fresh hour
    assert await store.retry_now(DeliveryFilter(), now) == 3, "all but the delivered one"
    retried = await store.list_deliveries(DeliveryFilter(statuses=[DeliveryStatus.DEFERRED]))
    assert _recipients(retried) == {"bob@example.net", "carol@EXAMPLE.ORG", "dave@example.com"}
    assert all(d.next_attempt_at == now and d.expires_at >= now + HOUR for d in retried)
    (delivered,) = await store.list_deliveries(DeliveryFilter(statuses=[DeliveryStatus.DELIVERED]))
    assert delivered.recipient == "Alice@Example.org"
    assert len(await store.claim(now, limit=10)) == 3
    assert await store.retry_now(DeliveryFilter(), now) == 0, "sending ones are left alone"


async def test_retry_now_leaves_skipped_deliveries_alone(store: Store) -> None:
    """A suppressed (skipped) recipient stays skipped: an operator retry must not mail it."""
    (delivery,) = await store.enqueue(message(9), ["gone@example.org"], expires_at=T0 + HOUR)
    skipped = DeliveryUpdate(
        delivery_id=delivery.id,
        shard=delivery.shard,
        status=DeliveryStatus.SKIPPED,
        last_error="unsubscribed",
    )
    await store.complete([skipped], T0)
    assert await store.retry_now(DeliveryFilter(), T0 + 1) == 0
    (after,) = await store.list_deliveries(DeliveryFilter(message_id="msg-9"))
    assert after.status is DeliveryStatus.SKIPPED
    assert await store.claim(T0 + 1, limit=10) == []


async def test_retry_now_honours_the_filter(store: Store) -> None:
    await _mixed_queue(store)
    assert await store.retry_now(DeliveryFilter(recipient="BOB@example.net"), T0 + 1) == 1
    (bob,) = await store.list_deliveries(DeliveryFilter(recipient="bob@example.net"))
    assert (bob.status, bob.next_attempt_at) == (DeliveryStatus.DEFERRED, T0 + 1)
    (carol,) = await store.list_deliveries(DeliveryFilter(recipient="carol@example.org"))
    assert carol.next_attempt_at == T0 + 300


async def test_delete_removes_deliveries_attempts_and_orphaned_messages(store: Store) -> None:
    await _mixed_queue(store)
    (bob,) = await store.list_deliveries(DeliveryFilter(recipient="bob@example.net"))
    assert await store.delete(DeliveryFilter(recipient="bob@example.net")) == 1
    assert await store.attempts(bob) == []
    assert await store.get_message("msg-1") is not None, "Alice's delivery still uses it"
    assert await store.delete(DeliveryFilter(message_id="msg-1")) == 1
    assert await store.get_message("msg-1") is None
    assert await store.message_record("default", "msg-1") is None
    assert await store.delete(DeliveryFilter(domain="example.org")) == 1
    assert _recipients(await store.list_deliveries(DeliveryFilter())) == {"dave@example.com"}
    assert sum((await store.counts()).values()) == 1
    assert await store.next_due() == T0 + 99


async def test_delivery_ids_are_never_reused_after_delete(store: Store) -> None:
    """A dispatcher still sending a deleted delivery must not overwrite a newer one's state."""
    await store.enqueue(message(1), ["old@example.org"], expires_at=T0 + HOUR)
    (in_flight,) = await store.claim(T0, limit=1)
    assert await store.delete(DeliveryFilter(message_id="msg-1")) == 1
    (new,) = await store.enqueue(message(2), ["new@example.org"], expires_at=T0 + HOUR)
    assert new.id != in_flight.delivery.id
    await store.complete([sent(in_flight.delivery)], now=T0)  # the late outcome arrives
    (still,) = await store.list_deliveries(DeliveryFilter())
    assert (still.recipient, still.status) == ("new@example.org", DeliveryStatus.QUEUED)
    assert await store.attempts(still) == []


# --- retention ----------------------------------------------------------------------------------


def final(delivery: Delivery, status: DeliveryStatus) -> DeliveryUpdate:
    return DeliveryUpdate(delivery_id=delivery.id, shard=delivery.shard, status=status)


async def test_purge_removes_old_messages_whose_deliveries_are_all_final(store: Store) -> None:
    day = 24 * HOUR
    old, new = T0 - 40 * day, T0
    placed = {}
    for n, at, recipients in [
        (1, old, ["a@example.org", "b@example.org"]),  # delivered and bounced: goes
        (2, old, ["c@example.org", "d@example.org"]),  # one still deferred: stays
        (3, old, ["e@example.org"]),  # expired: goes
        (4, new, ["f@example.org"]),  # delivered, but recent: stays
        (5, old, ["g@example.org"]),  # skipped (suppressed): goes
        (6, old + 1, ["h@example.org"]),  # sending: stays
        (8, old + 2, ["i@example.org"]),  # sending: stays
        (10, old + 3, ["j@example.org"]),  # delivered, behind three that stay: goes
    ]:
        placed[n] = await store.enqueue(
            message(n, at=at, tenant="acme" if n % 2 else "default"),
            recipients,
            expires_at=at + day,
        )
    claimed = {c.delivery.recipient: c.delivery for c in await store.claim(T0, limit=100)}
    outcome = {
        "a": DeliveryStatus.DELIVERED,
        "b": DeliveryStatus.BOUNCED,
        "c": DeliveryStatus.DELIVERED,
        "d": DeliveryStatus.DEFERRED,
        "e": DeliveryStatus.EXPIRED,
        "f": DeliveryStatus.DELIVERED,
        "g": DeliveryStatus.SKIPPED,
        "j": DeliveryStatus.DELIVERED,
    }
    await store.complete(
        [final(claimed[f"{r}@example.org"], status) for r, status in outcome.items() if r != "a"]
        + [sent(claimed["a@example.org"])],
        T0,
    )
    (a,) = await store.list_deliveries(DeliveryFilter(recipient="a@example.org"))
    assert len(await store.attempts(a)) == 1
    await store.record_event(MessageEvent(message_id="msg-1", at=T0, type="opened"))

    assert await store.purge(T0 - 30 * day, batch=2) == 4
    for gone in ("msg-1", "msg-3", "msg-5", "msg-10"):
        assert await store.get_message(gone) is None
        assert await store.list_deliveries(DeliveryFilter(message_id=gone)) == []
        assert await store.message_record("acme", gone) is None
    assert await store.attempts(a) == []
    assert await store.timeline("msg-1") == []
    assert await store.get_message("msg-2") is not None, "a delivery is still waiting"
    assert await store.get_message("msg-4") is not None, "recent"
    assert _recipients(await store.list_deliveries(DeliveryFilter(limit=100))) == {
        "c@example.org",
        "d@example.org",
        "f@example.org",
        "h@example.org",
        "i@example.org",
    }
    counts = await store.counts()
    assert (counts[DeliveryStatus.DELIVERED], counts[DeliveryStatus.DEFERRED]) == (2, 1)
    assert counts[DeliveryStatus.SENDING] == 2 and sum(counts.values()) == 5
    assert await store.next_due() is not None, "the deferred delivery is still scheduled"
    assert await store.purge(T0 - 30 * day) == 0, "nothing more to purge"


# --- idempotency ------------------------------------------------------------------------------


def _claim(key: str, part: int = 0, *, expires_at: float = T0 + HOUR) -> IdempotencyClaim:
    return IdempotencyClaim(
        tenant="default",
        key=key,
        part=part,
        fingerprint=f"fp-{key}",
        response=b'{"ok":true}',
        expires_at=expires_at,
    )


async def test_idempotency_keys_are_stored_with_the_message_and_conflict_once(
    store: Store,
) -> None:
    for part in (0, 1):
        await store.enqueue(
            message(f"k{part}"),
            ["a@example.org"],
            expires_at=T0 + HOUR,
            idempotency=_claim("k", part),
        )
    entries = await store.find_idempotency("default", "k", T0 + 1)
    assert [(e.part, e.message_id, e.fingerprint, e.response) for e in entries] == [
        (0, "msg-k0", "fp-k", b'{"ok":true}'),
        (1, "msg-k1", "fp-k", b'{"ok":true}'),
    ]
    assert entries[0].created_at == T0
    with pytest.raises(IdempotencyConflict):
        await store.enqueue(
            message("again"), ["b@example.org"], expires_at=T0 + HOUR, idempotency=_claim("k", 1)
        )
    assert await store.get_message("msg-again") is None, "the conflicting message is not stored"
    assert _recipients(await store.list_deliveries(DeliveryFilter())) == {"a@example.org"}
    assert await store.find_idempotency("other-tenant", "k", T0) == []
    assert await store.find_idempotency("default", "k", T0 + HOUR) == [], "expired"


async def test_an_expired_idempotency_key_can_be_reused_and_purged(store: Store) -> None:
    await store.enqueue(
        message(1),
        ["a@example.org"],
        expires_at=T0 + HOUR,
        idempotency=_claim("old", expires_at=T0 + 10),
    )
    await store.enqueue(
        message(2, at=T0 + 20),
        ["a@example.org"],
        expires_at=T0 + HOUR,
        idempotency=_claim("old", expires_at=T0 + 100),
    )
    (entry,) = await store.find_idempotency("default", "old", T0 + 30)
    assert entry.message_id == "msg-2"
    await store.enqueue(
        message(3),
        ["a@example.org"],
        expires_at=T0 + HOUR,
        idempotency=_claim("gone", expires_at=T0 + 5),
    )
    assert await store.purge_idempotency(T0 + 50) >= 1
    assert await store.find_idempotency("default", "gone", T0) == [], "purged"
    assert [e.message_id for e in await store.find_idempotency("default", "old", T0 + 50)] == [
        "msg-2"
    ]


# --- suppressions ----------------------------------------------------------------------------


def _suppression(address: str, reason: str = "bounce", tenant: str = "default") -> Suppression:
    return Suppression(tenant=tenant, address=address, reason=reason, created_at=T0)  # type: ignore[arg-type]


async def test_suppressions_are_matched_case_insensitively_and_replaced(store: Store) -> None:
    assert (
        await store.add_suppressions(
            [
                _suppression(" Ann@Example.org "),
                _suppression("bob@example.org", "complaint"),
                _suppression("ann@example.org", "manual", tenant="other"),
            ]
        )
        == 3
    )
    found = await store.find_suppression("default", "ANN@example.ORG")
    assert found is not None and (found.address, found.reason) == ("ann@example.org", "bounce")
    assert await store.find_suppression("default", "carol@example.org") is None
    both = await store.suppressed(
        "default", ["Bob@Example.org", "x@example.org", "ann@example.org"]
    )
    assert set(both) == {"bob@example.org", "ann@example.org"}
    assert await store.suppressed("default", []) == {}
    await store.add_suppressions([_suppression("ann@example.org", "unsubscribe")])
    replaced = await store.find_suppression("default", "ann@example.org")
    assert replaced is not None and replaced.reason == "unsubscribe"
    assert await store.remove_suppression("default", "ANN@example.org")
    assert not await store.remove_suppression("default", "ann@example.org")
    assert await store.find_suppression("default", "ann@example.org") is None
    other = await store.find_suppression("other", "ann@example.org")
    assert other is not None, "tenants keep their own lists"


async def test_list_suppressions_pages_in_address_order(store: Store) -> None:
    await store.add_suppressions(
        [
            _suppression(f"u{n:02d}@example.org", "bounce" if n % 2 else "complaint")
            for n in range(9)
        ]
    )
    page = await store.list_suppressions("default", limit=4)
    assert [s.address for s in page] == [f"u{n:02d}@example.org" for n in range(4)]
    rest = await store.list_suppressions("default", after=page[-1].address, limit=100)
    assert [s.address for s in rest] == [f"u{n:02d}@example.org" for n in range(4, 9)]
    bounces = await store.list_suppressions("default", reason="bounce", limit=3)
    assert [s.address for s in bounces] == ["u01@example.org", "u03@example.org", "u05@example.org"]
    assert await store.list_suppressions("nobody") == []


# --- messages as the API shows them ------------------------------------------------------------


async def test_list_messages_filters_and_pages_newest_first(store: Store) -> None:
    meta = MessageMeta(
        tags=("welcome", "welcome", "x"), metadata={"user": "7"}, tracking={"opens": True}
    )
    await store.enqueue(message("a", at=T0), ["a@example.org"], expires_at=T0 + HOUR, meta=meta)
    await store.enqueue(
        message("b", at=T0 + 10), ["b@example.org", "c@example.org"], expires_at=T0 + HOUR
    )
    await store.enqueue(
        message("c", at=T0 + 20), ["c@example.org"], expires_at=T0 + HOUR, not_before=T0 + 500
    )
    await store.enqueue(message("z", tenant="other"), ["z@example.org"], expires_at=T0 + HOUR)
    (first,) = [c for c in await store.claim(T0 + 30, limit=10) if c.message.id == "msg-b"][:1]
    await store.complete([sent(first.delivery)], T0 + 31)

    def ids(records: list) -> list[str]:  # type: ignore[type-arg]
        return [r.id for r in records]

    everything = await store.list_messages(MessageQuery(tenant="default"))
    assert ids(everything) == ["msg-c", "msg-b", "msg-a"]
    (a,) = [r for r in everything if r.id == "msg-a"]
    assert a.meta == meta and a.size == len(message("a").raw) and a.source == "smtp"
    assert a.head == b"From: <app@example.com>\r\nSubject: a\r\n"
    assert a.send_at is None and everything[0].send_at == T0 + 500
    assert [d.recipient for d in everything[1].deliveries] == ["b@example.org", "c@example.org"]
    assert ids(await store.list_messages(MessageQuery(tenant="default", limit=2))) == [
        "msg-c",
        "msg-b",
    ]
    assert ids(await store.list_messages(MessageQuery(tenant="default", before_id="msg-b"))) == [
        "msg-a"
    ]
    assert ids(await store.list_messages(MessageQuery(tenant="default", tag="welcome"))) == [
        "msg-a"
    ]
    delivered = MessageQuery(tenant="default", status=DeliveryStatus.DELIVERED)
    assert ids(await store.list_messages(delivered)) == ["msg-b"]
    to_c = MessageQuery(tenant="default", recipient="C@example.org")
    assert ids(await store.list_messages(to_c)) == ["msg-c", "msg-b"]
    window = MessageQuery(tenant="default", since=T0 + 5, until=T0 + 20)
    assert ids(await store.list_messages(window)) == ["msg-b"]
    assert ids(await store.list_messages(MessageQuery(tenant="other"))) == ["msg-z"]
    assert await store.message_record("other", "msg-a") is None, "another tenant's message"
    record = await store.message_record("default", "msg-a")
    assert record is not None and record.meta.metadata == {"user": "7"}


async def test_timeline_tells_the_story_of_a_message(store: Store) -> None:
    await store.enqueue(
        message(1), ["a@example.org", "b@example.org"], expires_at=T0 + HOUR, not_before=T0 + 5
    )
    claimed = {c.delivery.recipient: c.delivery for c in await store.claim(T0 + 5, limit=10)}
    b = claimed["b@example.org"]
    await store.complete([sent(claimed["a@example.org"], at=T0 + 6)], T0 + 6)
    await store.complete(
        [
            DeliveryUpdate(
                delivery_id=b.id,
                shard=b.shard,
                status=DeliveryStatus.SKIPPED,
                last_error="suppressed",
            )
        ],
        T0 + 7,
    )
    await store.record_event(
        MessageEvent(message_id="msg-1", at=T0 + 60, type="opened", recipient="a@example.org")
    )
    events = await store.timeline("msg-1")
    assert [(e.type, e.recipient) for e in events] == [
        ("queued", ""),
        ("scheduled", ""),
        ("delivered", "a@example.org"),
        ("suppressed", "b@example.org"),
        ("opened", "a@example.org"),
    ]
    assert events[0].detail == "2 recipient(s)"
    assert events[2].provider == "relay" and events[2].at == T0 + 6
    assert await store.timeline("msg-missing") == []


async def test_delivery_stats_by_status_day_and_tag(store: Store) -> None:
    day2 = T0 + 86400
    await store.enqueue(
        message(1),
        ["a@example.org", "b@example.org"],
        expires_at=T0 + HOUR,
        meta=MessageMeta(tags=("t",)),
    )
    await store.enqueue(message(2, at=day2), ["c@example.org"], expires_at=day2 + HOUR)
    await store.enqueue(message(3, at=day2 + 10), ["d@example.org"], expires_at=day2 + HOUR)
    await store.enqueue(message(4, tenant="other"), ["e@example.org"], expires_at=T0 + HOUR)
    (one,) = [c for c in await store.claim(T0, limit=10) if c.delivery.recipient == "a@example.org"]
    await store.complete([sent(one.delivery)], T0)
    stats = await store.delivery_stats("default", T0, day2 + 10)
    assert stats.by_status == {"delivered": 1, "sending": 1, "queued": 1}
    assert stats.by_day == {
        "2027-01-15": {"delivered": 1, "sending": 1},
        "2027-01-16": {"queued": 1},
    }
    assert stats.by_tag == {"t": {"delivered": 1, "sending": 1}}


# --- counters and sightings --------------------------------------------------------------------


async def test_consume_never_exceeds_the_limit_under_concurrency(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()  # two processes
    results = await asyncio.gather(
        *(
            s.consume("rate:t:1", 1, 25, expires_at=T0 + 1, now=T0)
            for _ in range(40)
            for s in (first, second)
        )
    )
    assert results.count(True) == 25
    assert await first.counter("rate:t:1", T0) == 25
    assert await second.counter("rate:t:1", T0 + 1) == 0, "expired with its window"
    assert await second.consume("rate:t:1", 1, 25, expires_at=T0 + 2, now=T0 + 1)
    assert await first.counter("rate:t:1", T0 + 1) == 1, "a fresh window starts from zero"
    assert not await first.consume("big", 30, 25, expires_at=T0 + 9, now=T0), "over on its own"
    assert await first.counter("big", T0) == 0


async def test_add_to_counter_adds_unconditionally(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    assert await first.add_to_counter("sent:d", 5, expires_at=T0 + 9, now=T0) == 5
    assert await second.add_to_counter("sent:d", 2, expires_at=T0 + 9, now=T0) == 7
    assert await first.counter("sent:d", T0 + 8) == 7
    assert await first.counter("sent:d", T0 + 9) == 0
    assert await first.counter("never", T0) == 0
    assert await first.add_to_counter("sent:d", 1, expires_at=T0 + 99, now=T0 + 10) == 1


async def test_first_sighting_is_true_once_until_it_expires(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    assert await first.first_sighting("evt:sg:1", expires_at=T0 + 10, now=T0)
    assert not await second.first_sighting("evt:sg:1", expires_at=T0 + 10, now=T0 + 5)
    assert await second.first_sighting("evt:sg:1", expires_at=T0 + 30, now=T0 + 10)
    assert not await first.first_sighting("evt:sg:1", expires_at=T0 + 30, now=T0 + 11)


async def test_counters_reads_many_at_once(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    await first.add_to_counter("rep:a:1", 3, expires_at=T0 + 9, now=T0)
    await second.add_to_counter("rep:a:2", 4, expires_at=T0 + 5, now=T0)
    assert await second.counters(["rep:a:1", "rep:a:2", "rep:none"], T0) == {
        "rep:a:1": 3,
        "rep:a:2": 4,
        "rep:none": 0,
    }
    assert await first.counters(["rep:a:1", "rep:a:2"], T0 + 6) == {"rep:a:1": 3, "rep:a:2": 0}
    assert await first.counters([], T0) == {}


async def test_flags_are_shared_and_durable_until_cleared(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    await first.set_flag("pause:domain:a.example", '{"reason": "bounces"}')
    await first.set_flag("pause:ip:192.0.2.1", "x")
    await first.set_flag("epoch:domain:a.example", "7")
    assert await second.flags("pause:") == {
        "pause:domain:a.example": '{"reason": "bounces"}',
        "pause:ip:192.0.2.1": "x",
    }
    await second.set_flag("pause:ip:192.0.2.1", "y")  # replaces
    assert (await first.flags("pause:ip:")) == {"pause:ip:192.0.2.1": "y"}
    assert await second.clear_flag("pause:ip:192.0.2.1") is True
    assert await first.clear_flag("pause:ip:192.0.2.1") is False
    assert await first.flags("pause:") == {"pause:domain:a.example": '{"reason": "bounces"}'}
    assert await first.flags("none:") == {}


# --- failures --------------------------------------------------------------------------------


async def test_a_closed_store_refuses_work_instead_of_hanging(backend: Backend) -> None:
    store = await backend.open()
    await backend.crash(store)
    with pytest.raises(StoreError):
        await asyncio.wait_for(store.counts(), 5)


async def test_mark_delivery_bounces_a_delivered_delivery_from_any_process(
    backend: Backend,
) -> None:
    writer = await backend.open()
    other = await backend.open()  # another worker/node: SQLite writes a different shard
    [ann, bob] = await writer.enqueue(
        message("late-bounce"), ["ann@example.org", "bob@example.org"], expires_at=T0 + HOUR
    )
    claimed = {c.delivery.recipient: c.delivery for c in await writer.claim(T0, 10)}
    await writer.complete([sent(claimed["ann@example.org"])], T0)
    assert await other.mark_delivery(
        "msg-late-bounce", ann.id, DeliveryStatus.BOUNCED, "ses: 550 5.1.1 unknown user", T0 + 5
    )
    # bob is still being sent: the dispatcher owns that delivery, an event must not change it
    assert not await other.mark_delivery(
        "msg-late-bounce", bob.id, DeliveryStatus.BOUNCED, "ses: bounce", T0 + 5
    )
    assert not await other.mark_delivery("msg-nope", ann.id, DeliveryStatus.BOUNCED, "x", T0)
    reader = await backend.reader()
    state = {
        d.recipient: (d.status, d.last_error, d.provider_message_id)
        for d in await reader.list_deliveries(DeliveryFilter(message_id="msg-late-bounce"))
    }
    assert state == {
        "ann@example.org": (DeliveryStatus.BOUNCED, "ses: 550 5.1.1 unknown user", "Q1"),
        "bob@example.org": (DeliveryStatus.SENDING, "", ""),
    }


# --- outcomes on the delivery path: nothing claimed is stranded ----------------------------------


class HeldProvider(Provider):
    """The far side of a send, held open until the test lets it answer ``sent``."""

    def __init__(self) -> None:
        super().__init__("remote")
        self.gate = asyncio.Event()
        self.waiting = 0
        self.sent: list[OutboundMessage] = []

    async def send(self, message: OutboundMessage) -> SendResult:
        self.waiting += 1
        await self.gate.wait()
        self.sent.append(message)
        return SendResult.sent("250 2.0.0 queued")


def dispatcher(store: Store, remote: Provider, tmp_path: Path, clock: FakeClock) -> Dispatcher:
    config = make_config(
        tmp_path, '[delivery]\nproviders = ["remote"]\n[providers.remote]\ntype = "capture"\n'
    )
    router = Router(config, {"remote": remote}, store=store, clock=clock)
    return Dispatcher(
        store=store, router=router, settings=config.delivery, clock=clock, hostname="gw.test"
    )


async def _status(store: Store, message_id: str) -> DeliveryStatus:
    (delivery,) = await store.list_deliveries(DeliveryFilter(message_id=message_id))
    return delivery.status


async def test_an_outcome_that_could_not_be_written_is_retried_until_it_is(
    backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await backend.open()
    await store.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
    remote = HeldProvider()
    node = dispatcher(store, remote, tmp_path, FakeClock(T0))
    running = asyncio.create_task(node.run())
    try:
        await until(lambda: remote.waiting == 1, "the delivery to be claimed and handed over")
        with backend.outcomes_fail():
            remote.gate.set()
            await until(lambda: "recording delivery" in caplog.text, "the outcome write to fail")
            assert await _status(store, "msg-1") == DeliveryStatus.SENDING
        # The store works again: the outcome lands without a restart, once.
        await until(
            lambda: _is(store, "msg-1", DeliveryStatus.DELIVERED), "the outcome to be recorded"
        )
        (delivery,) = await store.list_deliveries(DeliveryFilter(message_id="msg-1"))
        assert delivery.attempts == 1 and len(remote.sent) == 1
    finally:
        await node.stop(grace=1)
        await running


async def _is(store: Store, message_id: str, status: DeliveryStatus) -> bool:
    return await _status(store, message_id) == status


async def test_a_delivery_whose_node_died_before_its_outcome_is_sent_again(
    backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = await backend.open()
    await first.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
    remote = HeldProvider()
    node = dispatcher(first, remote, tmp_path, FakeClock(T0))
    running = asyncio.create_task(node.run())
    await until(lambda: remote.waiting == 1, "the delivery to be claimed and handed over")
    with backend.outcomes_fail():
        remote.gate.set()
        await until(lambda: "recording delivery" in caplog.text, "the outcome write to fail")
        # The node dies after the send, before its outcome is written.
        await node.stop(grace=0)
        await running
        await backend.crash(first)

    later = FakeClock(T0 + LEASE + 1)  # past the dead node's lease
    second = await backend.replacement(first)
    await second.recover(later.now())  # what a starting worker or node does first
    assert await dispatcher(second, remote, tmp_path, later).run_once() == 1
    assert await _status(second, "msg-1") == DeliveryStatus.DELIVERED
    # At-least-once: the delivery in flight at the death is the one sent twice.
    assert [m.delivery_id for m in remote.sent] == [remote.sent[0].delivery_id] * 2
