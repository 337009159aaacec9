"""Click classification end to end: planted scanner patterns — an immediate click, a HEAD
prefetch, a scanner's user agent or network, a burst of links, the hidden honeypot link — are
labelled ``machine`` with their signals; a reader's clicks are ``human``. Every click still
redirects, and the labels reach the timeline, the webhooks and the stats."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import GatewayThread, Sink
from tests.plugins.tracking_env import API_KEY, Tracked, html_of, mime, tracked_gateways


@pytest.fixture
def tracked_factory(
    tmp_path: Path, sink: Sink, gateway_factory: Callable[..., GatewayThread]
) -> Iterator[Callable[..., Tracked]]:
    yield from tracked_gateways(tmp_path, sink, gateway_factory)


PLUGIN = "[plugins.click_tracking]\nhoneypot = true\n"
WEBHOOK = """
[tenants.default.webhooks.crm]
url = "http://127.0.0.1:9/hooks"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
events = ["clicked"]
"""
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari"
HTML = """<html><body><p>
<a href="https://shop.example.com/one">One</a> <a href="https://shop.example.com/two">Two</a>
<a href="https://shop.example.com/three">Three</a></p></body></html>
"""
LINK = re.compile(r'<a (data-gateway-trap )?[^>]*?href="(https://t\.example\.test/t/c/[^"]+)"')
PEOPLE = ["ann", "bob", "cat", "dan", "eve", "fay"]


def links(t: Tracked, who: str) -> tuple[list[str], str]:
    """The visible tracked links of ``who``'s copy, and the hidden one."""
    visible, hidden = [], []
    for trap, url in LINK.findall(html_of(t.received(f"{who}@example.org").data)):
        (hidden if trap else visible).append(url)
    assert len(visible) == 3 and len(hidden) == 1
    return visible, hidden[0]


def clicks(t: Tracked) -> dict[str, list[tuple[str, str]]]:
    """Recipient → (classification, url) of each recorded click, in order."""
    (message_id,) = t.message_ids()
    out: dict[str, list[tuple[str, str]]] = {}
    for e in t.events(message_id):
        out.setdefault(e.recipient.partition("@")[0], []).append((e.classification, e.detail))
    return out


def test_planted_scanner_patterns_are_machine_and_readers_are_human(
    tracked_factory: Callable[..., Tracked],
) -> None:
    t = tracked_factory(plugins=PLUGIN + WEBHOOK)
    t.send(mime(HTML), *[f"{p}@example.org" for p in PEOPLE])
    t.deliver()
    browser = {"User-Agent": BROWSER}
    hit = {p: links(t, p) for p in PEOPLE}
    # A scanner fetching right after delivery.
    t.clock.advance(2)
    assert t.get(hit["ann"][0][0], headers=browser).status_code == 302
    t.clock.advance(120)
    # A reader: two links, seconds apart.
    assert t.get(hit["bob"][0][0], headers=browser).status_code == 302
    t.clock.advance(4)
    assert t.get(hit["bob"][0][1], headers=browser).status_code == 302
    # A prefetch (HEAD), a scanner's user agent.
    head = t.http.head(hit["cat"][0][0].removeprefix("https://t.example.test"), headers=browser)
    assert head.status_code == 302 and head.headers["location"] == "https://shop.example.com/one"
    scanner = {"User-Agent": "Mozilla/5.0 (compatible; Mimecast URL Protect)"}
    assert t.get(hit["dan"][0][0], headers=scanner).status_code == 302
    t.clock.advance(3)
    # Every link of one copy within the same second.
    for url in hit["eve"][0]:
        assert t.get(url, headers=browser).status_code == 302
    t.clock.advance(3)
    # The hidden link, then a visible one soon after.
    trap = t.get(hit["fay"][1], headers=browser)
    assert trap.status_code == 302 and trap.headers["location"] == "https://shop.example.com/one"
    t.clock.advance(5)
    assert t.get(hit["fay"][0][2], headers=browser).status_code == 302

    one, two, three = (f"https://shop.example.com/{n}" for n in ("one", "two", "three"))
    assert clicks(t) == {
        "ann": [("machine", one)],
        "bob": [("human", one), ("human", two)],
        "cat": [("machine", one)],
        "dan": [("machine", one)],
        "eve": [("human", one), ("machine", two), ("machine", three)],
        "fay": [("machine", one), ("machine", three)],
    }
    queued = t.gw.call(t.gw.gateway.store.list_webhook_events("default", limit=50))
    signals = {}
    for event in queued:
        data = json.loads(event.payload)["data"]
        who = data["recipient"].partition("@")[0]
        signals.setdefault(who, []).append((data["classification"], data.get("signals", [])))
    assert signals["ann"] == [("machine", ["immediate"])]
    assert signals["cat"] == [("machine", ["prefetch"])]
    assert signals["dan"] == [("machine", ["scanner-agent"])]
    assert sorted(signals["eve"]) == [("human", []), ("machine", ["burst"]), ("machine", ["burst"])]
    assert sorted(signals["fay"]) == [("machine", ["after-honeypot"]), ("machine", ["honeypot"])]
    stats = t.http.get("/v1/stats", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert stats["engagement"] == {"clicked": {"human": 3, "machine": 7}}


def test_clicks_from_a_scanner_network_are_machine(
    tracked_factory: Callable[..., Tracked],
) -> None:
    t = tracked_factory(plugins='[plugins.click_tracking]\nscanner_networks = ["127.0.0.0/8"]\n')
    t.send(mime(HTML), "ann@example.org")
    t.deliver()
    t.clock.advance(120)
    (first, *_) = LINK.findall(html_of(t.received("ann@example.org").data))
    assert t.get(first[1], headers={"User-Agent": BROWSER}).status_code == 302
    assert clicks(t) == {"ann": [("machine", "https://shop.example.com/one")]}


def test_the_honeypot_is_off_by_default_and_hidden_when_on(
    tracked_factory: Callable[..., Tracked],
) -> None:
    t = tracked_factory(plugins="[plugins.click_tracking]\n")
    t.send(mime(HTML), "ann@example.org")
    t.deliver()
    assert "data-gateway-trap" not in html_of(t.received("ann@example.org").data)
