"""The SQLite spool: durable group-committed enqueue, claims, outcomes, operator filters, shards."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.message import Attempt, DeliveryStatus, Message
from gateway.store.base import DeliveryFilter, DeliveryUpdate, StoreError
from gateway.store.sqlite import SqliteStore, shard_path

T0 = 1_800_000_000.0
HOUR = 3600.0


def message(n: int | str, *, at: float = T0, mail_from: str = "app@example.com") -> Message:
    return Message(
        id=f"msg-{n}",
        tenant="default",
        mail_from=mail_from,
        raw=f"From: <{mail_from}>\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode(),
        created_at=at,
    )


async def opened(directory: Path, **kwargs: object) -> SqliteStore:
    store = SqliteStore(directory, **kwargs)  # type: ignore[arg-type]
    await store.open()
    return store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await opened(tmp_path / "spool")
    yield s
    await s.close()


def sent(delivery_id: int, shard: int = 0, *, at: float = T0) -> DeliveryUpdate:
    return DeliveryUpdate(
        delivery_id=delivery_id,
        shard=shard,
        status=DeliveryStatus.DELIVERED,
        provider="relay",
        provider_message_id="Q1",
        attempts=[Attempt(at=at, provider="relay", outcome="sent", detail="250 ok")],
    )


# --- enqueue, claim, complete ------------------------------------------------------------------


async def test_enqueue_makes_one_queued_delivery_per_recipient(store: SqliteStore) -> None:
    deliveries = await store.enqueue(
        message(1), ["a@example.org", "B@Example.NET"], expires_at=T0 + HOUR
    )
    assert [d.recipient for d in deliveries] == ["a@example.org", "B@Example.NET"]
    assert {d.status for d in deliveries} == {DeliveryStatus.QUEUED}
    assert all(d.next_attempt_at == T0 and d.expires_at == T0 + HOUR for d in deliveries)
    stored = await store.get_message("msg-1")
    assert stored == message(1)
    assert await store.get_message("msg-missing") is None
    listed = await store.list_deliveries(DeliveryFilter(message_id="msg-1"))
    assert [(d.id, d.recipient, d.status) for d in listed] == [
        (d.id, d.recipient, d.status) for d in deliveries
    ]


async def test_claim_takes_due_deliveries_oldest_first_and_only_once(store: SqliteStore) -> None:
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


async def test_claim_respects_the_limit(store: SqliteStore) -> None:
    await store.enqueue(message(1), [f"r{i}@example.org" for i in range(5)], expires_at=T0 + HOUR)
    assert len(await store.claim(T0, limit=3)) == 3
    assert len(await store.claim(T0, limit=3)) == 2


async def test_complete_records_state_and_attempts_atomically(store: SqliteStore) -> None:
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
                shard=0,
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
    await store.complete([sent(delivery.id, at=T0 + 300)], now=T0 + 301)
    (done,) = await store.list_deliveries(DeliveryFilter())
    assert (done.status, done.attempts, done.provider_message_id) == (
        DeliveryStatus.DELIVERED,
        2,
        "Q1",
    )
    assert [a.outcome for a in await store.attempts(done)] == ["soft_fail", "soft_fail", "sent"]
    assert await store.next_due() is None


async def test_a_policy_deferral_does_not_count_as_an_attempt(store: SqliteStore) -> None:
    (delivery,) = await store.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
    await store.claim(T0, limit=1)
    await store.complete(
        [
            DeliveryUpdate(
                delivery_id=delivery.id,
                shard=0,
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


async def test_next_due_is_the_earliest_waiting_delivery(store: SqliteStore) -> None:
    assert await store.next_due() is None
    await store.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR, not_before=T0 + 90)
    await store.enqueue(message(2), ["b@example.org"], expires_at=T0 + HOUR, not_before=T0 + 30)
    assert await store.next_due() == T0 + 30
    await store.claim(T0 + 30, limit=10)
    assert await store.next_due() == T0 + 90, "sending deliveries are not waiting"


async def test_recover_returns_sending_deliveries_to_the_queue(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    first = await opened(directory)
    await first.enqueue(message(1), ["a@example.org", "b@example.org"], expires_at=T0 + HOUR)
    await first.enqueue(message(2), ["c@example.org"], expires_at=T0 + HOUR, not_before=T0 + 600)
    await first.claim(T0, limit=10)
    await first.close()  # as if the process died mid-send: both stay ``sending`` on disk

    second = await opened(directory)
    try:
        assert (await second.counts())[DeliveryStatus.SENDING] == 2
        assert await second.recover(T0 + 5) == 2
        counts = await second.counts()
        assert counts[DeliveryStatus.SENDING] == 0
        assert counts[DeliveryStatus.DEFERRED] == 2 and counts[DeliveryStatus.QUEUED] == 1
        recovered = await second.list_deliveries(DeliveryFilter(message_id="msg-1"))
        assert all("interrupted" in d.last_error for d in recovered)
        again = await second.claim(T0 + 5, limit=10)
        assert sorted(c.delivery.recipient for c in again) == ["a@example.org", "b@example.org"]
        assert await second.recover(T0 + 6) == 2, "claimed again, so in flight again"
    finally:
        await second.close()


# --- operator filters and actions -----------------------------------------------------------


async def _mixed_queue(store: SqliteStore) -> None:
    await store.enqueue(message(1), ["Alice@Example.org", "bob@example.net"], expires_at=T0 + HOUR)
    await store.enqueue(message(2), ["carol@EXAMPLE.ORG"], expires_at=T0 + HOUR)
    await store.enqueue(message(3), ["dave@example.com"], expires_at=T0 + HOUR, not_before=T0 + 99)
    claimed = {c.delivery.recipient: c.delivery for c in await store.claim(T0, limit=10)}
    await store.complete(
        [
            sent(claimed["Alice@Example.org"].id),
            DeliveryUpdate(
                delivery_id=claimed["bob@example.net"].id,
                shard=0,
                status=DeliveryStatus.BOUNCED,
                last_error="550 5.1.1 no such user",
                attempts=[Attempt(at=T0, provider="relay", outcome="hard_fail")],
            ),
            DeliveryUpdate(
                delivery_id=claimed["carol@EXAMPLE.ORG"].id,
                shard=0,
                status=DeliveryStatus.DEFERRED,
                next_attempt_at=T0 + 300,
                last_error="451 later",
                attempts=[Attempt(at=T0, provider="relay", outcome="soft_fail")],
            ),
        ],
        now=T0,
    )


def _recipients(deliveries: list) -> set[str]:  # type: ignore[type-arg]
    return {d.recipient for d in deliveries}


async def test_list_deliveries_filters(store: SqliteStore) -> None:
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


async def test_counts_by_status(store: SqliteStore) -> None:
    await _mixed_queue(store)
    counts = await store.counts()
    assert set(counts) == set(DeliveryStatus), "every status is present, zero or not"
    assert {s: n for s, n in counts.items() if n} == {
        DeliveryStatus.DELIVERED: 1,
        DeliveryStatus.BOUNCED: 1,
        DeliveryStatus.DEFERRED: 1,
        DeliveryStatus.QUEUED: 1,
    }


async def test_retry_now_makes_undelivered_deliveries_due(store: SqliteStore) -> None:
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


async def test_retry_now_leaves_skipped_deliveries_alone(store: SqliteStore) -> None:
    """A suppressed (skipped) recipient stays skipped: an operator retry must not mail it."""
    (delivery,) = await store.enqueue(message(9), ["gone@example.org"], expires_at=T0 + HOUR)
    skipped = DeliveryUpdate(
        delivery_id=delivery.id, shard=0, status=DeliveryStatus.SKIPPED, last_error="unsubscribed"
    )
    await store.complete([skipped], T0)
    assert await store.retry_now(DeliveryFilter(), T0 + 1) == 0
    (after,) = await store.list_deliveries(DeliveryFilter(message_id="msg-9"))
    assert after.status is DeliveryStatus.SKIPPED


async def test_retry_now_honours_the_filter(store: SqliteStore) -> None:
    await _mixed_queue(store)
    assert await store.retry_now(DeliveryFilter(recipient="BOB@example.net"), T0 + 1) == 1
    (bob,) = await store.list_deliveries(DeliveryFilter(recipient="bob@example.net"))
    assert (bob.status, bob.next_attempt_at) == (DeliveryStatus.DEFERRED, T0 + 1)
    (carol,) = await store.list_deliveries(DeliveryFilter(recipient="carol@example.org"))
    assert carol.next_attempt_at == T0 + 300


async def test_delete_removes_deliveries_attempts_and_orphaned_messages(
    store: SqliteStore,
) -> None:
    await _mixed_queue(store)
    (bob,) = await store.list_deliveries(DeliveryFilter(recipient="bob@example.net"))
    assert await store.delete(DeliveryFilter(recipient="bob@example.net")) == 1
    assert await store.attempts(bob) == []
    assert await store.get_message("msg-1") is not None, "Alice's delivery still uses it"
    assert await store.delete(DeliveryFilter(message_id="msg-1")) == 1
    assert await store.get_message("msg-1") is None
    assert await store.delete(DeliveryFilter(domain="example.org")) == 1
    assert _recipients(await store.list_deliveries(DeliveryFilter())) == {"dave@example.com"}


async def test_delivery_ids_are_never_reused_after_delete(store: SqliteStore) -> None:
    """A dispatcher still sending a deleted delivery must not overwrite a newer one's state."""
    await store.enqueue(message(1), ["old@example.org"], expires_at=T0 + HOUR)
    (in_flight,) = await store.claim(T0, limit=1)
    assert await store.delete(DeliveryFilter(message_id="msg-1")) == 1
    (new,) = await store.enqueue(message(2), ["new@example.org"], expires_at=T0 + HOUR)
    assert new.id != in_flight.delivery.id
    await store.complete([sent(in_flight.delivery.id)], now=T0)  # the late outcome arrives
    (still,) = await store.list_deliveries(DeliveryFilter())
    assert (still.recipient, still.status) == ("new@example.org", DeliveryStatus.QUEUED)
    assert await store.attempts(still) == []


