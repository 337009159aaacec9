"""The dispatcher: claims due deliveries, runs each through ``process()``, records the outcome.

``process()`` reads as the list of its steps (Postal's outgoing message processor), calling
these hooks (``gateway/hookspecs.py``) in this order:

1. ``expire``    — past the message lifetime → ``expired`` (terminal), no attempt.
2. ``filter``    — ``gateway_recipient_filter``: a ``Skip`` → ``skipped`` with its reason.
3. ``transform`` — ``gateway_transform``, each plugin seeing the previous one's bytes.
4. ``sign``      — ``gateway_sign`` on the final bytes; returned headers are prepended.
5. ``route``     — the router (``gateway/routing.py``) picks the candidate providers by the
   ``[[routes]]`` rules and strategy; ``gateway_modify_routes`` may reorder or remove them (an
   empty list defers the delivery).
6. ``send``      — per candidate in order: skipped while its circuit breaker is open;
   ``gateway_permit`` may ``Defer`` it; its per-second/per-day limits may hold it back; then
   it is tried. A temporary failure moves on to the next candidate at once (failover), unless
   the route has failover off or the provider may have accepted the message (a timeout after
   the hand-over: never sent twice at once). A provider that raises counts as a temporary
   failure, never a lost message.
7. ``classify``  — ``sent`` → ``delivered``; ``hard_fail`` → ``bounced``; only temporary
   failures → ``deferred`` with the next wait from the retry schedule, or ``expired`` when
   that wait would pass the lifetime; only policy deferrals → ``deferred`` until the earliest
   ``Defer.until``, without counting an attempt.

A plugin that raises in steps 2 to 6 defers the delivery with the plugin and error recorded as an
attempt; it is retried on the schedule and delivered once the plugin works.
Afterwards ``gateway_delivery_result`` observers see the new state.

Bounced and expired deliveries of SMTP-submitted mail produce an RFC 3464 DSN to the envelope
sender when ``delivery.dsn`` is on: one per failed delivery, queued *before* the final state is
recorded, so a crash between the two writes repeats the notice rather than losing it.

The loop never dies of a store fault: a failed claim or look-up is logged and retried at the
next poll, and an outcome that cannot be recorded (the store restarting, failing over, a full
disk) is retried, with a growing wait, until it is. Meanwhile the delivery stays ``sending``
and its lease stays held, so no other node sends it too; if this process dies first, the lease
runs out (Redis) or ``recover`` runs at the next start (SQLite) and the delivery is sent again.
Nothing claimed is ever left ``sending`` by a live process: at-least-once, with a duplicate
only for a delivery whose outcome was not yet recorded when its process died.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Sequence
from typing import Any

import msgspec
import pluggy

from gateway.clock import Clock
from gateway.config import DeliverySection
from gateway.dsn import build_dsn
from gateway.events import Event, EventKind, publish
from gateway.message import (
    Attempt,
    Defer,
    Delivery,
    DeliveryStatus,
    Message,
    SendResult,
    Skip,
    new_message_id,
)
from gateway.ops.logging import delivery_context
from gateway.plugin_manager import (
    HookError,
    call_all,
    call_chain,
    call_first,
    has_impls,
    make_plugin_manager,
)
from gateway.providers import OutboundMessage
from gateway.providers.capabilities import NotCarriable, cannot_carry, for_the_wire
from gateway.routing import RoutePlan, Router
from gateway.store.base import Claimed, DeliveryUpdate, MessageMeta, Store
from gateway.verp import VerpSigner, verp_routes

log = logging.getLogger("gateway.delivery")

META_CACHE_SIZE = 1024
_NO_META = MessageMeta()

IDLE_POLL_SECONDS = 1.0
"""Longest sleep when idle; new local mail wakes the dispatcher at once via ``wake()``."""
OUTCOME_RETRY_FIRST_SECONDS = 0.05
OUTCOME_RETRY_MAX_SECONDS = 2.0
"""Waits between tries to record an outcome: doubling from the first to the longest."""


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        router: Router,
        settings: DeliverySection,
        clock: Clock,
        hostname: str,
        plugins: pluggy.PluginManager | None = None,
        gateway: Any = None,
    ) -> None:
        self.store = store
        self.router = router
        self.settings = settings
        self.clock = clock
        self.hostname = hostname
        self.pm = (
            plugins if plugins is not None else make_plugin_manager(builtins=(), entry_points=False)
        )
        self.gateway = gateway
        self._delays = settings.retry_delays
        self._lifetime = settings.max_lifetime_seconds
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._broadcast_in_flight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._running = False
        self._reserved = 0
        """Slots held for deliveries that ingress is storing and will hand over."""
        self._full = False
        """The loop waits for a slot: a finished delivery must wake it."""
        self._sleeps_until = 0.0
        """When the idle loop looks again by itself (clock time)."""
        self._meta_cache: collections.OrderedDict[str, MessageMeta] = collections.OrderedDict()
        config = getattr(gateway, "config", None)
        self._verp = VerpSigner.from_config(config) if config is not None else None
        self._verp_routes = verp_routes(config) if config is not None else frozenset()

    # --- driving ---------------------------------------------------------------------------

    def wake(self) -> None:
        """New work may be due now (called after a local enqueue)."""
        self._wake.set()

    async def run_once(self) -> int:
        """Claim everything due now (in batches) and wait until it is processed. For tests and
        one-shot runs with an injected clock; returns how many deliveries were processed."""
        total = 0
        while True:
            claimed = await self.store.claim(self.clock.now(), self.settings.batch_size)
            if not claimed:
                return total
            total += len(claimed)
            await asyncio.gather(*(self._handle(c) for c in claimed))

    def reserve(self, count: int) -> bool:
        """Hold ``count`` slots for a new message's deliveries (``Ingress.deliverer``); only
        while ``run`` is delivering and that many are free."""
        if not self._running or self._stopping:
            return False
        if self.settings.concurrency - len(self._in_flight) - self._reserved < count:
            return False
        self._reserved += count
        return True

    def release(self, count: int) -> None:
        self._reserved -= count
        self._wake_if_full()

    def hand_off(self, message: Message, deliveries: Sequence[Delivery], reserved: int) -> None:
        """Deliver the deliveries ingress claimed as it stored ``message``, in the slots it
        reserved. Stopping by now, they stay ``sending`` for ``recover`` at the next start."""
        self._reserved -= reserved
        if self._stopping:
            return
        for delivery in deliveries:
            self._start(Claimed(delivery, message))
        self._wake_if_full()

    def _start(self, claimed: Claimed) -> None:
        task = asyncio.create_task(self._handle(claimed))
        self._in_flight.add(task)
        if claimed.delivery.broadcast:
            self._broadcast_in_flight.add(task)
        task.add_done_callback(self._finished)

    async def run(self) -> None:
        """Deliver until ``stop()``: claim as many as there are free slots, sleep when idle."""
        self._running = True
        try:
            await self._run()
        finally:
            self._running = False

    async def _run(self) -> None:
        while not self._stopping:
            free = self.settings.concurrency - len(self._in_flight) - self._reserved
            claimed: list[Claimed] = []
            if free > 0:
                # Transactional mail is claimed first and always finds a slot: broadcast
                # deliveries never fill more than ``broadcast_slots`` of them.
                broadcast = self.settings.broadcast_slots - len(self._broadcast_in_flight)
                try:
                    claimed = await self.store.claim(
                        self.clock.now(),
                        min(free, self.settings.batch_size),
                        broadcast_limit=max(0, broadcast),
                    )
                except Exception:
                    log.exception("claiming deliveries failed; retrying shortly")
            for item in claimed:
                self._start(item)
            if claimed and len(claimed) == min(free, self.settings.batch_size):
                await asyncio.sleep(0)  # more may be due: claim again after yielding once
                continue
            # With the broadcast slots full, what is due may be broadcast only: wait for a slot
            # or a new message rather than spin on "something is due now".
            broadcast_room = self.settings.broadcast_slots > len(self._broadcast_in_flight)
            self._full = not (free > 0 and broadcast_room)
            await self._idle(not self._full)
            self._full = False

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._broadcast_in_flight.discard(task)
        self._wake_if_full()

    def _wake_if_full(self) -> None:
        # Only a loop waiting for a slot needs to look again; one that had room and found
        # nothing due would claim nothing (a wasted store round trip per delivery).
        if self._full:
            self._wake.set()

    async def _idle(self, had_room: bool) -> None:
        self._wake.clear()
        timeout = IDLE_POLL_SECONDS
        if had_room:
            try:
                due = await self.store.next_due()
            except Exception:
                log.exception("looking up the next due delivery failed; polling instead")
                due = None
            if due is not None:
                timeout = max(0.0, min(timeout, due - self.clock.now()))
        self._sleeps_until = self.clock.now() + timeout
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; let sends in progress finish for up to ``grace`` seconds, then cancel
        the rest. Those stay ``sending`` and are retried after restart (at-least-once)."""
        self._stopping = True
        self._wake.set()
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=grace)
        leftover = list(self._in_flight)
        if leftover:
            log.warning("cancelling %d deliveries still in progress", len(leftover))
            for task in leftover:
                task.cancel()
            await asyncio.gather(*leftover, return_exceptions=True)

    # --- one delivery ----------------------------------------------------------------------

    async def _handle(self, claimed: Claimed) -> None:
        # Every line logged while this delivery is handled names its message and delivery.
        with delivery_context(claimed.message.id, claimed.delivery.id):
            await self._handle_in_context(claimed)

    async def _handle_in_context(self, claimed: Claimed) -> None:
        async with self._slots:
            try:
                update = await self.process(claimed.delivery, claimed.message)
            except Exception as e:  # a bug must defer, never drop, the delivery
                log.exception(
                    "delivery %s of %s failed unexpectedly", claimed.delivery.id, claimed.message.id
                )
                update = self._retry_later(claimed.delivery, [], f"internal error: {e!r}")
            if update.status in (DeliveryStatus.BOUNCED, DeliveryStatus.EXPIRED):
                await self._notify_sender(claimed, update)
            await self._record(claimed, update)
            if update.status is DeliveryStatus.DEFERRED and (
                update.next_attempt_at < self._sleeps_until
            ):
                self.wake()  # due again before the idle loop would look
            _log_transition(claimed, update)
            await self._observe(claimed, update)

    async def _record(self, claimed: Claimed, update: DeliveryUpdate) -> None:
        """Write ``update``; on a store fault, wait and try again until it is written. Giving
        up would strand the delivery: ``sending``, its lease renewed by this live process."""
        wait = OUTCOME_RETRY_FIRST_SECONDS
        failures = 0
        while True:
            try:
                await self.store.complete([update], self.clock.now())
            except Exception as e:
                failures += 1
                if failures == 1:
                    log.exception(
                        "recording delivery %s failed; retrying until it is recorded",
                        claimed.delivery.id,
                    )
                else:
                    log.warning(
                        "recording delivery %s failed again (try %d): %s",
                        claimed.delivery.id,
                        failures,
                        e,
                    )
            else:
                if failures:
                    log.info(
                        "recorded delivery %s after %d failed tries", claimed.delivery.id, failures
                    )
                return
            await asyncio.sleep(wait)
            wait = min(wait * 2, OUTCOME_RETRY_MAX_SECONDS)

    async def _observe(self, claimed: Claimed, update: DeliveryUpdate) -> None:
        detail = update.last_error or (update.attempts[-1].detail if update.attempts else "")
        kind = _EVENT_OF_STATUS.get(update.status)
        if kind is not None and has_impls(self.pm, "gateway_event"):
            message, delivery = claimed.message, claimed.delivery
            await publish(
                self.gateway,
                Event(
                    type=kind,
                    tenant=message.tenant,
                    recipient=delivery.recipient,
                    at=self.clock.now(),
                    message_id=message.id,
                    delivery_id=delivery.id,
                    stream=message.stream,
                    provider=update.provider,
                    bounce="hard" if kind == "bounced" else "",
                    sending_domain=message.mail_from.rpartition("@")[2].lower(),
                    detail=detail,
                ),
                record=False,  # the delivery record already is the timeline entry
            )
        if not has_impls(self.pm, "gateway_delivery_result"):
            return
        try:
            await call_all(
                self.pm,
                "gateway_delivery_result",
                gateway=self.gateway,
                message=claimed.message,
                delivery=claimed.delivery,
                status=update.status.value,
                detail=detail,
            )
        except HookError as e:
            log.error("observer failed for delivery %s: %s", claimed.delivery.id, e)

    async def process(self, delivery: Delivery, message: Message) -> DeliveryUpdate:
        """Decide one delivery's next state; the steps are listed in the module docstring."""
        now = self.clock.now()
        if now >= delivery.expires_at:
            return self._final(delivery, DeliveryStatus.EXPIRED, [], _expired_reason(delivery))
        try:
            skip = await self._filter(delivery, message)
            if skip is not None:
                return self._final(delivery, DeliveryStatus.SKIPPED, [], skip.reason)
            final = await self._prepare(delivery, message)
            attempts, result, provider, deferral = await self._send(delivery, final)
        except HookError as e:
            log.error("delivery %s of %s deferred: %s", delivery.id, message.id, e)
            failed = Attempt(
                at=self.clock.now(), provider=f"plugin:{e.plugin}", outcome="error", detail=str(e)
            )
            return self._retry_later(delivery, [failed], str(e))
        if result.kind == "sent":
            return DeliveryUpdate(
                delivery_id=delivery.id,
                shard=delivery.shard,
                status=DeliveryStatus.DELIVERED,
                provider=provider,
                provider_message_id=result.provider_message_id,
                attempts=attempts,
            )
        if result.kind == "hard_fail":
            return self._final(delivery, DeliveryStatus.BOUNCED, attempts, result.detail, provider)
        if deferral is not None and not attempts:
            return self._defer_by_policy(delivery, deferral)
        return self._retry_later(delivery, attempts, result.detail, provider)

    async def _filter(self, delivery: Delivery, message: Message) -> Skip | None:
        skip: Skip | None = await call_first(
            self.pm,
            "gateway_recipient_filter",
            gateway=self.gateway,
            message=message,
            delivery=delivery,
        )
        return skip

    async def _prepare(self, delivery: Delivery, message: Message) -> Message:
        """This recipient's final bytes: every transform, then signatures over the result."""
        if has_impls(self.pm, "gateway_transform"):
            message = await call_chain(
                self.pm, "gateway_transform", message, gateway=self.gateway, delivery=delivery
            )
        if has_impls(self.pm, "gateway_sign"):
            headers = await call_all(
                self.pm, "gateway_sign", gateway=self.gateway, message=message, delivery=delivery
            )
            if headers:
                message = msgspec.structs.replace(message, raw=b"".join(headers) + message.raw)
        return message

    async def _send(
        self, delivery: Delivery, message: Message
    ) -> tuple[list[Attempt], SendResult, str, Defer | None]:
        """Try the candidates in order. Returns the attempts, the last result, its provider,
        and the earliest deferral when every candidate was held back without a try."""
        plan = await self._route(delivery, message)
        meta = await self._meta(message)
        outbound = OutboundMessage(
            message_id=message.id,
            delivery_id=delivery.id,
            tenant=message.tenant,
            mail_from=message.mail_from,
            recipient=delivery.recipient,
            raw=message.raw,
            smtp_utf8=message.smtp_utf8,
            tags=meta.tags,
            metadata=meta.metadata,
        )
        attempts: list[Attempt] = []
        try:
            outbound = for_the_wire(outbound)
        except NotCarriable as e:
            return attempts, SendResult.hard_fail(str(e), enhanced="5.1.3"), "", None
        result = SendResult.soft_fail(f"route {plan.route}: no provider left to try")
        name = ""
        deferral: Defer | None = None
        uncarried: list[str] = []
        if not plan.providers:
            wait = self.clock.now() + self._delays[0]
            deferral = Defer(wait, f"route {plan.route}: gateway_modify_routes left no provider")
        router = self.router
        check_permits = has_impls(self.pm, "gateway_permit")
        for name in plan.providers:
            why_not = cannot_carry(router.providers[name], outbound)
            if why_not:
                uncarried.append(why_not)
                continue
            held = router.available(name)
            if held is None and check_permits:
                held = await call_first(
                    self.pm,
                    "gateway_permit",
                    gateway=self.gateway,
                    message=message,
                    delivery=delivery,
                    route=name,
                )
            if held is None:
                held = await router.reserve(name)
            if held is not None:
                if deferral is None or held.until < deferral.until:
                    deferral = held
                result = SendResult.soft_fail(f"{name}: held back: {held.reason}")
                continue
            result = await router.send(name, self._with_return_path(name, outbound))
            attempts.append(
                Attempt(
                    at=self.clock.now(), provider=name, outcome=result.kind, detail=result.detail
                )
            )
            if result.kind != "soft_fail" or result.maybe_sent or not plan.failover:
                break
        if uncarried and len(uncarried) == len(plan.providers):
            # This delivery alone: the message's other recipients may be carriable.
            detail = "no provider can carry this delivery: " + "; ".join(uncarried)
            return attempts, SendResult.hard_fail(detail, enhanced="5.6.7"), "", None
        return attempts, result, name, deferral

    async def _route(self, delivery: Delivery, message: Message) -> RoutePlan:
        plan = await self.router.plan(message, delivery)
        if has_impls(self.pm, "gateway_modify_routes"):
            await call_all(
                self.pm,
                "gateway_modify_routes",
                gateway=self.gateway,
                message=message,
                delivery=delivery,
                routes=plan.providers,
            )
            unknown = [name for name in plan.providers if name not in self.router.providers]
            if unknown:
                error = ValueError(f"no provider named {unknown[0]!r} (routes: {plan.providers})")
                raise HookError("gateway_modify_routes", "gateway_modify_routes", error)
            plan.providers[:] = dict.fromkeys(plan.providers)  # a name listed twice is tried once
        return plan

    def _with_return_path(self, route: str, outbound: OutboundMessage) -> OutboundMessage:
        """A signed VERP envelope sender for SMTP/MX routes when ``[bounces] domain`` is set
        (``gateway/verp.py``), so a bounce names its delivery; a null sender stays null."""
        if self._verp is None or route not in self._verp_routes or not outbound.mail_from:
            return outbound
        return msgspec.structs.replace(
            outbound, mail_from=self._verp.address(outbound.message_id, outbound.delivery_id)
        )

    async def _meta(self, message: Message) -> MessageMeta:
        """The HTTP API's tags and metadata of ``message`` (SMTP mail has none), looked up once
        per message and cached for its other recipients, for providers that carry them."""
        if message.source != "http":
            return _NO_META
        meta = self._meta_cache.get(message.id)
        if meta is None:
            record = await self.store.message_record(message.tenant, message.id)
            meta = record.meta if record is not None else _NO_META
            self._meta_cache[message.id] = meta
            if len(self._meta_cache) > META_CACHE_SIZE:
                self._meta_cache.popitem(last=False)
        return meta

    def _defer_by_policy(self, delivery: Delivery, deferral: Defer) -> DeliveryUpdate:
        """Held back by a plugin (caps, rates): wait, without spending an attempt or the
        retry schedule — but never past the lifetime."""
        if deferral.until >= delivery.expires_at:
            return self._final(
                delivery, DeliveryStatus.EXPIRED, [], f"held back until expiry: {deferral.reason}"
            )
        return DeliveryUpdate(
            delivery_id=delivery.id,
            shard=delivery.shard,
            status=DeliveryStatus.DEFERRED,
            next_attempt_at=deferral.until,
            last_error=deferral.reason,
        )

    def _retry_later(
        self, delivery: Delivery, attempts: list[Attempt], reason: str, provider: str = ""
    ) -> DeliveryUpdate:
        tries = delivery.attempts + (1 if attempts else 0)
        wait = self._delays[min(max(tries - 1, 0), len(self._delays) - 1)]
        next_at = self.clock.now() + wait
        if next_at >= delivery.expires_at:
            return self._final(
                delivery,
                DeliveryStatus.EXPIRED,
                attempts,
                f"gave up after {tries} attempt(s): {reason}",
                provider,
            )
        return DeliveryUpdate(
            delivery_id=delivery.id,
            shard=delivery.shard,
            status=DeliveryStatus.DEFERRED,
            next_attempt_at=next_at,
            last_error=reason,
            provider=provider,
            attempts=attempts,
        )

    def _final(
        self,
        delivery: Delivery,
        status: DeliveryStatus,
        attempts: list[Attempt],
        reason: str,
        provider: str = "",
    ) -> DeliveryUpdate:
        return DeliveryUpdate(
            delivery_id=delivery.id,
            shard=delivery.shard,
            status=status,
            last_error=reason,
            provider=provider,
            attempts=attempts,
        )

    async def _notify_sender(self, claimed: Claimed, update: DeliveryUpdate) -> None:
        """Queue a DSN for a failed delivery; a failure here is logged, never raised."""
        message = claimed.message
        if not self.settings.dsn or message.source != "smtp":
            return
        if message.mail_from in ("", "<>"):  # never answer a null reverse-path (RFC 5321 6.1)
            return
        failed = Delivery(
            id=claimed.delivery.id,
            message_id=message.id,
            recipient=claimed.delivery.recipient,
            status=update.status,
            last_error=update.last_error,
            updated_at=self.clock.now(),
        )
        now = self.clock.now()
        try:
            raw = build_dsn(message, [failed], reporting_mta=self.hostname, now=now)
            report = Message(
                id=new_message_id(),
                tenant=message.tenant,
                mail_from="",
                raw=raw,
                created_at=now,
                source="dsn",
                # An internationalized sender, or original headers quoted in UTF-8 (RFC 6532),
                # need SMTPUTF8 from the next hop.
                smtp_utf8=not (message.mail_from.isascii() and raw.isascii()),
            )
            await self.store.enqueue(report, [message.mail_from], expires_at=now + self._lifetime)
        except Exception:
            log.exception("could not queue the DSN for %s", message.id)
            return
        log.info("dsn queued message=%s for=%s dsn=%s", message.id, message.mail_from, report.id)
        self.wake()


_EVENT_OF_STATUS: dict[DeliveryStatus, EventKind] = {
    DeliveryStatus.DELIVERED: "delivered",
    DeliveryStatus.DEFERRED: "deferred",
    DeliveryStatus.BOUNCED: "bounced",
}


def _expired_reason(delivery: Delivery) -> str:
    last = f": last error: {delivery.last_error}" if delivery.last_error else ""
    return f"message lifetime ran out after {delivery.attempts} attempt(s){last}"


def _log_transition(claimed: Claimed, update: DeliveryUpdate) -> None:
    log.info(
        "delivery status=%s message=%s delivery=%s rcpt=%s provider=%s detail=%r",
        update.status.value,
        claimed.message.id,
        claimed.delivery.id,
        claimed.delivery.recipient,
        update.provider or "-",
        update.last_error or (update.attempts[-1].detail if update.attempts else ""),
    )
