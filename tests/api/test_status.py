"""Scheduled sends, GET /v1/messages/{id} with its timeline, listing with filters and cursor,
and /v1/stats."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from gateway.message import DeliveryStatus
from tests.api.conftest import Api
from tests.conftest import wait_until

SEND = {"from": "app@acme.test", "to": ["ann@example.org"], "subject": "Hi", "text": "Hi"}


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


def test_send_at_in_the_future_is_held_until_its_time(api_factory: Callable[..., Api]) -> None:
    api = api_factory(deliver=False)
    gw = api.gw
    due = api.clock.now() + 3600
    with api.client(key="admin") as client:
        response = client.post("/v1/messages", json={**SEND, "send_at": _iso(due)})
        assert response.status_code == 202
        body = response.json()
        assert body["status"] == "scheduled"
        assert body["recipients"][0]["status"] == "scheduled"
        assert dt.datetime.fromisoformat(body["send_at"]).timestamp() == due
        assert gw.call(gw.gateway.dispatcher.run_once()) == 0, "not due yet"
        api.clock.advance(3599)
        assert gw.call(gw.gateway.dispatcher.run_once()) == 0, "one second early"
        assert api.sink.messages == []
        api.clock.advance(1)
        assert gw.call(gw.gateway.dispatcher.run_once()) == 1
        assert len(api.sink.messages) == 1
        shown = client.get(f"/v1/messages/{body['id']}").json()
    assert shown["send_at"] == body["send_at"]
    assert [e["type"] for e in shown["events"]] == ["queued", "scheduled", "delivered"]
    delivery = api.deliveries(body["id"])[0]
    assert delivery.expires_at == due + 3 * 86400, "the lifetime counts from the send time"


def test_message_status_shows_recipients_and_timeline(api: Api) -> None:
    api.sink.script("slow@example.org", "RCPT", ["451 4.7.1 try later"])
    api.sink.script("gone@example.org", "RCPT", ["550 5.1.1 no such user"])
    body = {
        **SEND,
        "to": ["ann@example.org", "slow@example.org", "gone@example.org"],
        "tags": ["t1"],
        "metadata": {"order": "9"},
        "tracking": {"opens": False},
    }
    with api.client(key="admin") as client:
        message_id = client.post("/v1/messages", json=body).json()["id"]
        wait_until(
            lambda: (
                {d.status for d in api.deliveries(message_id)}
                == {DeliveryStatus.DELIVERED, DeliveryStatus.DEFERRED, DeliveryStatus.BOUNCED}
            ),
            what="first attempts",
        )
        shown = client.get(f"/v1/messages/{message_id}").json()
    assert shown["id"] == message_id
    assert shown["from"] == "app@acme.test"
    assert shown["subject"] == "Hi"
    assert shown["message_id"] == f"<{message_id}@gw.test>"
    assert (shown["tags"], shown["metadata"], shown["tracking"]) == (
        ["t1"],
        {"order": "9"},
        {"opens": False},
    )
    states = {r["email"]: r for r in shown["recipients"]}
    assert states["ann@example.org"]["status"] == "delivered"
    assert states["slow@example.org"]["status"] == "deferred"
    assert "451 4.7.1" in states["slow@example.org"]["last_error"]
    assert states["slow@example.org"]["next_attempt_at"] is not None
    assert states["gone@example.org"]["status"] == "bounced"
    events = {(e["type"], e.get("recipient", "")) for e in shown["events"]}
    assert events == {
        ("queued", ""),
        ("delivered", "ann@example.org"),
        ("deferred", "slow@example.org"),
        ("bounced", "gone@example.org"),
    }
    assert shown["events"][0]["type"] == "queued"


def test_unknown_or_malformed_ids_are_404(idle_api: Api) -> None:
    with idle_api.client(key="reader") as client:
        for message_id in ("0123456789abcdef012345", "nope", "x" * 300):
            response = client.get(f"/v1/messages/{message_id}")
            assert response.status_code == 404
            assert response.json()["field"] == "message_id"


def test_listing_filters_and_cursor_pagination(api_factory: Callable[..., Api]) -> None:
    api = api_factory(deliver=False)
    sender = api.client(key="sender")
    ids = []
    for i in range(5):
        api.clock.advance(60)
        tags = ["even"] if i % 2 == 0 else ["odd"]
        ids.append(
            sender.post(
                "/v1/messages",
                json={
                    **SEND,
                    "to": [f"r{i}@example.org"],
                    "tags": tags,
                },
            ).json()["id"]
        )
    reader = api.client(key="reader")

    def listed(**params: object) -> list[str]:
        response = reader.get("/v1/messages", params=params)
        assert response.status_code == 200, response.text
        return [m["id"] for m in response.json()["data"]]

    newest_first = list(reversed(ids))
    assert listed() == newest_first
    assert listed(tag="even") == [ids[4], ids[2], ids[0]]
    assert listed(recipient="R3@example.org") == [ids[3]]
    assert listed(status="queued") == newest_first
    assert listed(status="delivered") == []
    assert listed(since=_iso(api.clock.now() - 60)) == [ids[4], ids[3]]

    pages, cursor = [], None
    while True:
        params: dict[str, object] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = reader.get("/v1/messages", params=params).json()
        pages.append([m["id"] for m in page["data"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:]]

    bad = reader.get("/v1/messages", params={"limit": 0})
    assert bad.status_code == 400
    assert bad.json()["field"] == "limit"
    assert reader.get("/v1/messages", params={"status": "lost"}).json()["field"] == "status"


def test_stats_count_deliveries_by_status_tag_and_day(api: Api) -> None:
    with api.client(key="admin") as client:
        first = client.post("/v1/messages", json={**SEND, "tags": ["a"]}).json()["id"]
        second = client.post(
            "/v1/messages",
            json={
                **SEND,
                "to": ["x@example.org", "y@example.org"],
                "tags": ["a", "b"],
            },
        ).json()["id"]
        api.wait_delivered(first)
        api.wait_delivered(second, count=2)
        stats = client.get("/v1/stats").json()
        day = dt.datetime.fromtimestamp(api.clock.now(), dt.UTC).date().isoformat()
        assert stats["by_status"] == {"delivered": 3}
        assert stats["by_tag"] == {"a": {"delivered": 3}, "b": {"delivered": 2}}
        assert stats["by_day"] == {day: {"delivered": 3}}
        earlier = client.get("/v1/stats", params={"until": _iso(api.clock.now() - 1)}).json()
        assert earlier["by_status"] == {}
