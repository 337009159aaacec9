"""SendGrid v3 /mail/send against a loopback mock that validates every request against
SendGrid's own OpenAPI description (tsg_mail_v3.yaml)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.config import SendgridProviderSection
from gateway.providers.base import OutboundMessage, ProviderCheckFailed
from gateway.providers.mime_fields import MimeFields
from gateway.providers.sendgrid import SendgridProvider
from tests.providers.conftest import PDF
from tests.providers.mock_api import MockApi, Recorded, Reply, json_reply, running
from tests.providers.spec_check import SENDGRID, request_problems


def accepted(_: Recorded) -> Reply:
    return 202, {"X-Message-Id": "sg-abc123"}, b""


@pytest.fixture
def api() -> Iterator[MockApi]:
    yield from running(MockApi(SENDGRID, accepted))


async def make(api: MockApi, cls: type[SendgridProvider] = SendgridProvider) -> SendgridProvider:
    provider = cls("sg", SendgridProviderSection(api_key="SG.test-key", base_url=api.url))
    await provider.start()
    return provider


async def test_send_conforms_to_the_spec_and_carries_ids(
    api: MockApi, outbound: OutboundMessage
) -> None:
    provider = await make(api)
    try:
        result = await provider.send(outbound)
    finally:
        await provider.close()
    assert result.kind == "sent", result.detail
    assert result.provider_message_id == "sg-abc123"
    [request] = api.requests
    assert request.problems == []
    assert request.headers["Authorization"] == "Bearer SG.test-key"
    body = request.json()
    [personalization] = body["personalizations"]
    assert personalization["to"] == [{"email": "ann@example.org"}]
    assert personalization["custom_args"] == {
        "order": "42",
        "user_gw_message_id": "spoofed",  # the sender's key, out of the gateway's namespace
        "gw_message_id": outbound.message_id,
        "gw_delivery_id": "7",
    }
    assert body["from"] == {"email": "news@shop.example", "name": "Shop Team"}
    assert body["reply_to"] == {"email": "help@shop.example"}
    assert body["subject"] == "Your order ✓"
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert "<b>shipped</b>" in body["content"][1]["value"]
    assert body["categories"] == ["orders", "shipping"]
    [attachment] = body["attachments"]
    assert attachment["filename"] == "invoice.pdf"
    assert base64.b64decode(attachment["content"]) == PDF
    assert body["headers"]["List-Unsubscribe"] == "<https://t.shop.example/t/u/abc>"
    assert body["headers"]["X-Campaign"] == "spring"
    assert "DKIM-Signature" not in body["headers"]


class Misnamed(SendgridProvider):
    """Sends ``form`` instead of ``from``: the mock must refuse it."""

    def payload(self, message: OutboundMessage, fields: MimeFields) -> dict[str, Any]:
        body = super().payload(message, fields)
        body["form"] = body.pop("from")
        return body


async def test_a_misnamed_required_field_is_refused(
    api: MockApi, outbound: OutboundMessage
) -> None:
    provider = await make(api, Misnamed)
    try:
        result = await provider.send(outbound)
    finally:
        await provider.close()
    assert result.kind == "hard_fail"
    [request] = api.requests
    assert any("'from' is a required property" in p for p in request.problems), request.problems


def test_the_checker_names_a_missing_required_field(outbound: OutboundMessage) -> None:
    """Negative test of the validation itself, independent of the provider code."""
    good = (
        b'{"personalizations": [{"to": [{"email": "a@example.org"}]}],'
        b' "from": {"email": "b@example.org"}, "subject": "s",'
        b' "content": [{"type": "text/plain", "value": "x"}]}'
    )
    headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
    assert request_problems(SENDGRID, "POST", "/v3/mail/send", headers, good) == []
    missing_to = good.replace(b'"to"', b'"too"')
    assert any(
        "'to' is a required property" in p
        for p in request_problems(SENDGRID, "POST", "/v3/mail/send", headers, missing_to)
    )
    no_auth = {"Content-Type": "application/json"}
    assert request_problems(SENDGRID, "POST", "/v3/mail/send", no_auth, good)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "hard_fail"),
        (413, "hard_fail"),
        (401, "soft_fail"),
        (429, "soft_fail"),
        (500, "soft_fail"),
        (503, "soft_fail"),
    ],
)
async def test_outcomes_are_classified(
    api: MockApi, outbound: OutboundMessage, status: int, kind: str
) -> None:
    api.scripted.append(json_reply(status, {"errors": [{"message": "scripted"}]}))
    provider = await make(api)
    try:
        result = await provider.send(outbound)
    finally:
        await provider.close()
    assert result.kind == kind
    assert f"HTTP {status}" in result.detail


async def test_an_unreachable_api_is_a_temporary_failure(outbound: OutboundMessage) -> None:
    api = MockApi(SENDGRID, accepted).start()
    url = api.url
    api.stop()  # nothing listens there any more
    provider = SendgridProvider("sg", SendgridProviderSection(api_key="k", base_url=url))
    await provider.start()
    try:
        result = await provider.send(outbound)
    finally:
        await provider.close()
    assert result.kind == "soft_fail"
    assert "ConnectError" in result.detail


async def test_a_message_without_body_is_refused_before_sending(api: MockApi) -> None:
    message = OutboundMessage(
        message_id="m1",
        delivery_id=1,
        tenant="t",
        mail_from="a@shop.example",
        recipient="ann@example.org",
        raw=b"From: a@shop.example\r\nContent-Type: application/pdf\r\n\r\nxx\r\n",
    )
    provider = await make(api)
    try:
        result = await provider.send(message)
    finally:
        await provider.close()
    assert result.kind == "hard_fail"
    assert "no text/plain or text/html body" in result.detail
    assert api.requests == []


async def test_check_verifies_the_key_and_its_scope(api: MockApi) -> None:
    scopes = {"scopes": ["mail.send", "stats.read"]}

    def scope_list(request: Recorded) -> Reply:
        if request.headers.get("Authorization") != "Bearer SG.test-key":
            return json_reply(401, {"errors": [{"message": "authorization required"}]})
        return json_reply(200, scopes)

    api.extra_routes[("GET", "/v3/scopes")] = scope_list
    provider = await make(api)
    try:
        assert "mail.send" in await provider.check()
        scopes["scopes"] = ["stats.read"]
        with pytest.raises(ProviderCheckFailed, match=r"lacks the mail\.send scope"):
            await provider.check()
    finally:
        await provider.close()
    wrong = SendgridProvider("sg", SendgridProviderSection(api_key="wrong", base_url=api.url))
    try:
        with pytest.raises(ProviderCheckFailed, match="401"):
            await wrong.check()
    finally:
        await wrong.close()
