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
    postal_addresses: dict[str, str] = msgspec.field(default_factory=dict)
    """Tenant → its physical postal address (lines separated by newlines), required in every
    campaign mail (CAN-SPAM); the precheck refuses a campaign of a tenant without one."""
    require_verified_domain: bool = True
    """The precheck refuses a From domain that ``gateway dns check`` has not verified."""
    page_size: int = 500
    """Recipients per fan-out page (one transaction each)."""
    lease: float = 60.0
    """Seconds a node holds a run it fans out without renewing; another node takes over after."""
    poll_interval: float = 1.0
    """Seconds between looks for due runs (an API schedule/send wakes the node at once)."""
    reconcile_after: float = 300.0
    """Seconds after which a send still ``queued`` is compared with its delivery in the spool
    (an outcome lost when a process died between the spool and the campaign tables)."""
    pause_recheck: float = 60.0
    """Seconds a paused campaign's queued deliveries wait before being looked at again."""


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
    if settings.page_size < 1 or settings.lease < 5 or settings.poll_interval <= 0:
        raise ConfigError(f"plugins.{NAME}: page_size ≥ 1, lease ≥ 5 seconds, poll_interval > 0")
    if settings.max_versions < 1:
        raise ConfigError(f"plugins.{NAME}.max_versions: at least 1")
    return settings
