"""The event-webhook queue in Redis: Lua scripts and the ``RedisStore`` methods that use them.

Layout under the prefix ``P`` (one Cluster hash slot, as for the rest of the store):

``P wh:<id>``        hash: an event (``ten ep type body at st att next err upd``)
``P wh:<id>:a``      list: its delivery log (msgpack ``WebhookAttempt``)
``P whdue``          sorted set: pending event ids by due time (a claim moves it to the lease)
``P whall``          sorted set (all scores 0, so by id): every event, for listings
``P whten:<tenant>`` sorted set (scores 0): a tenant's events
``P whst:<status>``  set: event ids in that status (counts)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.store.base import WebhookAttempt, WebhookEvent, WebhookStatus

if TYPE_CHECKING:
    from gateway.store.redis import RedisStore

ENQUEUE_WEBHOOK = """
local P, id = ARGV[1], ARGV[2]
local key = P .. 'wh:' .. id
if redis.call('EXISTS', key) == 1 then
  return 0
end
redis.call('HSET', key, 'ten', ARGV[3], 'ep', ARGV[4], 'type', ARGV[5], 'body', ARGV[6],
  'at', ARGV[7], 'st', 'pending', 'att', '0', 'next', ARGV[8], 'err', '', 'upd', ARGV[7])
redis.call('ZADD', P .. 'whdue', ARGV[8], id)
redis.call('ZADD', P .. 'whall', 0, id)
redis.call('ZADD', P .. 'whten:' .. ARGV[3], 0, id)
redis.call('SADD', P .. 'whst:pending', id)
return 1
"""

CLAIM_WEBHOOKS = """
local P = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', P .. 'whdue', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  redis.call('ZADD', P .. 'whdue', ARGV[4], id)
  redis.call('HSET', P .. 'wh:' .. id, 'next', ARGV[4])
end
return ids
"""

RECORD_WEBHOOK_ATTEMPT = """
local P, id, outcome = ARGV[1], ARGV[2], ARGV[3]
local key = P .. 'wh:' .. id
local old = redis.call('HGET', key, 'st')
if not old then
  return 0
end
redis.call('SREM', P .. 'whst:' .. old, id)
redis.call('SADD', P .. 'whst:' .. outcome, id)
redis.call('HINCRBY', key, 'att', 1)
redis.call('HSET', key, 'st', outcome, 'next', ARGV[4], 'err', ARGV[5], 'upd', ARGV[6])
if outcome == 'pending' then
  redis.call('ZADD', P .. 'whdue', ARGV[4], id)
else
  redis.call('ZREM', P .. 'whdue', id)
end
redis.call('RPUSH', key .. ':a', ARGV[7])
return 1
"""

REPLAY_WEBHOOK = """
local P, id = ARGV[1], ARGV[2]
local key = P .. 'wh:' .. id
local old = redis.call('HGET', key, 'st')
if not old then
  return 0
