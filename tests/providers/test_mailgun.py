"""Mailgun /v3/<domain>/messages.mime against a loopback mock that validates every request
against Mailgun's own OpenAPI description (multipart/form-data decoded field by field)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.config import MailgunProviderSection
from gateway.message import SendResult
from gateway.providers.base import OutboundMessage, ProviderCheckFailed
from gateway.providers.mailgun import BASE_URLS, MailgunProvider
from tests.providers.mock_api import MockApi, Recorded, Reply, json_reply, running
from tests.providers.spec_check import MAILGUN, multipart_parts, request_problems

DOMAIN = "mg.shop.example"


def queued(_: Recorded) -> Reply:
    return json_reply(200, {"id": "<20260101.1@mg.shop.example>", "message": "Queued. Thank you."})


@pytest.fixture
def api() -> Iterator[MockApi]:
    yield from running(MockApi(MAILGUN, queued))


def make(api: MockApi, **overrides: str) -> MailgunProvider:
    section = MailgunProviderSection(api_key="key-test", domain=DOMAIN, base_url=api.url)
    return (
        MailgunProvider("mg", section)
        if not overrides
        else MailgunProvider(
            "mg", MailgunProviderSection(**{"api_key": "key-test", "domain": DOMAIN, **overrides})
        )
    )


async def send(provider: MailgunProvider, message: OutboundMessage) -> SendResult:
    await provider.start()
    try:
        return await provider.send(message)
    finally:
        await provider.close()


async def test_the_signed_mime_goes_as_is_with_tags_and_variables(
    api: MockApi, outbound: OutboundMessage
) -> None:
    result = await send(make(api), outbound)
    assert result.kind == "sent", result.detail
    assert result.provider_message_id == "20260101.1@mg.shop.example"
    [request] = api.requests
    assert request.problems == []
    assert request.path == f"/v3/{DOMAIN}/messages.mime"
    assert request.headers["Authorization"].startswith("Basic ")
    parts = multipart_parts(request.headers["Content-Type"], request.body)
    fields: dict[str, list[bytes]] = {}
    for name, value, _ in parts:
        fields.setdefault(name, []).append(value)
    assert fields["to"] == [b"ann@example.org"]
    assert fields["o:tag"] == [b"orders", b"shipping"]
    assert fields["v:order"] == [b"42"]
    assert fields["v:gw_message_id"] == [outbound.message_id.encode()]
    assert fields["v:gw_delivery_id"] == [b"7"]
    assert fields["message"] == [outbound.raw]  # byte for byte: the DKIM signature survives


class MisnamedTo(MailgunProvider):
    async def send(self, message: OutboundMessage) -> SendResult:
        return await self.send_request(
            message,
            "POST",
            f"/v3/{self.section.domain}/messages.mime",
            data={"recipient": message.recipient},
            files={"message": ("message.eml", message.raw, "message/rfc822")},
        )


async def test_a_misnamed_required_field_is_refused(
    api: MockApi, outbound: OutboundMessage
) -> None:
    result = await send(
        MisnamedTo("mg", MailgunProviderSection(api_key="k", domain=DOMAIN, base_url=api.url)),
        outbound,
    )
    assert result.kind == "hard_fail"
    assert any("'to' is a required property" in p for p in api.requests[0].problems)


def test_the_checker_refuses_a_missing_message_part() -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="to"\r\n\r\nann@example.org\r\n--b--\r\n'
    headers = {"Authorization": "Basic YXBpOms=", "Content-Type": "multipart/form-data; boundary=b"}
    problems = request_problems(MAILGUN, "POST", f"/v3/{DOMAIN}/messages.mime", headers, body)
    assert any("'message' is a required property" in p for p in problems), problems


def test_regions_have_their_base_urls() -> None:
    us = MailgunProvider("mg", MailgunProviderSection(api_key="k", domain=DOMAIN))
    eu = MailgunProvider("mg", MailgunProviderSection(api_key="k", domain=DOMAIN, region="eu"))
    assert us.base_url == BASE_URLS["us"] == "https://api.mailgun.net"
    assert eu.base_url == BASE_URLS["eu"] == "https://api.eu.mailgun.net"


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "hard_fail"), (401, "soft_fail"), (429, "soft_fail"), (500, "soft_fail")],
)
async def test_outcomes_are_classified(
    api: MockApi, outbound: OutboundMessage, status: int, kind: str
) -> None:
    api.scripted.append(json_reply(status, {"message": "scripted"}))
    result = await send(make(api), outbound)
    assert result.kind == kind
    assert "scripted" in result.detail


async def test_check_reads_the_domain(api: MockApi) -> None:
    def domain(request: Recorded) -> Reply:
        if request.headers.get("Authorization") != "Basic YXBpOmtleS10ZXN0":  # api:key-test
            return json_reply(401, {"message": "Invalid private key"})
        return json_reply(200, {"domain": {"name": DOMAIN, "state": "active"}})

    api.extra_routes[("GET", f"/v4/domains/{DOMAIN}")] = domain
    provider = make(api)
    try:
        assert DOMAIN in await provider.check()
    finally:
        await provider.close()
    wrong = MailgunProvider(
        "mg", MailgunProviderSection(api_key="nope", domain=DOMAIN, base_url=api.url)
    )
    try:
        with pytest.raises(ProviderCheckFailed, match="credentials refused"):
            await wrong.check()
    finally:
        await wrong.close()
