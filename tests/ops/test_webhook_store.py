"""The webhook queue and delivery log of the ``Store`` contract, on SQLite and on Redis."""

from __future__ import annotations

from gateway.store.base import Store, WebhookAttempt, WebhookEvent
from tests.store.conftest import T0, Backend, backend, message, store  # noqa: F401 (fixtures)


def event(n: int, *, tenant: str = "acme", at: float = T0) -> WebhookEvent:
    return WebhookEvent(
        id=f"msg_{n:04d}",
        tenant=tenant,
        endpoint="crm",
        type="delivered",
        payload=b'{"type":"email.delivered","n":%d}' % n,
        created_at=at,
        next_attempt_at=at,
        updated_at=at,
    )


async def test_claims_are_exclusive_and_leased(backend: Backend) -> None:  # noqa: F811
    first, second = await backend.open(), await backend.open()
    await first.enqueue_webhooks([event(1), event(2), event(3, at=T0 + 60)])
    claimed = await first.claim_webhooks(T0, 10, lease_until=T0 + 40)
    assert [e.id for e in claimed] == ["msg_0001", "msg_0002"]
    assert claimed[0].payload == b'{"type":"email.delivered","n":1}'
    # Another process sees nothing due until the lease runs out (the claimer died).
    assert await second.claim_webhooks(T0 + 39, 10, lease_until=T0 + 100) == []
    again = await second.claim_webhooks(T0 + 41, 10, lease_until=T0 + 100)
    assert [e.id for e in again] == ["msg_0001", "msg_0002"]


async def test_attempts_log_move_status_and_replay_keeps_the_log(store: Store) -> None:  # noqa: F811
    await store.enqueue_webhooks([event(1), event(2, tenant="globex")])
    assert await store.webhook_counts() == {"pending": 2, "delivered": 0, "failed": 0}
    await store.claim_webhooks(T0, 10, lease_until=T0 + 40)
    retry = WebhookAttempt(at=T0, status_code=503, outcome="pending", detail="HTTP 503")
    await store.record_webhook_attempt("msg_0001", retry, next_attempt_at=T0 + 5)
    assert [e.id for e in await store.claim_webhooks(T0 + 5, 10, T0 + 50)] == ["msg_0001"]
    gave_up = WebhookAttempt(at=T0 + 5, status_code=0, outcome="failed", detail="refused")
    await store.record_webhook_attempt("msg_0001", gave_up)
    found = await store.webhook_event("msg_0001")
    assert found is not None
    failed, log = found
    assert (failed.status, failed.attempts, failed.last_error) == ("failed", 2, "refused")
    assert log == [retry, gave_up]
    # A failed event is not handed out again; the other one's lease has run out.
    assert [e.id for e in await store.claim_webhooks(T0 + 50, 10, T0 + 1000)] == ["msg_0002"]
    assert [e.id for e in await store.list_webhook_events("acme", status="failed")] == ["msg_0001"]
    assert [e.id for e in await store.list_webhook_events(None)] == ["msg_0002", "msg_0001"]
    assert await store.list_webhook_events("acme", status="delivered") == []
    replayed = await store.replay_webhook("msg_0001", T0 + 100)
    assert replayed is not None and replayed.status == "pending"
    assert await store.replay_webhook("msg_missing", T0) is None
    assert [e.id for e in await store.claim_webhooks(T0 + 100, 10, T0 + 140)] == ["msg_0001"]
    ok = WebhookAttempt(at=T0 + 100, status_code=200, outcome="delivered", detail="HTTP 200")
    await store.record_webhook_attempt("msg_0001", ok)
    found = await store.webhook_event("msg_0001")
    assert found is not None and found[0].status == "delivered" and found[1][-1] == ok
    assert len(found[1]) == 3
    assert await store.webhook_counts() == {"pending": 1, "delivered": 1, "failed": 0}


async def test_oldest_waiting_is_the_oldest_undelivered_message(store: Store) -> None:  # noqa: F811
    assert await store.oldest_waiting() is None
    await store.enqueue(message(1, at=T0), ["a@example.org"], expires_at=T0 + 3600)
    await store.enqueue(message(2, at=T0 + 50), ["b@example.org"], expires_at=T0 + 3600)
    assert await store.oldest_waiting() == T0
    await store.ping()
