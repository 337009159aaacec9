"""The campaigns plugin's own precheck (an implementation of ``gateway_campaign_precheck``):
everything CAN-SPAM and good sense need before the first recipient is considered."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import sqlalchemy as sa
from gateway_plugins.audience import audience_of
from gateway_plugins.audience import schema as audience
from gateway_plugins.campaigns.campaign_model import Campaign
from gateway_plugins.campaigns.template_model import TemplateVersion

from gateway.dnsauth.state import states
from gateway.streams import stream_section


async def builtin_problems(
    gateway: Any, campaign: Campaign, template: TemplateVersion
) -> list[str]:
    from gateway_plugins.campaigns import campaigns_of

    settings = campaigns_of(gateway).settings
    audience_settings = audience_of(gateway).settings
    problems = []
    if not settings.postal_addresses.get(campaign.tenant, "").strip():
        problems.append(
            f"no postal address for tenant {campaign.tenant!r}: set "
            f"plugins.campaigns.postal_addresses.{campaign.tenant} (CAN-SPAM)"
        )
    if not (audience_settings.keys and audience_settings.base_url):
        problems.append(
            "no unsubscribe path: the audience pages need plugins.audience.keys and base_url"
        )
    domain = campaign.from_email.rpartition("@")[2].lower()
    if settings.require_verified_domain:
        state = (await states(gateway.store)).get(domain)
        if state is None or state.status != "verified":
            problems.append(f"the From domain {domain} is not verified (gateway dns check)")
    stream = stream_section(gateway.config, campaign.tenant, campaign.stream)
    if stream is None or not stream.broadcast:
        problems.append(f"{campaign.stream!r} is not a broadcast stream of {campaign.tenant!r}")
    missing = template.missing({**template.defaults(), **campaign.variables})
    if missing:
        problems.append("required template variables without a value: " + ", ".join(missing))
    for url in static_links(template.html):
        problems.append(f"the link {url!r} is not an http(s) URL")
    if not await _has_audience(gateway, campaign):
        problems.append("the audience is empty: no active subscriber on the campaign's lists")
    return problems


async def _has_audience(gateway: Any, campaign: Campaign) -> bool:
    store = audience_of(gateway).store
    s = audience.subscriptions
    async with store.engine.connect() as conn:
        found = await conn.scalar(
            sa.select(s.c.contact_id)
            .where(
                s.c.tenant == campaign.tenant,
                store.member_of(s.c.list_id, campaign.list_ids),
                s.c.status == "active",
            )
            .limit(1)
        )
    return found is not None


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.bad: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            return
        href = (dict(attrs).get("href") or "").strip()
        if href and not href.startswith(("http://", "https://", "mailto:", "#", "{{", "{%")):
            self.bad.append(href)


def static_links(html: str) -> list[str]:
    """``<a href>`` values that are neither http(s), mailto, anchors nor template output."""
    parser = _Links()
    parser.feed(html)
    parser.close()
    return parser.bad
