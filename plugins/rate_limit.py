"""Rate limits: messages per second, minute and hour per tenant and per destination domain.

Provider limits are ``[routing.limits.<provider>]`` (``gateway/routing.py``), which can fail
over to the next provider; the ``providers`` table this plugin once had is a configuration
error that says so.

Each limit is a counter in the store per fixed window (aligned to the epoch: a minute window is
one clock minute), taken with the atomic ``consume``, so a limit holds across every worker and
node sharing the store. A delivery over a limit is deferred to the start of the next window
(``Defer``): it waits in the queue without spending an attempt. A delivery that several limits
apply to takes one unit from each, or none: what was taken is given back when a later limit
refuses.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import msgspec

from gateway.config import Config, ConfigError, plugin_settings
from gateway.message import Defer, Delivery, Message
from gateway.plugin_manager import hookimpl
from gateway.store.base import Store

NAME = "rate_limit"
DEFAULT_ENABLED = False
"""Off unless ``[plugins.rate_limit]`` exists."""

Scope = Literal["tenant", "domain"]
WINDOWS = (("per_second", 1), ("per_minute", 60), ("per_hour", 3600))
EVERY = "*"
"""The table name that applies to each tenant, provider or domain without its own entry."""
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")


class Limit(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    per_second: int = 0
    per_minute: int = 0
    per_hour: int = 0
    """0 means no limit for that window."""


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    tenants: dict[str, Limit] = msgspec.field(default_factory=dict)
    """By tenant name; ``"*"`` applies to each tenant without an entry (counted per tenant)."""
    providers: dict[str, dict[str, Any]] | None = None
    """Moved to ``[routing.limits]``: set, it is a ``ConfigError`` that names the new key."""
    domains: dict[str, Limit] = msgspec.field(default_factory=dict)
    """By recipient domain, e.g. ``"gmail.com"``; ``"*"`` for each other domain."""


def moved_provider_limits(providers: dict[str, dict[str, Any]]) -> str:
    """The error for a ``providers`` table: where its limits go now, with the first as example."""
    example = "[routing.limits.<provider>] per_second = 10"
    for name, limit in providers.items():
        keys = [f"{key} = {value}" for key, value in limit.items() if value]
        if name != EVERY and keys:
            example = f"[routing.limits.{name}] " + ", ".join(keys)
            break
    return (
        f"plugins.{NAME}.providers: provider limits moved to [routing.limits.<provider>]"
        f" (per_second, per_minute, per_hour, per_day); for example {example}"
    )


class RateLimits:
    """The plugin's per-gateway state."""

    def __init__(self, settings: Settings, config: Config, clock: Any) -> None:
        self.clock = clock
        self.store: Store | None = None
        if settings.providers is not None:
            raise ConfigError(moved_provider_limits(settings.providers))
        self.tables: dict[Scope, dict[str, Limit]] = {
            "tenant": settings.tenants,
            "domain": {name.lower(): limit for name, limit in settings.domains.items()},
        }
        known = {"tenants": set(config.tenants)}
        for table, entries in (("tenants", settings.tenants), ("domains", settings.domains)):
            for name, limit in entries.items():
                where = f'plugins.{NAME}.{table}."{name}"'
                if name != EVERY and table in known and name not in known[table]:
                    raise ConfigError(f"{where}: no such {table[:-1]} in the configuration")
                if name != EVERY and table == "domains" and not _DOMAIN.match(name.lower()):
                    raise ConfigError(f"{where}: not a domain (or {EVERY!r} for every domain)")
                for key, _ in WINDOWS:
                    if getattr(limit, key) < 0:
                        raise ConfigError(f"{where}.{key}: must be 0 (no limit) or more")

    def limits(self, message: Message, delivery: Delivery, route: str) -> list[tuple[str, Limit]]:
        """The limits that apply, each with the name its counters are kept under."""
        found = []
        for scope, name in (("tenant", message.tenant), ("domain", delivery.domain)):
            table = self.tables[scope]  # type: ignore[index]
            limit = table.get(name) or table.get(EVERY)
            if limit is not None:
                found.append((f"{scope}:{name}", limit))
        return found

    async def permit(self, message: Message, delivery: Delivery, route: str) -> Defer | None:
        assert self.store is not None, "gateway_startup attaches the store"
        now = self.clock.now()
        taken: list[tuple[str, float]] = []
        for subject, limit in self.limits(message, delivery, route):
            for key, seconds in WINDOWS:
                allowed = getattr(limit, key)
                if not allowed:
                    continue
                window = math.floor(now / seconds)
                counter = f"rl:{subject}:{seconds}:{window}"
                ends = (window + 1) * seconds
                if await self.store.consume(counter, 1, allowed, expires_at=ends, now=now):
                    taken.append((counter, ends))
                    continue
                for earlier, expires in taken:  # all or nothing
                    await self.store.add_to_counter(earlier, -1, expires_at=expires, now=now)
                unit = key.removeprefix("per_")
                return Defer(
                    until=float(ends),
                    reason=f"rate limit of {subject.replace(':', ' ', 1)} reached: "
                    f"{allowed} per {unit}",
                )
        return None


@hookimpl
def gateway_configure(gateway: Any, config: Config) -> None:
    gateway.plugin_state[NAME] = RateLimits(
        plugin_settings(config, NAME, Settings), config, gateway.clock
    )


@hookimpl
def gateway_startup(gateway: Any) -> None:
    gateway.plugin_state[NAME].store = gateway.store


@hookimpl
async def gateway_permit(
    gateway: Any, message: Message, delivery: Delivery, route: str
) -> Defer | None:
    verdict: Defer | None = await gateway.plugin_state[NAME].permit(message, delivery, route)
    return verdict
