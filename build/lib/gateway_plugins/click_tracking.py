"""Click tracking: rewrite each recipient's http(s) links to ``<base_url>/t/c/<token>``.

The message is parsed once (per spool copy): the HTML part is found, its transfer encoding
undone, and its links located, giving a template of byte chunks. Each recipient then costs one
signed token per link, a join and the re-encoding (quoted-printable or base64, in C).

Left alone: ``mailto:``, ``tel:``, ``#anchors``, relative and other non-http(s) links, links
already pointing at the tracking base URL, and links marked to skip — an ``<a>`` with the
attribute ``data-gateway-notrack`` or the class ``gateway-notrack``. See
``docs/plugins/click_tracking.md``.

``GET /t/c/<token>`` records a ``clicked`` event and answers ``302`` to the signed URL; a
token that is not genuine, is cut short or has expired gets ``400``/``404`` and no
``Location``: the endpoint is never an open redirect.
"""

import collections
import html
import logging
import re
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

from gateway.config import plugin_settings
from gateway.message import Delivery, Message
from gateway.plugin_manager import hookimpl
from gateway.tracking import (
    PLAIN_ENCODINGS,
    REFUSAL_STATUS,
    SMTP_LINE_LIMIT,
    SOFT_BREAK,
    Part,
    Tracker,
    decode_body,
    encode_body,
    longest_line,
    qp_segment,
    recipient_of,
    switched_off,
    text_parts,
    with_encoding,
)

NAME = "click_tracking"
DEFAULT_ENABLED = False
"""Off unless ``[plugins.click_tracking]`` exists: tracking needs ``[tracking]`` keys."""

log = logging.getLogger("gateway.plugins.click_tracking")

_CACHE_SIZE = 256
_CACHED_PART_BYTES = 256 * 1024
"""Parts up to this size are remembered by content (at most ``_CACHE_SIZE`` of them)."""


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    rewrite_text: bool = False
    """Also rewrite bare http(s) URLs in ``text/plain`` parts."""


# --- finding links ---------------------------------------------------------------------------

