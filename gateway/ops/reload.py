"""SIGHUP: re-read the TOML and apply what can change without dropping a connection.

Applied on reload:

* ``[tenants]`` — SMTP users and passwords, trusted networks, API keys and their scopes and
  rates, sending domains, and each tenant's ``webhooks`` endpoints;
* ``[webhooks]`` — retry schedule, maximum age, timeout (concurrency on the next start);
* ``[gateway] log_level`` and ``log_format``;
* whatever plugins re-read in ``gateway_reload`` — the DKIM plugin's keys on disk, so a
  rotation (``gateway dkim keygen``) takes effect without a restart.

Everything else — listeners and TLS files, the store, providers and delivery settings,
``[http]``, ``[tracking]``, ``[domains]``, ``[plugins]`` tables and the worker count — is
bound into sockets, connections, pools and plugin state at start-up, so a change there is
reported in the log as needing a restart and the running value is kept. A file that does not
load (bad TOML, a failed check) is rejected whole, with the error logged: the gateway keeps
running on the configuration it had.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec

from gateway.config import Config, ConfigError, load_config
from gateway.ops.logging import reconfigure_logging
from gateway.plugin_manager import HookError, call_all

if TYPE_CHECKING:
    from gateway.server import Gateway

log = logging.getLogger("gateway.reload")

RELOADED_SECTIONS = ("tenants", "webhooks")
_RELOADED_GATEWAY_KEYS = ("log_level", "log_format")


def merge(running: Config, loaded: Config) -> tuple[Config, list[str]]:
    """The configuration to run after a reload, and the changed keys that need a restart."""
    gateway = msgspec.structs.replace(
        running.gateway, **{k: getattr(loaded.gateway, k) for k in _RELOADED_GATEWAY_KEYS}
    )
    merged = msgspec.structs.replace(
        running, gateway=gateway, **{k: getattr(loaded, k) for k in RELOADED_SECTIONS}
    )
    ignored = [
        field
        for field in running.__struct_fields__
        if field not in RELOADED_SECTIONS
        and msgspec.to_builtins(getattr(merged, field))
        != msgspec.to_builtins(getattr(loaded, field))
    ]
    return merged, ignored


async def reload_from(gateway: Gateway, path: str | None) -> bool:
    """Load ``path`` and apply it to ``gateway``; ``False`` (logged) if it does not load."""
    try:
        loaded = await asyncio.to_thread(load_config, path)
    except ConfigError as e:
        log.error("reload rejected, keeping the running configuration: %s", e)
        return False
    merged, ignored = merge(gateway.config, loaded)
    apply(gateway, merged)
    try:
        await call_all(gateway.pm, "gateway_reload", gateway=gateway)
    except HookError as e:
        log.error("reload: %s", e)
    if ignored:
        log.warning("reload: changes to %s need a restart; not applied", ", ".join(ignored))
    log.info(
        "configuration reloaded from %s: %d tenant(s), %d webhook endpoint(s)",
        path or "built-in defaults",
        len(merged.tenants),
        sum(len(t.webhooks) for t in merged.tenants.values()),
    )
    return True


def apply(gateway: Gateway, config: Config) -> None:
    """Switch ``gateway`` to ``config``'s reloadable parts (see the module docstring)."""
    from gateway.smtp import TenantDirectory

    gateway.config = config
    gateway.directory = TenantDirectory(config.tenants)
    for handler in gateway.handlers:
        handler.directory = gateway.directory
    if gateway.api_app is not None:
        from gateway.api.auth import keyring_from_config

        api = gateway.api_app.state.api
        api.config = config
        api.keys = keyring_from_config(config)
    reconfigure_logging(config.gateway.log_level, config.gateway.log_format)
