"""POST /v1/messages: JSON and raw MIME in, durable, delivered to a real SMTP sink; bad input
is a problem detail naming the field, and nothing is queued."""

from __future__ import annotations

import email
from email import policy
from typing import Any

import pytest

from tests.api.conftest import Api, b64
from tests.conftest import wait_until

MESSAGE: dict[str, Any] = {
    "from": {"email": "billing@acme.test", "name": "Acme Billing"},
    "to": [{"email": "ann@example.org", "name": "Ann Example"}, "bob@example.net"],
    "cc": ["carol@example.com"],
    "bcc": ["dave@example.com"],
    "reply_to": ["help@acme.test"],
    "subject": "Your invoice Ω",
    "text": "Hello Ann,\nyour invoice is attached.\n",
    "html": '<p>Hello <b>Ann</b></p><img src="cid:logo">',
    "headers": {"X-Campaign": "march"},
    "attachments": [
        {
            "filename": "invoice.pdf",
            "content": b64(b"%PDF-1.4 fake"),
            "content_type": "application/pdf",
        },
        {
            "filename": "logo.png",
            "content": b64(b"\x89PNG fake"),
            "content_type": "image/png",
            "content_id": "logo",
        },
    ],
    "tags": ["invoice"],
    "metadata": {"customer": "42"},
    "tracking": {"opens": True, "clicks": False},
}


def test_json_message_is_built_stored_and_delivered_to_the_sink(api: Api) -> None:
    with api.client(key="sender") as client:
        response = client.post("/v1/messages", json=MESSAGE)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert [r["email"] for r in body["recipients"]] == [
        "ann@example.org",
        "bob@example.net",
        "carol@example.com",
        "dave@example.com",
    ]
    # 202 means durable: the message is in the spool before the answer.
    assert len(api.deliveries(body["id"])) == 4
    api.wait_delivered(body["id"], count=4)
    wait_until(lambda: len(api.sink.messages) == 4, what="four copies at the sink")

    received = api.sink.to("dave@example.com")[0]
    assert received.mail_from == "billing@acme.test"
    raw = received.data
    assert b"\r\n" in raw and raw.count(b"\n") == raw.count(b"\r\n"), "CRLF line ends only"
    assert raw.startswith(b"Received: from ")
    assert f"Message-ID: <{body['id']}@gw.test>\r\n".encode() in raw
    assert b"From: Acme Billing <billing@acme.test>\r\n" in raw
    assert b"To: Ann Example <ann@example.org>, bob@example.net\r\n" in raw
    assert b"Cc: carol@example.com\r\n" in raw
    assert b"Reply-To: help@acme.test\r\n" in raw
    assert b"X-Campaign: march\r\n" in raw
    assert b"Subject: Your invoice =?utf-8?q?=CE=A9?=\r\n" in raw, "RFC 2047 encoded"
    assert b"dave@example.com" not in raw.split(b"\r\n\r\n")[0], "Bcc never appears in headers"
    assert raw.isascii(), "7-bit clean, so any relay takes it"

    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "Your invoice Ω"
    assert parsed.get_content_type() == "multipart/mixed"
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert text is not None
    assert text.get_content().replace("\r\n", "\n") == "Hello Ann,\nyour invoice is attached.\n"
    assert html is not None and "<b>Ann</b>" in html.get_content()
    parts = {p.get_filename(): p for p in parsed.walk() if p.get_filename()}
    assert parts["invoice.pdf"].get_content() == b"%PDF-1.4 fake"
    assert parts["invoice.pdf"].get_content_disposition() == "attachment"
    assert parts["logo.png"]["Content-ID"] == "<logo>"
    assert parts["logo.png"].get_content_disposition() == "inline"


RAW = (
    b"From: App <app@acme.test>\r\nTo: <ann@example.org>\r\nSubject: Raw one\r\n"
    b"Message-ID: <raw-1@acme.test>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"Line one\r\n.leading dot stays\r\n\xc3\xa9 8-bit body\r\n"
)


