"""/v1/suppressions: list, add, remove, CSV import/export; suppressed recipients are skipped."""

from __future__ import annotations

import csv
import io

from tests.api.conftest import Api

SEND = {"from": "app@acme.test", "to": ["ann@example.org"], "subject": "Hi", "text": "Hi"}


def test_add_list_remove(api: Api) -> None:
    admin = api.client(key="admin")
    reader = api.client(key="reader")
    added = admin.post(
        "/v1/suppressions",
        json={
            "entries": [
                {"email": "Bounced@Example.org", "reason": "bounce", "detail": "550 5.1.1"},
                {"email": "quit@example.org", "reason": "unsubscribe"},
                {"email": "manual@example.org"},
            ]
        },
    )
    assert added.status_code == 200 and added.json() == {"count": 3}
    listing = reader.get("/v1/suppressions").json()
    assert [(e["email"], e["reason"]) for e in listing["data"]] == [
        ("bounced@example.org", "bounce"),
        ("manual@example.org", "manual"),
        ("quit@example.org", "unsubscribe"),
    ]
    assert listing["data"][0]["detail"] == "550 5.1.1"
    assert listing["data"][0]["created_at"].startswith("2027-01-15T")
    only = reader.get("/v1/suppressions", params={"reason": "unsubscribe"}).json()["data"]
    assert [e["email"] for e in only] == ["quit@example.org"]
    page = reader.get("/v1/suppressions", params={"limit": 2}).json()
    assert page["next_cursor"] == "manual@example.org"
    rest = reader.get("/v1/suppressions", params={"cursor": page["next_cursor"]}).json()
    assert [e["email"] for e in rest["data"]] == ["quit@example.org"]

    assert admin.delete("/v1/suppressions/quit@example.org").status_code == 204
    assert admin.delete("/v1/suppressions/quit@example.org").status_code == 404
    assert len(reader.get("/v1/suppressions").json()["data"]) == 2

    bad = admin.post(
        "/v1/suppressions", json={"entries": [{"email": "x@example.org", "reason": "dislike"}]}
    )
    assert bad.status_code == 422 and bad.json()["field"] == "entries[0].reason"


