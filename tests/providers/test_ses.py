"""SES API v2 against moto in server mode on loopback: the raw message arrives there and is
read back through moto's own inspection API. Request bodies are also checked against AWS's
machine-readable SESv2 model (moto itself does not validate shapes)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.config import SesProviderSection
from gateway.providers.base import OutboundMessage, ProviderCheckFailed
from gateway.providers.ses import SEND_PATH, SesProvider, tag_safe
from tests.providers.moto_server import free_port, moto_server
from tests.providers.spec_check import SESV2


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    yield from moto_server()


def section(url: str, **overrides: Any) -> SesProviderSection:
    settings: dict[str, Any] = {
        "region": "eu-west-1",
        "access_key_id": "AKIDTESTKEY",
        "secret_access_key": "test-secret",
        "endpoint": url,
        "configuration_set": "",
        "tags": {"app": "shop"},
        **overrides,
    }
    return SesProviderSection(**settings)


async def verify_domain(provider: SesProvider, domain: str) -> None:
    path = "/v2/email/identities"
    body = json.dumps({"EmailIdentity": domain}).encode()
    response = await provider.client.post(
        path, content=body, headers=provider.signed_headers("POST", path, body)
    )
    assert response.status_code == 200, response.text


def sent_messages(url: str) -> list[dict[str, Any]]:
    data = httpx.get(url + "/moto-api/data.json", timeout=10).json()
    messages: list[dict[str, Any]] = data.get("ses", {}).get("RawMessage", [])
    return messages


async def test_the_raw_message_arrives_at_ses(moto_url: str, outbound: OutboundMessage) -> None:
    provider = SesProvider("ses", section(moto_url))
    await provider.start()
    try:
        await verify_domain(provider, "shop.example")
        result = await provider.send(outbound)
    finally:
        await provider.close()
    assert result.kind == "sent", result.detail
    assert result.provider_message_id
    [stored] = [m for m in sent_messages(moto_url) if m["id"] == result.provider_message_id]
    assert stored["source"] is None or "shop.example" in stored["source"]
    assert "ann@example.org" in stored["destinations"]
    assert stored["raw_data"].replace("\n", "\r\n").replace("\r\r", "\r").encode() == (outbound.raw)


async def test_the_request_matches_the_sesv2_model(outbound: OutboundMessage) -> None:
    provider = SesProvider("ses", section("http://127.0.0.1:9", configuration_set="events"))
    body = provider.payload(outbound)
    model = json.loads(SESV2.read_text())
    operation = model["operations"]["SendEmail"]
    assert operation["http"]["method"] == "POST"
    assert operation["http"]["requestUri"] == SEND_PATH
    problems = shape_problems(model, operation["input"]["shape"], body)
    assert problems == []
    assert base64.b64decode(body["Content"]["Raw"]["Data"]) == outbound.raw
    assert body["ConfigurationSetName"] == "events"
    tags = {t["Name"]: t["Value"] for t in body["EmailTags"]}
    assert tags["gw_message_id"] == outbound.message_id
    assert tags["gw_delivery_id"] == "7"
    assert tags["app"] == "shop" and tags["tag_orders"] == "1" and tags["order"] == "42"
    # the checker itself refuses a misnamed member
    broken = {**body, "Contents": body["Content"]}
    del broken["Content"]
    assert "SendEmailRequest: required member Content is missing" in shape_problems(
        model, "SendEmailRequest", broken
    )


def shape_problems(model: dict[str, Any], shape_name: str, value: Any) -> list[str]:
    """Check a rest-json request against a botocore shape: required and unknown members,
    types (blobs travel base64-encoded)."""
    shape = model["shapes"][shape_name]
    kind = shape["type"]
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{shape_name}: expected an object"]
        problems = [
            f"{shape_name}: required member {name} is missing"
            for name in shape.get("required", [])
            if name not in value
        ]
        for name, member in value.items():
            if name not in shape["members"]:
                problems.append(f"{shape_name}: unknown member {name}")
            else:
                problems += shape_problems(model, shape["members"][name]["shape"], member)
        return problems
    if kind == "list":
        if not isinstance(value, list):
            return [f"{shape_name}: expected a list"]
        return [p for item in value for p in shape_problems(model, shape["member"]["shape"], item)]
    if kind == "blob":
        try:
            base64.b64decode(value, validate=True)
        except (ValueError, TypeError):
            return [f"{shape_name}: not base64"]
        return []
    if kind == "string":
        return [] if isinstance(value, str) else [f"{shape_name}: expected a string"]
    return []


def test_tag_values_are_made_safe_for_ses() -> None:
    assert tag_safe("spring sale/2026") == "spring_sale_2026"
    assert tag_safe("") == "_"


async def test_check_signs_a_read_only_call(moto_url: str) -> None:
    provider = SesProvider("ses", section(moto_url))
    try:
        assert "credentials accepted" in await provider.check()
    finally:
        await provider.close()
    closed = SesProvider("ses", section(f"http://127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(ProviderCheckFailed, match="ConnectError"):
            await closed.check()
    finally:
        await closed.close()


async def test_an_unverified_sender_is_a_permanent_refusal(
    moto_url: str, outbound: OutboundMessage
) -> None:
    raw = outbound.raw.replace(b"news@shop.example", b"news@unverified.example")
    message = OutboundMessage(**{**_fields(outbound), "raw": raw})
    provider = SesProvider("ses", section(moto_url))
    try:
        result = await provider.send(message)
    finally:
        await provider.close()
    assert result.kind == "hard_fail"
    assert "MessageRejected" in result.detail


def _fields(message: OutboundMessage) -> dict[str, Any]:
    return {f: getattr(message, f) for f in message.__struct_fields__}
