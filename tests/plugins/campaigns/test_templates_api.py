"""Black-box: ``/v1/templates`` on both engines — saving checks (syntax, undeclared and
reserved names, limits), versions, text derived from HTML, preview as a contact with
merge-field fallbacks, required variables refused up front, and tenant isolation."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.plugins.audience.conftest import AudienceGateway

HTML = """<html><head><style>p {color: red}</style></head><body>
<h1>Hi {{ contact.first_name | default("there") }}</h1>
<p>Your code: <a href="https://shop.example/{{ code }}">{{ code }}</a>
from {{ contact.company | default("us") }}.</p>
<p>{{ greeting }}</p>
</body></html>"""


def problem(response: httpx.Response, status: int, field: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    if field is not None:
        assert body["field"] == field, body
    return body


def test_templates_are_checked_versioned_and_previewed_as_a_contact(
    campaigns_gateway: Callable[..., AudienceGateway],
) -> None:
    running = campaigns_gateway()
    acme = running.client()
    variables = [
        {"name": "code", "required": True},
        {"name": "greeting", "default": "See you soon"},
    ]
    created = acme.post(
        "/v1/templates",
        json={
            "name": "welcome",
            "subject": "Welcome, {{ contact.first_name | default('friend') }}",
            "preheader": "A gift & more inside",
            "html": HTML,
            "variables": variables,
        },
    )
    assert created.status_code == 201, created.text
    template = created.json()
    assert template["latest_version"] == 1 and template["latest"]["text_derived"]
    assert "Your code: {{ code }} (https://shop.example/{{ code }})" in template["latest"]["text"]
    tid = template["id"]

    # Refused on save, naming the field: syntax, undeclared and reserved names, a limit.
    base = {"name": "bad", "subject": "s", "variables": variables}
    problem(acme.post("/v1/templates", json={**base, "html": "{% if %}"}), 422, "html")
    refused = problem(
        acme.post("/v1/templates", json={**base, "html": "{{ code }}{{ secret }}"}), 422, "html"
    )
    assert "secret" in str(refused["detail"])
    reserved = [{"name": "contact"}]
    problem(acme.post("/v1/templates", json={**base, "html": "x", "variables": reserved}), 422)
    hog = problem(acme.post("/v1/templates", json={**base, "html": "{{ 'a' * 10**9 }}"}), 422)
    assert hog["limit"] == "output_size"
    problem(acme.post("/v1/templates", json={**base, "html": "{{ ''.__class__ }}"}), 422, "html")
    problem(acme.post("/v1/templates", json={**base, "name": "welcome", "html": "x"}), 409)

    # Preview: a contact without a name gets the fallbacks; one with a name and attributes
    # gets them, HTML-escaped in the HTML part only.
    plain = acme.post(f"/v1/templates/{tid}/preview", json={"variables": {"code": "A1"}})
    assert plain.status_code == 200, plain.text
    shown = plain.json()
    assert shown["subject"] == "Welcome, friend"
    assert "<h1>Hi there</h1>" in shown["html"] and "See you soon" in shown["html"]
    assert "display:none" in shown["html"] and "A gift &amp; more inside" in shown["html"]
    assert shown["preheader"] == "A gift & more inside"
    assert shown["text"].startswith("Hi there\n") and "(https://shop.example/A1)" in shown["text"]
    ann = acme.post(
        "/v1/contacts",
        json={
            "email": "ann@example.org",
            "name": "Ann <b>Lee</b>",
            "attributes": {"company": "R&D"},
        },
    ).json()
    as_ann = acme.post(
        f"/v1/templates/{tid}/preview",
        json={"email": "ann@example.org", "variables": {"code": "B2", "greeting": "Ciao"}},
    ).json()
    assert as_ann["subject"] == "Welcome, Ann"
    assert "from R&amp;D." in as_ann["html"] and "Ciao" in as_ann["html"]
    assert "from R&D." in as_ann["text"]
    by_id = acme.post(
        f"/v1/templates/{tid}/preview", json={"contact_id": ann["id"], "variables": {"code": "C"}}
    )
    assert by_id.json()["subject"] == "Welcome, Ann"
    missing = problem(acme.post(f"/v1/templates/{tid}/preview", json={}), 422, "variables")
    assert "code" in str(missing["detail"])
    problem(acme.post(f"/v1/templates/{tid}/preview", json={"email": "nobody@example.org"}), 404)

    # A new version; the old one stays as it was.
    v2 = acme.post(
        f"/v1/templates/{tid}/versions",
        json={"subject": "Second", "html": "<p>2</p>", "text": "two"},
    )
    assert v2.status_code == 201 and v2.json()["version"] == 2
    assert acme.get(f"/v1/templates/{tid}").json()["latest"]["subject"] == "Second"
    assert acme.get(f"/v1/templates/{tid}/versions/1").json()["subject"].startswith("Welcome")
    assert [v["version"] for v in acme.get(f"/v1/templates/{tid}/versions").json()["data"]] == [
        2,
        1,
    ]
    old = acme.post(f"/v1/templates/{tid}/preview", json={"version": 1, "variables": {"code": "X"}})
    assert old.json()["version"] == 1 and old.json()["subject"] == "Welcome, friend"
    assert acme.post(f"/v1/templates/{tid}/preview", json={}).json()["text"] == "two"

    # Scopes and tenants.
    problem(running.client(key="reader").post("/v1/templates", json={**base, "html": "x"}), 403)
    globex = running.client("globex")
    for response in (
        globex.get(f"/v1/templates/{tid}"),
        globex.post(f"/v1/templates/{tid}/preview", json={}),
        globex.post(f"/v1/templates/{tid}/versions", json={"subject": "s", "html": "h"}),
        globex.delete(f"/v1/templates/{tid}"),
    ):
        problem(response, 404)
    assert globex.get("/v1/templates").json()["data"] == []
    assert [t["name"] for t in acme.get("/v1/templates").json()["data"]] == ["welcome"]
    assert acme.delete(f"/v1/templates/{tid}").status_code == 204
    problem(acme.get(f"/v1/templates/{tid}"), 404)
