"""Runs due enrolments: claims them (each by exactly one node, under a lease), executes their
steps until one waits or the flow ends, and saves where they stand in one write.

A ``send`` hands an ordinary message to the gateway's ingress on the step's stream, with an
idempotency key per enrolment and step: a node that dies after the hand-over and before its
save leaves the step to be run again, and the spool refuses the second copy. Consent and
suppression are checked before each send; a local fault defers the step, never drops it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from gateway_plugins.audience.model import ConsentEvidence, Contact
from gateway_plugins.audience.store import AudienceStore, ContactChanges
from gateway_plugins.audience.store import NotFound as AudienceNotFound
from gateway_plugins.automation.flows import (
    BranchStep,
    Condition,
    ExitStep,
    Flow,
    GoalStep,
    SendStep,
    UpdateStep,
    WaitStep,
    compare,
    lookup,
)
from gateway_plugins.automation.rendering import Renderer, RenderError
from gateway_plugins.automation.settings import Settings
from gateway_plugins.automation.store import AutomationStore, Enrolment, PathEntry

from gateway.api.mime import CheckedAddress, Composition, build_message
from gateway.durations import parse_duration
from gateway.ingress import Rejected, Submission
from gateway.store.base import (
    TENANT_SCOPE,
    IdempotencyClaim,
    IdempotencyConflict,
    MessageMeta,
    StoreError,
    stream_scope,
)

log = logging.getLogger("gateway.plugins.automation")

MAX_STEPS_PER_RUN = 200
"""Steps one claim may run before it saves (branches only jump forward, so a flow ends)."""
ONE_CLICK_LIST = "audience_list_id"
FlowObserver = Callable[[str, Enrolment, str, dict[str, Any]], Awaitable[None]]


class Stop(Exception):
    """The enrolment ends here with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Later(Exception):
    """The step cannot run now; try again at ``until``."""

    def __init__(self, until: float, reason: str) -> None:
        super().__init__(reason)
        self.until = until
        self.reason = reason


def contact_fields(contact: Contact) -> dict[str, Any]:
    return {
        "id": contact.id,
        "email": contact.email,
        "name": contact.name,
        "locale": contact.locale,
        "timezone": contact.timezone,
        "status": contact.status,
        "attributes": contact.attributes,
    }


class Conditions:
    """Evaluates a flow's conditions for one contact."""

    def __init__(self, store: AutomationStore, audience: AudienceStore) -> None:
        self.store = store
        self.audience = audience

    async def all_hold(
        self,
        conditions: list[Condition],
        contact: Contact,
        properties: dict[str, Any],
        *,
        flow: Flow | None = None,
        enrolment: Enrolment | None = None,
    ) -> bool:
        for cond in conditions:
            if not await self.holds(cond, contact, properties, flow, enrolment):
                return False
        return True

    async def holds(
        self,
        cond: Condition,
        contact: Contact,
        properties: dict[str, Any],
        flow: Flow | None,
        enrolment: Enrolment | None,
    ) -> bool:
        if cond.field:
            actual = lookup(cond.field, properties, contact_fields(contact))
            return compare(cond.op, actual, cond.value)
        if cond.list:
            subscriptions = await self.audience.subscriptions_of(contact.tenant, contact.id)
            return any(s.list_id == cond.list and s.status == "active" for s in subscriptions)
        since = enrolment.started_at if enrolment is not None else 0.0
        if cond.event:
            return await self.store.had_event(contact.tenant, contact.id, cond.event, since)
        if enrolment is None or flow is None:
            return False
        step = flow.index_of(cond.step) if cond.step else None
        message_id = await self.store.sent_message(enrolment.id, step)
        if not message_id:
            return False
        names = [cond.engaged] if flow.human_only else [cond.engaged, f"machine_{cond.engaged}"]
        if cond.engaged == "opened":  # a click proves the mail was opened
            names += ["clicked"] if flow.human_only else ["clicked", "machine_clicked"]
        for name in names:
            if await self.store.had_event(contact.tenant, contact.id, name, since, message_id):
                return True
        return False


