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
from collections.abc import Sequence

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
    ) -> list[Delivery]:
        """Store ``message`` with one delivery per recipient; durable when it returns."""

    @abc.abstractmethod
    async def recover(self, now: float) -> int:
        """Return deliveries left in ``sending`` by a dead process to the queue; count them."""

    @abc.abstractmethod
    async def claim(self, now: float, limit: int) -> list[Claimed]:
        """Mark up to ``limit`` due deliveries ``sending`` and return them, oldest due first."""

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
        """Make matching non-delivered deliveries due now (bounced/expired ones too); count."""

    @abc.abstractmethod
    async def delete(self, where: DeliveryFilter) -> int:
        """Remove matching deliveries (and messages left with none); count deliveries removed."""

    @abc.abstractmethod
    async def counts(self) -> dict[DeliveryStatus, int]: ...
