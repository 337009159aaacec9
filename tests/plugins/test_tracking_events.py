"""Opens, clicks and unsubscribes go through the one event path (``gateway.events.publish``):
the timeline, sender webhooks, ``gateway_events_total`` and every ``gateway_event`` observer see
each of them exactly once — not only the timeline."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.events import SCHEMA_VERSION
from tests.conftest import GatewayThread, Sink
from tests.plugins.tracking_env import ALL_PLUGINS, Tracked, html_of, mime, parse, tracked_gateways


@pytest.fixture
def tracked_factory(
    tmp_path: Path, sink: Sink, gateway_factory: Callable[..., GatewayThread]
) -> Iterator[Callable[..., Tracked]]:
    yield from tracked_gateways(tmp_path, sink, gateway_factory)


WEBHOOK = """
[tenants.default.webhooks.crm]
url = "http://127.0.0.1:9/hooks"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"""
HUMAN = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
LINK = re.compile(r'href="(https://t\.example\.test/t/c/[^"]+)"')
PIXEL = re.compile(r'src="(https://t\.example\.test/t/o/[^"]+)"')
HTML = '<html><body><p><a href="https://shop.example.com/sale">Sale</a></p></body></html>'


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.partition("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rpartition(" ")[2])
    return total


def test_open_click_and_unsubscribe_reach_webhooks_metrics_and_timeline_once(
    tracked_factory: Callable[..., Tracked],
) -> None:
    t = tracked_factory(plugins=ALL_PLUGINS + WEBHOOK)
    raw = mime(HTML).replace(b"Subject: Links", b"Subject: Links\r\nPrecedence: bulk")
    t.send(raw, "ann@example.org")
    t.deliver()
    received = t.received("ann@example.org").data
    html = html_of(received)
    t.clock.advance(120)
    assert t.get(PIXEL.findall(html)[0], headers={"User-Agent": HUMAN}).status_code == 200
    t.clock.advance(5)
    assert t.get(LINK.findall(html)[0], headers={"User-Agent": HUMAN}).status_code == 302
    unsubscribe = parse(received)["List-Unsubscribe"].strip("<>")
    assert t.post(unsubscribe, data={"List-Unsubscribe": "One-Click"}).status_code == 200

    (message_id,) = t.message_ids()
    assert [e.type for e in t.events(message_id)] == ["opened", "clicked", "unsubscribed"]

    store = t.gw.gateway.store
    queued = t.gw.call(store.list_webhook_events("default", limit=50))
    assert sorted(e.type for e in queued) == [
        "clicked",
        "delivered",
        "opened",
        "suppressed",
        "unsubscribed",
    ]
    bodies = {e.type: json.loads(e.payload) for e in queued}
    added = bodies["suppressed"]["data"]["data"]
    assert added == {"reason": "unsubscribe", "scope": "stream:transactional"}
    for kind, body in bodies.items():
        assert body["type"] == f"email.{kind}"
        assert body["version"] == SCHEMA_VERSION
        assert body["data"]["message_id"] == message_id
        assert body["data"]["recipient"] == "ann@example.org"
        assert body["data"]["sending_domain"] == "example.com"
        assert body["id"].startswith("evt_")
    assert bodies["clicked"]["data"]["url"] == "https://shop.example.com/sale"
    assert bodies["opened"]["data"]["classification"] == "human"

    text = t.gw.gateway.metrics.render().decode()
    for kind in ("delivered", "opened", "clicked", "unsubscribed", "suppressed"):
        assert metric(text, "gateway_events_total", tenant="default", type=kind) == 1, kind