def test_csv_import_and_export(api: Api) -> None:
    admin = api.client(key="admin")
    text = "email,reason,detail\r\na@example.org,complaint,fbl\r\nb@example.org,,\r\n"
    imported = admin.post(
        "/v1/suppressions/import", content=text.encode(), headers={"Content-Type": "text/csv"}
    )
    assert imported.status_code == 200 and imported.json() == {"count": 2}
    exported = api.client(key="reader").get("/v1/suppressions/export")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [(r["email"], r["reason"], r["detail"]) for r in rows] == [
        ("a@example.org", "complaint", "fbl"),
        ("b@example.org", "manual", ""),
    ]
    broken = admin.post(
        "/v1/suppressions/import",
        content=b"email,reason\r\nc@example.org,no\r\n",
        headers={"Content-Type": "text/csv"},
    )
    assert broken.status_code == 422
    assert broken.json()["field"] == "line 2.reason"
    no_header = admin.post(
        "/v1/suppressions/import",
        content=b"c@example.org\r\n",
        headers={"Content-Type": "text/csv"},
    )
    assert no_header.status_code == 422
    # Found by schemathesis: a stray CR once escaped as a 500.
    for garbled in (
        b"B\xf2\xa6\xbe\xa4&\x0f\\N\xc3\x90\r\xf0\xaa\xbc\xa9\xc3\x8bN",
        b"email\r\na\x00b@example.org\r\n",
    ):
        response = admin.post(
            "/v1/suppressions/import", content=garbled, headers={"Content-Type": "text/csv"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["field"] in ("body", "line 2.email")


def test_suppressed_recipients_are_skipped_and_reported(api: Api) -> None:
    admin = api.client(key="admin")
    admin.post(
        "/v1/suppressions", json={"entries": [{"email": "gone@example.org", "reason": "bounce"}]}
    )
    response = admin.post(
        "/v1/messages", json={**SEND, "to": ["ann@example.org", "GONE@example.org"]}
    )
    assert response.status_code == 202
    assert response.json()["recipients"] == [
        {"email": "ann@example.org", "status": "queued"},
        {
            "email": "GONE@example.org",
            "status": "suppressed",
            "reason": "bounce",
            "scope": "tenant",
        },
    ]
    assert [d.recipient for d in api.deliveries(response.json()["id"])] == ["ann@example.org"]

    everyone = admin.post("/v1/messages", json={**SEND, "to": ["gone@example.org"]})
    assert everyone.status_code == 422
    assert everyone.json()["type"].endswith("recipients-suppressed")
    assert len(api.deliveries()) == 1

    template = {k: v for k, v in SEND.items() if k != "to"}
    batch = admin.post(
        "/v1/messages/batch",
        json={
            **template,
            "recipients": [{"to": "gone@example.org"}, {"to": "new@example.org"}],
        },
    ).json()
    assert [r["status"] for r in batch["results"]] == ["suppressed", "queued"]
    assert batch["suppressed"] == 1


def test_csv_export_cannot_carry_a_spreadsheet_formula(api: Api) -> None:
    admin = api.client(key="admin")
    formulas = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\tx"]
    entries = [
        {"email": f"f{i}@example.org", "reason": "manual", "detail": detail}
        for i, detail in enumerate(formulas[:4])
    ] + [{"email": "-dash@example.org", "reason": "manual", "detail": "plain"}]
    assert admin.post("/v1/suppressions", json={"entries": entries}).status_code == 200
    exported = admin.get("/v1/suppressions/export").text
    rows = {r["email"]: r for r in csv.DictReader(io.StringIO(exported))}
    assert rows["'-dash@example.org"]["detail"] == "plain"
    for i, detail in enumerate(formulas[:4]):
        assert rows[f"f{i}@example.org"]["detail"] == "'" + detail
    for row in rows.values():
        assert not row["email"].startswith(("=", "+", "-", "@", "\t", "\r"))
        assert not row["detail"].startswith(("=", "+", "-", "@", "\t", "\r"))
    # Importing the export gives back the same entries.
    assert admin.delete("/v1/suppressions/-dash@example.org").status_code == 204
    again = admin.post(
        "/v1/suppressions/import", content=exported.encode(), headers={"Content-Type": "text/csv"}
    )
    assert again.status_code == 200, again.text
    listed = {e["email"]: e["detail"] for e in admin.get("/v1/suppressions").json()["data"]}
    assert listed["-dash@example.org"] == "plain"
    assert listed["f0@example.org"] == formulas[0]


def test_scopes_are_accepted_shown_filtered_and_removed_one_at_a_time(api: Api) -> None:
    admin = api.client(key="admin")
    added = admin.post(
        "/v1/suppressions",
        json={
            "entries": [
                {"email": "ann@example.org", "reason": "unsubscribe", "scope": "stream:news"},
                {"email": "ann@example.org", "reason": "bounce"},
            ]
        },
    )
    assert added.status_code == 200 and added.json() == {"count": 2}
    listed = admin.get("/v1/suppressions").json()["data"]
    assert [(e["email"], e["scope"], e["reason"]) for e in listed] == [
        ("ann@example.org", "tenant", "bounce"),
        ("ann@example.org", "stream:news", "unsubscribe"),
    ]
    page = admin.get("/v1/suppressions", params={"limit": 1}).json()
    assert page["next_cursor"] == "ann@example.org"
    rest = admin.get("/v1/suppressions", params={"cursor": page["next_cursor"]}).json()["data"]
    assert [e["scope"] for e in rest] == ["stream:news"]
    only = admin.get("/v1/suppressions", params={"scope": "stream:news"}).json()["data"]
    assert [e["scope"] for e in only] == ["stream:news"]
    bad = admin.post("/v1/suppressions", json={"entries": [{"email": "x@e.org", "scope": "a b"}]})
    assert bad.status_code == 422 and bad.json()["field"] == "entries[0].scope"

    removed = admin.delete("/v1/suppressions/ann@example.org", params={"scope": "tenant"})
    assert removed.status_code == 204
    assert [e["scope"] for e in admin.get("/v1/suppressions").json()["data"]] == ["stream:news"]

    # A send in that stream reports the scoped entry; other streams are not stopped by it.
    stopped = admin.post("/v1/messages", json={**SEND, "to": ["ann@example.org", "b@e.org"]})
    assert stopped.status_code == 202
    assert [r["status"] for r in stopped.json()["recipients"]] == ["queued", "queued"]

    text = "email,reason,scope\r\nc@example.org,unsubscribe,stream:news\r\nd@example.org,,\r\n"
    imported = admin.post(
        "/v1/suppressions/import", content=text.encode(), headers={"Content-Type": "text/csv"}
    )
    assert imported.json() == {"count": 2}
    exported = list(csv.reader(io.StringIO(admin.get("/v1/suppressions/export").text)))
    assert exported[0] == ["email", "reason", "created_at", "detail", "scope"]
    assert [(row[0], row[4]) for row in exported[1:]] == [
        ("ann@example.org", "stream:news"),
        ("c@example.org", "stream:news"),
        ("d@example.org", "tenant"),
    ]
