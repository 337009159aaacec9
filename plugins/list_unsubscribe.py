"""One-click unsubscribe (RFC 8058) for bulk mail.

A bulk message gets, per recipient::

    List-Unsubscribe: <https://t.example.com/t/u/<token>>,
     <mailto:unsubscribe@example.com?subject=unsubscribe%20<token>>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

A message is *bulk* when any of these holds (checked in this order):

0. its message stream adds List-Unsubscribe: every ``broadcast`` stream, and a transactional
   stream with ``list_unsubscribe = true`` (``gateway/streams.py``);
1. it has ``X-Gateway-Bulk: yes`` (or ``no``, which wins over everything below); the gateway
   removes this header before sending;
2. ``all_bulk = true`` in ``[plugins.list_unsubscribe]``;
3. it has ``Precedence: bulk`` or ``Precedence: list``, or a ``List-Id`` header;
4. it came through the HTTP API with a tag listed in ``bulk_tags`` (default ``["bulk"]``).

A message that already has its own ``List-Unsubscribe`` is left as the application made it.

``POST /t/u/<token>`` with the body ``List-Unsubscribe=One-Click`` — what a mailbox provider
sends — adds the recipient to the tenant's suppression list for the message's stream only
(scope ``stream:<name>``, reason ``unsubscribe``, the ``List-Id`` in the detail) with no page
and no login: an opt-out from a newsletter never stops receipts or password resets. ``GET``
only shows a small page whose button makes that POST: link scanners fetch every URL, so a GET
must never unsubscribe.
"""

import logging
import re
from typing import Any
from urllib.parse import quote

import msgspec

from gateway.config import ConfigError, plugin_settings
from gateway.message import Delivery, Message
from gateway.plugin_manager import hookimpl
from gateway.streams import TRANSACTIONAL, settings_of
from gateway.suppressions import publish_added
from gateway.tracking import REFUSAL_STATUS, Tracker, headers_of, publish_tracked

NAME = "list_unsubscribe"
DEFAULT_ENABLED = False
"""Off unless ``[plugins.list_unsubscribe]`` exists: tracking needs ``[tracking]`` keys."""

log = logging.getLogger("gateway.plugins.list_unsubscribe")

_BULK_HEADER = re.compile(rb"^X-Gateway-Bulk:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", re.I | re.M)
_YES = (b"yes", b"true", b"1", b"on")
_LIST_ID = re.compile(rb"<([^<>\s]{1,255})>")
_MAILBOX = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}$")


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    mailto: str = ""
    """Mailbox for the ``mailto:`` alternative (the token goes in the subject); empty: none."""
    all_bulk: bool = False
    """Treat every message as bulk (a marketing-only gateway)."""
    bulk_tags: list[str] = msgspec.field(default_factory=lambda: ["bulk"])
    """HTTP API tags that make a message bulk."""


