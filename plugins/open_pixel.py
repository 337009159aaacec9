"""Open tracking: a 1x1 image ``<base_url>/t/o/<token>.gif`` before ``</body>``, and the
endpoint that serves it and records an ``opened`` event, classified:

* ``proxy:gmail`` / ``proxy:yahoo`` — the mailbox provider's image proxy fetched it (its
  user agent says so). Gmail fetches when the reader opens the message, so this is usually a
  real open, but the reader's own client is unknown.
* ``proxy:apple-mpp`` — Apple Mail Privacy Protection: Apple fetches every image as soon as
  the message reaches the device, opened or not. Recognised by its bare ``Mozilla/5.0`` user
  agent, or a client address in ``proxy_networks``. Not evidence of a human.
* ``scanner`` — a security scanner prefetching: the fetch came within ``scanner_window`` of
  the message being sent, or the user agent is an HTTP library or a known mail-security
  product.
* ``human`` — anything else.

The pixel goes into the first inline ``text/html`` part only, once. See
``docs/plugins/open_pixel.md``.
"""

import binascii
import ipaddress
import logging
import re
from typing import Any

import msgspec

from gateway.config import ConfigError, plugin_settings
from gateway.durations import parse_duration
from gateway.message import Delivery, Message
from gateway.plugin_manager import hookimpl
from gateway.tracking import (
    SCANNER_AGENTS,
    SOFT_BREAK,
    Tracker,
    decode_body,
    encode_body,
    publish_tracked,
    switched_off,
    text_parts,
)

NAME = "open_pixel"
DEFAULT_ENABLED = False
"""Off unless ``[plugins.open_pixel]`` exists: tracking needs ``[tracking]`` keys."""

log = logging.getLogger("gateway.plugins.open_pixel")

GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
"""A transparent 1x1 GIF (43 bytes)."""

_BODY_END = re.compile(rb"</body\s*>", re.I)

PROXY_AGENTS: dict[str, str] = {
    "GoogleImageProxy": "proxy:gmail",
    "ggpht.com": "proxy:gmail",
    "YahooMailProxy": "proxy:yahoo",
}


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    scanner_window: str = "10s"
    """An open this soon after sending is a security scanner's prefetch."""
    proxy_networks: list[str] = msgspec.field(default_factory=list)
    """Client addresses (CIDRs) of privacy proxies, e.g. Apple's published egress ranges."""


def classify(user_agent: str, client: str, age: float, window: float, networks: list[Any]) -> str:
    """``human``, ``proxy:<which>`` or ``scanner`` (see the module docstring)."""
    for hint, label in PROXY_AGENTS.items():
        if hint in user_agent:
            return label
    if user_agent.strip() == "Mozilla/5.0":
        return "proxy:apple-mpp"
    if networks and client:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            address = None
        if address is not None and any(address in net for net in networks):
            return "proxy:apple-mpp"
    if age < window or not user_agent or SCANNER_AGENTS.search(user_agent):
        return "scanner"
    return "human"


class OpenPixel:
    def __init__(self, gateway: Any) -> None:
        settings = plugin_settings(gateway.config, NAME, Settings)
        try:
            self.window = parse_duration(settings.scanner_window)
        except ValueError as e:
            raise ConfigError(f"plugins.{NAME}.scanner_window: {e}") from None
        self.networks = []
        for i, network in enumerate(settings.proxy_networks):
            try:
                self.networks.append(ipaddress.ip_network(network, strict=False))
            except ValueError:
                raise ConfigError(
                    f"plugins.{NAME}.proxy_networks[{i}]: not an IP network: {network!r}"
                ) from None
        self.tracker = Tracker.of(gateway, NAME)

    def render(self, message: Message, delivery: Delivery) -> bytes | None:
        raw = message.raw
        for part in text_parts(raw):
            if part.content_type != b"text/html":
                continue
            body = raw[part.body_start : part.body_end]
            url = self.tracker.url("o", self.tracker.payload("open", message, delivery), ".gif")
            pixel = (
                f'<img src="{url}" width="1" height="1" alt="" border="0" '
                'style="display:block;width:1px;height:1px;border:0" />'
            ).encode()
            if part.encoding == b"quoted-printable":
                ends = list(_BODY_END.finditer(body))
                if ends:
                    # Spliced in at soft line breaks: no decoding and re-encoding per recipient.
                    at = part.body_start + ends[-1].start()
                    spliced = SOFT_BREAK + binascii.b2a_qp(pixel, istext=True) + SOFT_BREAK
                    return raw[:at] + spliced + raw[at:]
            content = decode_body(body, part.encoding)
            if content is None:
                return None
            ends = list(_BODY_END.finditer(content))
            at = ends[-1].start() if ends else len(content.rstrip(b"\r\n"))
            # On a line of its own: an unencoded body must keep lines under 998 octets.
            content = content[:at] + b"\r\n" + pixel + b"\r\n" + content[at:]
            encoded = encode_body(content, part.encoding)
            if part.encoding == b"base64":
                encoded = encoded.removesuffix(b"\r\n") + (
                    b"\r\n" if body.endswith(b"\r\n") else b""
                )
            return raw[: part.body_start] + encoded + raw[part.body_end :]
        return None


def _state(gateway: Any) -> OpenPixel:
    state: OpenPixel = gateway.plugin_state[NAME]
    return state


@hookimpl
def gateway_configure(gateway: Any) -> None:
    gateway.plugin_state[NAME] = OpenPixel(gateway)


@hookimpl
async def gateway_transform(gateway: Any, message: Message, delivery: Delivery) -> bytes | None:
    state = _state(gateway)
    if await switched_off(state.tracker, gateway, message, "opens"):
        return None
    return state.render(message, delivery)


@hookimpl
def gateway_register_routes(gateway: Any) -> list[Any]:
    # litestar is imported only when the HTTP API is served; annotations stay real objects.
    from litestar import Request, Response, get
    from litestar.params import FromPath

    from gateway.tokens import TokenError

    state = _state(gateway)
    headers = {
        "Cache-Control": "no-store, no-cache, must-revalidate, private",
        "Pragma": "no-cache",
    }

    @get("/t/o/{name:str}", include_in_schema=False)
    async def pixel(name: FromPath[str], request: Request[Any, Any, Any]) -> Response[bytes]:
        # Always the image, so a stale or mangled link shows nothing broken; only a genuine
        # token is counted.
        try:
            payload = state.tracker.verify(name.removesuffix(".gif"), "open")
        except TokenError as e:
            log.info("open pixel refused: %s", e.reason)
            return Response(GIF, media_type="image/gif", headers=headers)
        now = gateway.clock.now()
        kind = classify(
            request.headers.get("user-agent", ""),
            request.client.host if request.client else "",
            now - payload.issued_at,
            state.window,
            state.networks,
        )
        try:
            await publish_tracked(
                gateway, state.tracker, "opened", payload, detail=kind, classification=kind
            )
        except Exception:
            log.exception("recording an open of %s failed", payload.message_id)
        return Response(GIF, media_type="image/gif", headers=headers)

    return [pixel]