_A_TAG = re.compile(rb"<(?:a|area)\s[^>]*>", re.I)
_HREF = re.compile(rb"""\shref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.I)
_NOTRACK = re.compile(
    rb"""\sdata-gateway-notrack\b|\sclass\s*=\s*["']?[^"'>]*\bgateway-notrack\b""", re.I
)
_TEXT_URL = re.compile(rb"""https?://[^\s<>"'\x00-\x1f\x7f]+""", re.I)
_URL_SAFE = "!#$%&'()*+,-./:;=?@[]_~"

Span = tuple[int, int, str]
"""Start and end of a link's text in the decoded part, and the URL to sign."""


def _target(value: str, own_prefix: str) -> str | None:
    """The URL to track for an attribute value or text URL; ``None`` leaves it alone."""
    url = value.strip()
    if not url[:8].lower().startswith(("http://", "https://")) or url.startswith(own_prefix):
        return None
    if url.isascii() and url.isprintable() and " " not in url:
        return url
    if not url.isprintable():
        return None
    try:  # internationalized: the Location header must be ASCII
        split = urlsplit(url)
        netloc = split.netloc.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return None
    path, query, fragment = (quote(p, safe=_URL_SAFE) for p in split[2:])
    return urlunsplit((split.scheme, netloc, path, query, fragment))


def html_links(content: bytes, charset: str, own_prefix: str) -> list[Span]:
    spans = []
    for tag in _A_TAG.finditer(content):
        if _NOTRACK.search(tag.group()):
            continue
        href = _HREF.search(tag.group())
        if href is None:
            continue
        group = next(g for g in (1, 2, 3) if href.group(g) is not None)
        raw_value = href.group(group)
        url = _target(html.unescape(raw_value.decode(charset, "replace")), own_prefix)
        if url is not None:
            start = tag.start() + href.start(group)
            spans.append((start, start + len(raw_value), url))
    return spans


def text_links(content: bytes, charset: str, own_prefix: str) -> list[Span]:
    spans = []
    for found in _TEXT_URL.finditer(content):
        raw_value = found.group().rstrip(b".,;:!?)]}'")
        url = _target(raw_value.decode(charset, "replace"), own_prefix)
        if url is not None:
            spans.append((found.start(), found.start() + len(raw_value), url))
    return spans


# --- the per-message template ------------------------------------------------------------------


class PartTemplate(NamedTuple):
    chunks: list[bytes]
    """The decoded part split around its links: ``len(urls) + 1`` pieces."""
    urls: list[str]
    encoding: bytes
    tail: bytes
    """CRLF to restore after a base64 body, which re-encoding would otherwise drop or add."""
    encoded: list[bytes] | None = None
    """Quoted-printable: each chunk encoded on its own, once; a recipient's links are
    spliced in between at soft line breaks, so no per-recipient encoding is needed."""

    def render(self, links: list[bytes]) -> bytes:
        if self.encoded is not None:
            spliced = [SOFT_BREAK + qp_segment(link) + SOFT_BREAK for link in links]
            return (
                b"".join(
                    [piece for pair in zip(self.encoded, spliced, strict=False) for piece in pair]
                )
                + self.encoded[-1]
            )
        content = b"".join(
            [piece for pair in zip(self.chunks, links, strict=False) for piece in pair]
        )
        encoded = encode_body(content + self.chunks[-1], self.encoding)
        if self.encoding == b"base64":
            encoded = encoded.removesuffix(b"\r\n") + self.tail
        return encoded


class Template(NamedTuple):
    raw: bytes
    pieces: list[bytes | PartTemplate]
    """Unchanged bytes and parts to render, in order; empty when there is nothing to track."""


PartKey = tuple[bytes, bytes, bytes, bytes, str, int]
"""A part's encoded body, content type, transfer encoding and charset, and what sizes a
token: the tenant and the length of the message id."""


def build_template(
    raw: bytes,
    settings: Settings,
    tracker: Tracker,
    sample: Any,
    parts: dict[PartKey, PartTemplate | None] | None = None,
) -> Template:
    """Parse ``raw`` once. ``sample`` (a payload made for this message) sizes the tracking
    URLs, so an unencoded part whose lines would grow past 998 octets is switched to
    quoted-printable here, once, rather than per recipient. ``parts`` caches each part's
    result by its bytes: bulk mail sent one message per recipient repeats the same body."""
    pieces: list[bytes | PartTemplate] = []
    done = 0
    for part in text_parts(raw):
        if part.content_type != b"text/html" and not settings.rewrite_text:
            continue
        header = raw[part.header_start : part.body_start]
        body = raw[part.body_start : part.body_end]
        key = (body, part.content_type, part.encoding, part.charset)
        key += (sample.tenant, len(sample.message_id))
        found = parts.get(key, False) if parts is not None else False
        if found is False:
            found = _part_template(part, body, settings, tracker, sample)
            if parts is not None and len(body) <= _CACHED_PART_BYTES:
                if len(parts) >= _CACHE_SIZE:
                    parts.clear()
                parts[key] = found
        if found is None:
            continue
        if found.encoding != part.encoding:
            header = with_encoding(header, found.encoding)
        pieces += [raw[done : part.header_start], header, found]
        done = part.body_end
    if pieces:
        pieces.append(raw[done:])
    return Template(raw, pieces)


def _part_template(
    part: Part, body: bytes, settings: Settings, tracker: Tracker, sample: Any
) -> PartTemplate | None:
    """One part's template (its ``encoding`` is the one to declare in the part's header), or
    ``None`` when it has no link to track."""
    finder = html_links if part.content_type == b"text/html" else text_links
    content = decode_body(body, part.encoding)
    if content is None:
        return None
    spans = finder(content, part.charset.decode("ascii", "replace"), tracker.base_url + "/t/")
    if not spans:
        return None
    chunks, at = [], 0
    for start, end, _ in spans:
        chunks.append(content[at:start])
        at = end
    chunks.append(content[at:])
    urls = [url for _, _, url in spans]
    encoding = part.encoding
    if encoding in PLAIN_ENCODINGS:
        links = [tracker.url("c", msgspec.structs.replace(sample, url=u)).encode() for u in urls]
        probe = PartTemplate(chunks, urls, encoding, b"")
        if longest_line(probe.render(links)) > SMTP_LINE_LIMIT - 20:
            encoding = b"quoted-printable"
    tail = b"\r\n" if body.endswith(b"\r\n") else b""
    encoded = None
    if encoding == b"quoted-printable":
        encoded = [encode_body(chunk, encoding) for chunk in chunks]
    return PartTemplate(chunks, urls, encoding, tail, encoded)


# --- hooks -------------------------------------------------------------------------------------


class ClickTracking:
    def __init__(self, gateway: Any) -> None:
        self.settings = plugin_settings(gateway.config, NAME, Settings)
        self.tracker = Tracker.of(gateway, NAME)
        self._templates: collections.OrderedDict[str, Template] = collections.OrderedDict()
        self._parts: dict[PartKey, PartTemplate | None] = {}

    def template(self, message: Message, delivery: Delivery) -> Template:
        cached = self._templates.get(message.id)
        if cached is not None and (cached.raw is message.raw or cached.raw == message.raw):
            return cached
        sample = self.tracker.payload("click", message, delivery)
        sample = msgspec.structs.replace(sample, delivery_id=2**63 - 1)
        template = build_template(message.raw, self.settings, self.tracker, sample, self._parts)
        self._templates[message.id] = template
        if len(self._templates) > _CACHE_SIZE:
            self._templates.popitem(last=False)
        return template

    def render(self, message: Message, delivery: Delivery) -> bytes | None:
        template = self.template(message, delivery)
        if not template.pieces:
            return None
        base = self.tracker.payload("click", message, delivery)
        tokens: dict[str, bytes] = {}
        out = []
        for piece in template.pieces:
            if isinstance(piece, bytes):
                out.append(piece)
                continue
            links = []
            for url in piece.urls:
                link = tokens.get(url)
                if link is None:
                    payload = msgspec.structs.replace(base, url=url)
                    link = tokens[url] = self.tracker.url("c", payload).encode()
                links.append(link)
            out.append(piece.render(links))
        return b"".join(out)


def _state(gateway: Any) -> ClickTracking:
    state: ClickTracking = gateway.plugin_state[NAME]
    return state


@hookimpl
def gateway_configure(gateway: Any) -> None:
    gateway.plugin_state[NAME] = ClickTracking(gateway)


@hookimpl
async def gateway_transform(gateway: Any, message: Message, delivery: Delivery) -> bytes | None:
    state = _state(gateway)
    if await switched_off(state.tracker, gateway, message, "clicks"):
        return None
    return state.render(message, delivery)


@hookimpl
def gateway_register_routes(gateway: Any) -> list[Any]:
    # litestar is imported only when the HTTP API is served; annotations below are real
    # objects (no ``from __future__ import annotations``) so litestar can read them.
    from litestar import get
    from litestar.params import FromPath
    from litestar.response import Redirect

    from gateway.api.problems import Problem
    from gateway.store.base import MessageEvent
    from gateway.tokens import TokenError

    tracker = _state(gateway).tracker

    @get("/t/c/{token:str}", include_in_schema=False)
    async def click(token: FromPath[str]) -> Redirect:
        try:
            payload = tracker.verify(token, "click")
        except TokenError as e:
            raise Problem(
                REFUSAL_STATUS[e.reason],
                "invalid-link",
                "Invalid link",
                f"link refused: {e.reason}",
            ) from None
        url = payload.url
        if not url.isascii() or not url.isprintable() or " " in url:  # never from our signer
            raise Problem(404, "invalid-link", "Invalid link", "link refused: bad-target")
        try:
            recipient = await recipient_of(gateway, payload)
            await gateway.store.record_event(
                MessageEvent(
                    message_id=payload.message_id,
                    at=gateway.clock.now(),
                    type="clicked",
                    recipient=recipient,
                    detail=url,
                )
            )
        except Exception:  # the reader must still reach the link
            log.exception("recording a click on %s failed", payload.message_id)
        return Redirect(
            path=url,
            status_code=302,
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )

    return [click]
