"""A third-party plugin extending the campaign precheck (loaded by ``[gateway] plugins``)."""

from __future__ import annotations

from typing import Any

from gateway.plugin_manager import hookimpl


@hookimpl
def gateway_campaign_precheck(campaign: Any, template: Any) -> list[str] | None:
    if campaign.tenant == "globex" and "unsubscribe" not in template.html:
        return ["house rule: the template has no unsubscribe wording"]
    return None
