"""Acceptance, with a real ``gateway serve`` process: a broadcast message through SMTP and one
through HTTP are opened, clicked and one-click unsubscribed through their real tracking URLs;
a Standard Webhooks receiver gets ``delivered``, ``opened``, ``clicked`` and ``unsubscribed``
for each (signatures verified with the ``standardwebhooks`` package); ``/metrics`` counts them
by type and stream; the domain's engagement rate and health score move as documented. Then
the next broadcast to the person is skipped with its scope, and transactional mail still
reaches them."""

from __future__ import annotations

import email
import json
import re
import smtplib
from collections.abc import Iterator
from email import policy
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from gateway.reputation import Counts, health_score, rates
from gateway.tenants import generate_api_key, hash_api_key
from tests.conftest import Sink, wait_until
from tests.ops.conftest import Receiver, ServeProcess, new_secret
from tests.redisserver import free_port

KEY = generate_api_key()
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
OTHERS = [f"reader{i}@example.org" for i in range(5)]
HTML = '<html><body><p>News! <a href="https://acme.test/sale">Sale</a></p></body></html>'


def serve_config(tmp: Path, smtp: int, http: int, sink: int, hook: str, secret: str) -> str:
    return f"""
[gateway]
hostname = "gw.test"
data_dir = "{tmp / "data"}"

[smtp]
listeners = [{{ name = "dev", port = {smtp}, tls = "none", insecure_auth = true }}]

[http]
enabled = true
port = {http}
rate_limit = 0

[tracking]
base_url = "http://127.0.0.1:{http}"
signing_key = "k1"
[tracking.keys]
k1 = "{"k" * 40}"

[tenants.acme]
smtp_networks = ["127.0.0.1/32"]
sending_domains = ["acme.test"]  # its domains' health is the tenant's to read

[[tenants.acme.api_keys]]
name = "app"
key_hash = "{hash_api_key(KEY)}"
scopes = ["admin"]

[tenants.acme.streams.newsletter]
kind = "broadcast"

[tenants.acme.webhooks.crm]
url = "{hook}"
secret = "{secret}"

[delivery]
providers = ["relay"]
retry_schedule = ["1m"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {sink}
tls = "none"

[domains."acme.test"]

[plugins.warming]

[plugins.open_pixel]
scanner_window = "0s"

[plugins.click_tracking]
immediate_window = "0s"

[plugins.list_unsubscribe]
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP server on loopback recording the webhook requests, stopped at the end."""
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    server.thread.join(10)


@pytest.fixture
def served(tmp_path: Path, sink: Sink, receiver: Receiver) -> Iterator[tuple[int, int, str]]:
    smtp, http, secret = free_port(), free_port(), new_secret()
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(serve_config(tmp_path, smtp, http, sink.port, receiver.url, secret))
    process = ServeProcess(config_file, tmp_path)
    try:
        wait_until(lambda: ready(http), 30, "gateway serve to be ready")
        yield smtp, http, secret
    finally:
        assert process.stop() == 0, process.text()[-3000:]


def ready(http: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{http}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def smtp_mail(smtp: int, recipients: list[str], stream: str = "newsletter") -> None:
    header = f"X-Gateway-Stream: {stream}\r\n" if stream else ""
    raw = (
        f"From: news@acme.test\r\nTo: readers@example.org\r\nSubject: News\r\n{header}"
        "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + HTML + "\r\n"
    )
    with smtplib.SMTP("127.0.0.1", smtp, timeout=20) as client:
        client.sendmail("news@acme.test", recipients, raw.encode())


def tracking_urls(data: bytes) -> tuple[str, str, str]:
    """The open pixel, the tracked link and the one-click unsubscribe URL of a copy."""
    message = email.message_from_bytes(data, policy=policy.SMTP)
    body = message.get_body(("html",))
    assert body is not None
    html = str(body.get_content())  # type: ignore[attr-defined]
    (pixel,) = re.findall(r'src="(http://127\.0\.0\.1:\d+/t/o/[^"]+)"', html)
    (link,) = re.findall(r'href="(http://127\.0\.0\.1:\d+/t/c/[^"]+)"', html)
    unsubscribe = str(message["List-Unsubscribe"]).strip("<>")
    return pixel, link, unsubscribe


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.partition("}")[0]))
            if found == labels:
                return float(line.rpartition(" ")[2])
    return 0.0


@pytest.fixture
def api(served: tuple[int, int, str]) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{served[1]}",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=20,
    ) as client:
        yield client