end
redis.call('SREM', P .. 'whst:' .. old, id)
redis.call('SADD', P .. 'whst:pending', id)
redis.call('HSET', key, 'st', 'pending', 'next', ARGV[3], 'upd', ARGV[3])
redis.call('ZADD', P .. 'whdue', ARGV[3], id)
return 1
"""

SCRIPTS = ("ENQUEUE_WEBHOOK", "CLAIM_WEBHOOKS", "RECORD_WEBHOOK_ATTEMPT", "REPLAY_WEBHOOK")
_FIELDS = ("ten", "ep", "type", "body", "at", "st", "att", "next", "err", "upd")
_encode = msgspec.msgpack.Encoder().encode
_ATTEMPT = msgspec.msgpack.Decoder(WebhookAttempt)


def _s(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _f(value: float) -> str:
    return repr(float(value))


def _event(event_id: str, row: Sequence[Any]) -> WebhookEvent:
    return WebhookEvent(
        id=event_id,
        tenant=_s(row[0]),
        endpoint=_s(row[1]),
        type=_s(row[2]),
        payload=row[3] or b"",
        created_at=float(row[4]),
        status=_s(row[5]),  # type: ignore[arg-type]
        attempts=int(row[6]),
        next_attempt_at=float(row[7]),
        last_error=_s(row[8]),
        updated_at=float(row[9]),
    )


async def fetch(store: RedisStore, ids: Sequence[str]) -> list[WebhookEvent]:
    """The events with these ids that exist, in the given order."""
    if not ids:
        return []
    with store._errors():
        async with store._redis.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.hmget(store._p + "wh:" + event_id, *_FIELDS)
            rows = await pipe.execute()
    return [_event(i, r) for i, r in zip(ids, rows, strict=True) if r[0] is not None]


async def enqueue(store: RedisStore, events: Sequence[WebhookEvent]) -> None:
    for e in events:
        await store._run(
            "ENQUEUE_WEBHOOK",
            e.id,
            e.tenant,
            e.endpoint,
            e.type,
            e.payload,
            _f(e.created_at),
            _f(e.next_attempt_at),
        )


async def claim(
    store: RedisStore, now: float, limit: int, lease_until: float
) -> list[WebhookEvent]:
    ids = await store._run("CLAIM_WEBHOOKS", _f(now), str(limit), _f(lease_until))
    return await fetch(store, [_s(i) for i in ids])


async def record_attempt(
    store: RedisStore, event_id: str, attempt: WebhookAttempt, next_attempt_at: float
) -> None:
    await store._run(
        "RECORD_WEBHOOK_ATTEMPT",
        event_id,
        attempt.outcome,
        _f(next_attempt_at),
        "" if attempt.outcome == "delivered" else attempt.detail,
        _f(attempt.at),
        _encode(attempt),
    )


async def list_events(
    store: RedisStore,
    tenant: str | None,
    status: WebhookStatus | None,
    endpoint: str | None,
    before_id: str | None,
    limit: int,
) -> list[WebhookEvent]:
    index = store._p + ("whall" if tenant is None else "whten:" + tenant)
    cursor = "(" + before_id if before_id is not None else "+"
    found: list[WebhookEvent] = []
    while len(found) < limit:
        with store._errors():
            ids = await store._redis.zrevrangebylex(
                index, cursor, "-", start=0, num=max(limit, 100)
            )
        if not ids:
            break
        for event in await fetch(store, [_s(i) for i in ids]):
            if status is not None and event.status != status:
                continue
            if endpoint is not None and event.endpoint != endpoint:
                continue
            found.append(event)
        cursor = "(" + _s(ids[-1])
    return found[:limit]


async def get(store: RedisStore, event_id: str) -> tuple[WebhookEvent, list[WebhookAttempt]] | None:
    events = await fetch(store, [event_id])
    if not events:
        return None
    with store._errors():
        blobs = await store._redis.lrange(store._p + "wh:" + event_id + ":a", 0, -1)
    return events[0], [_ATTEMPT.decode(b) for b in blobs]


async def replay(store: RedisStore, event_id: str, now: float) -> WebhookEvent | None:
    if not int(await store._run("REPLAY_WEBHOOK", event_id, _f(now))):
        return None
    events = await fetch(store, [event_id])
    return events[0] if events else None


async def counts(store: RedisStore) -> dict[WebhookStatus, int]:
    statuses: tuple[WebhookStatus, ...] = ("pending", "delivered", "failed")
    with store._errors():
        async with store._redis.pipeline(transaction=False) as pipe:
            for status in statuses:
                pipe.scard(store._p + "whst:" + status)
            sizes = await pipe.execute()
    return {s: int(n) for s, n in zip(statuses, sizes, strict=True)}


async def oldest_waiting(store: RedisStore) -> float | None:
    """Creation time of the oldest message with a waiting delivery (one pass over the
    waiting sets: the cost of a metrics scrape grows with the queue)."""
    with store._errors():
        ids = await store._redis.sunion(
            [store._p + f"s:{s}" for s in ("queued", "deferred", "sending")]
        )
    oldest: float | None = None
    message_ids: set[str] = set()
    with store._errors():
        listed = sorted(_s(i) for i in ids)
        for start in range(0, len(listed), 500):
            async with store._redis.pipeline(transaction=False) as pipe:
                for delivery_id in listed[start : start + 500]:
                    pipe.hget(store._p + "d:" + delivery_id, "mid")
                message_ids.update(_s(m) for m in await pipe.execute() if m is not None)
        ordered = sorted(message_ids)
        for start in range(0, len(ordered), 500):
            async with store._redis.pipeline(transaction=False) as pipe:
                for message_id in ordered[start : start + 500]:
                    pipe.hget(store._p + "m:" + message_id, "at")
                for at in await pipe.execute():
                    if at is not None and (oldest is None or float(at) < oldest):
                        oldest = float(at)
    return oldest
