"""The shared store: Redis, for several gateway nodes behind one load balancer.

Every node accepts into, and delivers from, the same Redis. Changes that touch several keys
run as Lua scripts (``redis_lua``), which Redis executes atomically, so two nodes never claim
one delivery and counters hold under any concurrency.

Scheduling: waiting deliveries sit in a sorted set by due time; ``claim`` moves the due ones
to ``sending`` with a *lease* (a deadline in a second sorted set) owned by this process. While
a delivery is in flight a heartbeat pushes its lease forward every third of the lease time.
A node that dies (SIGKILL, power) stops renewing; once its leases pass their deadline, the
next ``claim`` by any node returns those deliveries to the queue and delivers them —
at-least-once, as with the SQLite spool's ``recover``. Lease deadlines use the callers'
clocks, so nodes must keep their clocks in step (NTP) to well within the lease time.

Durability is Redis's: the reply to ``enqueue`` comes after Redis wrote the script's effects
to its AOF, which is on disk only as often as ``appendfsync`` says. ``open`` reads the
server's setting and warns about what it could lose (``docs/redis.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from gateway.clock import Clock, SystemClock
from gateway.message import Attempt, Delivery, DeliveryStatus, Message
from gateway.store import redis_lua, redis_webhooks
from gateway.store.base import (
    TENANT_SCOPE,
    Claimed,
    DeliveryFilter,
    DeliveryStats,
    DeliveryUpdate,
    IdempotencyClaim,
    IdempotencyConflict,
    IdempotencyEntry,
    MessageEvent,
    MessageMeta,
    MessageQuery,
    MessageRecord,
    Store,
    StoreError,
    Suppression,
    SuppressionReason,
    WebhookAttempt,
    WebhookEvent,
    WebhookStatus,
    cursor_key,
    entry_key,
    suppression_key,
)
from gateway.store.redis_client import (
    Persistence,
    RedisTarget,
    check_persistence,
    connect,
    describe_persistence,
    parse_redis_url,
    read_persistence,
)
from gateway.store.redis_pipeline import AutoPipeline
from gateway.streams import TRANSACTIONAL

log = logging.getLogger("gateway.store.redis")

HEAD_BYTES = 16384
TTL_GRACE_MS = 60_000
"""Redis keeps an expiring key this long past its logical expiry (the store checks expiry
itself, against the caller's clock; the Redis TTL only collects garbage)."""
RECLAIMED = "interrupted: the node sending it stopped renewing its lease"
RELEASED = "interrupted: the gateway stopped during this attempt"
_OUTCOME_EVENT = {"sent": "delivered", "soft_fail": "deferred", "hard_fail": "bounced"}
_STATUS_EVENT = {"sending": "attempted", "expired": "expired", "skipped": "suppressed"}
_DELIVERY_FIELDS = (
    "id", "mid", "rcpt", "st", "att", "next", "exp", "err", "prov", "pmid", "upd", "lane"
)  # fmt: skip
_FILTER_FIELDS = (*_DELIVERY_FIELDS, "ten", "dom")
_RECORD_FIELDS = ("ten", "src", "from", "at", "size", "head", "meta", "send", "stream")
_MESSAGE_FIELDS = ("ten", "src", "from", "utf8", "at", "raw", "stream")
_BATCH = 500

_encode = msgspec.msgpack.Encoder().encode
_ATTEMPT = msgspec.msgpack.Decoder(Attempt)
_EVENT = msgspec.msgpack.Decoder(MessageEvent)
_META = msgspec.msgpack.Decoder(MessageMeta)
_SUPPRESSION = msgspec.msgpack.Decoder(Suppression)
_IDEMPOTENCY = msgspec.msgpack.Decoder(IdempotencyEntry)


def _s(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _f(value: float) -> str:
    return repr(float(value))


def _ttl_ms(expires_at: float, now: float) -> int:
    return max(int((expires_at - now) * 1000), 1) + TTL_GRACE_MS


def _delivery(fields: Sequence[Any]) -> Delivery:
    return Delivery(
        id=int(fields[0]),
        message_id=_s(fields[1]),
        recipient=_s(fields[2]),
        status=DeliveryStatus(_s(fields[3])),
        attempts=int(fields[4]),
        next_attempt_at=float(fields[5]),
        expires_at=float(fields[6]),
        last_error=_s(fields[7]),
        provider=_s(fields[8]),
        provider_message_id=_s(fields[9]),
        updated_at=float(fields[10]),
        broadcast=_s(fields[11]) == "b",
    )


def _message(message_id: str, fields: Sequence[Any]) -> Message | None:
    """A message from its ``_MESSAGE_FIELDS``; ``None`` if it does not exist."""
    tenant, source, mail_from, utf8, created_at, raw, stream = fields
    if raw is None:
        return None
    return Message(
        id=message_id,
        tenant=_s(tenant),
        source=_s(source),  # type: ignore[arg-type]
        mail_from=_s(mail_from),
        smtp_utf8=_s(utf8) == "1",
        created_at=float(created_at),
        raw=raw,
        stream=_s(stream) or TRANSACTIONAL,
    )


def _head(raw: bytes) -> bytes:
    head = raw[:HEAD_BYTES]
    end = head.find(b"\r\n\r\n")
    return head[: end + 2] if end >= 0 else head


class RedisStore(Store):
    """Spool, queue, suppressions and counters in one Redis (single, Sentinel or Cluster).

    :param url: see ``gateway.store.redis_client`` for the accepted forms.
    :param prefix: namespace of every key, so several gateways (or tests) share a server.
    :param lease_seconds: how long a claimed delivery stays with this process without a
        heartbeat; after that any node may take it over.
    :param clock: for lease deadlines in the heartbeat (the gateway's clock).
    :param allow_volatile: open even when the server has ``appendonly no`` (otherwise a
        ``StoreError``: a restart of such a server loses every acknowledged message).
    :param min_replicas: accept a message (``enqueue`` returns) only once this many replicas
        have it, so a failover cannot lose it; ``replica_timeout`` seconds at most, then
        ``enqueue`` fails (single server or Sentinel; not Cluster).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gateway",
        lease_seconds: float = 30.0,
        clock: Clock | None = None,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
        allow_volatile: bool = False,
    ) -> None:
        self.target: RedisTarget = parse_redis_url(url)
        self.prefix = prefix
        self._p = f"{{{prefix}}}:"
        self._seq_key = self._p + "seq"
        self.lease_seconds = lease_seconds
        self.min_replicas = min_replicas
        self.replica_timeout = replica_timeout
        self.allow_volatile = allow_volatile
        self.clock = clock or SystemClock()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        """Names this process in the leases it holds."""
        self.persistence: Persistence | None = None
        self._redis: Any = None
        self._pipe: AutoPipeline | None = None
        self._leased: set[int] = set()
        self._heartbeat: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        self._redis = connect(self.target)
        scripts = {
            name: getattr(redis_lua, name)
            for name in (
                "ENQUEUE",
                "CLAIM",
                "EXTEND",
                "RELEASE",
                "COMPLETE",
                "RETRY",
                "DELETE",
                "PURGE",
                "PURGE_IDEMPOTENCY",
                "ADD_SUPPRESSIONS",
                "REMOVE_SUPPRESSION",
                "ADD_TO_COUNTER",
                "FIRST_SIGHTING",
            )
        }
        scripts.update({name: getattr(redis_webhooks, name) for name in redis_webhooks.SCRIPTS})
        self._pipe = AutoPipeline(
            self._redis,
            scripts,
            min_replicas=self.min_replicas,
            replica_timeout=self.replica_timeout,
        )
        with self._errors(f"cannot reach Redis at {self.target.redacted}"):
            await self._redis.ping()
            self.persistence = await check_persistence(self._redis)
        if self.persistence.appendonly is False and not self.allow_volatile:
            await self._redis.aclose()
            self._redis = None
            raise StoreError(
                f"Redis at {self.target.redacted} has appendonly no: it keeps the queue in"
                " memory only, and its next restart would lose every message the gateway"
                " acknowledged. Turn on appendonly (appendfsync always) on the server, or set"
                " store.allow_volatile = true to run anyway (docs/redis.md)."
            )
        with self._errors(f"cannot reach Redis at {self.target.redacted}"):
            if self.min_replicas:
                replicas = int((await self._redis.info("replication")).get("connected_slaves", 0))
                if replicas < self.min_replicas:
                    log.warning(
                        "store.min_replicas is %d but the master has %d replicas connected:"
                        " mail is refused (451) until enough are",
                        self.min_replicas,
                        replicas,
                    )
        self._heartbeat = asyncio.create_task(self._renew_leases(), name="redis-lease-heartbeat")

    async def close(self, *, release: bool = True) -> None:
        """Stop renewing leases and disconnect. ``release`` hands deliveries this process
        still holds back to the queue at once (a clean stop); without it they wait for their
        lease to run out, as after a crash."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._redis is None:
            return
        if release and self._leased:
            try:
                released = await self._run(
                    "RELEASE",
                    self.owner,
                    _f(self.clock.now()),
                    RELEASED,
                    *sorted(self._leased),
                )
                log.info("returned %d deliveries in flight to the queue", released)
            except StoreError:
                log.exception("could not return deliveries in flight; their leases will expire")
        self._leased.clear()
        if self._pipe is not None:
            await self._pipe.drain()
            self._pipe = None
        await self._redis.aclose()
        self._redis = None

    async def _renew_leases(self) -> None:
        interval = self.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            if not self._leased:
                continue
            try:
                await self._run(
                    "EXTEND",
                    self.owner,
                    _f(self.clock.now() + self.lease_seconds),
                    *sorted(self._leased),
                )
            except StoreError:
                log.exception("renewing leases failed; retrying in %.1fs", interval)

    @property
    def _batch(self) -> AutoPipeline:
        """Where the hot paths send their commands: batched with the rest of this loop turn."""
        if self._pipe is None:
            raise StoreError("the Redis store is not open")
        return self._pipe

    @contextlib.contextmanager
    def _errors(self, what: str = "redis") -> Iterator[None]:
        from redis.exceptions import RedisError

        if self._redis is None:
            raise StoreError("the Redis store is not open")
        try:
            yield
        except RedisError as e:
            raise StoreError(f"{what}: {e}") from e

    async def _run(self, script: str, *args: Any, keys: Sequence[str] = ()) -> Any:
        """Run one Lua script; with no keys given, route it by the prefix's slot."""
        with self._errors(f"redis {script.lower()}"):
            return await self._batch.script(
                script, list(keys) or [self._seq_key], [self._p, *args] if not keys else args
            )

    # --- spool and queue --------------------------------------------------------------------

    async def enqueue(
        self,
        message: Message,
        recipients: Sequence[str],
        *,
        expires_at: float,
        not_before: float | None = None,
        meta: MessageMeta | None = None,
        idempotency: IdempotencyClaim | None = None,
        broadcast: bool = False,
    ) -> list[Delivery]:
        from redis.exceptions import ResponseError

        due = message.created_at if not_before is None else not_before
        meta_blob = _encode(meta) if meta is not None else b""
        idem: list[Any] = ["", "", "", "", "0"]
        if idempotency is not None:
            entry = IdempotencyEntry(
                part=idempotency.part,
                message_id=message.id,
                fingerprint=idempotency.fingerprint,
                response=idempotency.response,
                created_at=message.created_at,
            )
            idem = [
                self._idem_key(idempotency.tenant, idempotency.key),
                str(idempotency.part),
                _encode(entry),
                _f(idempotency.expires_at),
                str(_ttl_ms(idempotency.expires_at, message.created_at)),
            ]
        pairs: list[str] = []
        for recipient in recipients:
            pairs += [recipient, recipient.rpartition("@")[2].lower()]
        try:
            ids = await self._batch.script(
                "ENQUEUE",
                replicated=True,
                keys=[self._seq_key],
                args=[
                    self._p,
                    message.id,
                    message.tenant,
                    message.source,
                    message.mail_from,
                    "1" if message.smtp_utf8 else "0",
                    _f(message.created_at),
                    message.raw,
                    str(len(message.raw)),
                    _head(message.raw),
                    meta_blob,
                    "" if not_before is None else _f(not_before),
                    _f(due),
                    _f(expires_at),
                    *idem,
                    str(len(recipients)),
                    message.stream,
                    "b" if broadcast else "",
                    *pairs,
                ],
            )
        except ResponseError as e:
            if str(e).startswith("IDEMPOTENCY"):
                assert idempotency is not None
                raise IdempotencyConflict(
                    f"idempotency key {idempotency.key!r} part {idempotency.part}"
                ) from None
            raise StoreError(f"redis enqueue: {e}") from e
        except Exception as e:
            from redis.exceptions import RedisError

            if isinstance(e, RedisError):
                raise StoreError(f"redis enqueue: {e}") from e
            raise
        return [
            Delivery(
                id=int(i),
                message_id=message.id,
                recipient=r,
                status=DeliveryStatus.QUEUED,
                next_attempt_at=due,
                expires_at=expires_at,
                updated_at=message.created_at,
                broadcast=broadcast,
            )
            for i, r in zip(ids, recipients, strict=True)
        ]

    async def recover(self, now: float) -> int:
        """Return deliveries whose lease ran out (their node died) to the queue.

        Unlike SQLite's, this never touches deliveries other live nodes are sending."""
        reclaimed, _, _ = await self._run("CLAIM", _f(now), "0", "0", self.owner, RECLAIMED, "0")
        return int(reclaimed)

    async def claim(
        self, now: float, limit: int, *, broadcast_limit: int | None = None
    ) -> list[Claimed]:
        broadcast = limit if broadcast_limit is None else max(0, broadcast_limit)
        reclaimed, rows, message_rows = await self._run(
            "CLAIM",
            _f(now),
            str(limit),
            _f(now + self.lease_seconds),
            self.owner,
            RECLAIMED,
            str(broadcast),
        )
        if reclaimed:
            log.warning("took over %d deliveries whose lease had run out", reclaimed)
        messages = {}
        for row in message_rows:
            # A message goes only with its last delivery, so it always exists here.
            message = _message(_s(row[0]), row[1:])
            if message is not None:
                messages[message.id] = message
        claimed = []
        for row in rows:
            delivery = _delivery(row)
            if delivery.message_id in messages:
                # Only what is handed out is renewed: a lease nobody works on must run out.
                self._leased.add(delivery.id)
                claimed.append(Claimed(delivery, messages[delivery.message_id]))
        claimed.sort(key=lambda c: (c.delivery.broadcast, c.delivery.next_attempt_at))
        return claimed

    async def complete(self, updates: Sequence[DeliveryUpdate], now: float) -> None:
        args: list[Any] = [_f(now), str(len(updates))]
        for u in updates:
            args += [
                str(u.delivery_id),
                u.status.value,
                _f(u.next_attempt_at),
                u.last_error,
                u.provider,
                u.provider_message_id,
                "1" if u.attempts else "0",
                str(len(u.attempts)),
                # The outcome of a delivery this process holds applies only while it still
                # does; an operator's change (not leased here) applies whoever holds it.
                self.owner if u.delivery_id in self._leased else "",
                *(_encode(a) for a in u.attempts),
            ]
        await self._run("COMPLETE", *args)
        for u in updates:
            self._leased.discard(u.delivery_id)

    async def next_due(self) -> float | None:
        with self._errors():
            firsts = [
                await self._redis.zrange(self._p + key, 0, 0, withscores=True)
                for key in ("due", "dueb")
            ]
        found = [float(first[0][1]) for first in firsts if first]
        return min(found) if found else None

    async def get_message(self, message_id: str) -> Message | None:
        with self._errors():
            row = await self._batch.execute("HMGET", self._p + "m:" + message_id, *_MESSAGE_FIELDS)
        return _message(message_id, row)

    async def _delivery_rows(self, ids: Sequence[bytes | int]) -> list[list[Any]]:
        keys = [self._p + "d:" + (_s(i) if isinstance(i, bytes) else str(i)) for i in ids]
        rows: list[list[Any]] = []
        with self._errors():
            for start in range(0, len(ids), _BATCH):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in keys[start : start + _BATCH]:
                        pipe.hmget(key, *_FILTER_FIELDS)
                    rows += [r for r in await pipe.execute() if r[0] is not None]
        return rows

    async def _matching(self, where: DeliveryFilter) -> list[Delivery]:
        """Every delivery matching ``where`` (its ``limit`` not applied), newest message first."""
        with self._errors():
            if where.message_id is not None:
                ids = await self._redis.lrange(self._p + "md:" + where.message_id, 0, -1)
            else:
                statuses = where.statuses or list(DeliveryStatus)
                ids = list(await self._redis.sunion([self._p + f"s:{s.value}" for s in statuses]))
        recipient = where.recipient.strip().lower() if where.recipient is not None else None
        domain = where.domain.strip().lower() if where.domain is not None else None
        wanted = {s.value for s in where.statuses} if where.statuses else None
        found = []
        for row in await self._delivery_rows(ids):
            if wanted is not None and _s(row[3]) not in wanted:
                continue
            if where.tenant is not None and _s(row[12]) != where.tenant:
                continue
            if recipient is not None and _s(row[2]).lower() != recipient:
                continue
            if domain is not None and _s(row[13]) != domain:
                continue
            found.append(_delivery(row))
        found.sort(key=lambda d: (d.message_id, -d.id), reverse=True)
        return found

    async def list_deliveries(self, where: DeliveryFilter) -> list[Delivery]:
        return (await self._matching(where))[: where.limit]

    async def attempts(self, delivery: Delivery) -> list[Attempt]:
        with self._errors():
            blobs = await self._redis.lrange(self._p + f"d:{delivery.id}:a", 0, -1)
        return [_ATTEMPT.decode(b) for b in blobs]

    async def retry_now(self, where: DeliveryFilter, now: float) -> int:
        ids = [d.id for d in await self._matching(where)]
        total = 0
        for start in range(0, len(ids), _BATCH):
            total += int(
                await self._run("RETRY", _f(now), _f(now + 3600), *ids[start : start + _BATCH])
            )
        return total

    async def delete(self, where: DeliveryFilter) -> int:
        ids = [d.id for d in await self._matching(where)]
        total = 0
        for start in range(0, len(ids), _BATCH):
            total += int(await self._run("DELETE", *ids[start : start + _BATCH]))
        return total

    async def purge(self, before: float, *, batch: int = 500) -> int:
        with self._errors():
            tenants = [
                _s(key).removeprefix(self._p + "tt:")
                async for key in self._redis.scan_iter(match=self._p + "tt:*", count=500)
            ]
        total = 0
        for tenant in sorted(set(tenants)):
            kept = 0  # old messages still waiting stay at the head of the index: skip them
            while True:
                purged, seen = await self._run("PURGE", tenant, _f(before), kept, batch)
                total += int(purged)
                kept += int(seen) - int(purged)
                if int(seen) < batch:
                    break
        return total

    async def counts(self) -> dict[DeliveryStatus, int]:
        with self._errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for status in DeliveryStatus:
                    pipe.scard(self._p + f"s:{status.value}")
                sizes = await pipe.execute()
        return {status: int(n) for status, n in zip(DeliveryStatus, sizes, strict=True)}

    # --- idempotency ----------------------------------------------------------------------

    def _idem_key(self, tenant: str, key: str) -> str:
        # Length-prefixed, so tenant "a:b" + key "c" differs from tenant "a" + key "b:c".
        return self._p + f"idem:{len(tenant)}:{tenant}:{key}"

    async def find_idempotency(self, tenant: str, key: str, now: float) -> list[IdempotencyEntry]:
        with self._errors():
            fields = await self._redis.hgetall(self._idem_key(tenant, key))
        found = []
        for name, value in fields.items():
            name = _s(name)
            if name.endswith(":exp"):
                continue
            expires = fields.get(f"{name}:exp".encode())
            if expires is not None and float(expires) > now:
                found.append(_IDEMPOTENCY.decode(value))
        return sorted(found, key=lambda e: e.part)

    async def purge_idempotency(self, now: float) -> int:
        removed = 0
        with self._errors():
            keys = [k async for k in self._redis.scan_iter(match=self._p + "idem:*", count=500)]
        for key in keys:
            removed += int(await self._run("PURGE_IDEMPOTENCY", _f(now), keys=[_s(key)]))
        return removed

    # --- suppressions -----------------------------------------------------------------------

    async def add_suppressions(self, entries: Sequence[Suppression]) -> int:
        for start in range(0, len(entries), _BATCH):
            args: list[Any] = []
            for e in entries[start : start + _BATCH]:
                stored = msgspec.structs.replace(e, address=suppression_key(e.address))
                args += [e.tenant, stored.key, _encode(stored)]
            await self._run("ADD_SUPPRESSIONS", *args)
        return len(entries)

    async def remove_suppression(self, tenant: str, address: str, scope: str | None = None) -> bool:
        field = entry_key(address, scope) if scope is not None else ""
        removed = await self._run("REMOVE_SUPPRESSION", tenant, suppression_key(address), field)
        return int(removed) > 0

    async def list_suppressions(
        self,
        tenant: str,
        *,
        reason: SuppressionReason | None = None,
        scope: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Suppression]:
        found: list[Suppression] = []
        cursor = "(" + cursor_key(after) if after is not None else "-"
        while len(found) < limit:
            with self._errors():
                page = await self._redis.zrangebylex(
                    self._p + "supx:" + tenant, cursor, "+", start=0, num=max(limit, 100)
                )
                if not page:
                    break
                blobs = await self._redis.hmget(self._p + "sup:" + tenant, page)
            for blob in blobs:
                if blob is None:
                    continue
                entry = _SUPPRESSION.decode(blob)
                if (reason is None or entry.reason == reason) and (
                    scope is None or entry.scope == scope
                ):
                    found.append(entry)
            cursor = "(" + _s(page[-1])
        return found[:limit]

    async def suppressed(
        self, tenant: str, addresses: Sequence[str], scopes: Sequence[str] = (TENANT_SCOPE,)
    ) -> dict[str, Suppression]:
        wanted = sorted({suppression_key(a) for a in addresses})
        if not wanted or not scopes:
            return {}
        fields = [entry_key(a, scope) for a in wanted for scope in scopes]
        with self._errors():
            blobs = await self._batch.execute("HMGET", self._p + "sup:" + tenant, *fields)
        found: dict[str, Suppression] = {}
        for blob in blobs:  # in the order of ``scopes`` per address: the first one wins
            if blob:
                entry = _SUPPRESSION.decode(blob)
                found.setdefault(entry.address, entry)
        return found

    async def find_suppression(
        self, tenant: str, address: str, scopes: Sequence[str] = (TENANT_SCOPE,)
    ) -> Suppression | None:
        return (await self.suppressed(tenant, [address], scopes)).get(suppression_key(address))

    # --- messages as the API shows them -------------------------------------------------------

    async def _records(self, message_ids: Sequence[str]) -> list[MessageRecord]:
        """Records of the messages that exist, in the given order, with their deliveries."""
        with self._errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for mid in message_ids:
                    pipe.hmget(self._p + "m:" + mid, *_RECORD_FIELDS)
                    pipe.lrange(self._p + "md:" + mid, 0, -1)
                replies = await pipe.execute()
        records, delivery_ids = [], []
        for mid, row, ids in zip(message_ids, replies[::2], replies[1::2], strict=True):
            tenant, source, mail_from, created_at, size, head, meta, send_at, stream = row
            if tenant is None:
                continue
            records.append(
                MessageRecord(
                    id=mid,
                    tenant=_s(tenant),
                    source=_s(source),
                    mail_from=_s(mail_from),
                    created_at=float(created_at),
                    size=int(size),
                    head=head,
                    meta=_META.decode(meta) if meta else MessageMeta(),
                    send_at=float(send_at) if send_at else None,
                    stream=_s(stream) or TRANSACTIONAL,
                    deliveries=[],
                )
            )
            delivery_ids += ids
        by_id = {r.id: r for r in records}
        for row in await self._delivery_rows(delivery_ids):
            delivery = _delivery(row)
            by_id[delivery.message_id].deliveries.append(delivery)
        for record in records:
            record.deliveries.sort(key=lambda d: d.id)
        return records

    async def list_messages(self, query: MessageQuery) -> list[MessageRecord]:
        found: list[MessageRecord] = []
        cursor = "(" + query.before_id if query.before_id is not None else "+"
        page_size = max(query.limit * 2, 100)
        recipient = query.recipient.strip().lower() if query.recipient is not None else None
        while len(found) < query.limit:
            with self._errors():
                ids = await self._redis.zrevrangebylex(
                    self._p + "tm:" + query.tenant, cursor, "-", start=0, num=page_size
                )
            if not ids:
                break
            for record in await self._records([_s(i) for i in ids]):
                if query.since is not None and record.created_at < query.since:
                    continue
                if query.until is not None and record.created_at >= query.until:
                    continue
                if query.tag is not None and query.tag not in record.meta.tags:
                    continue
                if query.stream is not None and record.stream != query.stream:
                    continue
                if query.status is not None and all(
                    d.status is not query.status for d in record.deliveries
                ):
                    continue
                if recipient is not None and all(
                    d.recipient.lower() != recipient for d in record.deliveries
                ):
                    continue
                found.append(record)
            cursor = "(" + _s(ids[-1])
        return found[: query.limit]

    async def message_record(self, tenant: str, message_id: str) -> MessageRecord | None:
        records = await self._records([message_id])
        return records[0] if records and records[0].tenant == tenant else None

    async def timeline(self, message_id: str) -> list[MessageEvent]:
        records = await self._records([message_id])
        if not records:
            return []
        record = records[0]
        events = [
            MessageEvent(
                message_id=message_id,
                at=record.created_at,
                type="queued",
                detail=f"{len(record.deliveries)} recipient(s)",
            )
        ]
        if record.send_at is not None:
            when = dt.datetime.fromtimestamp(record.send_at, dt.UTC).isoformat()
            events.append(
                MessageEvent(
                    message_id=message_id,
                    at=record.created_at,
                    type="scheduled",
                    detail="due " + when,
                )
            )
        with self._errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for d in record.deliveries:
                    pipe.lrange(self._p + f"d:{d.id}:a", 0, -1)
                pipe.lrange(self._p + "ev:" + message_id, 0, -1)
                replies = await pipe.execute()
        for d, blobs in zip(record.deliveries, replies, strict=False):
            for attempt in map(_ATTEMPT.decode, blobs):
                events.append(
                    MessageEvent(
                        message_id=message_id,
                        at=attempt.at,
                        type=_OUTCOME_EVENT.get(attempt.outcome, "attempted"),  # type: ignore[arg-type]
                        recipient=d.recipient,
                        provider=attempt.provider,
                        detail=attempt.detail,
                    )
                )
        for d in record.deliveries:
            kind = _STATUS_EVENT.get(d.status.value)
            if kind is not None:
                events.append(
                    MessageEvent(
                        message_id=message_id,
                        at=d.updated_at,
                        type=kind,  # type: ignore[arg-type]
                        recipient=d.recipient,
                        provider=d.provider,
                        detail=d.last_error,
                    )
                )
        events += [_EVENT.decode(b) for b in replies[-1]]
        return sorted(events, key=lambda e: e.at)

    async def record_event(self, event: MessageEvent) -> None:
        with self._errors():
            await self._redis.rpush(self._p + "ev:" + event.message_id, _encode(event))

    async def delivery_stats(
        self, tenant: str, since: float, until: float, *, stream: str | None = None
    ) -> DeliveryStats:
        with self._errors():
            ids = await self._redis.zrangebyscore(
                self._p + "tt:" + tenant, _f(since), "(" + _f(until)
            )
        stats = DeliveryStats(by_status={}, by_tag={}, by_day={})
        for start in range(0, len(ids), _BATCH):
            records = [
                r
                for r in await self._records([_s(i) for i in ids[start : start + _BATCH]])
                if stream is None or r.stream == stream
            ]
            for record in records:
                day = dt.datetime.fromtimestamp(record.created_at, dt.UTC).strftime("%Y-%m-%d")
                for d in record.deliveries:
                    status = d.status.value
                    stats.by_status[status] = stats.by_status.get(status, 0) + 1
                    for bucket in [
                        stats.by_day.setdefault(day, {}),
                        stats.by_stream.setdefault(record.stream, {}),
                        *(stats.by_tag.setdefault(t, {}) for t in dict.fromkeys(record.meta.tags)),
                    ]:
                        bucket[status] = bucket.get(status, 0) + 1
            with self._errors():
                async with self._redis.pipeline(transaction=False) as pipe:
                    for record in records:
                        pipe.lrange(self._p + "ev:" + record.id, 0, -1)
                    blobs = await pipe.execute()
            for event in (_EVENT.decode(b) for found in blobs for b in found):
                if event.type in ("opened", "clicked"):
                    bucket = stats.engagement.setdefault(event.type, {})
                    label = event.classification or "unclassified"
                    bucket[label] = bucket.get(label, 0) + 1
        return stats

    # --- counters and sightings -------------------------------------------------------------

    async def _add(
        self, key: str, amount: int, limit: int | None, expires_at: float, now: float
    ) -> tuple[bool, int]:
        added, value = await self._run(
            "ADD_TO_COUNTER",
            str(amount),
            "" if limit is None else str(limit),
            _f(expires_at),
            _f(now),
            str(_ttl_ms(expires_at, now)),
            keys=[self._p + "c:" + key],
        )
        return bool(added), int(value)

    async def consume(
        self, key: str, amount: int, limit: int, *, expires_at: float, now: float
    ) -> bool:
        added, _ = await self._add(key, amount, limit, expires_at, now)
        return added

    async def add_to_counter(self, key: str, amount: int, *, expires_at: float, now: float) -> int:
        _, value = await self._add(key, amount, None, expires_at, now)
        return value

    async def counter(self, key: str, now: float) -> int:
        with self._errors():
            value, expires = await self._batch.execute("HMGET", self._p + "c:" + key, "v", "exp")
        if value is None or float(expires) <= now:
            return 0
        return int(value)

    async def first_sighting(self, key: str, *, expires_at: float, now: float) -> bool:
        first = await self._run(
            "FIRST_SIGHTING",
            _f(expires_at),
            _f(now),
            str(_ttl_ms(expires_at, now)),
            keys=[self._p + "seen:" + key],
        )
        return bool(first)

    # --- operations: health, metrics, event webhooks (scripts in redis_webhooks) -------------

    async def ping(self) -> None:
        with self._errors(f"cannot reach Redis at {self.target.redacted}"):
            await self._redis.ping()

    async def durability(self) -> tuple[bool, str]:
        """Read the server's AOF settings again: an operator may change them at run time."""
        with self._errors():
            persistence = await read_persistence(self._redis)
        return describe_persistence(persistence, allow_volatile=self.allow_volatile)

    async def oldest_waiting(self) -> float | None:
        return await redis_webhooks.oldest_waiting(self)

    async def enqueue_webhooks(self, events: Sequence[WebhookEvent]) -> None:
        await redis_webhooks.enqueue(self, events)

    async def claim_webhooks(
        self, now: float, limit: int, lease_until: float
    ) -> list[WebhookEvent]:
        return await redis_webhooks.claim(self, now, limit, lease_until)

    async def record_webhook_attempt(
        self, event_id: str, attempt: WebhookAttempt, *, next_attempt_at: float = 0.0
    ) -> None:
        await redis_webhooks.record_attempt(self, event_id, attempt, next_attempt_at)

    async def list_webhook_events(
        self,
        tenant: str | None,
        *,
        status: WebhookStatus | None = None,
        endpoint: str | None = None,
        before_id: str | None = None,
        limit: int = 50,
    ) -> list[WebhookEvent]:
        return await redis_webhooks.list_events(self, tenant, status, endpoint, before_id, limit)

    async def webhook_event(
        self, event_id: str
    ) -> tuple[WebhookEvent, list[WebhookAttempt]] | None:
        return await redis_webhooks.get(self, event_id)

    async def replay_webhook(self, event_id: str, now: float) -> WebhookEvent | None:
        return await redis_webhooks.replay(self, event_id, now)

    async def webhook_counts(self) -> dict[WebhookStatus, int]:
        return await redis_webhooks.counts(self)

    async def counters(self, keys: Sequence[str], now: float) -> dict[str, int]:
        if not keys:
            return {}
        with self._errors():
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(self._p + "c:" + key, "v", "exp")
            rows = await pipe.execute()
        return {
            key: 0 if value is None or float(expires) <= now else int(value)
            for key, (value, expires) in zip(keys, rows, strict=True)
        }

    # --- flags ------------------------------------------------------------------------------

    async def set_flag(self, key: str, value: str) -> None:
        with self._errors():
            await self._redis.hset(self._p + "flags", key, value)

    async def clear_flag(self, key: str) -> bool:
        with self._errors():
            return bool(await self._redis.hdel(self._p + "flags", key))

    async def flags(self, prefix: str) -> dict[str, str]:
        # One hash for every flag: there are few (paused identities), and HGETALL is one trip.
        with self._errors():
            found = await self._redis.hgetall(self._p + "flags")
        return {_s(k): _s(v) for k, v in found.items() if _s(k).startswith(prefix)}
