"""Example third-party plugin: adds one header to every outgoing message.

Configured by its own table; without one it does nothing, so installing it changes no mail::

    [plugins.example_header]
    name = "X-Campaign-Platform"
    value = "newsletter-2"
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from gateway.config import ConfigError, plugin_settings
from gateway.plugin_manager import hookimpl

__version__ = "0.3.0"

NAME = "example_header"
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str = "X-Example"
    value: str = ""


@hookimpl
def gateway_configure(gateway: Any, config: Any) -> None:
    if NAME not in config.plugins:
        return
    settings = plugin_settings(config, NAME, Settings)
    if not _FIELD_NAME.match(settings.name):
        raise ConfigError(f"plugins.{NAME}.name: not a header field name")
    if any(c in settings.value for c in "\r\n\0"):
        raise ConfigError(f"plugins.{NAME}.value: must be one line")
    gateway.plugin_state[NAME] = f"{settings.name}: {settings.value}\r\n".encode()


@hookimpl
def gateway_transform(gateway: Any, message: Any) -> bytes | None:
    header: bytes | None = gateway.plugin_state.get(NAME)
    return None if header is None else header + message.raw
