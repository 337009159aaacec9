"""Campaigns: stored, versioned templates (and, building on them, campaigns), in the
audience's database.

``[plugins.campaigns]`` switches it on (``docs/plugins/campaigns.md``); it needs
``[plugins.audience]``, whose engine it shares. Its tables have their own Alembic chain,
migrated at start-up after the audience's. The HTTP API is under ``/v1/templates``. Templates
render in the gateway's pool of sandboxed render processes (:mod:`.rendering`).
"""

from __future__ import annotations

from typing import Any

from gateway_plugins.audience import audience_of
from gateway_plugins.campaigns.engine import migrate_campaigns
from gateway_plugins.campaigns.settings import NAME, Settings, load_settings
from gateway_plugins.campaigns.template_store import TemplateStore

from gateway.plugin_manager import hookimpl

DEFAULT_ENABLED = False
"""Off unless ``[plugins.campaigns]`` exists."""


class Campaigns:
    """The plugin's per-gateway state: settings now, the stores once started."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._templates: TemplateStore | None = None

    @property
    def templates(self) -> TemplateStore:
        if self._templates is None:
            raise RuntimeError("the campaign tables are opened in gateway_startup")
        return self._templates

    async def open(self, gateway: Any) -> None:
        audience = audience_of(gateway)
        engine = audience.store.engine
        await migrate_campaigns(engine, schema=audience.settings.schema)
        self._templates = TemplateStore(engine, gateway.clock)

    async def close(self) -> None:
        self._templates = None  # the engine is the audience's, closed by it


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
    from gateway_plugins.campaigns.template_api import TemplatesController

    return [TemplatesController]
