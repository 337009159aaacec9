"""Black-box: a campaign on both engines, through the HTTP API to a real SMTP sink.

Overlapping lists with an exclusion segment, and unsubscribed, pending, suppressed, bounced
and topic-opted-out contacts: the sink gets exactly the expected addresses, once each,
personalized, with the compliance footer (postal address, unsubscribe link) in HTML and text
and RFC 8058 headers; every skip is listed with its reason and the totals add up; the campaign
ends ``sent``. Then, with the injected clock: nothing before ``scheduled_at``, the throttle
spreads the mail, an unsubscribe after fan-out wins at delivery time, and pause, resume and
cancel hold. The precheck lists every problem at once."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import Sink, wait_until
from tests.plugins.audience.conftest import AudienceGateway
from tests.plugins.test_dkim import Keys, verify_with_dkimpy
from tests.plugins.tracking_env import BASE_URL, KEY1

HTML = """<html><body>
<p>Hello {{ contact.first_name | default("friend") }},</p>
<p>Your code is {{ code }}. <a href="https://shop.example/offer">Shop now</a></p>
</body></html>"""


def parsed(sink: Sink, address: str) -> list[EmailMessage]:
    return [
        email.message_from_bytes(m.data, policy=email.policy.default)  # type: ignore[misc]
        for m in sink.to(address)
    ]


def body(message: EmailMessage, kind: str) -> str:
    part = message.get_body((kind,))
    assert part is not None
    content: str = part.get_content()
    return content


def contact(client: httpx.Client, address: str, **fields: Any) -> int:
    response = client.post("/v1/contacts", json={"email": address, **fields})
    assert response.status_code in (200, 201), response.text
    ident: int = response.json()["id"]
    return ident


def subscribe(client: httpx.Client, list_id: int, address: str, status: str = "active") -> None:
    response = client.post(
        f"/v1/lists/{list_id}/subscriptions", json={"email": address, "status": status}
    )
    assert response.status_code == 200, response.text


def stats(client: httpx.Client, campaign_id: int) -> dict[str, Any]:
    response = client.get(f"/v1/campaigns/{campaign_id}/stats")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


TRACKING = f"""
[tracking]
base_url = "{BASE_URL}"
signing_key = "k1"
[tracking.keys]
k1 = "{KEY1}"
[plugins.click_tracking]
[plugins.open_pixel]
[plugins.list_unsubscribe]
[plugins.dkim]
key_dir = "%(key_dir)s"
selectors = ["rsa2025"]
"""


def test_a_campaign_reaches_exactly_its_audience_once_each(
    campaigns_gateway: Callable[..., AudienceGateway], sink: Sink, tmp_path: Path
) -> None:
    keys = Keys(tmp_path / "keys")
    keys.add("acme.test", "rsa2025.pem", rsa.generate_private_key(65537, 2048))
    running = campaigns_gateway(
        TRACKING % {"key_dir": keys.dir}, plugins=["tests.plugins.campaigns.precheck_plugin"]
    )
    acme = running.client()
    template = acme.post(
        "/v1/templates",
        json={
            "name": "news",
            "subject": "News for {{ contact.first_name | default('you') }}",
            "html": HTML,
            "variables": [{"name": "code", "required": True}],
        },
    ).json()
    news = acme.post("/v1/lists", json={"name": "News"}).json()["id"]
    deals = acme.post("/v1/lists", json={"name": "Deals"}).json()["id"]
    topic = acme.post("/v1/topics", json={"name": "Offers"}).json()["id"]
    contact(acme, "ann@example.org", name="Ann Lee")
    for address in ("ann@example.org", "ed@example.org", "fay@example.org", "gus@example.org"):
        subscribe(acme, news, address)
    subscribe(acme, deals, "ann@example.org")  # in both lists: one mail
    subscribe(acme, deals, "bob@example.org")
    subscribe(acme, news, "cid@example.org")
    cid = contact(acme, "cid@example.org")
    assert acme.delete(f"/v1/lists/{news}/subscriptions/{cid}").status_code in (200, 204)
    subscribe(acme, news, "dee@example.org", status="pending")
    contact(acme, "ed@example.org", attributes={"vip": True})
    vip = acme.post(
        "/v1/segments",
        json={"name": "VIPs", "filter": {"field": "attributes.vip", "op": "eq", "value": True}},
    ).json()["id"]
    added = acme.post(
        "/v1/suppressions", json={"entries": [{"email": "fay@example.org", "reason": "manual"}]}
    )
    assert added.status_code == 200, added.text
    running.gw.call(running.store.set_status("acme", "gus@example.org", "bounced"))
    subscribe(acme, news, "hal@example.org")
    hal = contact(acme, "hal@example.org")
    off = acme.put(f"/v1/topics/{topic}/contacts/{hal}", json={"subscribed": False})
    assert off.status_code == 200, off.text

    created = acme.post(
        "/v1/campaigns",
        json={
            "name": "November",
            "template_id": template["id"],
            "list_ids": [news, deals],
            "exclude_segment_ids": [vip],
            "topic_id": topic,
            "from": "news@acme.test",
            "from_name": "Acme News",
            "stream": "news",
        },
    )
    assert created.status_code == 201, created.text
    campaign = created.json()
    assert campaign["status"] == "draft"
    cid_ = campaign["id"]
    refused = acme.post(f"/v1/campaigns/{cid_}/send")
    assert refused.status_code == 422, refused.text
    assert any("code" in p for p in refused.json()["problems"])
    assert (
        acme.patch(f"/v1/campaigns/{cid_}", json={"variables": {"code": "NOV"}}).status_code == 200
    )
    sent = acme.post(f"/v1/campaigns/{cid_}/send")
    assert sent.status_code == 200, sent.text
    assert sent.json()["status"] == "scheduled"
    assert acme.post(f"/v1/campaigns/{cid_}/send").status_code == 409

    expected = {"ann@example.org", "bob@example.org"}
    wait_until(lambda: {r for m in sink.messages for r in m.rcpt_tos} >= expected, 20, "mail")
    wait_until(lambda: stats(acme, cid_)["status"] == "sent", 20, "the campaign to end sent")
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == sorted(expected)
    (ann,) = parsed(sink, "ann@example.org")
    assert ann["Subject"] == "News for Ann" and "Acme News" in ann["From"]
    assert "Hello Ann," in body(ann, "html") and "Your code is NOV." in body(ann, "plain")
    for kind in ("html", "plain"):
        text = body(ann, kind)
        assert "Acme Inc." in text and "1 Main Street" in text and "/p/unsubscribe/" in text
        assert "you subscribed to Deals" in text or "you subscribed to News" in text
    assert ann["List-Unsubscribe"] and ann["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert verify_with_dkimpy(sink.to("ann@example.org")[0].data, keys) == [True]
    html = body(ann, "html")
    assert html.count(f"{BASE_URL}/t/o/") == 1, "one open pixel"
    assert f"{BASE_URL}/t/c/" in html and 'href="https://shop.example/offer"' not in html
    (bob,) = parsed(sink, "bob@example.org")
    assert bob["Subject"] == "News for you" and "Hello friend," in body(bob, "plain")
    assert "you subscribed to Deals" in body(bob, "plain")

    totals = stats(acme, cid_)["totals"]
    assert totals["delivered"] == 2 and totals["recipients"] == 8
    assert {k: v for k, v in totals.items() if k.startswith("skipped:")} == {
        "skipped:unsubscribed": 1,
        "skipped:pending": 1,
        "skipped:excluded": 1,
        "skipped:suppressed": 1,
        "skipped:bounced": 1,
        "skipped:topic_opt_out": 1,
    }
    assert totals["skipped"] + totals["delivered"] == totals["recipients"]

    # Another tenant sees nothing; its own campaign's precheck lists every problem at once.
    globex = running.client("globex")
    assert globex.get(f"/v1/campaigns/{cid_}").status_code == 404
    g_template = globex.post(
        "/v1/templates", json={"name": "t", "subject": "s", "html": '<a href="ftp://x">x</a>'}
    ).json()
    g_list = globex.post("/v1/lists", json={"name": "L"}).json()["id"]
    g_campaign = globex.post(
        "/v1/campaigns",
        json={
            "name": "G",
            "template_id": g_template["id"],
            "list_ids": [g_list],
            "from": "news@globex.test",
            "stream": "transactional",
        },
    ).json()
    problems = globex.post(f"/v1/campaigns/{g_campaign['id']}/send").json()["problems"]
    assert len(problems) == 5, problems  # four of ours, one from gateway_campaign_precheck
    assert "house rule: the template has no unsubscribe wording" in problems
    assert any("postal address" in p for p in problems)
    assert any("broadcast stream" in p for p in problems)
    assert any("ftp://x" in p for p in problems)
    assert any("audience is empty" in p for p in problems)


def test_schedule_throttle_consent_at_delivery_pause_resume_cancel(
    campaigns_gateway: Callable[..., AudienceGateway], sink: Sink
) -> None:
    running = campaigns_gateway()
    acme, clock = running.client(), running.clock
    template = acme.post(
        "/v1/templates", json={"name": "t", "subject": "Hi", "html": "<p>Hi</p>"}
    ).json()
    members = acme.post("/v1/lists", json={"name": "Members"}).json()["id"]
    people = [f"p{i}@example.org" for i in range(4)]
    for address in people:
        subscribe(acme, members, address)
    campaign = acme.post(
        "/v1/campaigns",
        json={
            "name": "Slow",
            "template_id": template["id"],
            "list_ids": [members],
            "from": "news@acme.test",
            "stream": "news",
            "throttle_per_hour": 1,
        },
    ).json()
    cid = campaign["id"]
    start = int(clock.now()) + 600  # whole seconds: the API takes ISO 8601 times
    scheduled = acme.post(
        f"/v1/campaigns/{cid}/schedule",
        json={"scheduled_at": dt.datetime.fromtimestamp(start, dt.UTC).isoformat()},
    )
    assert scheduled.status_code == 200, scheduled.text

    def delivered() -> list[str]:
        return [r for m in sink.messages for r in m.rcpt_tos]

    def planned() -> int:
        return sum(r["planned"] for r in stats(acme, cid)["runs"])

    # Nothing before scheduled_at: the run is not even fanned out.
    wait_until(lambda: stats(acme, cid)["runs"][0]["status"] == "due", 5, "the run")
    assert planned() == 0 and delivered() == []
    clock.set(start - 1)
    wait_until(lambda: running.gw.call(_idle(running)), 5, "a fan-out look")
    assert planned() == 0
    clock.set(start)
    wait_until(lambda: planned() == 4, 20, "the fan-out")
    wait_until(lambda: delivered() == ["p0@example.org"], 20, "the first slot")
    # p1's slot is an hour later; it unsubscribes meanwhile: the unsubscribe wins.
    p1 = acme.get("/v1/contacts", params={"limit": 10}).json()["data"][1]
    assert p1["email"] == "p1@example.org"
    assert acme.delete(f"/v1/lists/{members}/subscriptions/{p1['id']}").status_code in (200, 204)
    clock.advance(3600)
    wait_until(lambda: stats(acme, cid)["totals"].get("dropped") == 1, 20, "p1 dropped")
    assert delivered() == ["p0@example.org"]
    # Paused, p2's slot passes without mail; resumed, it goes.
    assert acme.post(f"/v1/campaigns/{cid}/pause").json()["status"] == "paused"
    assert acme.post(f"/v1/campaigns/{cid}/pause").status_code == 409
    clock.advance(3600)
    wait_until(lambda: running.gw.call(_deferred_or_done(running, "p2@example.org")), 20, "p2 held")
    assert delivered() == ["p0@example.org"]
    assert acme.post(f"/v1/campaigns/{cid}/resume").json()["status"] == "sending"
    clock.advance(120)  # past the paused delivery's recheck
    wait_until(lambda: "p2@example.org" in delivered(), 20, "p2 after resume")
    # Cancelled: p3 (an hour later) never goes; the campaign ends cancelled with all final.
    assert acme.post(f"/v1/campaigns/{cid}/cancel").json()["status"] == "cancelled"
    clock.advance(7200)
    wait_until(lambda: stats(acme, cid)["totals"].get("cancelled", 0) == 1, 20, "p3 cancelled")
    assert sorted(delivered()) == ["p0@example.org", "p2@example.org"]
    totals = stats(acme, cid)["totals"]
    assert totals["recipients"] == 4
    assert totals["delivered"] + totals["dropped"] + totals["cancelled"] == 4
    assert acme.post(f"/v1/campaigns/{cid}/resume").status_code == 409


async def _idle(running: AudienceGateway) -> bool:
    """One more look for due runs happened."""
    from gateway_plugins.campaigns import campaigns_of

    return not await campaigns_of(running.gw.gateway).fanout.step()


async def _deferred_or_done(running: AudienceGateway, address: str) -> bool:
    """The delivery to ``address`` was looked at and held back (a deferral by policy)."""
    from gateway.store.base import DeliveryFilter

    page = await running.gw.gateway.store.list_deliveries(DeliveryFilter(recipient=address))
    return any(d.status == "deferred" and d.last_error == "campaign paused" for d in page)
