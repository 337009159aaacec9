"""Idempotency-Key: a retried POST answers the first result and never queues twice."""

from __future__ import annotations

import concurrent.futures

from tests.api.conftest import Api
from tests.conftest import wait_until

SEND = {
    "from": "app@acme.test",
    "to": ["ann@example.org", "bob@example.org"],
    "subject": "Once",
    "text": "Only once.",
}


def test_a_retry_returns_the_same_id_and_queues_once(api: Api) -> None:
    client = api.client(key="sender")
    headers = {"Idempotency-Key": "order-1001"}
    first = client.post("/v1/messages", json=SEND, headers=headers)
    again = client.post("/v1/messages", json=SEND, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    message_id = first.json()["id"]
    api.wait_delivered(message_id, count=2)
    wait_until(lambda: len(api.sink.messages) == 2, what="the two recipients")
    assert len(api.deliveries()) == 2, "queued once: one delivery per recipient, no more"
    listed = api.client(key="reader").get("/v1/messages").json()["data"]
    assert [m["id"] for m in listed] == [message_id]

    other = client.post("/v1/messages", json=SEND, headers={"Idempotency-Key": "order-1002"})
    assert other.json()["id"] != message_id


def test_concurrent_duplicates_queue_once(api: Api) -> None:
    client = api.client(key="sender")
    headers = {"Idempotency-Key": "burst-7"}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: client.post("/v1/messages", json=SEND, headers=headers), range(8))
        )
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(api.deliveries()) == 2


def test_a_key_reused_for_another_request_is_refused(api: Api) -> None:
    client = api.client(key="sender")
    headers = {"Idempotency-Key": "k-1"}
    assert client.post("/v1/messages", json=SEND, headers=headers).status_code == 202
    reused = client.post("/v1/messages", json={**SEND, "subject": "Other"}, headers=headers)
    assert reused.status_code == 422
    assert reused.json()["field"] == "Idempotency-Key"
    assert len(api.deliveries()) == 2


def test_keys_are_per_tenant_and_expire_after_24_hours(api: Api) -> None:
    headers = {"Idempotency-Key": "shared-name"}
    acme = api.client("acme", "sender").post("/v1/messages", json=SEND, headers=headers)
    globex = api.client("globex", "admin").post(
        "/v1/messages", json={**SEND, "from": "app@globex.test"}, headers=headers
    )
    assert acme.json()["id"] != globex.json()["id"]
    api.clock.advance(24 * 3600 + 1)
    later = api.client("acme", "sender").post("/v1/messages", json=SEND, headers=headers)
    assert later.status_code == 202
    assert later.json()["id"] != acme.json()["id"]
    assert "Idempotent-Replayed" not in later.headers


def test_a_malformed_key_is_refused(idle_api: Api) -> None:
    with idle_api.client(key="sender") as client:
        response = client.post("/v1/messages", json=SEND, headers={"Idempotency-Key": "a b"})
    assert response.status_code == 400
    assert response.json()["field"] == "Idempotency-Key"
    assert idle_api.deliveries() == []
