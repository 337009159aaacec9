"""What only the SQLite spool does: recovery at start-up, group commit, shards.

The contract every store keeps (claims, outcomes, operator filters, counters…) is tested
against SQLite and Redis alike in tests/store/test_store_contract.py."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
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


def sent(delivery_id: int, shard: int = 0, *, at: float = T0) -> DeliveryUpdate:
    return DeliveryUpdate(
        delivery_id=delivery_id,
        shard=shard,
        status=DeliveryStatus.DELIVERED,
        provider="relay",
        provider_message_id="Q1",
        attempts=[Attempt(at=at, provider="relay", outcome="sent", detail="250 ok")],
    )


# --- recovery at start-up ------------------------------------------------------------------------


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


async def test_a_message_claimed_as_it_is_stored_is_fsyncd_and_recovered_after_a_crash(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    first = await opened(directory)
    unsynced = first.stats()["unsynced_commits"]
    deliveries = await first.enqueue_claimed(
        message(1), ["a@example.org", "b@example.org"], expires_at=T0 + HOUR
    )
    assert first.claims_on_enqueue
    assert [d.status for d in deliveries] == [DeliveryStatus.SENDING] * 2
    assert first.stats()["unsynced_commits"] == unsynced, "one fsync'd commit, as an enqueue"
    assert await first.claim(T0, limit=10) == [], "already claimed: nobody else takes them"
    assert await first.next_due() is None
    await first.close()  # the process dies before the outcome is recorded

    second = await opened(directory)
    try:
        assert await second.recover(T0 + 5) == 2
        again = await second.claim(T0 + 5, limit=10)
        assert sorted(c.delivery.recipient for c in again) == ["a@example.org", "b@example.org"]
        assert again[0].message.raw == message(1).raw
    finally:
        await second.close()


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


# --- what each commit makes durable (issue 25) ---------------------------------------------


def synchronous_setting(conn: sqlite3.Connection) -> int:
    """Inside a batch: how its COMMIT will reach the disk (2 = FULL: the WAL is fsync'd)."""
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


FULL, NORMAL = 2, 1


async def test_an_enqueue_is_fsyncd_a_lone_claim_is_not(tmp_path: Path) -> None:
    store = await opened(tmp_path / "spool")
    shard = store.write_shard
    try:
        await store.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
        assert await store._on(shard, synchronous_setting) == FULL, "the default: fsync'd"
        assert await store._on(shard, synchronous_setting, sync="none") == NORMAL
        unsynced = store.stats()["unsynced_commits"]
        assert len(await store.claim(T0, limit=10)) == 1
        assert store.stats()["unsynced_commits"] == unsynced + 1, "a claim alone: no fsync"
        # An enqueue in the same batch as a claim makes the whole batch fsync'd.
        entered, release = threading.Event(), threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            entered.set()
            release.wait(10)

        holder = asyncio.create_task(store._on(shard, hold))
        await asyncio.to_thread(entered.wait, 10)
        probe = asyncio.create_task(store._on(shard, synchronous_setting, sync="none"))
        enqueue = asyncio.create_task(
            store.enqueue(message(2), ["b@example.org"], expires_at=T0 + HOUR)
        )
        await asyncio.sleep(0)
        release.set()
        await holder
        await enqueue
        assert await probe == FULL
    finally:
        await store.close()


async def test_an_outcome_waits_to_share_the_next_enqueues_fsync(tmp_path: Path) -> None:
    store = await opened(tmp_path / "spool")
    writer = store._writers[store.write_shard]
    try:
        await store.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
        [claimed] = await store.claim(T0, limit=10)
        writer.share_wait = 30.0  # long enough that only the enqueue can end the wait
        before = store.stats()
        outcome = asyncio.create_task(store.complete([sent(claimed.delivery.id)], T0 + 1))
        await asyncio.sleep(0.05)
        assert not outcome.done(), "no fsync yet, so no answer yet"
        await store.enqueue(message(2), ["b@example.org"], expires_at=T0 + HOUR)
        await asyncio.wait_for(outcome, 10)
        after = store.stats()
        assert after["commits"] - before["commits"] == 1, "one commit for both"
        assert after["unsynced_commits"] == before["unsynced_commits"], "and it was fsync'd"
        # Alone, it still commits (fsync'd) once the wait is over.
        writer.share_wait = 0.01
        [second] = await store.claim(T0 + 2, limit=10)
        await asyncio.wait_for(store.complete([sent(second.delivery.id)], T0 + 3), 10)
        assert store.stats()["unsynced_commits"] == after["unsynced_commits"] + 1, "the claim"
        statuses = {d.message_id: d.status for d in await store.list_deliveries(DeliveryFilter())}
        assert statuses == {"msg-1": DeliveryStatus.DELIVERED, "msg-2": DeliveryStatus.DELIVERED}
    finally:
        await store.close()


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


async def test_a_store_opening_while_another_process_creates_the_files_waits_for_it(
    tmp_path: Path,
) -> None:
    """The first-start race: another worker holds the new ``tenants.db``'s write lock (it is
    creating the schema) while this one switches the file to WAL; that must wait, not fail."""
    spool = tmp_path / "spool"
    spool.mkdir()
    other = sqlite3.connect(spool / "tenants.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE being_created (x)")
    released = threading.Event()

    def release() -> None:
        other.execute("COMMIT")
        other.close()
        released.set()

    # The other process finishes its work a moment later, while this one is opening.
    timer = threading.Timer(0.5, release)
    timer.start()
    store = SqliteStore(spool)
    try:
        await store.open()
        assert released.is_set()
        await store.enqueue(message(1), ["a@example.org"], expires_at=2e9)
    finally:
        timer.join()
        await store.close()
