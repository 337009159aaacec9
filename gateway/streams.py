"""Message streams: every message belongs to one stream of its tenant.

``transactional`` always exists (password resets, receipts); a tenant adds named streams in
``[tenants.<t>.streams.<name>]``, usually of kind ``broadcast`` (newsletters, campaigns), as
Postmark's message streams and SendGrid's IP pools do. A stream decides:

* its **kind**: ``transactional`` deliveries are claimed before ``broadcast`` ones, so a
  campaign draining never delays a password reset (``Store.claim``);
* whether **List-Unsubscribe** is added (always for ``broadcast``);
* the **tracking** defaults (``opens`` / ``clicks``), which a sender may still switch off per
  message through the HTTP API;
* its own **providers** (routing), so marketing reputation never drags transactional mail down;
* its **warming pool**: only IPs of that pool send it (``plugins/warming.py``).

A one-click unsubscribe from a message of a broadcast stream suppresses the recipient for that
stream only (``docs/plugins/suppression.md``). How a message picks its stream: the HTTP API's
``stream`` field; for SMTP, an ``X-Gateway-Stream`` header (removed before sending), else the
SMTP user's ``stream``, else the listener's, else ``transactional``. A stream the tenant does
not have refuses the message (``550 5.7.1``, HTTP 422) rather than sending it in another
stream with other unsubscribe and routing rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from gateway.config import Config

TRANSACTIONAL = "transactional"
STREAM_HEADER = b"x-gateway-stream"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_HEADER_LINE = re.compile(rb"^X-Gateway-Stream:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", re.I | re.M)

StreamKind = Literal["transactional", "broadcast"]


class StreamTracking(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    opens: bool = True
    clicks: bool = True


class StreamSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """``[tenants.<t>.streams.<name>]``."""

    kind: StreamKind = "broadcast"
    list_unsubscribe: bool | None = None
    """Add RFC 8058 List-Unsubscribe headers; always on for ``broadcast`` (default: the kind)."""
    tracking: StreamTracking = msgspec.field(default_factory=StreamTracking)
    """Whether the tracking plugins (when enabled) track opens and clicks in this stream."""
    providers: list[str] = msgspec.field(default_factory=list)
    """This stream's own providers, in order; empty: ``[[routes]]`` / ``delivery.providers``."""
    pool: str = ""
    """Warming pool (``[ips.<a>] pool``) this stream sends from; empty: the domain's pool."""

    @property
    def broadcast(self) -> bool:
        return self.kind == "broadcast"

    @property
    def adds_list_unsubscribe(self) -> bool:
        return self.broadcast or bool(self.list_unsubscribe)


DEFAULT = StreamSection(kind="transactional")
"""The ``transactional`` stream when a tenant does not configure it."""


def stream_section(config: Config, tenant: str, name: str) -> StreamSection | None:
    """The settings of ``tenant``'s stream ``name``; ``None`` if it has no such stream."""
    section = config.tenants.get(tenant)
    found = section.streams.get(name) if section is not None else None
    if found is None and name == TRANSACTIONAL:
        return DEFAULT
    return found


def settings_of(config: Config, tenant: str, name: str) -> StreamSection:
    """Like :func:`stream_section`, but a stream removed from the configuration since the
    message was accepted falls back to the transactional defaults."""
    return stream_section(config, tenant, name) or DEFAULT


def take_header(raw: bytes) -> tuple[bytes, str | None]:
    """``raw`` without its ``X-Gateway-Stream`` header(s), and the first one's value."""
    head_end = raw.find(b"\r\n\r\n")
    head = raw if head_end < 0 else raw[: head_end + 2]
    found = _HEADER_LINE.search(head)
    if found is None:
        return raw, None
    value = found.group().partition(b":")[2].strip().decode("ascii", "replace").lower()
    head = _HEADER_LINE.sub(b"", head)
    return (head + raw[head_end + 2 :] if head_end >= 0 else head), value


def check_streams(config: Config, fail: Callable[[tuple[str | int, ...], str], None]) -> None:
    """Configuration errors in ``[tenants.*.streams]`` and the stream defaults."""
    for tenant_name, tenant in config.tenants.items():
        for name, stream in tenant.streams.items():
            path: tuple[str | int, ...] = ("tenants", tenant_name, "streams", name)
            if not NAME.match(name):
                fail(path, "a stream name is lower-case letters, digits, '-' and '_'")
            if name == TRANSACTIONAL and stream.kind != "transactional":
                fail((*path, "kind"), "the transactional stream is of kind 'transactional'")
            if stream.kind == "broadcast" and stream.list_unsubscribe is False:
                fail((*path, "list_unsubscribe"), "a broadcast stream always has List-Unsubscribe")
            for i, provider in enumerate(stream.providers):
                if provider not in config.providers:
                    fail((*path, "providers", i), f"no provider named {provider!r} in [providers]")
        for i, user in enumerate(tenant.smtp_users):
            if user.stream and stream_section(config, tenant_name, user.stream) is None:
                fail(
                    ("tenants", tenant_name, "smtp_users", i, "stream"),
                    f"tenant {tenant_name!r} has no stream {user.stream!r}",
                )
    for i, listener in enumerate(config.smtp.listeners):
        if listener.stream and not NAME.match(listener.stream):
            fail(("smtp", "listeners", i, "stream"), f"not a stream name: {listener.stream!r}")
