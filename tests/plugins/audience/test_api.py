"""Black-box: the audience API over HTTP on both engines — CRUD, subscribe/unsubscribe, bulk
upsert, the timeline, cursor pagination, scopes, RFC 9457 errors, the OpenAPI document, and
tenant isolation tested with another tenant's key on every route."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.plugins.audience.conftest import AudienceGateway

PROBLEM = "application/problem+json"


def problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert body["status"] == status
    return body


def test_contacts_lists_topics_and_subscriptions_end_to_end(
    audience_gateway: Callable[..., AudienceGateway],
) -> None:
    running = audience_gateway()
    acme = running.client()
    created = acme.post(
        "/v1/contacts",
        json={
            "email": "Ann@Example.org",
            "name": "Ann",
            "timezone": "Europe/Berlin",
            "attributes": {"plan": "pro", "seats": 3, "beta": True, "tags": ["a", "b"]},
        },
    )
    assert created.status_code == 201, created.text
    ann = created.json()
    assert ann["email_normalized"] == "ann@example.org" and ann["status"] == "active"
    again = acme.post("/v1/contacts", json={"email": "ann@example.org", "locale": "de"})
    assert again.status_code == 200 and again.json()["id"] == ann["id"]
    assert again.json()["name"] == "Ann" and again.json()["locale"] == "de"
    changed = acme.patch(f"/v1/contacts/{ann['id']}", json={"attributes": {"seats": None}})
    assert changed.json()["attributes"] == {"plan": "pro", "beta": True, "tags": ["a", "b"]}

    news = acme.post("/v1/lists", json={"name": "News", "opt_in": "double"}).json()
    assert news["opt_in"] == "double" and news["visibility"] == "private"
    problem(acme.post("/v1/lists", json={"name": "News"}), 409)
    subscribed = acme.post(
        f"/v1/lists/{news['id']}/subscriptions",
        json={
            "contact_id": ann["id"],
            "consent": {"ip": "198.51.100.7", "statement": "Yes please", "form_id": "crm"},
        },
    )
    assert subscribed.status_code == 200, subscribed.text
    assert subscribed.json()["status"] == "active" and subscribed.json()["changed"]
    by_email = acme.post(f"/v1/lists/{news['id']}/subscriptions", json={"email": "bob@example.org"})
    assert by_email.json()["status"] == "active"
    gone = acme.delete(f"/v1/lists/{news['id']}/subscriptions/{ann['id']}")
    assert gone.status_code == 200 and gone.json()["status"] == "unsubscribed"
    kept = acme.post(f"/v1/lists/{news['id']}/subscriptions", json={"contact_id": ann["id"]})
    assert kept.json()["status"] == "unsubscribed" and not kept.json()["changed"]

    tips = acme.post("/v1/topics", json={"name": "Tips", "default_frequency": "weekly"}).json()
    pref = acme.put(f"/v1/topics/{tips['id']}/contacts/{ann['id']}", json={"subscribed": False})
    assert pref.status_code == 200 and pref.json() == {
        **pref.json(),
        "subscribed": False,
        "frequency": "weekly",
    }

    timeline = acme.get(f"/v1/contacts/{ann['id']}/timeline").json()
    kinds = [e["kind"] for e in timeline["entries"]]
    assert sorted(kinds) == ["consent.subscribe", "consent.topic", "consent.unsubscribe"]
    subscribe = next(e for e in timeline["entries"] if e["kind"] == "consent.subscribe")
    assert subscribe["detail"]["form_id"] == "crm" and len(subscribe["detail"]["ip_hash"]) == 64
    assert "198.51.100.7" not in str(timeline)
    assert timeline["subscriptions"][0]["status"] == "unsubscribed"
    assert timeline["topics"][0]["subscribed"] is False

    assert acme.delete(f"/v1/contacts/{ann['id']}").status_code == 204
    problem(acme.get(f"/v1/contacts/{ann['id']}"), 404)


def test_bulk_upsert_and_cursor_pagination(
    audience_gateway: Callable[..., AudienceGateway],
) -> None:
    running = audience_gateway()
    acme = running.client()
    contacts = [{"email": f"c{i}@example.org", "attributes": {"n": i}} for i in range(25)]
    done = acme.post("/v1/contacts/bulk", json={"contacts": contacts})
    assert done.status_code == 200 and done.json()["created"] == 25
    done = acme.post("/v1/contacts/bulk", json={"contacts": contacts[:5]})
    assert (done.json()["created"], done.json()["updated"]) == (0, 5)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = acme.get(
            "/v1/contacts", params={"limit": 10, **({"cursor": cursor} if cursor else {})}
        )
        seen += [c["email"] for c in page.json()["data"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [c["email"] for c in contacts]
    assert problem(acme.get("/v1/contacts", params={"cursor": "bogus!"}), 400)["field"] == "cursor"
    bad = problem(
        acme.post(
            "/v1/contacts/bulk", json={"contacts": [{"email": "x@example.org"}, {"email": "nope"}]}
        ),
        422,
    )
    assert bad["field"] == "contacts[1].email"


def test_fields_are_checked_and_named(audience_gateway: Callable[..., AudienceGateway]) -> None:
    acme = audience_gateway().client()
    assert problem(acme.post("/v1/contacts", json={"email": "nope"}), 422)["field"] == "email"
    tz = problem(
        acme.post("/v1/contacts", json={"email": "a@example.org", "timezone": "Mars/Base"}), 422
    )
    assert tz["field"] == "timezone"
    unknown = problem(acme.post("/v1/lists", json={"name": "x", "colour": "red"}), 422)
    assert unknown["field"] == "colour"
    attr = problem(
        acme.post("/v1/contacts", json={"email": "a@example.org", "attributes": {"x": {"y": 1}}}),
        422,
    )
    assert str(attr["field"]).startswith("attributes")
    both = problem(acme.post("/v1/lists/1/subscriptions", json={}), 422)
    assert both["field"] == "contact_id"


def test_scopes(audience_gateway: Callable[..., AudienceGateway]) -> None:
    running = audience_gateway()
    acme = running.client()
    ann = acme.post("/v1/contacts", json={"email": "ann@example.org"}).json()
    reader, sender = running.client("acme", "reader"), running.client("acme", "sender")
    assert reader.get(f"/v1/contacts/{ann['id']}").status_code == 200
    problem(reader.post("/v1/contacts", json={"email": "x@example.org"}), 403)
    problem(sender.get("/v1/contacts"), 403)
    problem(httpx.get(f"{running.url}/v1/contacts"), 401)


def test_another_tenants_key_sees_and_changes_nothing(
    audience_gateway: Callable[..., AudienceGateway],
) -> None:
    running = audience_gateway()
    acme, globex = running.client(), running.client("globex")
    ann = acme.post("/v1/contacts", json={"email": "ann@example.org"}).json()
    news = acme.post("/v1/lists", json={"name": "News"}).json()
    tips = acme.post("/v1/topics", json={"name": "Tips"}).json()
    acme.post(f"/v1/lists/{news['id']}/subscriptions", json={"contact_id": ann["id"]})
    c, n, t = ann["id"], news["id"], tips["id"]
    for method, path, body in [
        ("GET", f"/v1/contacts/{c}", None),
        ("PATCH", f"/v1/contacts/{c}", {"name": "Mallory"}),
        ("DELETE", f"/v1/contacts/{c}", None),
        ("GET", f"/v1/contacts/{c}/timeline", None),
        ("GET", f"/v1/lists/{n}", None),
        ("PATCH", f"/v1/lists/{n}", {"name": "Mine"}),
        ("DELETE", f"/v1/lists/{n}", None),
        ("POST", f"/v1/lists/{n}/subscriptions", {"email": "eve@example.org"}),
        ("DELETE", f"/v1/lists/{n}/subscriptions/{c}", None),
        ("GET", f"/v1/topics/{t}", None),
        ("PATCH", f"/v1/topics/{t}", {"name": "Mine"}),
        ("DELETE", f"/v1/topics/{t}", None),
        ("PUT", f"/v1/topics/{t}/contacts/{c}", {"subscribed": False}),
    ]:
        response = globex.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
    for path in ("/v1/contacts", "/v1/lists", "/v1/topics"):
        assert globex.get(path).json()["data"] == []
    # globex's own contact with the same address is a different contact.
    theirs = globex.post("/v1/contacts", json={"email": "ann@example.org"})
    assert theirs.status_code == 201 and theirs.json()["id"] != c
    problem(
        globex.post(f"/v1/lists/{n}/subscriptions", json={"contact_id": theirs.json()["id"]}), 404
    )
    # Nothing of acme's changed.
    assert acme.get(f"/v1/contacts/{c}").json()["name"] == ""
    assert acme.get(f"/v1/lists/{n}").json()["name"] == "News"
    timeline = acme.get(f"/v1/contacts/{c}/timeline").json()
    assert [s["status"] for s in timeline["subscriptions"]] == ["active"]
    assert timeline["topics"] == []


def test_routes_and_bodies_are_in_the_openapi_document(
    audience_gateway: Callable[..., AudienceGateway],
) -> None:
    running = audience_gateway()
    document = httpx.get(f"{running.url}/docs/openapi.json").json()
    paths = document["paths"]
    for path in (
        "/v1/contacts",
        "/v1/contacts/bulk",
        "/v1/contacts/{contact_id}",
        "/v1/contacts/{contact_id}/timeline",
        "/v1/lists",
        "/v1/lists/{list_id}/subscriptions",
        "/v1/lists/{list_id}/subscriptions/{contact_id}",
        "/v1/topics/{topic_id}/contacts/{contact_id}",
    ):
        assert path in paths, path
    body = paths["/v1/contacts"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ContactIn"}
    assert "ContactIn" in document["components"]["schemas"]
    assert "422" in paths["/v1/contacts/{contact_id}"]["patch"]["responses"]


def test_segments_count_and_sample_live_and_narrow_their_list(
    audience_gateway: Callable[..., AudienceGateway],
) -> None:
    running = audience_gateway()
    acme, globex = running.client(), running.client("globex")
    news = acme.post("/v1/lists", json={"name": "News"}).json()
    contacts = [
        {"email": f"c{i}@example.org", "attributes": {"plan": "pro" if i % 2 else "free", "n": i}}
        for i in range(10)
    ]
    acme.post("/v1/contacts/bulk", json={"contacts": contacts})
    for i in range(0, 10, 3):  # c0, c3, c6, c9 on the list
        acme.post(f"/v1/lists/{news['id']}/subscriptions", json={"email": f"c{i}@example.org"})
    pro = {"field": "attributes.plan", "op": "eq", "value": "pro"}
    preview = acme.post("/v1/segments/preview", json={"filter": pro, "sample": 2}).json()
    assert preview["count"] == 5
    assert [c["email"] for c in preview["sample"]] == ["c1@example.org", "c3@example.org"]
    saved = acme.post(
        "/v1/segments", json={"name": "Pro on News", "filter": pro, "list_id": news["id"]}
    )
    assert saved.status_code == 201, saved.text
    segment = saved.json()
    counted = acme.get(f"/v1/segments/{segment['id']}/count").json()
    assert counted["count"] == 2  # c3 and c9: the list narrows the filter, never widens it
    wider = {"any": [pro, {"field": "attributes.n", "op": "gte", "value": 0}]}
    acme.patch(f"/v1/segments/{segment['id']}", json={"filter": wider})
    assert acme.get(f"/v1/segments/{segment['id']}/count").json()["count"] == 4
    bad = problem(
        acme.post(
            "/v1/segments/preview",
            json={"filter": {"all": [{"field": "x", "op": "eq", "value": 1}]}},
        ),
        422,
    )
    assert bad["field"] == "filter.all[0].field"
    missing = problem(acme.post("/v1/segments/preview", json={"filter": pro, "list_id": 999}), 422)
    assert missing["field"] == "list_id"
    # Another tenant's key: nothing to see, nothing to change, and its own count is its own.
    for method, path, body in [
        ("GET", f"/v1/segments/{segment['id']}", None),
        ("GET", f"/v1/segments/{segment['id']}/count", None),
        ("PATCH", f"/v1/segments/{segment['id']}", {"name": "mine"}),
        ("DELETE", f"/v1/segments/{segment['id']}", None),
    ]:
        assert globex.request(method, path, json=body).status_code == 404, (method, path)
    assert globex.post("/v1/segments/preview", json={"filter": pro}).json()["count"] == 0
    theirs = globex.post("/v1/segments", json={"name": "x", "filter": pro, "list_id": news["id"]})
    assert problem(theirs, 422)["field"] == "list_id"
    assert globex.get("/v1/segments").json()["data"] == []
    assert acme.delete(f"/v1/segments/{segment['id']}").status_code == 204
