"""``POST /v1/events``: idempotent by event id, the contact by id or address, per tenant,
RFC 9457 errors, in the OpenAPI document; flow documents checked with one error per bad step."""

from __future__ import annotations

from collections.abc import Callable

from tests.plugins.audience.conftest import AudienceGateway


def test_events_are_idempotent_tenant_scoped_and_documented(
    automation_gateway: Callable[..., AudienceGateway],
) -> None:
    running = automation_gateway()
    sender = running.client("acme", "sender")
    event = {
        "id": "e-1",
        "name": "cart_abandoned",
        "email": "Ann@Example.org",
        "properties": {"cart_url": "https://shop.test/c/1", "items": ["a"], "total": 12.5},
    }
    first = sender.post("/v1/events", json=event)
    assert first.status_code == 202, first.text
    assert first.json()["duplicate"] is False
    again = sender.post("/v1/events", json=event)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["contact_id"] == first.json()["contact_id"]
    by_id = sender.post(
        "/v1/events", json={"id": "e-2", "name": "x", "contact_id": first.json()["contact_id"]}
    )
    assert by_id.status_code == 202
    # another tenant's contact id is unknown to this key
    other = running.client("globex", "admin").post(
        "/v1/events", json={"id": "e-3", "name": "x", "contact_id": first.json()["contact_id"]}
    )
    assert other.status_code == 404
    assert other.headers["content-type"].startswith("application/problem+json")
    assert other.json()["field"] == "contact_id"
    both = sender.post(
        "/v1/events", json={"id": "e-4", "name": "x", "contact_id": 1, "email": "a@b.c"}
    )
    assert both.status_code == 422 and both.json()["field"] == "contact_id"
    unknown = sender.post(
        "/v1/events", json={"id": "e-5", "name": "x", "email": "a@b.c", "bogus": 1}
    )
    assert unknown.status_code == 422 and unknown.json()["field"] == "bogus"
    reader = running.client("acme", "reader").post("/v1/events", json=event)
    assert reader.status_code == 403
    spec = sender.get("/docs/openapi.json").json()
    assert "/v1/events" in spec["paths"] and "/v1/flows" in spec["paths"]


def test_a_flow_document_gets_one_error_per_bad_step(
    automation_gateway: Callable[..., AudienceGateway],
) -> None:
    running = automation_gateway()
    admin = running.client("acme", "admin")
    bad = {
        "name": "broken",
        "trigger": {"event": "signup"},
        "steps": [
            {"type": "send", "from": "shop@acme.test", "subject": "Hi"},
            {"type": "wait", "duration": "soon"},
            {"type": "teleport"},
            {"type": "branch", "if": [{"engaged": "opened"}], "then": "nowhere"},
            {"type": "wait", "event": "order_placed"},
        ],
    }
    answer = admin.post("/v1/flows", json=bad)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    fields = [e["field"] for e in problem["errors"]]
    assert fields[0] == "steps[2]" or "steps[2]" in fields[0]
    assert problem["field"] == fields[0]
    # the first pass names undecodable steps; fix them and the next pass names the rest
    bad["steps"][1] = {"type": "wait", "duration": "soon"}
    bad["steps"][2] = {"type": "exit"}
    answer = admin.post("/v1/flows", json=bad)
    fields = [e["field"] for e in answer.json()["errors"]]
    assert fields == ["steps[0].html", "steps[1].duration", "steps[3].then", "steps[4].timeout"]
