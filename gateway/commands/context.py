"""What every subcommand needs: the config the user named, the store, and UTC times."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from gateway.config import Config, load_config
from gateway.store.base import Store

DEFAULT_CONFIG_NAME = "gateway.toml"
T = TypeVar("T")


def config_path(given: str | None) -> str | None:
    """``--config``, else ``$GATEWAY_CONFIG``, else ``./gateway.toml`` if present, else defaults."""
    if given:
        return given
    if os.environ.get("GATEWAY_CONFIG"):
        return os.environ["GATEWAY_CONFIG"]
    return DEFAULT_CONFIG_NAME if Path(DEFAULT_CONFIG_NAME).is_file() else None


def load(args: argparse.Namespace) -> Config:
    """The config named by ``-c`` (before or after the subcommand) or its fallbacks."""
    return load_config(config_path(getattr(args, "config", None)))


async def with_store(config: Config, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``work`` with the operator's view of the store, opened and closed around it."""
    from gateway.server import operator_store

    store = operator_store(config)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()


def utc(timestamp: float) -> str:
    """``2026-12-04 15:48:16`` (UTC), or ``-`` for no time."""
    if not timestamp:
        return "-"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
