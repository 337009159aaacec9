"""Click tracking: rewrite each recipient's http(s) links to ``<base_url>/t/c/<token>``.

The message is parsed once (per spool copy): the HTML part is found, its transfer encoding
undone, and its links located, giving a template of byte chunks. Each recipient then costs one
signed token per link, a join and the re-encoding (quoted-printable or base64, in C).

Left alone: ``mailto:``, ``tel:``, ``#anchors``, relative and other non-http(s) links, links
already pointing at the tracking base URL, and links marked to skip — an ``<a>`` with the
attribute ``data-gateway-notrack`` or the class ``gateway-notrack``. See
``docs/plugins/click_tracking.md``.

``GET /t/c/<token>`` (and ``HEAD``) publishes a ``clicked`` event and answers ``302`` to the
signed URL; a token that is not genuine, is cut short or has expired gets ``400``/``404`` and
no ``Location``: the endpoint is never an open redirect.

Every click is classified ``human`` or ``machine`` from these signals (any one makes it a
machine's; see ``docs/plugins/click_tracking.md`` for where each comes from):

* ``prefetch`` — a ``HEAD`` request, or a prefetch header (``Sec-Purpose``/``Purpose``/
  ``X-Moz: prefetch``, ``X-Purpose: preview``);
* ``immediate`` — within ``immediate_window`` of the link being made (the send);
* ``burst`` — the ``burst_links``-th distinct link of one recipient's copy in the same second;
* ``scanner-agent`` — no user agent, or one of an HTTP library or mail-security product;
* ``scanner-network`` — a client address in ``scanner_networks``;
* ``honeypot`` — the hidden link no reader can see or click (``honeypot = true``), and
  ``after-honeypot`` — any click on that recipient's copy within ``honeypot_window`` after it.

Machine clicks still redirect — a link never breaks — but are labelled, and reputation's
engagement does not count them.
"""

import collections
import hashlib
import html
import ipaddress
import logging
import re
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

