"""Black-box: an abandoned-cart flow on a running gateway, a real sink and the injectable
clock, on SQLite and PostgreSQL. Contacts click through the real tracking URLs, place orders
(a goal), unsubscribe with one click; the sink receives exactly the expected mails at the
expected clock times, and re-entry and cooldown hold."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import Sink, wait_until
from tests.plugins.audience.conftest import AudienceGateway
from tests.plugins.tracking_env import BASE_URL, KEY1, html_of, parse

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
TRACKING = f"""
[tracking]
base_url = "{BASE_URL}"
signing_key = "k1"
[tracking.keys]
k1 = "{KEY1}"
[tenants.acme.streams.marketing]
kind = "broadcast"
[plugins.click_tracking]
[plugins.open_pixel]
[plugins.list_unsubscribe]
"""


def send(step_id: str, subject: str, body: str) -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "send",
        "from": "shop@acme.test",
        "stream": "marketing",
        "subject": subject,
        "html": f'<p>{body} <a href="{{{{ event.properties.cart_url }}}}">your cart</a></p>',
    }


CART_FLOW = {
    "name": "abandoned cart",
    "trigger": {
        "event": "cart_abandoned",
        "conditions": [{"field": "properties.total", "op": "gte", "value": 10}],
    },
    "steps": [
        {"type": "goal", "event": "order_placed"},
        {"type": "wait", "duration": "1h"},
        send("first", "Your cart, {{ contact.attributes.first_name }}", "Come back to"),
        {"type": "wait", "duration": "23h"},
        {"type": "branch", "if": [{"engaged": "clicked", "step": "first"}], "then": "offer"},
        send("nudge", "Still thinking?", "Still there:"),
        {"type": "exit", "reason": "not_clicked"},
        send("offer", "10% off your cart", "Take 10% off"),
    ],
}
HOUR = 3600.0


def test_abandoned_cart_flow_end_to_end(
    automation_gateway: Callable[..., AudienceGateway], sink: Sink
) -> None:
    running = automation_gateway(TRACKING)
    clock = running.clock
    admin = running.client("acme", "admin")
    created = admin.post("/v1/flows", json=CART_FLOW)
    assert created.status_code == 201, created.text
    flow_id = created.json()["id"]
    start = clock.now()
    events = running.client("acme", "sender")
    contacts: dict[str, int] = {}

    def event(who: str, name: str, n: int, **properties: Any) -> dict[str, Any]:
        answer = events.post(
            "/v1/events",
            json={
                "id": f"{who}-{name}-{n}",
                "name": name,
                "email": f"{who}@example.org",
                "properties": properties,
            },
        )
        assert answer.status_code in (200, 202), answer.text
        contacts[who] = answer.json()["contact_id"]
        return dict(answer.json())

    for who in ("ann", "bob", "cyd", "eve"):
        admin.post(
            "/v1/contacts",
            json={"email": f"{who}@example.org", "attributes": {"first_name": who.title()}},
        )
        assert event(who, "cart_abandoned", 1, total=50, cart_url=f"https://shop.test/c/{who}")[
            "enrolled"
        ]
    assert not event("dee", "cart_abandoned", 1, total=5)["enrolled"]  # the trigger's condition
    assert not event("ann", "cart_abandoned", 2, total=60)["enrolled"]  # re-entry: still in it

    def state(who: str) -> list[tuple[str, str]]:
        found = admin.get("/v1/enrolments", params={"contact_id": contacts[who]}).json()
        return [(e["state"], e["reason"]) for e in found]

    wait_until(
        lambda: all(state(w) == [("active", "")] for w in ("ann", "bob", "cyd", "eve")),
        20,
        "enrolments waiting",
    )

    clock.advance(HOUR / 2)
    assert event("cyd", "order_placed", 1)["goals"]  # ends the enrolment wherever it is
    assert state("cyd") == [("goal", "goal:order_placed")]
    assert not event("cyd", "cart_abandoned", 2, total=70)["enrolled"]  # cooldown (24 h)

    clock.advance(HOUR / 2)
    wait_until(lambda: len(sink.messages) == 3, 20, "three first reminders")
    firsts = {m.rcpt_tos[0]: parse(m.data) for m in sink.messages}
    assert sorted(firsts) == ["ann@example.org", "bob@example.org", "eve@example.org"]
    assert str(firsts["bob@example.org"]["Subject"]) == "Your cart, Bob"
    assert "List-Unsubscribe" in firsts["eve@example.org"]

    clock.advance(300)  # a reader, minutes later: not a scanner's instant click
    bob = next(m for m in sink.messages if m.rcpt_tos == ["bob@example.org"])
    (link,) = re.findall(r'href="(https://t\.example\.test/t/c/[^"]+)"', html_of(bob.data))
    http = httpx.Client(base_url=running.url, timeout=30)
    clicked = http.get(link.removeprefix(BASE_URL), headers={"User-Agent": BROWSER})
    assert (clicked.status_code, clicked.headers["location"]) == (302, "https://shop.test/c/bob")
    unsubscribe = str(firsts["eve@example.org"]["List-Unsubscribe"]).strip("<>")
    one_click = http.post(
        unsubscribe.removeprefix(BASE_URL), data={"List-Unsubscribe": "One-Click"}
    )
    assert one_click.status_code == 200
    http.close()

    clock.set(start + 24 * HOUR)
    wait_until(lambda: len(sink.messages) == 5, 20, "the second mails")
    wait_until(lambda: state("eve") != [("active", "")], 20, "eve's enrolment to end")
    seconds = {m.rcpt_tos[0]: str(parse(m.data)["Subject"]) for m in sink.messages[3:]}
    assert seconds == {"ann@example.org": "Still thinking?", "bob@example.org": "10% off your cart"}
    assert state("ann") == [("exited", "not_clicked")]
    assert state("bob") == [("completed", "completed")]
    assert state("eve") == [("exited", "suppressed")]

    # The path keeps each step with its clock time; the flow counts sends, goals and exits.
    (ann,) = admin.get("/v1/enrolments", params={"contact_id": contacts["ann"]}).json()
    sends = [(p["step"], p["at"]) for p in ann["path"] if p["kind"] == "send"]
    assert [s for s, _ in sends] == [2, 5]
    times = [dt.datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() for _, at in sends]
    assert [round(t - start) for t in times] == [HOUR, 24 * HOUR]
    shown = admin.get(f"/v1/flows/{flow_id}").json()
    ended = {(e["state"], e["reason"]): e["count"] for e in shown["stats"]["ended"]}
    assert ended == {
        ("exited", "not_clicked"): 1,
        ("completed", "completed"): 1,
        ("goal", "goal:order_placed"): 1,
        ("exited", "suppressed"): 1,
    }
    assert shown["stats"]["enrolled"] == 4
    assert len(sink.messages) == 5