class Runner:
    """One node's step runner."""

    def __init__(
        self,
        gateway: Any,
        store: AutomationStore,
        audience: AudienceStore,
        renderer: Renderer,
        settings: Settings,
        observe: FlowObserver,
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.audience = audience
        self.renderer = renderer
        self.settings = settings
        self.observe = observe
        self.conditions = Conditions(store, audience)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: claim what is due, run it, wait for a wake-up or the next poll."""
        while True:
            try:
                claimed = await self.run_once()
            except Exception:
                log.exception("automation runner: claiming due steps failed")
                claimed = 0
            if claimed >= self.settings.batch:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def run_once(self) -> int:
        now = self.gateway.clock.now()
        claimed = await self.store.claim_due(
            self.owner, now, self.settings.lease, self.settings.batch
        )
        for enrolment in claimed:
            try:
                await self.advance(enrolment)
            except Exception:
                # Left leased: it is claimed again when the lease runs out.
                log.exception("automation: enrolment %d failed", enrolment.id)
        return len(claimed)

    async def advance(self, enrolment: Enrolment) -> None:
        flow = await self.store.definition(enrolment.flow_id, enrolment.version)
        # Steps run as of when they were due: a busy or restarted node does not stretch waits.
        clock_now = self.gateway.clock.now()
        now = min(clock_now, enrolment.due_at if enrolment.due_at is not None else clock_now)
        entries: list[PathEntry] = []
        if enrolment.state == "waiting":  # the awaited event did not come in time
            entries.append(
                PathEntry(
                    step=enrolment.step - 1, kind="wait", outcome="timeout", message_id="", at=now
                )
            )
            enrolment.state, enrolment.wait_event = "active", ""
        elif enrolment.reason.startswith("event:"):
            outcome = enrolment.reason
            entries.append(
                PathEntry(
                    step=enrolment.step - 1, kind="wait", outcome=outcome, message_id="", at=now
                )
            )
        enrolment.reason = ""
        try:
            contact = await self.audience.get_contact(enrolment.tenant, enrolment.contact_id)
        except AudienceNotFound:
            contact = None
        try:
            if contact is None or contact.status == "erased":
                raise Stop("contact_gone")
            for _ in range(MAX_STEPS_PER_RUN):
                if enrolment.step >= len(flow.steps):
                    raise Stop("completed")
                if await self.run_step(flow, enrolment, contact, entries, now):
                    break
        except Stop as stop:
            enrolment.state = "completed" if stop.reason == "completed" else "exited"
            enrolment.reason, enrolment.due_at, enrolment.ended_at = stop.reason, None, now
            entries.append(
                PathEntry(
                    step=enrolment.step, kind="end", outcome=stop.reason, message_id="", at=now
                )
            )
        except Later as later:
            enrolment.due_at = later.until
            entries.append(
                PathEntry(
                    step=enrolment.step, kind="defer", outcome=later.reason, message_id="", at=now
                )
            )
        if await self.store.save(enrolment, self.owner, entries):
            for entry in entries:
                if entry.kind in ("send", "end"):
                    await self.observe(
                        f"flow.{entry.kind}",
                        enrolment,
                        entry.outcome,
                        {"step": str(entry.step), "message_id": entry.message_id},
                    )

    async def run_step(
        self,
        flow: Flow,
        enrolment: Enrolment,
        contact: Contact,
        entries: list[PathEntry],
        now: float,
    ) -> bool:
        """Run the current step; ``True`` when the enrolment now waits."""
        step = flow.steps[enrolment.step]
        index = enrolment.step
        properties: dict[str, Any] = enrolment.trigger.get("properties", {})

        def record(kind: str, outcome: str, message_id: str = "") -> None:
            entries.append(
                PathEntry(step=index, kind=kind, outcome=outcome, message_id=message_id, at=now)
            )

        match step:
            case SendStep():
                message_id = await self.send(flow, enrolment, contact, step, properties)
                record("send", "sent", message_id)
                enrolment.step += 1
            case WaitStep():
                enrolment.step += 1
                if step.event:
                    enrolment.state, enrolment.wait_event = "waiting", step.event
                    enrolment.due_at = now + parse_duration(step.timeout)
                    record("wait", "event:" + step.event)
                    return True
                due = wake_time(step, contact, now)
                if due <= now:
                    return False
                enrolment.due_at = due
                record("wait", "until")
                return True
            case BranchStep():
                taken = await self.conditions.all_hold(
                    step.if_, contact, properties, flow=flow, enrolment=enrolment
                )
                target = step.then if taken else step.else_
                record("branch", "then" if taken else "else")
                enrolment.step = flow.index_of(target) if target else index + 1
            case GoalStep():
                enrolment.step += 1
            case UpdateStep():
                await self.update(contact, step)
                record("update", "done")
                enrolment.step += 1
            case ExitStep():
                raise Stop(step.reason)
        return False

    async def send(
        self,
        flow: Flow,
        enrolment: Enrolment,
        contact: Contact,
        step: SendStep,
        properties: dict[str, Any],
    ) -> str:
        tenant = enrolment.tenant
        if contact.status != "active":
            raise Stop(f"contact_{contact.status}")
        if flow.list_id:
            subscriptions = await self.audience.subscriptions_of(tenant, contact.id)
            if not any(s.list_id == flow.list_id and s.status == "active" for s in subscriptions):
                raise Stop("not_subscribed")
        suppressed = await self.gateway.store.suppressed(
            tenant, [contact.email], (TENANT_SCOPE, stream_scope(step.stream))
        )
        if suppressed:
            raise Stop("suppressed")
        variables = {
            **step.variables,
            "contact": contact_fields(contact),
            "event": {"name": enrolment.trigger.get("name", ""), "properties": properties},
        }
        try:
            mail = await self.renderer.render(tenant, step, variables)
        except RenderError as e:
            log.warning("automation: enrolment %d: %s", enrolment.id, e)
            raise Stop("render_failed") from None
        now = self.gateway.clock.now()
        sender = address(step.from_)
        recipient = address(contact.email)
        raw = build_message(
            Composition(
                sender=sender,
                to=[recipient],
                cc=[],
                reply_to=[],
                subject=mail.subject,
                text=mail.text,
                html=mail.html,
                headers=[],
                attachments=[],
            ),
            now=now,
            max_size=self.gateway.config.smtp.max_message_size,
        )
        metadata = {
            "automation_flow": str(enrolment.flow_id),
            "automation_enrolment": str(enrolment.id),
            "automation_step": str(enrolment.step),
        }
        if flow.list_id:
            metadata[ONE_CLICK_LIST] = str(flow.list_id)
        key = f"automation:{enrolment.id}:{enrolment.step}"
        submission = Submission(
            tenant=tenant,
            mail_from=sender.email,
            recipients=[recipient.email],
            raw=raw,
            source="http",
            smtp_utf8=sender.utf8 or recipient.utf8,
            client_name="automation",
            protocol="HTTP",
            meta=MessageMeta(metadata=metadata),
            stream=step.stream,
        )
        claim = IdempotencyClaim(
            tenant=tenant,
            key=key,
            fingerprint=hashlib.sha256(key.encode()).hexdigest(),
            expires_at=now + 30 * 86400,
        )
        try:
            message = await self.gateway.ingress.accept(submission, idempotency=claim)
        except IdempotencyConflict:
            # Handed over already, by a node that died before saving: never twice.
            found = await self.gateway.store.find_idempotency(tenant, key, now)
            return found[0].message_id if found else ""
        except Rejected as e:
            log.warning("automation: enrolment %d: send refused: %s", enrolment.id, e)
            raise Stop("send_refused") from None
        except StoreError as e:
            raise Later(self.gateway.clock.now() + self.settings.defer, f"store: {e}") from None
        return str(message.id)

    async def update(self, contact: Contact, step: UpdateStep) -> None:
        tenant = contact.tenant
        if step.set:
            await self.audience.update_contact(
                tenant, contact.id, ContactChanges(attributes=dict(step.set))
            )
        evidence = ConsentEvidence(method="api", form_id="automation")
        try:
            if step.subscribe_list:
                await self.audience.subscribe(
                    tenant, step.subscribe_list, contact.id, status="active", evidence=evidence
                )
            if step.unsubscribe_list:
                await self.audience.unsubscribe(
                    tenant, step.unsubscribe_list, contact.id, evidence=evidence
                )
        except AudienceNotFound as e:
            log.warning("automation: update of contact %d: %s", contact.id, e)


def address(email: str) -> CheckedAddress:
    local, _, domain = email.rpartition("@")
    ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    return CheckedAddress(email=f"{local}@{ascii_domain}", name="", utf8=not local.isascii())


def wake_time(step: WaitStep, contact: Contact, now: float) -> float:
    """When a ``duration`` or ``until`` wait ends."""
    if step.duration:
        return now + parse_duration(step.duration)
    try:
        zone = ZoneInfo(contact.timezone) if contact.timezone else dt.UTC
    except (ZoneInfoNotFoundError, ValueError):
        zone = dt.UTC
    hour, minute = (int(x) for x in step.until.split(":"))
    local = dt.datetime.fromtimestamp(now, zone)
    target = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target.timestamp() <= now:
        target = (local + dt.timedelta(days=1)).replace(
            hour=hour, minute=minute, second=0, microsecond=0
        )
    return target.timestamp()


def struct_dict(value: msgspec.Struct) -> dict[str, Any]:
    return msgspec.structs.asdict(value)
