"""Click tracking end to end: SMTP (and the HTTP API) in, rewritten links at the real sink, and
the ``/t/c/<token>`` endpoint over real HTTP — 302 and a ``clicked`` event for a genuine link,
400/404 and no ``Location`` for anything else."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.tokens import TokenPayload, TokenSigner, kind_code
from tests.conftest import GatewayThread, Sink
from tests.plugins.tracking_env import (
    API_KEY,
    BASE_URL,
    KEY1,
    KEY2,
    Tracked,
    html_of,
    mime,
    text_of,
    tracked_gateways,
)


@pytest.fixture
def tracked_factory(
    tmp_path: Path, sink: Sink, gateway_factory: Callable[..., GatewayThread]
) -> Iterator[Callable[..., Tracked]]:
    yield from tracked_gateways(tmp_path, sink, gateway_factory)


HTML = """<html><body>
<p><a href="https://shop.example.com/sale?a=1&amp;b=2">Sale</a>
<a class="btn" href='http://example.com/plain'>Plain</a>
<a href="mailto:help@example.com">Mail us</a> <a href="tel:+4912345">Call</a>
<a href="#top">Top</a> <a href="/relative">Relative</a>
<a data-gateway-notrack href="https://example.com/private">Private</a>
<a class="button gateway-notrack" href="https://example.com/also-private">Also</a>
<a href="https://example.com/caf\u00e9">Caf\u00e9</a></p>
</body></html>
"""
TRACKED = re.compile(re.escape(BASE_URL) + r"/t/c/[A-Za-z0-9_-]+")

ClickFactory = Callable[..., Tracked]


def click_links(html: str) -> list[str]:
    return TRACKED.findall(html)


@pytest.mark.parametrize("encoding", ["quoted-printable", "base64", "8bit"])
def test_links_are_rewritten_per_recipient_and_others_left_alone(
    tracked_factory: ClickFactory, encoding: str
) -> None:
    t = tracked_factory(plugins="[plugins.click_tracking]\n")
    t.send(mime(HTML, encoding=encoding), "ann@example.org", "bob@example.org")
    assert t.deliver() == 2
    ann = html_of(t.received("ann@example.org").data)
    bob = html_of(t.received("bob@example.org").data)
    for html in (ann, bob):
        assert len(click_links(html)) == 3
        for untouched in (
            'href="mailto:help@example.com"',
            'href="tel:+4912345"',
            'href="#top"',
            'href="/relative"',
            'data-gateway-notrack href="https://example.com/private"',
            'class="button gateway-notrack" href="https://example.com/also-private"',
            ">Caf\u00e9</a>",
        ):
            assert untouched in html
        assert "shop.example.com" not in html and "example.com/plain" not in html
    assert set(click_links(ann)).isdisjoint(click_links(bob)), "tokens are per recipient"
    # Where they lead: each recipient's link redirects to the original URL, entities decoded.
    targets = [t.get(link).headers["location"] for link in click_links(ann)]
    assert targets == [
        "https://shop.example.com/sale?a=1&b=2",
        "http://example.com/plain",
        "https://example.com/caf%C3%A9",
    ]


def test_a_click_redirects_and_records_an_event(tracked_factory: ClickFactory) -> None:
    t = tracked_factory(plugins="[plugins.click_tracking]\n")
    t.send(mime(HTML), "ann@example.org")
    t.deliver()
    link = click_links(html_of(t.received("ann@example.org").data))[0]
    response = t.get(link)
    assert response.status_code == 302
    assert response.headers["location"] == "https://shop.example.com/sale?a=1&b=2"
    (message_id,) = t.message_ids()
    (event,) = t.events(message_id)
    assert (event.type, event.recipient, event.detail) == (
        "clicked",
        "ann@example.org",
        "https://shop.example.com/sale?a=1&b=2",
    )
    assert event.at == t.clock.now()


def _refused(t: Tracked, link: str) -> int:
    response = t.get(link)
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.status_code


def test_tampered_truncated_wrong_key_and_expired_links_never_redirect(
    tracked_factory: ClickFactory,
) -> None:
    t = tracked_factory(plugins="[plugins.click_tracking]\n")
    t.send(mime(HTML), "ann@example.org")
    t.deliver()
    link = click_links(html_of(t.received("ann@example.org").data))[0]
    token = link.rpartition("/")[2]
    flipped = token[:30] + ("A" if token[30] != "A" else "B") + token[31:]
    assert _refused(t, link.replace(token, flipped)) == 404
    assert _refused(t, link[:-12]) == 400
    assert _refused(t, link[:-1]) == 400
    assert _refused(t, BASE_URL + "/t/c/not*a*token") in (400, 404)
    # Forged: a payload pointing anywhere, signed with a key the gateway does not have —
    # under an unknown key id, and under the gateway's own key id.
    forged = TokenPayload(
        kind=kind_code("click"),
        message_id="0" * 22,
        delivery_id=1,
        tenant="default",
        issued_at=int(t.clock.now()),
        url="https://evil.example.net/",
    )
    for keys, key_id in (({"k9": KEY2}, "k9"), ({"k1": KEY2}, "k1")):
        assert _refused(t, f"{BASE_URL}/t/c/{TokenSigner(keys, key_id).sign(forged)}") == 404
    # Expired: token_lifetime is 30 days in this configuration.
    assert t.get(link).status_code == 302
    t.clock.advance(30 * 86400)
    assert _refused(t, link) == 404
    # An open token is not a click token.
    opened = TokenSigner({"k1": KEY1}, "k1").sign(
        TokenPayload(
            kind=kind_code("open"), message_id="0" * 22, delivery_id=1, tenant="d", issued_at=0
        )
    )
    assert _refused(t, f"{BASE_URL}/t/c/{opened}") == 404


def test_a_rotated_key_still_verifies_links_already_sent(tracked_factory: ClickFactory) -> None:
    """k2 signs new links; k1, which signed the old ones, is still listed and still verifies."""
    t = tracked_factory(
        plugins="[plugins.click_tracking]\n", keys={"k2": KEY2, "k1": KEY1}, signing_key="k2"
    )
    t.send(mime(HTML), "ann@example.org")
    t.deliver()
    new_link = click_links(html_of(t.received("ann@example.org").data))[0]
    new_token = new_link.rpartition("/")[2]
    assert _key_id(new_token) == "k2"
    (delivery,) = t.deliveries()
    old = TokenSigner({"k1": KEY1}, "k1").sign(
        TokenPayload(
            kind=kind_code("click"),
            message_id=delivery.message_id,
            delivery_id=delivery.id,
            tenant="default",
            issued_at=int(t.clock.now()) - 86400,
            url="https://shop.example.com/old-campaign",
        )
    )
    response = t.get(f"{BASE_URL}/t/c/{old}")
    assert response.status_code == 302
    assert response.headers["location"] == "https://shop.example.com/old-campaign"
    assert [e.recipient for e in t.events(delivery.message_id)] == ["ann@example.org"]


def _key_id(token: str) -> str:
    import base64

    data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return data[2 : 2 + data[1]].decode()


def test_text_part_is_rewritten_only_when_asked(tracked_factory: ClickFactory) -> None:
    text = "Sale: https://shop.example.com/sale.\nHelp: mailto:help@example.com\n"
    t = tracked_factory(plugins="[plugins.click_tracking]\nrewrite_text = true\n")
    t.send(mime(HTML, text=text), "ann@example.org")
    t.deliver()
    received = t.received("ann@example.org").data
    plain = text_of(received).replace("\r\n", "\n")
    (link,) = TRACKED.findall(plain)
    assert plain == f"Sale: {link}.\nHelp: mailto:help@example.com\n"
    assert t.get(link).headers["location"] == "https://shop.example.com/sale"
    assert len(click_links(html_of(received))) == 3


def test_long_unencoded_lines_are_switched_to_quoted_printable(
    tracked_factory: ClickFactory,
) -> None:
    """Tracking URLs are longer than most links; a 7bit line must stay under 998 octets."""
    links = " ".join(f'<a href="https://example.com/{i}">{i}</a>' for i in range(20))
    raw = (
        b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: long\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=us-ascii\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n\r\n<html><body>"
        + links.encode()
        + b"</body></html>\r\n"
    )
    t = tracked_factory(plugins="[plugins.click_tracking]\n")
    t.send(raw, "ann@example.org")
    t.deliver()
    received = t.received("ann@example.org").data
    assert max(len(line) for line in received.split(b"\r\n")) <= 998
    assert b"Content-Transfer-Encoding: quoted-printable" in received
    assert len(click_links(html_of(received))) == 20


def test_http_api_mail_is_tracked_unless_the_sender_turns_clicks_off(
    tracked_factory: ClickFactory,
) -> None:
    t = tracked_factory(plugins="[plugins.click_tracking]\n")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    request = {
        "from": "app@example.com",
        "subject": "Hi",
        "text": "Hello",
        "html": '<p><a href="https://example.com/x">x</a></p>',
    }
    for to, tracking in (("on@example.org", {}), ("off@example.org", {"clicks": False})):
        body = {**request, "to": [to], "tracking": tracking}
        response = t.http.post("/v1/messages", json=body, headers=headers)
        assert response.status_code == 202, response.text
    assert t.deliver() == 2
    assert len(click_links(html_of(t.received("on@example.org").data))) == 1
    off = html_of(t.received("off@example.org").data)
    assert click_links(off) == [] and 'href="https://example.com/x"' in off


def test_the_same_body_in_single_recipient_messages_is_parsed_once(
    tracked_factory: ClickFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bulk senders often send one message per recipient with the same body (issue 25): the
    links are found once, and each message still gets its own tokens and, if needed, its own
    switch to quoted-printable in its own header."""
    import gateway_plugins.click_tracking as click_tracking

    parsed: list[int] = []
    real = click_tracking.html_links

    def counting(content: bytes, charset: str, own_prefix: str) -> list[tuple[int, int, str]]:
        parsed.append(len(content))
        return real(content, charset, own_prefix)

    monkeypatch.setattr(click_tracking, "html_links", counting)
    long_line = '<p><a href="https://shop.example.com/a">A</a>' + "x" * 900 + "</p>"
    t = tracked_factory(plugins="[plugins.click_tracking]\n")
    for recipient in ("ann@example.org", "bob@example.org", "cy@example.org"):
        t.send(mime(HTML + long_line, encoding="8bit"), recipient)
    assert t.deliver() == 3
    assert len(parsed) == 1
    tokens = []
    for recipient in ("ann@example.org", "bob@example.org", "cy@example.org"):
        data = t.received(recipient).data
        assert b"Content-Transfer-Encoding: quoted-printable" in data
        links = click_links(html_of(data))
        assert len(links) == 4
        tokens += links
    assert len(set(tokens)) == 12, "every message and recipient has its own tokens"
    assert t.get(tokens[-1]).headers["location"] == "https://shop.example.com/a"
