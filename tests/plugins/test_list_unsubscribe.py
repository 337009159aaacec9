"""One-click unsubscribe end to end: RFC 8058 headers on bulk mail at the sink; the POST a
mailbox provider makes suppresses the recipient; a GET (what scanners do) only shows a page."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from gateway.message import DeliveryStatus
from gateway.store.base import Suppression
from tests.conftest import GatewayThread, Sink
from tests.plugins.tracking_env import (
    API_KEY,
    BASE_URL,
    Tracked,
    parse,
    tracked_gateways,
)


@pytest.fixture
def tracked_factory(
    tmp_path: Path, sink: Sink, gateway_factory: Callable[..., GatewayThread]
) -> Iterator[Callable[..., Tracked]]:
    yield from tracked_gateways(tmp_path, sink, gateway_factory)


PLUGIN = '[plugins.list_unsubscribe]\nmailto = "unsubscribe@example.com"\n'
Factory = Callable[..., Tracked]


def message(*headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return (
        f"From: news@example.com\r\nTo: ann@example.org\r\nSubject: News\r\n{head}\r\nHello\r\n"
    ).encode()


def unsubscribe_url(data: bytes) -> str:
    value = parse(data)["List-Unsubscribe"]
    found = re.match(
        r"<(https://[^>]+)>, <mailto:unsubscribe@example\.com\?subject=([^>]+)>$", value
    )
    assert found, value
    https, subject = found.groups()
    assert https.startswith(BASE_URL + "/t/u/")
    assert unquote(subject) == "unsubscribe " + https.rpartition("/")[2]
    return https


def suppressions(t: Tracked) -> list[Suppression]:
    return t.gw.call(t.gw.gateway.store.list_suppressions("default"))


@pytest.mark.parametrize(
    "marker", ["X-Gateway-Bulk: yes", "Precedence: bulk", "List-Id: News <news.example.com>"]
)
def test_bulk_mail_gets_rfc_8058_headers(tracked_factory: Factory, marker: str) -> None:
    t = tracked_factory(plugins=PLUGIN)
    t.send(message(marker), "ann@example.org", "bob@example.org")
    t.deliver()
    urls = set()
    for rcpt in ("ann@example.org", "bob@example.org"):
        data = t.received(rcpt).data
        headers = parse(data)
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        urls.add(unsubscribe_url(data))
        assert b"X-Gateway-Bulk" not in data, "the gateway's own marker never leaves"
        # Header lines stay within the SMTP limit and the body is untouched.
        assert max(len(line) for line in data.split(b"\r\n")) < 998
        assert data.endswith(b"\r\n\r\nHello\r\n")
    assert len(urls) == 2, "one link per recipient"


@pytest.mark.parametrize(
    "headers",
    [
        (),
        ("X-Gateway-Bulk: no", "Precedence: bulk"),
        ("Precedence: bulk", "List-Unsubscribe: <mailto:x@y.z>"),
    ],
)
def test_other_mail_is_left_alone(tracked_factory: Factory, headers: tuple[str, ...]) -> None:
    t = tracked_factory(plugins=PLUGIN)
    t.send(message(*headers), "ann@example.org")
    t.deliver()
    data = t.received("ann@example.org").data
    assert b"List-Unsubscribe-Post" not in data and b"X-Gateway-Bulk" not in data
    assert data.count(b"List-Unsubscribe:") == (
        1 if len(headers) == 2 and "x@y.z" in headers[1] else 0
    )


def test_one_click_post_suppresses_and_get_does_not(tracked_factory: Factory) -> None:
    t = tracked_factory(plugins=PLUGIN)
    t.send(message("Precedence: bulk", "List-Id: <news.example.com>"), "Ann@Example.org")
    t.deliver()
    url = unsubscribe_url(t.received("Ann@Example.org").data)
    page = t.get(url)
    assert page.status_code == 200
    assert '<form method="post">' in page.text and 'value="One-Click"' in page.text
    assert suppressions(t) == [], "a GET (a scanner's prefetch) must not unsubscribe"
    # Exactly what Gmail sends: no cookies, no login, form-encoded one-click body.
    response = t.post(
        url,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    (entry,) = suppressions(t)
    assert (entry.tenant, entry.address, entry.reason) == (
        "default",
        "ann@example.org",
        "unsubscribe",
    )
    assert entry.detail == "one-click; list-id news.example.com"
    (message_id,) = t.message_ids()
    assert [(e.type, e.recipient) for e in t.events(message_id)] == [
        ("unsubscribed", "Ann@Example.org")
    ]


def test_refused_unsubscribe_links(tracked_factory: Factory) -> None:
    t = tracked_factory(plugins=PLUGIN)
    t.send(message("Precedence: bulk"), "ann@example.org")
    t.deliver()
    url = unsubscribe_url(t.received("ann@example.org").data)
    token = url.rpartition("/")[2]
    tampered = url.replace(token, token[:25] + ("Q" if token[25] != "Q" else "R") + token[26:])
    one_click = {"content": b"List-Unsubscribe=One-Click"}
    assert t.post(tampered, **one_click).status_code == 404
    assert t.post(url[:-7], **one_click).status_code == 400
    assert t.post(url, content=b"").status_code == 400, "not a one-click request"
    assert suppressions(t) == []


def test_http_api_tag_marks_bulk(tracked_factory: Factory) -> None:
    t = tracked_factory(plugins=PLUGIN)
    for to, tags in (("ann@example.org", ["bulk"]), ("bob@example.org", ["receipt"])):
        response = t.http.post(
            "/v1/messages",
            json={
                "from": "news@example.com",
                "to": [to],
                "subject": "S",
                "text": "T",
                "tags": tags,
            },
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert response.status_code == 202, response.text
    t.deliver()
    assert parse(t.received("ann@example.org").data)["List-Unsubscribe-Post"]
    assert parse(t.received("bob@example.org").data)["List-Unsubscribe-Post"] is None


def test_after_one_click_the_next_message_is_skipped_as_unsubscribed(
    tracked_factory: Factory,
) -> None:
    t = tracked_factory(plugins=PLUGIN + "[plugins.suppression]\n")
    t.send(message("Precedence: bulk"), "ann@example.org")
    t.deliver()
    url = unsubscribe_url(t.received("ann@example.org").data)
    assert t.post(url, content=b"List-Unsubscribe=One-Click").status_code == 200
    t.send(message("Precedence: bulk"), "ann@example.org")
    assert t.deliver() == 1
    skipped = [d for d in t.deliveries() if d.status is DeliveryStatus.SKIPPED]
    assert [(d.recipient, d.last_error) for d in skipped] == [
        ("ann@example.org", "unsubscribed (stream:transactional)")
    ]
    assert len(t.sink.to("ann@example.org")) == 1