# --- group commit --------------------------------------------------------------------------


async def test_concurrent_enqueues_share_commits_and_survive_reopen(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    store = await opened(directory)
    try:
        before = store.stats()
        results = await asyncio.gather(
            *(
                store.enqueue(message(n), [f"r{n}@example.org"], expires_at=T0 + HOUR)
                for n in range(200)
            )
        )
        after = store.stats()
    finally:
        await store.close()
    assert len(results) == 200
    commits = after["commits"] - before["commits"]
    assert after["operations"] - before["operations"] == 200
    assert commits < 50, f"200 enqueues took {commits} commits: group commit is not batching"

    reopened = await opened(directory)
    try:
        stored = await reopened.list_deliveries(DeliveryFilter(limit=1000))
        assert {d.message_id for d in stored} == {f"msg-{n}" for n in range(200)}
        assert all([await reopened.get_message(f"msg-{n}") for n in (0, 99, 199)])
    finally:
        await reopened.close()


async def test_a_failing_operation_fails_alone_within_its_batch(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    store = await opened(directory)
    try:
        await store.enqueue(message("taken"), ["x@example.org"], expires_at=T0 + HOUR)
        # Hold the writer inside an operation so the next ones pile up and share one batch.
        entered, release = threading.Event(), threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            entered.set()
            release.wait(10)

        holder = asyncio.create_task(store._on(store.write_shard, hold))
        await asyncio.to_thread(entered.wait, 10)
        before = store.stats()["commits"]
        names = ["a", "b", "taken", "c", "d"]
        tasks = [
            asyncio.create_task(
                store.enqueue(message(n), [f"{n}@example.org"], expires_at=T0 + HOUR)
            )
            for n in names
        ]
        await asyncio.sleep(0)  # each task runs up to its hand-over to the writer
        release.set()
        await holder
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert store.stats()["commits"] - before == 2, "the held batch, then all five together"
    finally:
        await store.close()
    failed = {n for n, o in zip(names, outcomes, strict=True) if isinstance(o, BaseException)}
    assert failed == {"taken"}
    error = outcomes[names.index("taken")]
    assert isinstance(error, StoreError), "engine errors reach callers as StoreError"
    assert isinstance(error.__cause__, sqlite3.IntegrityError)

    reopened = await opened(directory)
    try:
        stored = await reopened.list_deliveries(DeliveryFilter())
        assert sorted(d.message_id for d in stored) == [
            "msg-a",
            "msg-b",
            "msg-c",
            "msg-d",
            "msg-taken",
        ]
        (first,) = await reopened.list_deliveries(DeliveryFilter(message_id="msg-taken"))
        assert first.recipient == "x@example.org", "the failed duplicate left nothing behind"
    finally:
        await reopened.close()


async def test_a_closed_store_refuses_work_instead_of_hanging(tmp_path: Path) -> None:
    store = await opened(tmp_path / "spool")
    await store.close()
    with pytest.raises(StoreError):
        await asyncio.wait_for(store.counts(), 5)


async def test_opening_an_unusable_path_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = SqliteStore(blocker / "spool")
    with pytest.raises(StoreError, match="cannot open"):
        await store.open()
    await store.close()


# --- shards -----------------------------------------------------------------------------------


async def test_shards_write_their_own_file_and_all_shards_sees_every_one(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    zero = await opened(directory, write_shard=0)
    one = await opened(directory, write_shard=1)
    try:
        await zero.enqueue(message("z"), ["z@example.org"], expires_at=T0 + HOUR)
        (d1,) = await one.enqueue(message("o"), ["o@example.org"], expires_at=T0 + HOUR)
        assert d1.shard == 1
        assert shard_path(directory, 1).is_file()
        assert [d.message_id for d in await one.list_deliveries(DeliveryFilter())] == ["msg-o"]
        assert await zero.get_message("msg-o") is None, "shard 0's store only opened its file"
    finally:
        await zero.close()
        await one.close()

    everything = await opened(directory, all_shards=True)
    try:
        assert everything.shards == [0, 1]
        listed = await everything.list_deliveries(DeliveryFilter())
        assert {(d.message_id, d.shard) for d in listed} == {("msg-z", 0), ("msg-o", 1)}
        assert (await everything.get_message("msg-o")) == message("o")
        assert (await everything.counts())[DeliveryStatus.QUEUED] == 2
        claimed = await everything.claim(T0, limit=10)
        assert {c.delivery.shard for c in claimed} == {0, 1}
        await everything.complete([sent(c.delivery.id, c.delivery.shard) for c in claimed], T0)
        delivered = await everything.list_deliveries(
            DeliveryFilter(statuses=[DeliveryStatus.DELIVERED])
        )
        assert len(delivered) == 2
        assert [a.outcome for a in await everything.attempts(delivered[0])] == ["sent"]
    finally:
        await everything.close()


async def test_a_worker_store_drains_the_shards_it_is_given(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    old = await opened(directory, write_shard=2)
    await old.enqueue(message("left"), ["l@example.org"], expires_at=T0 + HOUR)
    await old.close()
    worker = await opened(directory, write_shard=0, shards=[0, 2])
    try:
        (claimed,) = await worker.claim(T0, limit=10)
        assert (claimed.delivery.shard, claimed.message.id) == (2, "msg-left")
        (new,) = await worker.enqueue(message("new"), ["n@example.org"], expires_at=T0 + HOUR)
        assert new.shard == 0
    finally:
        await worker.close()


async def test_consume_never_exceeds_the_limit_under_concurrency(tmp_path: Path) -> None:
    # Two store instances on one directory stand for two worker processes.
    first, second = (
        await opened(tmp_path / "spool"),
        await opened(tmp_path / "spool", write_shard=1),
    )
    try:
        results = await asyncio.gather(
            *(
                s.consume("rate:t:1", 1, 25, expires_at=T0 + 1, now=T0)
                for _ in range(40)
                for s in (first, second)
            )
        )
        assert results.count(True) == 25
        assert await first.counter("rate:t:1", T0) == 25
        assert await first.counter("rate:t:1", T0 + 1) == 0, "expired with its window"
        assert await second.consume("rate:t:1", 1, 25, expires_at=T0 + 2, now=T0 + 1)
        assert await first.add_to_counter("sent:d", 5, expires_at=T0 + 9, now=T0) == 5
        assert await second.add_to_counter("sent:d", 2, expires_at=T0 + 9, now=T0) == 7
    finally:
        await first.close()
        await second.close()


async def test_first_sighting_is_true_once_until_it_expires(store: SqliteStore) -> None:
    assert await store.first_sighting("evt:sg:1", expires_at=T0 + 10, now=T0)
    assert not await store.first_sighting("evt:sg:1", expires_at=T0 + 10, now=T0 + 5)
    assert await store.first_sighting("evt:sg:1", expires_at=T0 + 30, now=T0 + 10)
