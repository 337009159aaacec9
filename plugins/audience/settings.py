"""``[plugins.audience]``: where the audience database is and how it is shared."""

from __future__ import annotations

import re

import msgspec
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gateway.config import Config, ConfigError, plugin_settings

NAME = "audience"
_SCHEMA = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str = ""
    """SQLAlchemy URL: ``sqlite+aiosqlite:///path/audience.db`` (default
    ``<data_dir>/audience.db``) or ``postgresql+asyncpg://user@host:5432/db`` (several nodes)."""
    schema: str = ""
    """PostgreSQL only: the schema the tables live in (created if missing); empty: the
    database's default ``search_path``."""
    max_import_size: int = 1024 * 1024 * 1024
    """Bytes: the largest CSV ``POST /v1/lists/{id}/imports`` takes (streamed to disk)."""
    keys: dict[str, str] = msgspec.field(default_factory=dict)
    """Hosted pages: key id → HMAC secret (at least 32 bytes; use ``${ENV}``) for the links in
    confirmation mails and pages. The pages are served when this, ``base_url`` and
    ``mail_from`` are set."""
    signing_key: str = ""
    """The key id that signs new links; default: the first of ``keys``."""
    base_url: str = ""
    """Where the pages are reached from the internet, e.g. ``https://lists.example.com``."""
    mail_from: str = ""
    """The From address of confirmation mails."""
    signups_per_ip_hour: int = 5
    """Signups one client IP may make per hour (per worker); more answer 429."""
    confirmations_per_address_day: int = 3
    """Confirmation mails one address gets per day at most (shared by every node)."""
    templates_dir: str = ""
    """A directory whose templates override the shipped ones, file by file."""
    branding: dict[str, dict[str, str]] = msgspec.field(default_factory=dict)
    """Per tenant: ``name`` and ``color`` shown on the pages."""
    single_node: bool = False
    """Declare that a Redis-store deployment runs one node only, so an embedded SQLite
    audience is safe. Without it such a deployment is refused at start: two nodes would each
    see their own audience."""


def load_settings(config: Config) -> Settings:
    """The table, checked, with ``url`` filled in; a :class:`ConfigError` names the key."""
    settings = plugin_settings(config, NAME, Settings)
    if not settings.url:
        settings.url = f"sqlite+aiosqlite:///{config.data_dir.resolve() / 'audience.db'}"
    try:
        url = make_url(settings.url)
    except ArgumentError:
        raise ConfigError(f"plugins.{NAME}.url: not a database URL") from None
    backend = url.get_backend_name()
    if DRIVERS.get(backend) != url.get_driver_name():
        raise ConfigError(
            f"plugins.{NAME}.url: use sqlite+aiosqlite:///… or postgresql+asyncpg://…"
        )
    if settings.schema and (backend != "postgresql" or not _SCHEMA.match(settings.schema)):
        raise ConfigError(
            f"plugins.{NAME}.schema: a PostgreSQL schema name (letters, digits, underscore)"
        )
    if config.store.backend == "redis" and backend == "sqlite" and not settings.single_node:
        raise ConfigError(
            f"plugins.{NAME}.url: the spool is shared in Redis but the audience is an embedded "
            "SQLite file, so each node would keep its own audience; use a postgresql+asyncpg "
            f"URL, or set plugins.{NAME}.single_node = true if this is the only node"
        )
    if settings.keys:
        if not settings.base_url.startswith(("https://", "http://")):
            raise ConfigError(f"plugins.{NAME}.base_url: the pages' absolute URL (https://…)")
        if "@" not in settings.mail_from:
            raise ConfigError(f"plugins.{NAME}.mail_from: the From address of confirmation mails")
        if settings.signing_key and settings.signing_key not in settings.keys:
            raise ConfigError(f"plugins.{NAME}.signing_key: not one of plugins.{NAME}.keys")
        for key_id, secret in settings.keys.items():
            if len(secret.encode()) < 32:
                raise ConfigError(f"plugins.{NAME}.keys.{key_id}: at least 32 bytes")
    return settings
