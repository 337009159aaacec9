"""The SES provider's SigV4 signatures, checked by moto with request authentication on: an
IAM user's key signs requests moto accepts, a wrong secret is refused (SignatureDoesNotMatch)
and that refusal is a temporary failure, never a bounce."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest

from gateway.config import SesProviderSection
from gateway.providers.base import OutboundMessage, ProviderCheckFailed
from gateway.providers.ses import SesProvider
from tests.providers.moto_server import moto_server

SETUP_ACTIONS = 3  # create the user, allow SES, make its key: moto checks everything after


@pytest.fixture(scope="module")
def authenticating_moto() -> Iterator[tuple[str, dict[str, str]]]:
    for url in moto_server(unauthenticated_actions=SETUP_ACTIONS):
        iam = boto3.client(
            "iam",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="gateway")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "ses:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="gateway", PolicyName="ses", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="gateway")["AccessKey"]
        yield url, {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


def provider(url: str, key_id: str, secret: str) -> SesProvider:
    return SesProvider(
        "ses",
        SesProviderSection(
            region="eu-west-1", access_key_id=key_id, secret_access_key=secret, endpoint=url
        ),
    )


async def test_signed_requests_are_accepted(
    authenticating_moto: tuple[str, dict[str, str]], outbound: OutboundMessage
) -> None:
    url, key = authenticating_moto
    ses = provider(url, key["id"], key["secret"])
    try:
        assert "credentials accepted" in await ses.check()
        path = "/v2/email/identities"
        body = b'{"EmailIdentity": "shop.example"}'
        created = await ses.client.post(
            path, content=body, headers=ses.signed_headers("POST", path, body)
        )
        assert created.status_code == 200, created.text
        result = await ses.send(outbound)
    finally:
        await ses.close()
    assert result.kind == "sent", result.detail


async def test_a_wrong_secret_is_refused_and_never_bounces(
    authenticating_moto: tuple[str, dict[str, str]], outbound: OutboundMessage
) -> None:
    url, key = authenticating_moto
    ses = provider(url, key["id"], "not-the-secret")
    try:
        with pytest.raises(ProviderCheckFailed, match="SignatureDoesNotMatch"):
            await ses.check()
        result = await ses.send(outbound)
    finally:
        await ses.close()
    assert result.kind == "soft_fail"
    assert "SignatureDoesNotMatch" in result.detail