def test_broadcast_engagement_reaches_webhooks_metrics_and_health_then_scoped_unsubscribe(
    served: tuple[int, int, str], api: httpx.Client, sink: Sink, receiver: Receiver
) -> None:
    smtp, http, secret = served
    smtp_mail(smtp, ["ann@example.org", *OTHERS])
    sent = api.post(
        "/v1/messages",
        json={
            "from": "news@acme.test",
            "to": ["bob@example.org", *[o.replace("reader", "fan") for o in OTHERS]],
            "subject": "News",
            "html": HTML,
            "stream": "newsletter",
        },
    )
    assert sent.status_code == 202, sent.text
    wait_until(lambda: len(sink.messages) == 12, 30, "twelve copies at the sink")
    wait_until(
        lambda: api.get("/v1/domains/acme.test/health").json()["counts"]["delivered"] == 12,
        15,
        "the deliveries counted for the domain",
    )
    before = api.get("/v1/domains/acme.test/health").json()
    assert (before["score"], before["engagement_rate"]) == (100, None)

    browser = {"User-Agent": BROWSER}
    for who in ("ann@example.org", "bob@example.org"):
        (copy,) = sink.to(who)
        pixel, link, unsubscribe = tracking_urls(copy.data)
        assert httpx.get(pixel, headers=browser).headers["content-type"] == "image/gif"
        clicked = httpx.get(link, headers=browser)
        assert (clicked.status_code, clicked.headers["location"]) == (302, "https://acme.test/sale")
        one_click = httpx.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
        assert one_click.status_code == 200

    # The receiver: every event, signed per Standard Webhooks, verified by the reference library.
    wanted = {"delivered": 12, "opened": 2, "clicked": 2, "unsubscribed": 2, "suppressed": 2}

    def by_type() -> dict[str, list[dict[str, object]]]:
        found: dict[str, list[dict[str, object]]] = {}
        verifier = Webhook(secret)
        for request in receiver.received():
            body = verifier.verify(request.body, request.headers)
            found.setdefault(body["type"].removeprefix("email."), []).append(body)
        return found

    wait_until(
        lambda: {k: len(v) for k, v in by_type().items()} == wanted, 30, "every webhook event"
    )
    events = by_type()
    for kind in ("opened", "clicked", "unsubscribed"):
        assert sorted(str(e["data"]["recipient"]) for e in events[kind]) == [  # type: ignore[index]
            "ann@example.org",
            "bob@example.org",
        ]
    for kind, bodies in events.items():
        for body in bodies:
            data = body["data"]
            assert body["version"] == 1 and data["stream"] == "newsletter", (kind, body)  # type: ignore[index]
    assert {e["data"]["classification"] for e in events["clicked"]} == {"human"}  # type: ignore[index]
    assert {e["data"]["url"] for e in events["clicked"]} == {"https://acme.test/sale"}  # type: ignore[index]
    message_ids = {e["data"]["message_id"] for e in events["opened"]}  # type: ignore[index]
    assert message_ids == {
        sent.json()["id"],
        *(
            m["id"]
            for m in api.get("/v1/messages").json()["data"]
            if m["source"] == "smtp" and m["stream"] == "newsletter"
        ),
    }

    text = httpx.get(f"http://127.0.0.1:{http}/metrics").text
    for kind, count in wanted.items():
        labels = {"stream": "newsletter", "tenant": "acme", "type": kind}
        assert metric(text, "gateway_events_total", **labels) == count, kind

    # Engagement: 2 of 12 delivered engaged (first open or click per message and recipient).
    expected = health_score(rates(Counts(delivered=12, engaged=2)), engagement=True)
    assert expected == 98  # (35·100 + 35·100 + 15·100 + 15·(100·(2/12)/0.20)) / 100, rounded
    after = api.get("/v1/domains/acme.test/health").json()
    assert after["counts"]["engaged"] == 2
    assert after["engagement_rate"] == pytest.approx(2 / 12)
    assert after["score"] == expected

    # After the unsubscribe: the next broadcast skips the person, showing the scope ...
    again = api.post(
        "/v1/messages",
        json={
            "from": "news@acme.test",
            "to": ["ann@example.org", "carol@example.org"],
            "subject": "More news",
            "text": "More",
            "stream": "newsletter",
        },
    )
    assert again.status_code == 202
    assert again.json()["recipients"][0] == {
        "email": "ann@example.org",
        "status": "suppressed",
        "reason": "unsubscribe",
        "scope": "stream:newsletter",
    }
    smtp_mail(smtp, ["bob@example.org"])
    # ... and transactional mail still reaches them.
    smtp_mail(smtp, ["ann@example.org", "bob@example.org"], stream="")
    wait_until(lambda: len(sink.to("ann@example.org")) == 2, 30, "ann's transactional mail")
    wait_until(lambda: len(sink.to("bob@example.org")) == 2, 30, "bob's transactional mail")

    def skipped_bob() -> list[str]:
        listed = api.get("/v1/messages", params={"recipient": "bob@example.org"}).json()["data"]
        return [
            r["last_error"] for m in listed for r in m["recipients"] if r["status"] == "skipped"
        ]

    wait_until(lambda: skipped_bob() == ["unsubscribed (stream:newsletter)"], 30, "bob skipped")
    suppressions = api.get("/v1/suppressions").json()["data"]
    assert sorted((s["email"], s["scope"]) for s in suppressions) == [
        ("ann@example.org", "stream:newsletter"),
        ("bob@example.org", "stream:newsletter"),
    ]
    json.dumps(suppressions)  # plain JSON, as documented
