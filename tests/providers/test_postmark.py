"""Postmark /email against a loopback mock that validates every request against the strict
Postmark description (From, To and a body required; MessageStream, Metadata)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.config import PostmarkProviderSection
from gateway.message import SendResult
from gateway.providers.base import OutboundMessage, ProviderCheckFailed
from gateway.providers.mime_fields import MimeFields
from gateway.providers.postmark import PostmarkProvider
from tests.providers.conftest import PDF
from tests.providers.mock_api import MockApi, Recorded, Reply, json_reply, running
from tests.providers.spec_check import POSTMARK, request_problems


def ok(request: Recorded) -> Reply:
    return json_reply(
        200,
        {
            "To": request.json()["To"],
            "SubmittedAt": "2026-01-01T00:00:00Z",
            "MessageID": "b7bc2f4a-e38e-4336-af7d-e6c392c2f817",
            "ErrorCode": 0,
            "Message": "OK",
        },
    )


@pytest.fixture
def api() -> Iterator[MockApi]:
    yield from running(MockApi(POSTMARK, ok))


async def send(
    api: MockApi, message: OutboundMessage, cls: type[PostmarkProvider] = PostmarkProvider
) -> SendResult:
    provider = cls(
        "pm",
        PostmarkProviderSection(server_token="pm-token", base_url=api.url, message_stream="news"),
    )
    await provider.start()
    try:
        return await provider.send(message)
    finally:
        await provider.close()


async def test_send_conforms_and_carries_stream_tag_and_metadata(
    api: MockApi, outbound: OutboundMessage
) -> None:
    result = await send(api, outbound)
    assert result.kind == "sent", result.detail
    assert result.provider_message_id == "b7bc2f4a-e38e-4336-af7d-e6c392c2f817"
    [request] = api.requests
    assert request.problems == []
    assert request.headers["X-Postmark-Server-Token"] == "pm-token"
    body = request.json()
    assert body["From"] == "Shop Team <news@shop.example>"
    assert body["To"] == "ann@example.org"
    assert body["MessageStream"] == "news"
    assert body["Tag"] == "orders"
    assert body["Metadata"] == {
        "order": "42",
        "user_gw_message_id": "spoofed",
        "gw_message_id": outbound.message_id,
        "gw_delivery_id": "7",
    }
    assert "Hello Ann" in body["TextBody"] and "<b>shipped</b>" in body["HtmlBody"]
    assert {"Name": "X-Campaign", "Value": "spring"} in body["Headers"]
    [attachment] = body["Attachments"]
    assert attachment["Name"] == "invoice.pdf"
    assert base64.b64decode(attachment["Content"]) == PDF


class NoTo(PostmarkProvider):
    def payload(self, message: OutboundMessage, fields: MimeFields) -> dict[str, Any]:
        body = super().payload(message, fields)
        body["Recipient"] = body.pop("To")
        return body


async def test_a_misnamed_required_field_is_refused(
    api: MockApi, outbound: OutboundMessage
) -> None:
    result = await send(api, outbound, NoTo)
    assert result.kind == "hard_fail"
    assert any("'To' is a required property" in p for p in api.requests[0].problems)


def test_the_checker_wants_a_body_and_the_token() -> None:
    headers = {"X-Postmark-Server-Token": "t", "Content-Type": "application/json"}
    good = b'{"From": "a@shop.example", "To": "b@example.org", "TextBody": "x"}'
    assert request_problems(POSTMARK, "POST", "/email", headers, good) == []
    no_body = b'{"From": "a@shop.example", "To": "b@example.org"}'
    assert request_problems(POSTMARK, "POST", "/email", headers, no_body)
    no_token = {"Content-Type": "application/json"}
    assert request_problems(POSTMARK, "POST", "/email", no_token, good) == [
        "required header X-Postmark-Server-Token is missing"
    ]


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (422, 406, "hard_fail"),  # inactive recipient
        (422, 300, "hard_fail"),  # invalid email request
        (422, 10, "soft_fail"),  # bad server token: our problem, not the recipient's
        (422, 405, "soft_fail"),  # not allowed to send (account)
        (429, 0, "soft_fail"),
        (500, 0, "soft_fail"),
    ],
)
async def test_error_codes_are_classified(
    api: MockApi, outbound: OutboundMessage, status: int, code: int, kind: str
) -> None:
    api.scripted.append(json_reply(status, {"ErrorCode": code, "Message": "scripted"}))
    result = await send(api, outbound)
    assert result.kind == kind
    assert "scripted" in result.detail


async def test_check_asks_for_the_server(api: MockApi) -> None:
    def server(request: Recorded) -> Reply:
        if request.headers.get("X-Postmark-Server-Token") != "pm-token":
            return json_reply(401, {"ErrorCode": 10, "Message": "Bad or missing Server API token"})
        return json_reply(200, {"ID": 1, "Name": "Shop"})

    api.extra_routes[("GET", "/server")] = server
    good = PostmarkProvider(
        "pm", PostmarkProviderSection(server_token="pm-token", base_url=api.url)
    )
    bad = PostmarkProvider("pm", PostmarkProviderSection(server_token="nope", base_url=api.url))
    try:
        assert "accepted" in await good.check()
        with pytest.raises(ProviderCheckFailed, match="Bad or missing Server API token"):
            await bad.check()
    finally:
        await good.close()
        await bad.close()
