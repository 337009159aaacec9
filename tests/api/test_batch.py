"""POST /v1/messages/batch: one sandboxed template, many recipients, one result each."""

from __future__ import annotations

import email
from collections.abc import Callable
from email import policy
from typing import Any

import pytest

from gateway.store.base import DeliveryFilter
from tests.api.conftest import Api
from tests.conftest import wait_until

TEMPLATE: dict[str, Any] = {
    "from": "news@acme.test",
    "subject": "Hello {{ name }}",
    "text": "Dear {{ name }}, your code is {{ code }}.\n",
    "html": "<p>Dear {{ name }}, code <b>{{ code }}</b></p>",
    "tags": ["newsletter"],
}


def _body(raw: bytes, kind: str) -> str:
    part = email.message_from_bytes(raw, policy=policy.default).get_body((kind,))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def test_a_thousand_recipients_each_get_their_own_rendering(
    api_factory: Callable[..., Api],
) -> None:
    api = api_factory(deliver=False)
    recipients = [
        {
            "to": {"email": f"user{i}@example.org", "name": f"User {i}"},
            "variables": {"name": f"User {i}", "code": i * 7},
        }
        for i in range(1000)
    ]
    with api.client(key="sender") as client:
        response = client.post("/v1/messages/batch", json={**TEMPLATE, "recipients": recipients})
    assert response.status_code == 202, response.text[:500]
    body = response.json()
    assert (body["queued"], body["suppressed"], body["failed"]) == (1000, 0, 0)
    results = body["results"]
    assert [r["index"] for r in results] == list(range(1000))
    assert len({r["id"] for r in results}) == 1000
    store = api.gw.gateway.store
    for i in (0, 1, 499, 998, 999):
        message = api.gw.call(store.get_message(results[i]["id"]))
        assert message is not None
        parsed = email.message_from_bytes(message.raw, policy=policy.default)
        assert parsed["Subject"] == f"Hello User {i}"
        assert parsed["To"] == f"User {i} <user{i}@example.org>"
        assert _body(message.raw, "plain") == f"Dear User {i}, your code is {i * 7}.\n"
        assert f"code <b>{i * 7}</b>" in _body(message.raw, "html")
        deliveries = api.gw.call(store.list_deliveries(DeliveryFilter(message_id=message.id)))
        assert [d.recipient for d in deliveries] == [f"user{i}@example.org"]
    assert len(api.deliveries()) == 1000


def test_batch_is_delivered_and_html_variables_are_escaped(api: Api) -> None:
    recipients = [
        {"to": "ann@example.org", "variables": {"name": "Ann", "code": "<script>x</script>"}},
        {"to": "bob@example.org", "variables": {"name": "Bob"}},  # no code: that one fails
    ]
    with api.client(key="sender") as client:
        response = client.post("/v1/messages/batch", json={**TEMPLATE, "recipients": recipients})
    assert response.status_code == 202
    ann, bob = response.json()["results"]
    assert ann["status"] == "queued"
    assert bob["status"] == "failed" and "id" not in bob
    assert bob["error"]["field"] == "text"
    assert "'code' is undefined" in bob["error"]["detail"]
    api.wait_delivered(ann["id"])
    wait_until(lambda: len(api.sink.messages) == 1, what="Ann's copy")
    raw = api.sink.messages[0].data
    assert "&lt;script&gt;" in _body(raw, "html")
    assert "<script>x</script>" in _body(raw, "plain"), "text is not HTML-escaped"


@pytest.mark.parametrize(
    ("field", "source"),
    [
        ("subject", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
        ("html", "{{ name.__init__.__globals__ }}"),
        ("text", "{{ cycler['__init__'] }}"),
        ("text", "{% for x in %}"),
    ],
)
def test_templates_reaching_for_python_internals_are_refused(
    idle_api: Api, field: str, source: str
) -> None:
    body = {**TEMPLATE, field: source, "recipients": [{"to": "ann@example.org"}]}
    with idle_api.client(key="sender") as client:
        response = client.post("/v1/messages/batch", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert idle_api.deliveries() == []


def test_the_sandbox_still_refuses_internals_it_only_sees_at_render_time(api: Api) -> None:
    body = {
        **TEMPLATE,
        "text": "{{ name|attr('__class__') }}",
        "recipients": [{"to": "ann@example.org", "variables": {"name": "x", "code": 1}}],
    }
    with api.client(key="sender") as client:
        response = client.post("/v1/messages/batch", json=body)
    assert response.status_code == 202
    (result,) = response.json()["results"]
    assert result["status"] == "failed"
    assert "template refused" in result["error"]["detail"]
    assert api.deliveries() == []


def test_a_variable_cannot_inject_a_header(api: Api) -> None:
    variables = {"name": "Ann\r\nBcc: victim@example.org", "code": 1}
    body = {**TEMPLATE, "recipients": [{"to": "ann@example.org", "variables": variables}]}
    with api.client(key="sender") as client:
        (result,) = client.post("/v1/messages/batch", json=body).json()["results"]
    assert result["status"] == "failed"
    assert result["error"]["field"] == "subject"
    assert api.deliveries() == []


def test_batch_limits_and_idempotent_retry(api: Api) -> None:
    with api.client(key="sender") as client:
        empty = client.post("/v1/messages/batch", json={**TEMPLATE, "recipients": []})
        assert empty.status_code == 422 and empty.json()["field"] == "recipients"
        too_many = [{"to": f"u{i}@example.org"} for i in range(1001)]
        assert (
            client.post("/v1/messages/batch", json={**TEMPLATE, "recipients": too_many}).status_code
            == 422
        )
        recipients = [
            {"to": f"u{i}@example.org", "variables": {"name": "U", "code": i}} for i in range(3)
        ]
        headers = {"Idempotency-Key": "batch-1"}
        first = client.post(
            "/v1/messages/batch", json={**TEMPLATE, "recipients": recipients}, headers=headers
        )
        again = client.post(
            "/v1/messages/batch", json={**TEMPLATE, "recipients": recipients}, headers=headers
        )
    assert first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(api.deliveries()) == 3