def test_raw_mime_is_accepted_byte_intact(api: Api) -> None:
    with api.client(key="sender") as client:
        response = client.post(
            "/v1/messages",
            content=RAW,
            params={"to": ["ann@example.org", "zed@example.org"], "tag": "raw"},
            headers={"Content-Type": "message/rfc822"},
        )
    assert response.status_code == 202, response.text
    api.wait_delivered(response.json()["id"], count=2)
    wait_until(lambda: len(api.sink.messages) == 2, what="both copies")
    for received in api.sink.messages:
        assert received.data.endswith(RAW), "the gateway only prepends its Received header"
        assert received.data.startswith(b"Received: from ")
    assert api.sink.to("zed@example.org")[0].mail_from == "app@acme.test"


def test_raw_mime_envelope_defaults_to_its_headers(api: Api) -> None:
    with api.client(key="sender") as client:
        response = client.post(
            "/v1/messages", content=RAW, headers={"Content-Type": "message/rfc822"}
        )
    assert response.status_code == 202, response.text
    assert [r["email"] for r in response.json()["recipients"]] == ["ann@example.org"]


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (RAW.replace(b"\r\n", b"\n"), "bare CR or LF"),
        (RAW.replace(b"Line one", b"Line\x00one"), "NUL byte"),
        (RAW.replace(b"From: App <app@acme.test>\r\n", b""), "no From header"),
        (b"Bcc: x@example.org\r\n" + RAW, "Bcc"),
        (RAW.replace(b"app@acme.test", b"app@elsewhere.test"), "sending domains"),
        (RAW.replace(b"Line one", b"L" * 1201), "is 1201 octets; RFC 5322 allows at most 998"),
    ],
)
def test_bad_raw_mime_is_refused(idle_api: Api, raw: bytes, detail: str) -> None:
    api = idle_api
    with api.client(key="sender") as client:
        response = client.post(
            "/v1/messages", content=raw, headers={"Content-Type": "message/rfc822"}
        )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]
    assert api.deliveries() == []


def _with(**changes: Any) -> dict[str, Any]:
    return {**MESSAGE, **changes}


