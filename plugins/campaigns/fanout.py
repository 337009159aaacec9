"""Fan-out: a due run becomes ordinary per-recipient deliveries on the campaign's stream.

Each node runs one :class:`Fanout` loop. It claims a due run with a lease (so one node fans
out a run), walks the audience in keyset pages from the run's saved cursor, and per page:

1. decides every candidate — skipped with a reason, or planned with its ``not_before``
   (throttle, window) — and writes the send rows and the new cursor in one transaction;
2. renders the planned recipients in the sandboxed render pool and spools each as its own
   message through ``Ingress.accept``, with an idempotency key made of the send id; the send
   row becomes ``queued`` with the message id.

A crash between 1 and 2 leaves ``planned`` rows: whoever claims the run next spools them first,
and the idempotency key (looked up across the spool before enqueueing again) keeps a delivery
that did reach the spool from being queued twice. Pause and cancel are checked before every
page; a paused run keeps its cursor and continues on resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

from gateway_plugins.audience import audience_of
from gateway_plugins.audience.model import Contact
from gateway_plugins.audience.page_tokens import PageTokens
from gateway_plugins.campaigns import audience_walk as walk
from gateway_plugins.campaigns.audience_walk import Candidate
from gateway_plugins.campaigns.campaign_model import Campaign, Run, Send
from gateway_plugins.campaigns.campaign_store import CampaignStore, LeaseLost, NewSend
from gateway_plugins.campaigns.delivery_checks import OUTCOMES
from gateway_plugins.campaigns.footer import FooterParts, add_html_footer, add_text_footer
from gateway_plugins.campaigns.rendering import (
    RenderedMail,
    TemplateRefused,
    contact_variables,
    render_many,
    template_variables,
)
from gateway_plugins.campaigns.send_times import next_open, throttled
from gateway_plugins.campaigns.template_model import TemplateVersion

from gateway.api.mime import (
    CheckedAddress,
    Composition,
    build_message,
    check_address,
    check_header_text,
)
from gateway.api.problems import Problem
from gateway.ingress import Rejected, Submission
from gateway.store.base import (
    TENANT_SCOPE,
    DeliveryFilter,
    IdempotencyClaim,
    IdempotencyConflict,
    MessageMeta,
)

log = logging.getLogger("gateway.plugins.campaigns")

IDEMPOTENCY_DAYS = 30
"""How long a send's idempotency key is kept in the spool (a run resumed later than this
could queue a delivery whose first enqueue was lost between spool and campaign table)."""
ACCEPT_CONCURRENCY = 100
"""Accepts in flight at once: they share the spool's group commits."""
CAMPAIGN_KEYS = ("campaign_id", "campaign_run_id", "campaign_send_id")
"""Metadata every campaign message carries (``Event.metadata`` and the message record)."""
LIST_KEY = "audience_list_id"
RECONCILE_EVERY = 10.0
"""Seconds (monotonic) between sweeps comparing stale ``queued`` sends with the spool."""


def idempotency_key(send_id: int) -> str:
    return f"campaign-send:{send_id}"


class RunContext:
    """What one run's fan-out needs besides the recipients."""

    def __init__(
        self,
        campaign: Campaign,
        run: Run,
        version: TemplateVersion,
        lists: dict[int, str],
        postal_address: str,
    ) -> None:
        self.campaign = campaign
        self.run = run
        self.version = version
        self.lists = lists
        self.postal_address = postal_address
        self.sender = check_address(campaign.from_email, "from")
        if campaign.from_name:
            self.sender = CheckedAddress(
                email=self.sender.email, name=campaign.from_name, utf8=self.sender.utf8
            )
        self.reply_to = [check_address(campaign.reply_to, "reply_to")] if campaign.reply_to else []


