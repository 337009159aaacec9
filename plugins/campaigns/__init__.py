"""Campaigns: stored, versioned templates (and, building on them, campaigns), in the
audience's database.

``[plugins.campaigns]`` switches it on (``docs/plugins/campaigns.md``); it needs
``[plugins.audience]``, whose engine it shares. Its tables have their own Alembic chain,
migrated at start-up after the audience's. The HTTP API is under ``/v1/templates``. Templates
render in the gateway's pool of sandboxed render processes (:mod:`.rendering`). Campaigns
(``/v1/campaigns``) fan out into ordinary deliveries (:mod:`.fanout`); consent, pause, cancel
and the send window are checked again at delivery time (:mod:`.delivery_checks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway_plugins.audience import audience_of
from gateway_plugins.campaigns.campaign_store import CampaignStore
from gateway_plugins.campaigns.engine import migrate_campaigns
from gateway_plugins.campaigns.settings import NAME, Settings, load_settings
from gateway_plugins.campaigns.template_store import TemplateStore

from gateway.message import Defer, Delivery, Message, Skip
from gateway.plugin_manager import hookimpl

if TYPE_CHECKING:
    from gateway_plugins.campaigns.delivery_checks import DeliveryChecks
    from gateway_plugins.campaigns.fanout import Fanout

DEFAULT_ENABLED = False
"""Off unless ``[plugins.campaigns]`` exists."""


class Campaigns:
    """The plugin's per-gateway state: settings now, the stores once started."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._templates: TemplateStore | None = None
        self._campaigns: CampaignStore | None = None
        self._fanout: Fanout | None = None
        self._checks: DeliveryChecks | None = None

    @property
    def templates(self) -> TemplateStore:
        if self._templates is None:
            raise RuntimeError("the campaign tables are opened in gateway_startup")
        return self._templates

    @property
    def campaigns(self) -> CampaignStore:
        if self._campaigns is None:
            raise RuntimeError("the campaign tables are opened in gateway_startup")
        return self._campaigns

    @property
    def fanout(self) -> Fanout:
        if self._fanout is None:
            raise RuntimeError("the fan-out starts in gateway_startup")
        return self._fanout

    @property
    def checks(self) -> DeliveryChecks:
        if self._checks is None:
            raise RuntimeError("the campaign tables are opened in gateway_startup")
        return self._checks

    async def open(self, gateway: Any) -> None:
        from gateway_plugins.campaigns.delivery_checks import DeliveryChecks
        from gateway_plugins.campaigns.fanout import Fanout

        audience = audience_of(gateway)
        engine = audience.store.engine
        await migrate_campaigns(engine, schema=audience.settings.schema)
        self._templates = TemplateStore(engine, gateway.clock)
        self._campaigns = CampaignStore(engine, gateway.clock)
        self._checks = DeliveryChecks(gateway, self._campaigns, audience.store, self.settings)
        self._fanout = Fanout(gateway, self._campaigns, self._templates, self.settings)
        self._fanout.start()

    async def close(self) -> None:
        if self._fanout is not None:
            await self._fanout.stop()
        # the engine is the audience's, closed by it
        self._templates = self._campaigns = None
        self._fanout = None
        self._checks = None


def campaigns_of(gateway: Any) -> Campaigns:
    state: Campaigns = gateway.plugin_state[NAME]
    return state


@hookimpl
def gateway_configure(gateway: Any) -> None:
    gateway.plugin_state[NAME] = Campaigns(load_settings(gateway.config))


@hookimpl(trylast=True)
async def gateway_startup(gateway: Any) -> None:
    """After every other plugin's: the audience's store (and its migrations) come first."""
    await campaigns_of(gateway).open(gateway)


@hookimpl(tryfirst=True)
async def gateway_shutdown(gateway: Any) -> None:
    await campaigns_of(gateway).close()


@hookimpl
def gateway_register_routes(gateway: Any) -> list[Any]:
    from gateway_plugins.campaigns.campaign_api import CampaignsController
    from gateway_plugins.campaigns.template_api import TemplatesController

    return [TemplatesController, CampaignsController]


@hookimpl
async def gateway_campaign_precheck(gateway: Any, campaign: Any, template: Any) -> list[str]:
    from gateway_plugins.campaigns.precheck import builtin_problems

    return await builtin_problems(gateway, campaign, template)


@hookimpl
async def gateway_recipient_filter(
    gateway: Any, message: Message, delivery: Delivery
) -> Skip | None:
    """A campaign's delivery: consent as it is now, and cancellation, win over the fan-out."""
    return await campaigns_of(gateway).checks.skip(message)


@hookimpl
async def gateway_permit(gateway: Any, message: Message, delivery: Delivery) -> Defer | None:
    """A paused campaign's delivery waits; so does one outside the campaign's window."""
    return await campaigns_of(gateway).checks.permit(message)


@hookimpl
async def gateway_delivery_result(
    gateway: Any, message: Message, delivery: Delivery, status: str, detail: str
) -> None:
    await campaigns_of(gateway).checks.outcome(message, status, detail)
