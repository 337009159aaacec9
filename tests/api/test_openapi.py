"""The served OpenAPI 3.1 document describes every endpoint, its bodies and its problems."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from tests.api.conftest import Api


def test_openapi_document_and_docs_page(idle_api: Api) -> None:
    with idle_api.anonymous() as client:
        document = client.get("/docs/openapi.json").json()
        page = client.get("/docs")
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/v1/messages",
        "/v1/messages/batch",
        "/v1/messages/{message_id}",
        "/v1/stats",
        "/v1/suppressions",
        "/v1/suppressions/{email}",
        "/v1/suppressions/import",
        "/v1/suppressions/export",
        "/v1/webhooks",
        "/v1/webhooks/events",
        "/v1/webhooks/events/{event_id}",
        "/v1/webhooks/{event_id}/replay",
        "/v1/domains/{name}/dns",
        "/v1/domains/{name}/verify",
        "/v1/domains",
        "/v1/domains/{name}/warming",
        "/v1/domains/{name}/health",
        "/v1/domains/{name}/resume",
        "/v1/providers",
        "/v1/providers/{name}/test",
    }
    send = document["paths"]["/v1/messages"]["post"]
    assert set(send["requestBody"]["content"]) == {"application/json", "message/rfc822"}
    schemas = document["components"]["schemas"]
    assert "from" in schemas["SendRequest"]["properties"]
    assert schemas["SendRequest"]["additionalProperties"] is False
    assert "recipients" in schemas["BatchRequest"]["required"]
    problem = send["responses"]["422"]["content"]["application/problem+json"]["schema"]
    assert problem == {"$ref": "#/components/schemas/ProblemDetail"}
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert page.status_code == 200
    assert "swagger" in page.text.lower()


def test_docs_page_loads_its_assets_from_the_gateway_with_integrity(idle_api: Api) -> None:
    with idle_api.anonymous() as client:
        page = client.get("/docs").text
        urls = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert urls and all(u.startswith("/") for u in urls), urls  # nothing from a CDN
        tags = re.findall(r'(?:src|href)="(/docs/assets/[^"]+)" integrity="([^"]+)"', page)
        assert {Path(u).name for u, _ in tags} == {
            "swagger-ui.css",
            "swagger-ui-bundle.js",
            "swagger-ui-standalone-preset.js",
        }
        for url, digest in tags:
            served = client.get(url)
            assert served.status_code == 200
            expected = (
                "sha384-" + base64.b64encode(hashlib.sha384(served.content).digest()).decode()
            )
            assert digest == expected, url
        assert client.get("/docs/assets/nothing.js").status_code == 404
        favicon = client.get("/favicon.ico")
        assert favicon.status_code == 200
        assert favicon.headers["content-type"] == "image/svg+xml"
        assert favicon.content.startswith(b"<svg")


def test_the_document_names_every_status_header_and_parameter(idle_api: Api) -> None:
    with idle_api.anonymous() as client:
        document = client.get("/docs/openapi.json").json()
        allow = client.options("/v1/messages").headers["allow"]
        allow_suppressions = client.options("/v1/suppressions").headers["allow"]
    paths = document["paths"]
    assert set(allow.split(", ")) == {"GET", "OPTIONS", "POST"}
    assert set(allow_suppressions.split(", ")) == {"GET", "OPTIONS", "POST"}
    for path, item in paths.items():
        for method, operation in item.items():
            if "{" in path or path.startswith("/v1/domains"):
                assert "404" in operation["responses"], (method, path)
            assert "Retry-After" in operation["responses"]["429"]["headers"], (method, path)
    send = paths["/v1/messages"]["post"]
    assert {"415", "409"} <= set(send["responses"])
    assert "415" in paths["/v1/suppressions/import"]["post"]["responses"]
    for operation in (send, paths["/v1/messages/batch"]["post"]):
        params = {(p["in"], p["name"]) for p in operation["parameters"]}
        assert ("header", "Idempotency-Key") in params
        assert "Idempotent-Replayed" in operation["responses"]["202"]["headers"]
    assert {("query", n) for n in ("from", "to", "tag", "send_at")} <= {
        (p["in"], p["name"]) for p in send["parameters"]
    }
    events = {p["name"]: p for p in paths["/v1/webhooks/events"]["get"]["parameters"]}
    assert (events["limit"]["schema"]["minimum"], events["limit"]["schema"]["maximum"]) == (1, 500)
    schemas = document["components"]["schemas"]
    assert schemas["EmailAddress"]["pattern"].startswith("^")
    assert schemas["SendRequest"]["properties"]["tags"]["items"]["pattern"]
    with idle_api.client(key="reader") as client:
        assert client.get("/v1/messages", params={"until": "0.5"}).status_code == 400
        assert client.get("/v1/stats", params={"until": "0.5"}).status_code == 400
