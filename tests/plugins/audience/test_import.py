"""Black-box CSV imports over HTTP on both engines: planted faults give exact counts and an
errors.csv listing exactly those rows with their codes; idempotent by content; subscribe mode
needs a consent attestation; an import never re-subscribes anyone who unsubscribed, nor adds a
suppressed address; another tenant's key sees nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import wait_until
from tests.plugins.audience.conftest import AudienceGateway
from tests.plugins.audience.csv_faults import CODES, HEADER, error_rows, plant

ATTESTATION = {
    "attested_by": "ops@acme.test",
    "statement": "Yes, send me the Acme newsletter.",
    "statement_version": "2026-01",
    "collected_at": "2026-01-05T10:00:00Z",
    "collected_where": "trade-show-2026",
}


def finished(client: httpx.Client, import_id: int) -> dict[str, Any]:
    def done() -> bool:
        return client.get(f"/v1/imports/{import_id}").json()["status"] != "running"

    wait_until(done, 60, f"import {import_id} to finish")
    result: dict[str, Any] = client.get(f"/v1/imports/{import_id}").json()
    return result


def test_planted_faults_give_exact_counts_and_errors_csv(
    audience_gateway: Callable[..., AudienceGateway],
) -> None:
    running = audience_gateway()
    acme = running.client()
    news = acme.post("/v1/lists", json={"name": "News"}).json()
    planted = plant(rows=5000, faults=270)
    suppressed = acme.post(
        "/v1/suppressions", json={"entries": [{"email": e} for e in planted.suppress]}
    )
    assert suppressed.status_code == 200, suppressed.text
    for email in planted.unsubscribe:
        sub = acme.post(f"/v1/lists/{news['id']}/subscriptions", json={"email": email}).json()
        acme.delete(f"/v1/lists/{news['id']}/subscriptions/{sub['contact_id']}")

    url = f"/v1/lists/{news['id']}/imports"
    refused = acme.post(url, content=planted.data, headers={"content-type": "text/csv"})
    assert refused.status_code == 422 and refused.json()["field"] == "attested_by"
    started = acme.post(
        url,
        params={**ATTESTATION, "file_name": "fair.csv"},
        content=planted.data,
        headers={"content-type": "text/csv"},
    )
    assert started.status_code == 202, started.text
    result = finished(acme, started.json()["id"])
    assert result["status"] == "done", result
    counts = result["counts"]
    assert counts["rows"] == planted.rows
    for code in CODES:
        assert counts[code] == planted.count(code), code
    assert counts["skipped"] == planted.skipped
    assert counts["subscribed"] == planted.subscribed
    assert counts["warnings"] == planted.count("role_address")

    errors = acme.get(f"/v1/imports/{result['id']}/errors.csv")
    assert errors.status_code == 200 and errors.headers["content-type"].startswith("text/csv")
    header, rows = error_rows(errors.content)
    assert header == [*HEADER, "row", "code", "message"]
    assert rows == planted.expected

    # The same file into the same list is the same import.
    again = acme.post(url, params=ATTESTATION, content=planted.data)
    assert again.status_code == 200 and again.json()["id"] == result["id"]
    # Nobody who unsubscribed was subscribed again; suppressed addresses were not added.
    for email in planted.unsubscribe[:5]:
        found = acme.post(f"/v1/lists/{news['id']}/subscriptions", json={"email": email}).json()
        assert found["status"] == "unsubscribed" and not found["changed"]
    preview = acme.post(
        "/v1/segments/preview",
        json={"filter": {"field": "email", "op": "eq", "value": planted.suppress[0]}},
    ).json()
    assert preview["count"] == 0
    # The consent log of an imported contact carries the attestation.
    sample = acme.post(
        "/v1/segments/preview",
        json={"filter": {"field": "list", "op": "eq", "value": news["id"]}, "sample": 1},
    ).json()["sample"][0]
    timeline = acme.get(f"/v1/contacts/{sample['id']}/timeline").json()
    consent = next(e for e in timeline["entries"] if e["kind"] == "consent.subscribe")["detail"]
    assert consent["method"] == "import" and consent["attested_by"] == "ops@acme.test"
    assert consent["form_id"] == "trade-show-2026" and consent["import_id"] == str(result["id"])
    assert len(consent["statement_hash"]) == 64

    # Another tenant's key: no such list, no such import.
    globex = running.client("globex")
    assert globex.get(f"/v1/imports/{result['id']}").status_code == 404
    assert globex.get(f"/v1/imports/{result['id']}/errors.csv").status_code == 404
    assert globex.post(url, params=ATTESTATION, content=planted.data).status_code == 404


def test_suppress_mode_and_unreadable_files(
    audience_gateway: Callable[..., AudienceGateway],
) -> None:
    running = audience_gateway()
    acme = running.client()
    news = acme.post("/v1/lists", json={"name": "News"}).json()
    url = f"/v1/lists/{news['id']}/imports"
    body = b"email,reason\r\nann@example.org,asked\r\n\tbob@example.org ,\r\n"
    started = acme.post(url, params={"mode": "suppress"}, content=body)
    assert started.status_code == 202, started.text
    result = finished(acme, started.json()["id"])
    assert result["counts"]["imported"] == 2
    listed = acme.get("/v1/suppressions").json()["data"]
    assert sorted(e["email"] for e in listed) == ["ann@example.org", "bob@example.org"]
    no_email = acme.post(url, params={"mode": "suppress"}, content=b"name;city\r\nAnn;Rome\r\n")
    assert no_email.status_code == 422 and "email column" in no_email.json()["detail"]
    empty = acme.post(url, params={"mode": "suppress"}, content=b"")
    assert empty.status_code == 422
    latin1 = "email\r\nzoë@example.org\r\n".encode("latin-1")
    refused = acme.post(url, params={"mode": "suppress"}, content=latin1)
    assert refused.status_code == 422 and "not UTF-8" in refused.json()["detail"]
    # Found only past the first buffer: the import fails, saying where.
    late = "".join(f"p{i}@example.org\r\n" for i in range(5000)).encode() + latin1[7:]
    started = acme.post(url, params={"mode": "suppress"}, content=b"email\r\n" + late)
    assert started.status_code == 202, started.text
    result = finished(acme, started.json()["id"])
    assert result["status"] == "failed" and "not UTF-8" in result["error"], result
    pending = acme.post(url, params={"mode": "pending"}, content=body)
    assert pending.status_code == 422 and pending.json()["field"] == "mode"
