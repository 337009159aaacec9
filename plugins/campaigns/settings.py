"""``[plugins.campaigns]``: stored templates and campaigns, in the audience's database."""

from __future__ import annotations

import msgspec

from gateway.config import Config, ConfigError, plugin_settings

NAME = "campaigns"


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_template_size: int = 512 * 1024
    """Characters one template field (subject, preheader, HTML, text) may have as stored."""
    max_versions: int = 1000
    """Versions one template may have; older ones are kept (campaigns refer to them)."""


def load_settings(config: Config) -> Settings:
    """The table, checked; the campaigns need the audience (``[plugins.audience]``)."""
    settings = plugin_settings(config, NAME, Settings)
    audience = config.plugins.get("audience")
    if audience is None or not audience.get("enabled", True):
        raise ConfigError(
            f"plugins.{NAME}: campaigns live in the audience database; add [plugins.audience]"
        )
    if settings.max_template_size < 1024:
        raise ConfigError(f"plugins.{NAME}.max_template_size: at least 1024")
    if settings.max_versions < 1:
        raise ConfigError(f"plugins.{NAME}.max_versions: at least 1")
    return settings
