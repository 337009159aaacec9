"""The store interface: the durable spool and delivery records, whatever engine holds them.

Contract every implementation keeps:

* ``enqueue`` returns only once the message and its deliveries are durable (committed and
  fsync'd, or the engine's equivalent). Only then may ingress answer ``250`` / ``202``.
* ``claim`` moves due deliveries to ``sending``; a delivery claimed by a process that dies is
  handed out again (``recover`` at start-up, or a lease in shared engines) — at-least-once.
* ``complete`` records one attempt per update together with the new state, atomically.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from typing import Literal

import msgspec

from gateway.message import Attempt, Delivery, DeliveryStatus, Message


class DeliveryUpdate(msgspec.Struct, kw_only=True):
    """The new state of a delivery after an attempt (or an operator action)."""

    delivery_id: int
    shard: int
    status: DeliveryStatus
    next_attempt_at: float = 0.0
    last_error: str = ""
    provider: str = ""
    provider_message_id: str = ""
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    """Tries made by this update (one per provider tried); empty for a policy deferral."""


class DeliveryFilter(msgspec.Struct, kw_only=True):
    """Which deliveries an operator means: every given field must match."""

    message_id: str | None = None
    statuses: Sequence[DeliveryStatus] | None = None
    recipient: str | None = None
    """Exact address, case-insensitive."""
    domain: str | None = None
    tenant: str | None = None
    limit: int = 100


class Claimed(msgspec.Struct):
    """A delivery handed to a dispatcher, with its message."""

    delivery: Delivery
    message: Message


class StoreError(Exception):
    """The store could not do what was asked; callers treat it as a temporary, local fault."""


# --- what the HTTP API adds: metadata, idempotency, suppressions, listings, stats, events -----


class MessageMeta(msgspec.Struct, kw_only=True, frozen=True):
    """What an HTTP client attached to a message besides its bytes (SMTP mail has none)."""

    tags: tuple[str, ...] = ()
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    tracking: dict[str, bool] = msgspec.field(default_factory=dict)
    """Per-message switches such as ``opens``/``clicks``, for the tracking plugins."""


class IdempotencyClaim(msgspec.Struct, kw_only=True, frozen=True):
    """Written in the same transaction as the message, so a retry can never queue it twice."""

    tenant: str
    key: str
    part: int = 0
    """Which message of the request (batch sends have one per recipient)."""
    fingerprint: str
    """Hash of the request, to tell a retry from a different request reusing the key."""
    response: bytes = b""
    """What to answer a retry with (the caller adds the message id)."""
    expires_at: float


class IdempotencyEntry(msgspec.Struct, kw_only=True, frozen=True):
    part: int
    message_id: str
    fingerprint: str
    response: bytes
    created_at: float


class IdempotencyConflict(StoreError):
    """Another request with the same idempotency key and part was stored first."""


SuppressionReason = Literal["bounce", "complaint", "unsubscribe", "manual"]


def suppression_key(address: str) -> str:
    """How suppression entries are stored and matched: surrounding whitespace removed, the
    whole address lower-cased.

    RFC 5321 lets a local part be case-sensitive, but no mainstream mailbox provider treats
    ``Ann@`` and ``ann@`` as different people, and the costly mistake is the other one: mailing
    someone who unsubscribed under a different spelling. So the local part is folded too.
    """
    return address.strip().lower()


TENANT_SCOPE = "tenant"
"""A suppression for every message of the tenant: bounces, complaints, manual entries."""
SCOPE_PATTERN = "^(?:tenant|[a-z]{1,16}:[A-Za-z0-9][A-Za-z0-9_.:-]{0,127})$"
_SCOPE = re.compile(SCOPE_PATTERN)


def stream_scope(stream: str) -> str:
    """The scope of an opt-out from one message stream (``stream:<name>``)."""
    return f"stream:{stream}"


def is_scope(value: str) -> bool:
    """``tenant`` or ``<kind>:<name>``: ``stream:<name>`` today; the audience layer adds
    ``list:<id>`` and ``topic:<id>`` without a store change."""
    return bool(_SCOPE.match(value))


def entry_key(address: str, scope: str) -> str:
    """How entries sort and page: the folded address, then the scope (tenant-wide first).
    Also the listing cursor (``after``)."""
    key = suppression_key(address)
    return key if scope == TENANT_SCOPE else f"{key} {scope}"


def cursor_key(after: str) -> str:
    """A listing cursor (an :func:`entry_key`, or a bare address) in :func:`entry_key` form."""
    address, _, scope = after.strip().partition(" ")
    return entry_key(address, scope or TENANT_SCOPE)


class Suppression(msgspec.Struct, kw_only=True, frozen=True):
    """A recipient a tenant must not send to, in which scope, and why."""

    tenant: str
    address: str
    reason: SuppressionReason
    created_at: float
    detail: str = ""
    scope: str = TENANT_SCOPE
    """``tenant`` (every message) or ``stream:<name>`` (that stream's messages only)."""

    @property
    def key(self) -> str:
        """Its :func:`entry_key`: the listing order and cursor."""
        return entry_key(self.address, self.scope)


class MessageQuery(msgspec.Struct, kw_only=True):
    """A tenant's messages, newest first; every given filter must match."""

    tenant: str
    status: DeliveryStatus | None = None
    """Messages with at least one delivery in this state."""
    tag: str | None = None
    stream: str | None = None
    recipient: str | None = None
    since: float | None = None
    until: float | None = None
    before_id: str | None = None
    """Cursor: only messages older than this id (ids sort by creation time)."""
    limit: int = 50


class MessageRecord(msgspec.Struct, kw_only=True):
    """A message as the API shows it: envelope, metadata and per-recipient state, no body."""

    id: str
    tenant: str
    source: str
    mail_from: str
    created_at: float
    size: int
    head: bytes
    """The header section (up to 16 KiB), for subject and message-id."""
    meta: MessageMeta
    send_at: float | None = None
    """When it was scheduled for, if it was."""
    stream: str = "transactional"
    deliveries: list[Delivery]


EventType = Literal[
    "queued",
    "scheduled",
    "attempted",
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "suppressed",
    "opened",
    "clicked",
    "unsubscribed",
    "complained",
]


class MessageEvent(msgspec.Struct, kw_only=True, frozen=True):
    """One entry in a message's timeline."""

    message_id: str
    at: float
    type: EventType
    recipient: str = ""
    provider: str = ""
    detail: str = ""
    classification: str = ""
    """For opens and clicks: ``human``, ``machine``, ``scanner``, ``proxy:<which>``."""


class DeliveryStats(msgspec.Struct, kw_only=True):
    """Deliveries of a tenant's messages created in a period, by current status."""

    by_status: dict[str, int]
    by_tag: dict[str, dict[str, int]]
    by_day: dict[str, dict[str, int]]
    """``YYYY-MM-DD`` (UTC, day the message was accepted) → status → count."""
    by_stream: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    engagement: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    """``opened`` / ``clicked`` → classification (``human``, ``machine``, ``scanner``…) →
    events recorded for those messages."""


# --- operations: event webhooks to senders, and what health checks and metrics read ----------

WebhookStatus = Literal["pending", "delivered", "failed"]


class WebhookEvent(msgspec.Struct, kw_only=True):
    """One event for one of a tenant's webhook endpoints, with where its delivery stands."""

    id: str
    """The ``webhook-id``: unique, and the same on every retry and replay."""
    tenant: str
    endpoint: str
    """The endpoint's name in ``[tenants.<t>.webhooks.<name>]``."""
    type: str
    """The event type (``delivered``, ``bounced``, ``clicked``…)."""
    payload: bytes
    """The JSON body, exactly as it is signed and sent."""
    created_at: float
    status: WebhookStatus = "pending"
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str = ""
    updated_at: float = 0.0


class WebhookAttempt(msgspec.Struct, kw_only=True, frozen=True):
    """One POST of a webhook event: the delivery log."""

    at: float
    status_code: int
    """The endpoint's HTTP status; 0 when there was no answer (refused, timeout)."""
    outcome: WebhookStatus
    """``delivered`` (2xx), ``pending`` (will retry) or ``failed`` (gave up)."""
    detail: str = ""
    duration: float = 0.0
    """Seconds the request took."""


class Store(abc.ABC):
    """Durable spool, delivery queue and delivery history."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
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
        """Store ``message`` with one delivery per recipient; durable when it returns.

        ``meta`` and ``idempotency`` (HTTP API) are written in the same transaction; a claim
        whose key and part are already stored raises ``IdempotencyConflict`` and stores nothing.
        ``broadcast`` puts the deliveries in the broadcast lane (see ``claim``).
        """

    claims_on_enqueue = False
    """Whether ``enqueue_claimed`` works: the deliveries of a new message can be claimed by
    this process in the transaction that stores it."""

    async def enqueue_claimed(
        self,
        message: Message,
        recipients: Sequence[str],
        *,
        expires_at: float,
        meta: MessageMeta | None = None,
        idempotency: IdempotencyClaim | None = None,
    ) -> list[Delivery]:
        """``enqueue`` of a message due now, its deliveries returned already ``sending``
        (claimed by this process, which must deliver them, as after ``claim``); one
        transaction, one fsync. Only where ``claims_on_enqueue``."""
        raise NotImplementedError(f"{type(self).__name__} cannot claim on enqueue")

    @abc.abstractmethod
    async def recover(self, now: float) -> int:
        """Return deliveries left in ``sending`` by a dead process to the queue; count them."""

    @abc.abstractmethod
    async def claim(
        self, now: float, limit: int, *, broadcast_limit: int | None = None
    ) -> list[Claimed]:
        """Mark up to ``limit`` due deliveries ``sending`` and return them: every due
        transactional delivery first (oldest due first), then broadcast ones, at most
        ``broadcast_limit`` of them (default: ``limit``)."""

    @abc.abstractmethod
    async def complete(self, updates: Sequence[DeliveryUpdate], now: float) -> None:
        """Apply updates and record their attempts; durable when it returns."""

    @abc.abstractmethod
    async def next_due(self) -> float | None:
        """Earliest ``next_attempt_at`` among waiting deliveries, or ``None`` if there are none."""

    @abc.abstractmethod
    async def get_message(self, message_id: str) -> Message | None: ...

    @abc.abstractmethod
    async def list_deliveries(self, where: DeliveryFilter) -> list[Delivery]: ...

    @abc.abstractmethod
    async def attempts(self, delivery: Delivery) -> list[Attempt]: ...

    @abc.abstractmethod
    async def retry_now(self, where: DeliveryFilter, now: float) -> int:
        """Make matching deliveries due now (bounced/expired too, never delivered/skipped)."""

    @abc.abstractmethod
    async def delete(self, where: DeliveryFilter) -> int:
        """Remove matching deliveries (and messages left with none); count deliveries removed."""

    @abc.abstractmethod
    async def purge(self, before: float, *, batch: int = 500) -> int:
        """Remove messages accepted before ``before`` whose every delivery is final (delivered,
        bounced, expired or skipped): body, deliveries, attempts, metadata and events. Messages
        with a delivery still waiting stay, however old. Returns how many messages went."""

    @abc.abstractmethod
    async def counts(self) -> dict[DeliveryStatus, int]: ...

    # --- HTTP API: reads see every shard/node, not just the ones this process writes ------

    @abc.abstractmethod
    async def find_idempotency(self, tenant: str, key: str, now: float) -> list[IdempotencyEntry]:
        """Unexpired entries for ``key``, by part."""

    @abc.abstractmethod
    async def purge_idempotency(self, now: float) -> int:
        """Forget expired idempotency keys; count them."""

    @abc.abstractmethod
    async def add_suppressions(self, entries: Sequence[Suppression]) -> int:
        """Insert or replace entries (one per tenant, address and scope); count them."""

    @abc.abstractmethod
    async def remove_suppression(self, tenant: str, address: str, scope: str | None = None) -> bool:
        """Remove the address's entry in ``scope`` (every scope when ``None``); whether any
        was there."""

    @abc.abstractmethod
    async def list_suppressions(
        self,
        tenant: str,
        *,
        reason: SuppressionReason | None = None,
        scope: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Suppression]:
        """Entries ordered by :func:`entry_key`; ``after`` is the cursor (the last entry's
        key)."""

    @abc.abstractmethod
    async def suppressed(
        self, tenant: str, addresses: Sequence[str], scopes: Sequence[str] = (TENANT_SCOPE,)
    ) -> dict[str, Suppression]:
        """For those of ``addresses`` suppressed in any of ``scopes``, by
        :func:`suppression_key`: the entry of the first of ``scopes`` that has one."""

    async def find_suppression(
        self, tenant: str, address: str, scopes: Sequence[str] = (TENANT_SCOPE,)
    ) -> Suppression | None:
        """The entry that stops mail to one recipient in any of ``scopes`` (the first of
        ``scopes`` that has one), or ``None``.

        Called for every delivery, so engines override it with a cheap exact lookup that does
        not wait behind writes.
        """
        return (await self.suppressed(tenant, [address], scopes)).get(suppression_key(address))

    @abc.abstractmethod
    async def list_messages(self, query: MessageQuery) -> list[MessageRecord]: ...

    @abc.abstractmethod
    async def message_record(self, tenant: str, message_id: str) -> MessageRecord | None:
        """The message if it exists and belongs to ``tenant``."""

    @abc.abstractmethod
    async def timeline(self, message_id: str) -> list[MessageEvent]:
        """Queued, attempts and their outcomes, final states and recorded events, oldest first."""

    @abc.abstractmethod
    async def record_event(self, event: MessageEvent) -> None:
        """Store an event that delivery records cannot tell (opened, clicked, complained…)."""

    @abc.abstractmethod
    async def delivery_stats(
        self, tenant: str, since: float, until: float, *, stream: str | None = None
    ) -> DeliveryStats:
        """Deliveries of ``tenant``'s messages accepted in ``[since, until)`` (of one
        ``stream`` when given), and the opens and clicks recorded for them."""

    async def mark_delivery(
        self,
        message_id: str,
        delivery_id: int,
        status: DeliveryStatus,
        detail: str,
        now: float,
    ) -> bool:
        """Record an outcome learned after the send — an asynchronous bounce reported by a
        provider webhook or a DSN — on a delivery the provider had accepted.

        Only a ``delivered`` delivery (or one already in ``status``) changes; a delivery
        still queued, deferred or being sent belongs to the dispatcher and is left alone.
        Returns whether the delivery was updated. Engines may override this with a single
        conditional update; this default reads the delivery and completes it.
        """
        for delivery in await self.list_deliveries(
            DeliveryFilter(message_id=message_id, limit=10_000)
        ):
            if delivery.id != delivery_id:
                continue
            if delivery.status not in (DeliveryStatus.DELIVERED, status):
                return False
            await self.complete(
                [
                    DeliveryUpdate(
                        delivery_id=delivery.id,
                        shard=delivery.shard,
                        status=status,
                        last_error=detail,
                        provider=delivery.provider,
                        provider_message_id=delivery.provider_message_id,
                    )
                ],
                now,
            )
            return True
        return False

    # --- counters and de-duplication: shared by every process (and node) using the store ----

    @abc.abstractmethod
    async def consume(
        self, key: str, amount: int, limit: int, *, expires_at: float, now: float
    ) -> bool:
        """Add ``amount`` to counter ``key`` unless that would take it over ``limit``.

        Returns whether it was added. Atomic across processes and nodes sharing the store, so
        rate limits and warming caps hold under any concurrency. A counter reads as 0 from
        ``expires_at`` on (callers put the window in the key and expire it with the window).
        """

    @abc.abstractmethod
    async def add_to_counter(self, key: str, amount: int, *, expires_at: float, now: float) -> int:
        """Add ``amount`` to counter ``key`` unconditionally; return the new value."""

    @abc.abstractmethod
    async def counter(self, key: str, now: float) -> int:
        """The current value of counter ``key`` (0 if absent or expired)."""

    @abc.abstractmethod
    async def first_sighting(self, key: str, *, expires_at: float, now: float) -> bool:
        """Remember ``key`` until ``expires_at``; ``True`` only the first time it is seen.

        For de-duplicating provider events and webhook deliveries across processes/nodes.
        """

    # --- operations: health, metrics ----------------------------------------------------------

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the store answers (readiness checks). Engines override
        this with their cheapest round trip."""
        await self.next_due()

    async def durability(self) -> tuple[bool, str]:
        """Whether an acknowledged message survives a crash of the store, and what the
        engine's persistence mode is, in words (``/readyz``). ``False`` when the engine
        keeps accepted mail where a restart loses it and nobody allowed that."""
        return True, "durable"

    @abc.abstractmethod
    async def oldest_waiting(self) -> float | None:
        """Creation time of the oldest message with a delivery still waiting (queued,
        deferred or sending), or ``None`` when nothing waits: the queue's age for metrics."""

    # --- event webhooks to senders: a queue shared by every process/node ----------------------

    @abc.abstractmethod
    async def enqueue_webhooks(self, events: Sequence[WebhookEvent]) -> None:
        """Store new events (``pending``, due at ``next_attempt_at``); durable when it returns."""

    @abc.abstractmethod
    async def claim_webhooks(
        self, now: float, limit: int, lease_until: float
    ) -> list[WebhookEvent]:
        """Up to ``limit`` pending events due by ``now``, oldest due first, each made due again
        only at ``lease_until``: if this process dies mid-send, another sends it after that."""

    @abc.abstractmethod
    async def record_webhook_attempt(
        self,
        event_id: str,
        attempt: WebhookAttempt,
        *,
        next_attempt_at: float = 0.0,
    ) -> None:
        """Log ``attempt`` and move the event to ``attempt.outcome`` (``pending`` events become
        due at ``next_attempt_at``)."""

    @abc.abstractmethod
    async def list_webhook_events(
        self,
        tenant: str | None,
        *,
        status: WebhookStatus | None = None,
        endpoint: str | None = None,
        before_id: str | None = None,
        limit: int = 50,
    ) -> list[WebhookEvent]:
        """Events newest first (every tenant's for ``None``); ``before_id`` is the cursor."""

    @abc.abstractmethod
    async def webhook_event(
        self, event_id: str
    ) -> tuple[WebhookEvent, list[WebhookAttempt]] | None:
        """One event and its delivery log, oldest attempt first."""

    @abc.abstractmethod
    async def replay_webhook(self, event_id: str, now: float) -> WebhookEvent | None:
        """Make the event ``pending`` and due now (its log is kept); ``None`` if unknown."""

    @abc.abstractmethod
    async def webhook_counts(self) -> dict[WebhookStatus, int]:
        """Events by status, for metrics and the console."""

    async def counters(self, keys: Sequence[str], now: float) -> dict[str, int]:
        """The current values of several counters at once (absent or expired ones read 0).

        Engines override it with one round trip; reputation reads a window of daily counters.
        """
        return {key: await self.counter(key, now) for key in keys}

    # --- flags: small durable state shared by every process (identity pauses) -----------

    @abc.abstractmethod
    async def set_flag(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` (replacing any), durably and visible to every process."""

    @abc.abstractmethod
    async def clear_flag(self, key: str) -> bool:
        """Remove ``key``; whether it was set."""

    @abc.abstractmethod
    async def flags(self, prefix: str) -> dict[str, str]:
        """Every flag whose key starts with ``prefix``."""