BAD_INPUT = [
    # (body, status, field, words in the detail)
    (b'{"from": "a@acme.test", "to": [', 400, None, "truncated"),
    (b'{"from": "a@acme.test",, }', 400, None, "JSON is malformed"),
    (b"", 400, None, "empty"),
    # Two parsers on the way could each read a different subject: refused, not "last wins".
    (
        b'{"from": "a@acme.test", "to": ["b@example.org"], "subject": "a", "subject": "b",'
        b' "text": "x"}',
        400,
        None,
        "duplicate key 'subject'",
    ),
    (
        b'{"from": "a@acme.test", "to": [{"email": "b@example.org", "email": "c@example.org"}],'
        b' "subject": "a", "text": "x"}',
        400,
        None,
        "duplicate key 'email'",
    ),
    (_with(subject="Hi\u0085Bcc: victim@example.org"), 422, "subject", "control character"),
    (_with(subject="Hi\u009bX"), 422, "subject", "control character"),
    (_with(subject="Hi\u2028Bcc: victim@example.org"), 422, "subject", "control character"),
    (_with(subject="Hi\r\nBcc: victim@example.org"), 422, "subject", "carriage return"),
    (_with(subject="Hi\nX-Injected: 1"), 422, "subject", "line feed"),
    (
        _with(to=[{"email": "a@example.org", "name": "Ann\r\nBcc: v@example.org"}]),
        422,
        "to[0].name",
        "carriage return",
    ),
    (_with(headers={"X-Note": "ok\r\nBcc: v@example.org"}), 422, "headers.X-Note", "carriage"),
    (_with(headers={"X Bad": "v"}), 422, "headers.X Bad", "header name"),
    (_with(headers={"Bcc": "v@example.org"}), 422, "headers.Bcc", "set by the gateway"),
    (_with(to=["not-an-address"]), 422, "to[0]", "not an email address"),
    (_with(to=["a@b@example.org"]), 422, "to[0]", "not an email address"),
    (_with(cc=["x@-bad-.example"]), 422, "cc[0]", "not a valid domain"),
    (_with(to=["a\r\n@example.org"]), 422, "to[0]", "control characters"),
    (_with(**{"from": "billing@evil.test"}), 422, "from", "sending domains"),
    (_with(to=[], cc=[], bcc=[]), 422, "to", "at least one recipient"),
    (_with(text=None, html=None), 422, "text", "text, html or both"),
    (_with(surprise=1), 422, "surprise", "unknown field"),
    (_with(to=[{"email": "a@example.org", "nmae": "Ann"}]), 422, "to[0].nmae", "unknown field"),
    (_with(subject=None), 422, "subject", "Expected `str`"),
    ({k: v for k, v in MESSAGE.items() if k != "from"}, 422, "from", "required field"),
    (
        _with(attachments=[{"filename": "a.bin", "content": "***not base64***"}]),
        422,
        "attachments[0].content",
        "base64",
    ),
    (
        _with(attachments=[{"filename": "a.eml", "content": "", "content_type": "message/rfc822"}]),
        422,
        "attachments[0].content_type",
        "cannot be attached",
    ),
    (_with(send_at="2030-01-01T00:00:00"), 422, "send_at", "time zone"),
    (_with(send_at="2099-01-01T00:00:00Z"), 422, "send_at", "30 days"),
    (_with(tags=["has space"]), 422, "tags[0]", "letters, digits"),
]


@pytest.mark.parametrize(("body", "status", "field", "words"), BAD_INPUT)
def test_bad_input_is_a_problem_detail_and_queues_nothing(
    idle_api: Api, body: Any, status: int, field: str | None, words: str
) -> None:
    api = idle_api
    with api.client(key="sender") as client:
        if isinstance(body, bytes):
            response = client.post(
                "/v1/messages", content=body, headers={"Content-Type": "application/json"}
            )
        else:
            response = client.post("/v1/messages", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["type"].startswith("urn:gateway:problem:")
    assert problem.get("field") == field
    assert words in problem["detail"]
    assert api.deliveries() == []


def test_oversized_payloads_are_refused(idle_api: Api) -> None:
    api = idle_api
    with api.client(key="sender") as client:
        too_big_request = client.post(
            "/v1/messages", json=_with(text="x" * 400_000, attachments=[], html=None)
        )
        too_big_message = client.post(
            "/v1/messages",
            json=_with(attachments=[{"filename": "big.bin", "content": b64(b"\0" * 160_000)}]),
        )
    assert too_big_request.status_code == 413
    assert too_big_request.headers["content-type"] == "application/problem+json"
    assert "max_body_size" in too_big_request.json()["detail"]
    assert too_big_message.status_code == 413
    assert "limit is 200000" in too_big_message.json()["detail"]
    assert api.deliveries() == []


def test_unsupported_media_type(idle_api: Api) -> None:
    with idle_api.client(key="sender") as client:
        response = client.post(
            "/v1/messages", content=b"hello", headers={"Content-Type": "text/plain"}
        )
    assert response.status_code == 415
    assert response.json()["field"] == "Content-Type"


def test_a_local_store_fault_is_503_and_nothing_is_lost(api: Api, monkeypatch) -> None:
    from gateway.store.base import StoreError

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("disk full")

    monkeypatch.setattr(api.gw.gateway.store, "enqueue", broken)
    monkeypatch.setattr(api.gw.gateway.store, "enqueue_claimed", broken)
    with api.client(key="sender") as client:
        response = client.post("/v1/messages", json=MESSAGE)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json()["title"] == "Temporarily unavailable"
