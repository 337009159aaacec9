"""``[plugins.automation]``: where flows live, and how often due steps are looked for."""

from __future__ import annotations

import msgspec
from gateway_plugins.audience.settings import load_settings as load_audience_settings

from gateway.config import Config, ConfigError, plugin_settings

NAME = "automation"


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str = ""
    """The database (same form as ``plugins.audience.url``); default: the audience's own, so
    flows, enrolments and contacts share one database."""
    schema: str = ""
    """PostgreSQL only: the schema; default: the audience's."""
    poll_interval: float = 1.0
    """Seconds between looks for due steps (an event that starts a flow runs it at once)."""
    lease: float = 60.0
    """Seconds a node holds a claimed step; a node that dies lets it go after this."""
    batch: int = 100
    """Due steps claimed per look."""
    defer: float = 300.0
    """Seconds a send that cannot run now (a local fault) waits before it is tried again."""
    human_only: bool = True
    """Opens and clicks by machines (scanners, privacy proxies) are not engagement events."""


def load_settings(config: Config) -> Settings:
    if "audience" not in config.plugins:
        raise ConfigError(f"plugins.{NAME}: needs [plugins.audience] (flows enrol its contacts)")
    settings = plugin_settings(config, NAME, Settings)
    audience = load_audience_settings(config)
    if not settings.url:
        settings.url, settings.schema = audience.url, settings.schema or audience.schema
    if settings.poll_interval <= 0 or settings.lease <= 0 or settings.batch < 1:
        raise ConfigError(f"plugins.{NAME}: poll_interval, lease and batch must be positive")
    return settings
