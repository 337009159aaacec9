"""API keys: missing or wrong keys, scopes, tenant isolation and the per-key rate limit."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.api.conftest import Api

SEND = {"from": "app@acme.test", "to": ["ann@example.org"], "subject": "Hi", "text": "Hi"}


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer gwk_not-a-real-key", "Basic dXNlcjpwYXNz", "Bearer", "gwk_raw-key-no-scheme"],
)
def test_requests_without_a_valid_key_are_401(idle_api: Api, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    with idle_api.anonymous(headers=headers) as client:
        for method, path in [
            ("POST", "/v1/messages"),
            ("GET", "/v1/messages"),
            ("GET", "/v1/stats"),
            ("GET", "/v1/suppressions"),
        ]:
            response = client.request(method, path, json=SEND if method == "POST" else None)
            assert response.status_code == 401, (method, path)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["field"] == "Authorization"
    assert idle_api.deliveries() == []


@pytest.mark.parametrize(
    ("key", "method", "path"),
    [
        ("reader", "POST", "/v1/messages"),
        ("reader", "POST", "/v1/messages/batch"),
        ("reader", "POST", "/v1/suppressions"),
        ("reader", "DELETE", "/v1/suppressions/ann@example.org"),
        ("sender", "GET", "/v1/messages"),
        ("sender", "GET", "/v1/messages/0123456789abcdef012345"),
        ("sender", "GET", "/v1/stats"),
        ("sender", "GET", "/v1/suppressions/export"),
    ],
)
def test_a_key_without_the_scope_is_403(idle_api: Api, key: str, method: str, path: str) -> None:
    with idle_api.client("acme", key) as client:
        response = client.request(method, path, json=SEND if method == "POST" else None)
    assert response.status_code == 403, response.text
    assert "scope" in response.json()["detail"]
    assert idle_api.deliveries() == []


def test_a_key_never_sees_another_tenants_messages(api: Api) -> None:
    acme = api.client("acme", "admin")
    globex = api.client("globex", "admin")
    sent = acme.post("/v1/messages", json=SEND)
    assert sent.status_code == 202
    message_id = sent.json()["id"]

    assert acme.get(f"/v1/messages/{message_id}").status_code == 200
    foreign = globex.get(f"/v1/messages/{message_id}")
    assert foreign.status_code == 404, "another tenant's message is indistinguishable from none"
    assert foreign.json()["title"] == "Not found"
    assert globex.get("/v1/messages").json()["data"] == []
    assert acme.get("/v1/messages").json()["data"][0]["id"] == message_id
    assert globex.get("/v1/stats").json()["by_status"] == {}
    assert sum(acme.get("/v1/stats").json()["by_status"].values()) == 1

    acme.post("/v1/suppressions", json={"entries": [{"email": "x@example.org"}]})
    assert globex.get("/v1/suppressions").json()["data"] == []
    assert globex.delete("/v1/suppressions/x@example.org").status_code == 404
    assert [e["email"] for e in acme.get("/v1/suppressions").json()["data"]] == ["x@example.org"]


def test_tenants_send_only_from_their_domains(api: Api) -> None:
    globex = api.client("globex", "admin")  # no sending_domains: any domain no one else lists
    assert globex.post("/v1/messages", json={**SEND, "from": "app@globex.test"}).status_code == 202
    taken = globex.post("/v1/messages", json=SEND)
    assert (taken.status_code, taken.json()["field"]) == (422, "from"), "acme.test is acme's"
    acme = api.client("acme", "admin")
    refused = acme.post("/v1/messages", json={**SEND, "from": "ceo@globex.test"})
    assert refused.status_code == 422
    assert refused.json()["field"] == "from"


def test_rate_limit_answers_429_with_retry_after(api_factory: Callable[..., Api]) -> None:
    api = api_factory(rate_limit=2.0, rate_burst=3, deliver=False)
    client = api.client("acme", "reader")
    assert [client.get("/v1/stats").status_code for _ in range(3)] == [200, 200, 200]
    limited = client.get("/v1/stats")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert limited.headers["content-type"] == "application/problem+json"
    # Another key has its own bucket.
    assert api.client("acme", "admin").get("/v1/stats").status_code == 200
    api.clock.advance(0.5)  # 2 per second: one token back
    assert client.get("/v1/stats").status_code == 200
    assert client.get("/v1/stats").status_code == 429