class ListUnsubscribe:
    def __init__(self, gateway: Any) -> None:
        self.settings = plugin_settings(gateway.config, NAME, Settings)
        if self.settings.mailto and not _MAILBOX.match(self.settings.mailto):
            raise ConfigError(f"plugins.{NAME}.mailto: not an email address")
        self.tracker = Tracker.of(gateway, NAME)
        self.bulk_tags = set(self.settings.bulk_tags)

    async def bulk(self, gateway: Any, headers: dict[bytes, bytes], message: Message) -> bool:
        if settings_of(gateway.config, message.tenant, message.stream).adds_list_unsubscribe:
            return True
        marked = headers.get(b"x-gateway-bulk")
        if marked is not None:
            return marked.lower() in _YES
        if self.settings.all_bulk:
            return True
        if headers.get(b"precedence", b"").lower() in (b"bulk", b"list") or b"list-id" in headers:
            return True
        if self.bulk_tags and message.source == "http":
            meta = await self.tracker.meta(gateway, message)
            return meta is not None and not self.bulk_tags.isdisjoint(meta.tags)
        return False

    async def render(self, gateway: Any, message: Message, delivery: Delivery) -> bytes | None:
        raw = message.raw
        blank = raw.find(b"\r\n\r\n")
        if blank < 0:
            return None
        head, rest = raw[: blank + 2], raw[blank + 2 :]
        headers = headers_of(head)
        bulk = await self.bulk(gateway, headers, message)
        if b"x-gateway-bulk" in headers:
            head = _BULK_HEADER.sub(b"", head)
        if not bulk or b"list-unsubscribe" in headers:
            return head + rest if b"x-gateway-bulk" in headers else None
        found = _LIST_ID.search(headers.get(b"list-id", b""))
        list_id = found.group(1).decode("ascii", "replace") if found else ""
        payload = self.tracker.payload(
            "unsubscribe", message, delivery, recipient=delivery.recipient, list_id=list_id
        )
        url = self.tracker.url("u", payload)
        value = f"<{url}>"
        if self.settings.mailto:
            token = url.rpartition("/")[2]
            value += (
                f",\r\n <mailto:{self.settings.mailto}?subject={quote('unsubscribe ' + token)}>"
            )
        added = (
            f"List-Unsubscribe: {value}\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        )
        return head + added.encode("ascii") + rest


def _state(gateway: Any) -> ListUnsubscribe:
    state: ListUnsubscribe = gateway.plugin_state[NAME]
    return state


@hookimpl
def gateway_configure(gateway: Any) -> None:
    gateway.plugin_state[NAME] = ListUnsubscribe(gateway)


@hookimpl
async def gateway_transform(gateway: Any, message: Message, delivery: Delivery) -> bytes | None:
    return await _state(gateway).render(gateway, message, delivery)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title></head>
<body style="font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em">
<h1 style="font-size:1.4em">{title}</h1>{body}</body></html>
"""
_FORM = """<p>Stop receiving these emails at this address?</p>
<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button></form>"""


def page(title: str, body: str) -> str:
    return _PAGE.format(title=title, body=body)


@hookimpl
def gateway_register_routes(gateway: Any) -> list[Any]:
    # litestar is imported only when the HTTP API is served; annotations stay real objects.
    from litestar import Request, Response, get, post
    from litestar.params import FromPath

    from gateway.store.base import Suppression, stream_scope
    from gateway.tokens import TokenError, TokenPayload

    tracker = _state(gateway).tracker
    no_store = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex"}

    def checked(token: str) -> TokenPayload | Response[str]:
        try:
            return tracker.verify(token, "unsubscribe")
        except TokenError as e:
            status = REFUSAL_STATUS[e.reason]
            body = page("Link not valid", "<p>This unsubscribe link is not valid.</p>")
            return Response(body, status_code=status, media_type="text/html", headers=no_store)

    @get("/t/u/{token:str}", include_in_schema=False)
    async def confirm(token: FromPath[str]) -> Response[str]:
        payload = checked(token)
        if isinstance(payload, Response):
            return payload
        return Response(page("Unsubscribe", _FORM), media_type="text/html", headers=no_store)

    @post("/t/u/{token:str}", include_in_schema=False, status_code=200)
    async def unsubscribe(token: FromPath[str], request: Request[Any, Any, Any]) -> Response[str]:
        payload = checked(token)
        if isinstance(payload, Response):
            return payload
        body = await request.body()
        # RFC 8058: the POST carries "List-Unsubscribe=One-Click" (form-urlencoded or
        # multipart); anything else is not a one-click request.
        if b"One-Click" not in body:
            return Response(
                page("Unsubscribe", "<p>Use the button to unsubscribe.</p>" + _FORM),
                status_code=400,
                media_type="text/html",
                headers=no_store,
            )
        now = gateway.clock.now()
        detail = "one-click" + (f"; list-id {payload.list_id}" if payload.list_id else "")
        entry = Suppression(
            tenant=payload.tenant,
            address=payload.recipient.strip(),
            reason="unsubscribe",
            created_at=now,
            detail=detail,
            scope=stream_scope(payload.stream or TRANSACTIONAL),
        )
        await gateway.store.add_suppressions([entry])
        try:
            cause = await publish_tracked(gateway, tracker, "unsubscribed", payload, detail=detail)
            await publish_added(gateway, entry, cause=cause)
        except Exception:  # the suppression is what matters; it is stored
            log.exception("recording an unsubscribe of %s failed", payload.message_id)
        log.info(
            "unsubscribed tenant=%s stream=%s rcpt=%s %s",
            payload.tenant,
            payload.stream or TRANSACTIONAL,
            payload.recipient,
            detail,
        )
        done = page("Unsubscribed", "<p>You will not receive these emails any more.</p>")
        return Response(done, media_type="text/html", headers=no_store)

    return [confirm, unsubscribe]