from gateway.config import ConfigError, plugin_settings
from gateway.durations import parse_duration
from gateway.message import Delivery, Message
from gateway.plugin_manager import hookimpl
from gateway.tracking import (
    PLAIN_ENCODINGS,
    REFUSAL_STATUS,
    SCANNER_AGENTS,
    SMTP_LINE_LIMIT,
    SOFT_BREAK,
    Part,
    Tracker,
    decode_body,
    encode_body,
    longest_line,
    publish_tracked,
    qp_segment,
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
    immediate_window: str = "10s"
    """A click this soon after the send is a security scanner's."""
    burst_links: int = 2
    """Distinct links of one recipient's copy clicked in one second that make a burst (0: off)."""
    scanner_networks: list[str] = msgspec.field(default_factory=list)
    """Client addresses (CIDRs) of link scanners, e.g. your mail-security vendor's."""
    honeypot: bool = False
    """Add a hidden link (first in the HTML body) that only machines follow."""
    honeypot_window: str = "60s"
    """After the hidden link is followed, this recipient's clicks this soon after are machines'."""


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
    trap: int = -1
    """Index in ``urls`` of the hidden honeypot link, or -1."""

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


_BODY_TAG = re.compile(rb"<body[^>]*>", re.I)
_TRAP = (
    b'<a data-gateway-trap aria-hidden="true" tabindex="-1" '
    b'style="display:none!important;font-size:0;line-height:0;max-height:0" href="{href}"></a>'
)


def with_trap(
    content: bytes, spans: list[Span], charset: str, own_prefix: str
) -> tuple[bytes, list[Span], int]:
    """``content`` with a hidden link to the first link's target after ``<body>``, its spans,
    and the hidden link's index among them."""
    found = _BODY_TAG.search(content)
    at = found.end() if found else 0
    href = html.escape(spans[0][2], quote=True).encode("ascii")
    content = content[:at] + _TRAP.replace(b"{href}", href) + content[at:]
    spans = html_links(content, charset, own_prefix)
    trap = next(i for i, (start, _, _) in enumerate(spans) if start >= at)
    return content, spans, trap


PartKey = tuple[bytes, bytes, bytes, bytes, str, int, bool]
"""A part's encoded body, content type, transfer encoding and charset, what sizes a token (the
tenant and the length of the message id), and whether it gets the honeypot link."""


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
    trapped = not settings.honeypot
    for part in text_parts(raw):
        if part.content_type != b"text/html" and not settings.rewrite_text:
            continue
        header = raw[part.header_start : part.body_start]
        body = raw[part.body_start : part.body_end]
        trap = not trapped and part.content_type == b"text/html"
        key: PartKey = (
            body,
            part.content_type,
            part.encoding,
            part.charset,
            str(sample.tenant),
            len(sample.message_id),
            trap,
        )
        if parts is not None and key in parts:
            found = parts[key]
        else:
            found = _part_template(part, body, settings, tracker, sample, trap)
            if parts is not None and len(body) <= _CACHED_PART_BYTES:
                if len(parts) >= _CACHE_SIZE:
                    parts.clear()
                parts[key] = found
        if found is None:
            continue
        trapped = trapped or trap
        if found.encoding != part.encoding:
            header = with_encoding(header, found.encoding)
        pieces += [raw[done : part.header_start], header, found]
        done = part.body_end
    if pieces:
        pieces.append(raw[done:])
    return Template(raw, pieces)


def _part_template(
    part: Part, body: bytes, settings: Settings, tracker: Tracker, sample: Any, trap: bool
) -> PartTemplate | None:
    """One part's template (its ``encoding`` is the one to declare in the part's header), or
    ``None`` when it has no link to track. With ``trap``, an HTML part gets the hidden link."""
    finder = html_links if part.content_type == b"text/html" else text_links
    content = decode_body(body, part.encoding)
    if content is None:
        return None
    charset = part.charset.decode("ascii", "replace")
    own_prefix = tracker.base_url + "/t/"
    spans = finder(content, charset, own_prefix)
    if not spans:
        return None
    trap_index = -1
    if trap:
        content, spans, trap_index = with_trap(content, spans, charset, own_prefix)
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
    return PartTemplate(chunks, urls, encoding, tail, encoded, trap_index)


# --- hooks -------------------------------------------------------------------------------------


# --- click classification ----------------------------------------------------------------------

_PREFETCH = re.compile(r"prefetch|preview", re.I)


class ClickClassifier:
    """Which machine signals a click shows (empty: a human's). Burst and honeypot state live
    in store counters, so every worker and node sees the same recipient's clicks."""

    def __init__(self, settings: Settings) -> None:
        try:
            self.immediate = parse_duration(settings.immediate_window)
            self.honeypot_window = parse_duration(settings.honeypot_window)
        except ValueError as e:
            raise ConfigError(f"plugins.{NAME}: {e}") from None
        if settings.burst_links < 0:
            raise ConfigError(f"plugins.{NAME}.burst_links: must be 0 (off) or more")
        self.burst_links = settings.burst_links
        self.networks = []
        for i, network in enumerate(settings.scanner_networks):
            try:
                self.networks.append(ipaddress.ip_network(network, strict=False))
            except ValueError:
                raise ConfigError(
                    f"plugins.{NAME}.scanner_networks[{i}]: not an IP network: {network!r}"
                ) from None

    async def signals(
        self, gateway: Any, payload: Any, method: str, headers: Any, client: str
    ) -> list[str]:
        now = gateway.clock.now()
        found = []
        purpose = " ".join(
            headers.get(h, "") for h in ("sec-purpose", "purpose", "x-moz", "x-purpose")
        )
        if method == "HEAD" or _PREFETCH.search(purpose):
            found.append("prefetch")
        if now - payload.issued_at < self.immediate:
            found.append("immediate")
        agent = headers.get("user-agent", "")
        if not agent.strip() or SCANNER_AGENTS.search(agent):
            found.append("scanner-agent")
        if self.networks and self._in_networks(client):
            found.append("scanner-network")
        found += await self._shared_signals(gateway.store, payload, now)
        return found

    def _in_networks(self, client: str) -> bool:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    async def _shared_signals(self, store: Any, payload: Any, now: float) -> list[str]:
        found = []
        copy = f"clicks:{payload.message_id}:{payload.delivery_id}"
        if payload.trap:
            found.append("honeypot")
            await store.add_to_counter(
                f"{copy}:trap", 1, expires_at=now + self.honeypot_window, now=now
            )
        elif await store.counter(f"{copy}:trap", now):
            found.append("after-honeypot")
        if self.burst_links:
            second = f"{copy}:{int(now)}"
            url = hashlib.sha256(payload.url.encode()).hexdigest()[:16]
            if await store.first_sighting(f"{second}:{url}", expires_at=now + 2, now=now):
                links = await store.add_to_counter(second, 1, expires_at=now + 2, now=now)
            else:
                links = await store.counter(second, now)
            if links >= self.burst_links:
                found.append("burst")
        return found


class ClickTracking:
    def __init__(self, gateway: Any) -> None:
        self.settings = plugin_settings(gateway.config, NAME, Settings)
        self.classifier = ClickClassifier(self.settings)
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
        tokens: dict[tuple[str, bool], bytes] = {}
        out = []
        for piece in template.pieces:
            if isinstance(piece, bytes):
                out.append(piece)
                continue
            links = []
            for i, url in enumerate(piece.urls):
                trap = i == piece.trap
                link = tokens.get((url, trap))
                if link is None:
                    payload = msgspec.structs.replace(base, url=url, trap=trap)
                    link = tokens[url, trap] = self.tracker.url("c", payload).encode()
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
    from litestar import Request, route
    from litestar.params import FromPath
    from litestar.response import Redirect

    from gateway.api.problems import Problem
    from gateway.tokens import TokenError

    state = _state(gateway)
    tracker = state.tracker

    @route("/t/c/{token:str}", http_method=["GET", "HEAD"], include_in_schema=False)
    async def click(token: FromPath[str], request: Request[Any, Any, Any]) -> Redirect:
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
            signals = await state.classifier.signals(
                gateway,
                payload,
                request.method,
                request.headers,
                request.client.host if request.client else "",
            )
            await publish_tracked(
                gateway,
                tracker,
                "clicked",
                payload,
                url=url,
                classification="machine" if signals else "human",
                signals=tuple(signals),
            )
        except Exception:  # the reader must still reach the link
            log.exception("recording a click on %s failed", payload.message_id)
        return Redirect(
            path=url,
            status_code=302,
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )

    return [click]
