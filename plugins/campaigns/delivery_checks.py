"""Campaign rules at delivery time, for deliveries a fan-out spooled.

Consent is re-checked when the dispatcher takes a delivery, not only at fan-out: an
unsubscribe, a bounce or a topic opt-out between fan-out and send wins (``Skip``), and so does
a cancel. A paused campaign's deliveries, and any outside the campaign's window, wait
(``Defer``, no attempt counted). What became of each delivery goes back to its send row.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import msgspec
import sqlalchemy as sa
from gateway_plugins.audience import schema as audience
from gateway_plugins.audience.store import AudienceStore
from gateway_plugins.campaigns.campaign_model import Campaign, Send
from gateway_plugins.campaigns.campaign_store import CampaignStore
from gateway_plugins.campaigns.send_times import next_open

from gateway.message import Defer, Message, Skip
from gateway.streams import TRANSACTIONAL

CACHE_SECONDS = 2.0
"""A delivery's campaign facts are looked up once for its filter, permit and outcome calls."""
CACHE_SIZE = 4096
OUTCOMES = {
    "delivered": "delivered",
    "bounced": "bounced",
    "expired": "failed",
    "skipped": "dropped",
}
"""Final delivery states → send states."""


class Facts(msgspec.Struct, kw_only=True):
    send: Send
    campaign: Campaign
    contact_status: str
    timezone: str
    subscription: str
    topic_off: bool


class DeliveryChecks:
    def __init__(
        self, gateway: Any, store: CampaignStore, audience_store: AudienceStore, settings: Any
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.audience = audience_store
        self.settings = settings
        self._cache: collections.OrderedDict[str, tuple[float, Facts | None]] = (
            collections.OrderedDict()
        )

    async def facts(self, message: Message) -> Facts | None:
        """The campaign facts of ``message``'s delivery, or ``None`` when it is not a
        campaign's."""
        if message.source != "http" or message.stream == TRANSACTIONAL:
            return None
        now = time.monotonic()
        cached = self._cache.get(message.id)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self._lookup(message)
        self._cache[message.id] = (now + CACHE_SECONDS, found)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return found

    async def _lookup(self, message: Message) -> Facts | None:
        record = await self.gateway.store.message_record(message.tenant, message.id)
        if record is None or record.meta is None:
            return None
        send_id = record.meta.metadata.get("campaign_send_id", "")
        if not send_id.isdigit():
            return None
        found = await self.store.send_for_delivery(int(send_id))
        if found is None:
            return None
        send, campaign = found
        c, s, t = audience.contacts, audience.subscriptions, audience.topic_preferences
        async with self.audience.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(c.c.status, c.c.timezone).where(
                        c.c.tenant == send.tenant, c.c.id == send.contact_id
                    )
                )
            ).first()
            subscription = None
            if send.list_id is not None:
                subscription = await conn.scalar(
                    sa.select(s.c.status).where(
                        s.c.list_id == send.list_id, s.c.contact_id == send.contact_id
                    )
                )
            topic_off = False
            if campaign.topic_id is not None:
                topic_off = (
                    await conn.scalar(
                        sa.select(t.c.subscribed).where(
                            t.c.topic_id == campaign.topic_id, t.c.contact_id == send.contact_id
                        )
                    )
                ) is False
        return Facts(
            send=send,
            campaign=campaign,
            contact_status=row[0] if row is not None else "erased",
            timezone=row[1] if row is not None else "",
            subscription=subscription or ("active" if send.list_id is None else "unsubscribed"),
            topic_off=topic_off,
        )

    def forget(self) -> None:
        """A campaign changed state here: look everything up afresh (other nodes see the
        change within ``CACHE_SECONDS``)."""
        self._cache.clear()

    async def skip(self, message: Message) -> Skip | None:
        facts = await self.facts(message)
        if facts is None:
            return None
        if facts.campaign.status == "cancelled" or facts.send.status == "cancelled":
            return Skip("campaign cancelled")
        if facts.contact_status != "active":
            return Skip(f"contact {facts.contact_status}")
        if facts.subscription != "active":
            return Skip(f"unsubscribed (list:{facts.send.list_id})")
        if facts.topic_off:
            return Skip(f"topic opt-out (topic:{facts.campaign.topic_id})")
        return None

    async def permit(self, message: Message) -> Defer | None:
        facts = await self.facts(message)
        if facts is None:
            return None
        now = self.gateway.clock.now()
        if facts.campaign.status == "paused":
            return Defer(now + self.settings.pause_recheck, "campaign paused")
        window = facts.campaign.window
        if window is not None:
            opens = next_open(now, window, facts.timezone)
            if opens > now:
                return Defer(opens, "outside the campaign's send window")
        return None

    async def outcome(self, message: Message, status: str, detail: str) -> None:
        final = OUTCOMES.get(status)
        if final is None:
            return
        facts = await self.facts(message)
        if facts is None:
            return
        await self.store.record_outcome(facts.send.id, final, detail[:200])
        self._cache.pop(message.id, None)