class Fanout:
    def __init__(self, gateway: Any, store: CampaignStore, templates: Any, settings: Any) -> None:
        self.gateway = gateway
        self.store = store
        self.templates = templates
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_reconcile = 0.0
        audience = audience_of(gateway)
        self.audience = audience.store
        keys = audience.settings.keys
        self.tokens = (
            PageTokens(keys, audience.settings.signing_key or next(iter(keys))) if keys else None
        )
        self.base_url = audience.settings.base_url.rstrip("/")

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="campaign-fanout")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                worked = await self.step()
            except Exception:
                log.exception("campaign fan-out failed; retrying")
                worked = False
            if not worked:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.settings.poll_interval)

    async def step(self) -> bool:
        """Settle finished runs, then fan out one due run if there is one; True if it did."""
        if time.monotonic() >= self._next_reconcile:
            self._next_reconcile = time.monotonic() + RECONCILE_EVERY
            await self.reconcile_outcomes()
        await self.store.settle()
        claimed = await self.store.claim_run(self.owner, self.settings.lease)
        if claimed is None:
            return False
        campaign, run = claimed
        try:
            await self.fan_out(campaign, run)
        except LeaseLost:
            log.warning("run %s of campaign %s was taken over by another node", run.id, campaign.id)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.store.release(run, self.owner)
            raise
        return True

    async def reconcile_outcomes(self) -> int:
        """Sends still ``queued`` long after their run fanned out: take the outcome from the
        spool where the delivery is final (the process that delivered it may have died before
        recording it here). Returns how many changed."""
        now = self.gateway.clock.now()
        stale = await self.store.stale_queued(now - self.settings.reconcile_after, 500)
        waiting, changed = [], 0
        for send_id, tenant, message_id in stale:
            deliveries = await self.gateway.store.list_deliveries(
                DeliveryFilter(message_id=message_id, tenant=tenant, limit=1)
            )
            final = OUTCOMES.get(deliveries[0].status.value) if deliveries else None
            if final is None:
                waiting.append(send_id)
            elif await self.store.record_outcome(send_id, final, deliveries[0].last_error[:200]):
                changed += 1
        await self.store.touch(waiting)
        if changed:
            log.info("%d campaign sends took their outcome from the spool", changed)
        return changed

    async def fan_out(self, campaign: Campaign, run: Run) -> None:
        tenant = campaign.tenant
        version = await self.templates.version(tenant, campaign.template_id, run.template_version)
        context = RunContext(
            campaign,
            run,
            version,
            await walk.list_names(self.audience, tenant, campaign.list_ids),
            self.settings.postal_addresses.get(tenant, ""),
        )
        log.info(
            "fanning out run %d of campaign %d from contact %d", run.number, campaign.id, run.cursor
        )
        await self.spool_planned(context, {}, resumed=True)
        while True:
            current = await self.store.get(tenant, campaign.id)
            if current.status not in ("scheduled", "sending"):
                await self.store.release(run, self.owner)
                log.info(
                    "campaign %d is %s: fan-out stops at contact %d",
                    campaign.id,
                    current.status,
                    run.cursor,
                )
                return
            candidates = await walk.page(
                self.audience, tenant, campaign.list_ids, run.cursor, self.settings.page_size
            )
            if not candidates:
                break
            rows = await self.decide(context, candidates)
            await self.store.write_page(
                run, self.owner, self.settings.lease, rows, candidates[-1].contact.id
            )
            contacts = {c.contact.id: c.contact for c in candidates}
            await self.spool_planned(context, contacts, resumed=False)
        await self.store.finish_fanout(run, self.owner)
        log.info(
            "run %d of campaign %d fanned out (%d planned)", run.number, campaign.id, run.planned
        )

    async def decide(self, context: RunContext, candidates: Sequence[Candidate]) -> list[NewSend]:
        """A send row per candidate: skipped with its reason, or planned with its time."""
        campaign, run = context.campaign, context.run
        ids = [c.contact.id for c in candidates]
        excluded = await walk.excluded(
            self.audience, campaign.tenant, campaign.exclude_segment_ids, ids
        )
        opted_out = await walk.topic_opted_out(
            self.audience, campaign.tenant, campaign.topic_id, ids
        )
        addresses: dict[int, CheckedAddress] = {}
        for c in candidates:
            try:
                addresses[c.contact.id] = check_address(c.contact.email, "email")
            except Problem:
                pass
        suppressed = await self.gateway.store.suppressed(
            campaign.tenant,
            [a.email for a in addresses.values()],
            (TENANT_SCOPE, f"stream:{campaign.stream}"),
        )
        rows: list[NewSend] = []
        planned = 0
        now = self.gateway.clock.now()
        for c in candidates:
            contact = c.contact
            reason = skip_reason(c, excluded, opted_out, addresses, suppressed)
            if reason:
                rows.append(
                    NewSend(
                        contact_id=contact.id, email=contact.email, status="skipped", reason=reason
                    )
                )
                continue
            at = self.plan_time(context, contact, run.planned + planned)
            planned += 1
            rows.append(
                NewSend(
                    contact_id=contact.id,
                    email=addresses[contact.id].email,
                    status="planned",
                    not_before=at if at > now else None,
                    list_id=c.list_id,
                )
            )
        return rows

    def plan_time(self, context: RunContext, contact: Contact, index: int) -> float:
        """The recipient's earliest delivery time: the throttle's slot, moved into the
        window. (The seam for per-recipient send-time optimization.)"""
        campaign = context.campaign
        at = throttled(context.run.due_at, index, campaign.throttle_per_hour)
        if campaign.window is not None:
            at = next_open(at, campaign.window, contact.timezone)
        return at

    async def spool_planned(
        self, context: RunContext, contacts: dict[int, Contact], *, resumed: bool
    ) -> None:
        """Spool every ``planned`` send of the run and mark it ``queued`` (or why not)."""
        after = 0
        while True:
            sends = await self.store.planned_sends(context.run, after, self.settings.page_size)
            if not sends:
                return
            after = sends[-1].id
            await self.store.renew(context.run, self.owner, self.settings.lease)
            wanted = [s.contact_id for s in sends if s.contact_id not in contacts]
            if wanted:
                contacts.update(
                    await walk.contacts_by_id(self.audience, context.campaign.tenant, wanted)
                )
            outcomes: list[tuple[int, str, str, str]] = []
            if resumed:
                sends = await self._already_spooled(context, sends, outcomes)
            ready = []
            for send in sends:
                contact = contacts.get(send.contact_id)
                if contact is None or contact.status == "erased":
                    outcomes.append((send.id, "skipped", "erased", ""))
                else:
                    ready.append((send, contact))
            mails = await self.render(context, ready)
            limit = asyncio.Semaphore(ACCEPT_CONCURRENCY)
            outcomes += await asyncio.gather(
                *(
                    self._accept_limited(limit, context, s, c, m)
                    for (s, c), m in zip(ready, mails, strict=True)
                )
            )
            await self.store.mark_sends(outcomes)

    async def _accept_limited(
        self,
        limit: asyncio.Semaphore,
        context: RunContext,
        send: Send,
        contact: Contact,
        mail: RenderedMail | TemplateRefused,
    ) -> tuple[int, str, str, str]:
        async with limit:
            return await self.accept(context, send, contact, mail)

    async def _already_spooled(
        self, context: RunContext, sends: list[Send], outcomes: list[tuple[int, str, str, str]]
    ) -> list[Send]:
        """Of ``sends``, those not in the spool yet; the others are recorded as queued."""
        spool, now = self.gateway.store, self.gateway.clock.now()
        left = []
        for send in sends:
            entries = await spool.find_idempotency(send.tenant, idempotency_key(send.id), now)
            if entries:
                outcomes.append((send.id, "queued", "", entries[0].message_id))
            else:
                left.append(send)
        if len(left) < len(sends):
            log.info(
                "run %d: %d deliveries were spooled before a restart",
                context.run.id,
                len(sends) - len(left),
            )
        return left

    async def render(
        self, context: RunContext, ready: Sequence[tuple[Send, Contact]]
    ) -> list[RenderedMail | TemplateRefused]:
        campaign = context.campaign
        variables: list[dict[str, Any]] = []
        for send, contact in ready:
            extra = {
                "campaign": {"id": campaign.id, "name": campaign.name, "run": context.run.number},
                "links": self.links(campaign.tenant, contact.id, send.list_id),
                "tenant": campaign.tenant,
            }
            variables.append(
                template_variables(
                    context.version, contact_variables(contact), campaign.variables, extra
                )
            )
        return await render_many(self.gateway.renderers, context.version, variables)

    def links(self, tenant: str, contact_id: int, list_id: int | None) -> dict[str, str]:
        if self.tokens is None:
            return {}
        now = self.gateway.clock.now()
        lid = list_id or 0
        return {
            "unsubscribe": f"{self.base_url}/p/unsubscribe/"
            + self.tokens.sign("unsubscribe", tenant, contact_id, lid, now),
            "preferences": f"{self.base_url}/p/preferences/"
            + self.tokens.sign("preferences", tenant, contact_id, lid, now),
        }

    async def accept(
        self,
        context: RunContext,
        send: Send,
        contact: Contact,
        mail: RenderedMail | TemplateRefused,
    ) -> tuple[int, str, str, str]:
        """Spool one recipient's message; ``(send id, status, reason, message id)``."""
        if isinstance(mail, TemplateRefused):
            return (send.id, "skipped", f"render_failed: {mail}"[:200], "")
        campaign = context.campaign
        try:
            raw, to = self.compose(context, send, contact, mail)
        except Problem as p:
            return (send.id, "skipped", f"invalid_message: {p.detail.detail}"[:200], "")
        metadata = {
            "campaign_id": str(campaign.id),
            "campaign_run_id": str(context.run.id),
            "campaign_send_id": str(send.id),
        }
        if send.list_id is not None:
            metadata[LIST_KEY] = str(send.list_id)
        submission = Submission(
            tenant=campaign.tenant,
            mail_from=context.sender.email,
            recipients=[to.email],
            raw=raw,
            source="http",
            protocol="HTTP",
            smtp_utf8=to.utf8 or context.sender.utf8,
            meta=MessageMeta(tags=(f"campaign:{campaign.id}",), metadata=metadata),
            stream=campaign.stream,
        )
        now = self.gateway.clock.now()
        claim = IdempotencyClaim(
            tenant=campaign.tenant,
            key=idempotency_key(send.id),
            fingerprint=f"campaign:{campaign.id}",
            expires_at=now + IDEMPOTENCY_DAYS * 86400,
        )
        try:
            message = await self.gateway.ingress.accept(
                submission, not_before=send.not_before, idempotency=claim
            )
        except IdempotencyConflict:
            entries = await self.gateway.store.find_idempotency(campaign.tenant, claim.key, now)
            return (send.id, "queued", "", entries[0].message_id if entries else "")
        except Rejected as e:
            return (send.id, "failed", f"refused: {e.verdict.text}"[:200], "")
        return (send.id, "queued", "", message.id)

    async def test_send(
        self, campaign: Campaign, version: TemplateVersion, emails: Sequence[str]
    ) -> list[str]:
        """The campaign's mail to each seed address (its contact's fields when it is one),
        subject marked ``[Test]``; ordinary deliveries with no send rows. Message ids."""
        tenant = campaign.tenant
        run = Run(
            id=0, tenant=tenant, campaign_id=campaign.id, number=0, status="due",
            due_at=0.0, template_version=version.version, cursor=0, planned=0,
            lease_owner="", lease_until=0.0, started_at=None, fanned_out_at=None,
            finished_at=None,
        )  # fmt: skip
        lists = await walk.list_names(self.audience, tenant, campaign.list_ids)
        context = RunContext(
            campaign, run, version, lists, self.settings.postal_addresses.get(tenant, "")
        )
        ready = []
        for email in emails:
            contact = await self.audience.find_contact(tenant, email)
            if contact is None:
                contact = Contact(id=0, tenant=tenant, email=email, email_key=email.lower())
            send = Send(
                id=0, tenant=tenant, campaign_id=campaign.id, run_id=0, contact_id=contact.id,
                email=email, status="planned", reason="", message_id="", not_before=None,
                variant="", list_id=campaign.list_ids[0],
            )  # fmt: skip
            ready.append((send, contact))
        mails = await self.render(context, ready)
        ids = []
        for (send, contact), mail in zip(ready, mails, strict=True):
            if isinstance(mail, TemplateRefused):
                raise Problem.invalid(mail.field or "template", mail.detail)
            mail.subject = f"[Test] {mail.subject}"
            raw, to = self.compose(context, send, contact, mail)
            message = await self.gateway.ingress.accept(
                Submission(
                    tenant=tenant,
                    mail_from=context.sender.email,
                    recipients=[to.email],
                    raw=raw,
                    source="http",
                    protocol="HTTP",
                    smtp_utf8=to.utf8 or context.sender.utf8,
                    meta=MessageMeta(
                        tags=(f"campaign:{campaign.id}", "campaign-test"),
                        metadata={"campaign_id": str(campaign.id), "campaign_test": "1"},
                    ),
                    stream=campaign.stream,
                )
            )
            ids.append(message.id)
        return ids

    def compose(
        self, context: RunContext, send: Send, contact: Contact, mail: RenderedMail
    ) -> tuple[bytes, CheckedAddress]:
        to = check_address(contact.email, "email")
        if contact.name:
            to = CheckedAddress(
                email=to.email,
                name=check_header_text(contact.name, "name", max_length=200),
                utf8=to.utf8,
            )
        links = self.links(context.campaign.tenant, contact.id, send.list_id)
        list_name = context.lists.get(send.list_id or 0, "")
        parts = FooterParts(
            postal_address=context.postal_address,
            unsubscribe_url=links.get("unsubscribe", ""),
            preferences_url=links.get("preferences", ""),
            reason=f"You receive this because you subscribed to {list_name}."
            if list_name
            else "You receive this because you subscribed to our mailings.",
        )
        raw = build_message(
            Composition(
                sender=context.sender,
                to=[to],
                cc=[],
                reply_to=context.reply_to,
                subject=check_header_text(mail.subject, "subject"),
                text=add_text_footer(mail.text, parts),
                html=add_html_footer(mail.html, parts),
                headers=[],
                attachments=[],
            ),
            now=self.gateway.clock.now(),
            max_size=self.gateway.config.smtp.max_message_size,
        )
        return raw, to


def skip_reason(
    candidate: Candidate,
    excluded: set[int],
    opted_out: set[int],
    addresses: dict[int, CheckedAddress],
    suppressed: dict[str, Any],
) -> str:
    """Why this candidate gets no mail ("" if it does), the first that applies."""
    contact = candidate.contact
    if contact.status != "active":
        return contact.status  # bounced, complained, erased
    if candidate.subscription != "active":
        return "unsubscribed" if candidate.subscription == "unsubscribed" else "pending"
    if contact.id in excluded:
        return "excluded"
    if contact.id in opted_out:
        return "topic_opt_out"
    address = addresses.get(contact.id)
    if address is None:
        return "invalid_address"
    if address.email.lower() in suppressed:
        return "suppressed"
    return ""
