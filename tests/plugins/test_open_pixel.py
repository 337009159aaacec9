"""Open tracking end to end: the pixel lands once before ``</body>`` in each recipient's copy
(whatever the transfer encoding, and after click tracking), and ``/t/o/<token>.gif`` serves a
GIF and records an ``opened`` event classified as human, privacy proxy or scanner."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gateway_plugins.open_pixel import GIF

from tests.conftest import GatewayThread, Sink
from tests.plugins.tracking_env import (
    ALL_PLUGINS,
    BASE_URL,
    Tracked,
    html_of,
    mime,
    tracked_gateways,
)


@pytest.fixture
def tracked_factory(
    tmp_path: Path, sink: Sink, gateway_factory: Callable[..., GatewayThread]
) -> Iterator[Callable[..., Tracked]]:
    yield from tracked_gateways(tmp_path, sink, gateway_factory)


PIXEL = re.compile(re.escape(BASE_URL) + r"/t/o/[A-Za-z0-9_-]+\.gif")
HTML = '<html><body><p><a href="https://example.com/a">a</a></p></body></html>\n'
HUMAN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Thunderbird/128.0"

Factory = Callable[..., Tracked]


@pytest.mark.parametrize("encoding", ["quoted-printable", "base64", "7bit"])
def test_one_pixel_per_recipient_before_the_end_of_the_body(
    tracked_factory: Factory, encoding: str
) -> None:
    t = tracked_factory()  # click tracking runs first: the pixel is added to its output
    t.send(mime(HTML, encoding=encoding, text="plain text"), "ann@example.org", "bob@example.org")
    assert t.deliver() == 2
    pixels = []
    for rcpt in ("ann@example.org", "bob@example.org"):
        html = html_of(t.received(rcpt).data)
        (pixel,) = PIXEL.findall(html)
        pixels.append(pixel)
        assert re.search(
            r'<img src="' + re.escape(pixel) + r'" width="1" height="1" alt=""[^>]*/>\s*</body>',
            html,
        )
        assert "/t/c/" in html, "links were tracked too"
        if encoding != "7bit":  # encoded lines stay within RFC 2045's 76 characters
            body = t.received(rcpt).data.split(b"\r\n\r\n", 1)[1]
            assert max(len(line) for line in body.split(b"\r\n")) <= 76
    assert pixels[0] != pixels[1]


def test_no_body_tag_puts_the_pixel_at_the_end(tracked_factory: Factory) -> None:
    t = tracked_factory(plugins="[plugins.open_pixel]\n")
    t.send(mime("<p>Hello</p>\n"), "ann@example.org")
    t.deliver()
    html = html_of(t.received("ann@example.org").data)
    assert html.startswith("<p>Hello</p>") and len(PIXEL.findall(html)) == 1


def test_the_pixel_is_a_gif_and_opens_are_classified(tracked_factory: Factory) -> None:
    t = tracked_factory(plugins="[plugins.open_pixel]\n")
    t.send(mime(HTML), "ann@example.org")
    t.deliver()
    (pixel,) = PIXEL.findall(html_of(t.received("ann@example.org").data))
    fetches = [
        ("scanner", HUMAN, 0),  # right after sending: a security scanner's prefetch
        ("proxy:apple-mpp", "Mozilla/5.0", 0),
        ("human", HUMAN, 60),
        ("proxy:gmail", "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 "
         "(via ggpht.com GoogleImageProxy)", 0),
        ("scanner", "python-requests/2.32", 0),
    ]  # fmt: skip
    for _, agent, wait in fetches:
        t.clock.advance(wait)
        response = t.get(pixel, headers={"User-Agent": agent})
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/gif"
        assert response.content == GIF
        assert "no-store" in response.headers["cache-control"]
    (message_id,) = t.message_ids()
    events = t.events(message_id)
    assert [(e.type, e.recipient, e.detail) for e in events] == [
        ("opened", "ann@example.org", label) for label, _, _ in fetches
    ]


def test_a_forged_pixel_is_served_but_not_counted(tracked_factory: Factory) -> None:
    t = tracked_factory(plugins="[plugins.open_pixel]\n")
    t.send(mime(HTML), "ann@example.org")
    t.deliver()
    (pixel,) = PIXEL.findall(html_of(t.received("ann@example.org").data))
    token = pixel.rpartition("/")[2].removesuffix(".gif")
    forged = pixel.replace(token, token[:20] + ("x" if token[20] != "x" else "y") + token[21:])
    response = t.get(forged, headers={"User-Agent": HUMAN})
    assert (response.status_code, response.content) == (200, GIF)
    (message_id,) = t.message_ids()
    assert t.events(message_id) == []


def test_senders_can_turn_opens_off_through_the_api(tracked_factory: Factory) -> None:
    from tests.plugins.tracking_env import API_KEY

    t = tracked_factory(plugins=ALL_PLUGINS)
    body = {
        "from": "app@example.com",
        "to": ["ann@example.org"],
        "subject": "Hi",
        "html": HTML,
        "tracking": {"opens": False},
    }
    response = t.http.post(
        "/v1/messages", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 202, response.text
    t.deliver()
    html = html_of(t.received("ann@example.org").data)
    assert PIXEL.findall(html) == [] and "/t/c/" in html
