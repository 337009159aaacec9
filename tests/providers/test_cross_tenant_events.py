"""Provider events never land in another tenant.

A sender's metadata in the gateway's namespace (``gw.message.id``) is renamed before it
reaches any provider, and a webhook event is applied only to the delivery it fits: same
recipient, and — for a delivery an API provider sent — that provider's webhook and the
provider message id its API returned. The SES side is a loopback API that records each
request and answers with a fresh ``MessageId``; the events are built from what was sent
exactly as SES echoes it (``mail.tags`` as name → list of values), signed like SNS.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import PostmarkProviderSection, SendgridProviderSection, SesProviderSection
from gateway.message import DeliveryStatus, Message, new_message_id
from gateway.providers.base import OutboundMessage
from gateway.providers.http_api import in_reserved_namespace
from gateway.providers.mime_fields import mime_fields
from gateway.providers.postmark import PostmarkProvider
from gateway.providers.sendgrid import SendgridProvider
from gateway.providers.ses import SesProvider
from gateway.store.base import DeliveryFilter, MessageMeta
from tests.conftest import Certificates, GatewayThread
from tests.providers.conftest import finished_message
from tests.providers.mock_api import MockApi, Recorded, Reply, json_reply, running
from tests.providers.test_webhook_ses import TOPIC, SnsSide, notification, post, ses_record
from tests.providers.webhook_env import WebhookEnv, make_env

HOSTILE = {"gw.message.id": "victim-id", "GW-Delivery-Id": "1", "gw_message_id": "x"}


def hostile_outbound() -> OutboundMessage:
    return OutboundMessage(
        message_id="ours-0001",
        delivery_id=42,
        tenant="attacker",
        mail_from="a@attacker.example",
        recipient="list@attacker.example",
        raw=finished_message(),
        metadata=HOSTILE,
    )


def assert_only_ours(data: dict[str, str]) -> None:
    ours = {k: v for k, v in data.items() if in_reserved_namespace(k)}
    assert ours == {"gw_message_id": "ours-0001", "gw_delivery_id": "42"}
    assert data["user_gw.message.id"] == "victim-id"  # the sender's value, renamed


async def test_no_provider_carries_a_senders_value_under_the_gateways_names() -> None:
    outbound = hostile_outbound()
    ses = SesProvider(
        "ses",
        SesProviderSection(
            region="eu-west-1", access_key_id="AKID", secret_access_key="s", endpoint="http://x"
        ),
    )
    tags = ses.payload(outbound)["EmailTags"]
    names = [t["Name"] for t in tags]
    assert len(names) == len(set(names))  # SES would echo duplicates as one list
    ours = {t["Name"]: t["Value"] for t in tags if in_reserved_namespace(t["Name"])}
    assert ours == {"gw_message_id": "ours-0001", "gw_delivery_id": "42"}

    fields = await mime_fields(outbound.raw)
    sendgrid = SendgridProvider("sg", SendgridProviderSection(api_key="k"))
    [personalization] = sendgrid.payload(outbound, fields)["personalizations"]
    assert_only_ours(personalization["custom_args"])
    postmark = PostmarkProvider("pm", PostmarkProviderSection(server_token="t"))
    assert_only_ours(postmark.payload(outbound, fields)["Metadata"])


# --- end to end: SES webhook events against deliveries SES sent ---------------------------------


class SesApi:
    def __init__(self) -> None:
        self.returned: list[str] = []

    def __call__(self, request: Recorded) -> Reply:
        message_id = f"0102019{uuid.uuid4().hex}-000000"
        self.returned.append(message_id)
        return json_reply(200, {"MessageId": message_id})


@pytest.fixture
def ses_api() -> Iterator[MockApi]:
    yield from running(MockApi(None, SesApi()))


@pytest.fixture
def sns(certificates: Certificates) -> Iterator[SnsSide]:
    side = SnsSide(certificates)
    yield side
    side.stop()


@pytest.fixture
def env(
    tmp_path: Path,
    gateway_factory: Callable[..., GatewayThread],
    certificates: Certificates,
    ses_api: MockApi,
) -> Iterator[WebhookEnv]:
    extra = f"""
[delivery]
providers = ["ses"]

[providers.ses]
type = "ses"
region = "eu-west-1"
access_key_id = "AKIDTESTKEY"
secret_access_key = "made-for-this-test"
endpoint = "{ses_api.url}"

[provider_webhooks.ses]
topic_arns = ["{TOPIC}"]
cert_host_pattern = '^127\\.0\\.0\\.1$'
subscribe_host_pattern = '^127\\.0\\.0\\.1$'
ca_file = "{certificates.ca_file}"
"""
    environment = make_env(
        tmp_path, gateway_factory, extra=extra.replace("{", "{{").replace("}", "}}")
    )
    yield environment
    environment.client.close()


def send(
    env: WebhookEnv, tenant: str, recipient: str, metadata: dict[str, str] | None = None
) -> tuple[str, int]:
    now = env.clock.now()
    message = Message(
        id=new_message_id(),
        tenant=tenant,
        mail_from=f"news@{tenant}.example",
        raw=f"From: news@{tenant}.example\r\nSubject: Hi\r\n\r\nHello\r\n".encode(),
        created_at=now,
        source="api",
    )
    meta = MessageMeta(metadata=metadata or {})
    env.gw.call(env.store.enqueue(message, [recipient], expires_at=now + 86400, meta=meta))
    env.gw.call(env.gw.gateway.dispatcher.run_once())
    [delivery] = env.deliveries(message.id)
    assert delivery.status == DeliveryStatus.DELIVERED, delivery.last_error
    return message.id, delivery.id


def echoed_tags(request: Recorded) -> dict[str, list[str]]:
    """``mail.tags`` as SES publishes it: every tag of the request, values grouped by name."""
    tags: dict[str, list[str]] = {}
    for tag in request.json()["EmailTags"]:
        tags.setdefault(tag["Name"], []).append(tag["Value"])
    return tags


def bounce_as_ses_reports(request: Recorded, ses_message_id: str, recipient: str) -> Any:
    record = ses_record("bounce", "unused", 0, recipient)
    record["mail"]["tags"] = echoed_tags(request)
    record["mail"]["messageId"] = ses_message_id
    return record


def suppressed(env: WebhookEnv, tenant: str) -> list[str]:
    return [s.address for s in env.gw.call(env.store.list_suppressions(tenant))]


def test_a_bounce_of_a_send_with_hostile_metadata_stays_in_its_tenant(
    env: WebhookEnv, sns: SnsSide, ses_api: MockApi
) -> None:
    victim_message, victim_delivery = send(env, "victim", "ann@example.org")
    attacker_message, _ = send(
        env,
        "attacker",
        "target@example.net",
        {"gw.message.id": victim_message, "gw.delivery.id": str(victim_delivery)},
    )
    request = ses_api.requests[-1]
    returned = ses_api.success.returned[-1]  # type: ignore[attr-defined]
    record = bounce_as_ses_reports(request, returned, "target@example.net")
    response = post(env, sns.sign(notification(env, record)))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    assert suppressed(env, "victim") == []
    assert suppressed(env, "attacker") == ["target@example.net"]
    [bounced] = env.deliveries(attacker_message)
    assert bounced.status == DeliveryStatus.BOUNCED
    assert env.deliveries(victim_message)[0].status == DeliveryStatus.DELIVERED


def test_an_event_that_fits_no_delivery_is_dropped_not_applied_elsewhere(
    env: WebhookEnv, sns: SnsSide, ses_api: MockApi
) -> None:
    victim_message, victim_delivery = send(env, "victim", "ann@example.org")
    victim_ses_id = ses_api.success.returned[-1]  # type: ignore[attr-defined]
    send(env, "attacker", "ann@example.org")
    attacker_ses_id = ses_api.success.returned[-1]  # type: ignore[attr-defined]

    cases = [
        # the victim's ids, the victim's recipient, but the attacker's SES message
        ("ann@example.org", attacker_ses_id),
        # the victim's ids and SES message, another recipient
        ("bob@example.org", victim_ses_id),
    ]
    for recipient, ses_id in cases:
        record = ses_record("bounce", victim_message, victim_delivery, recipient)
        record["mail"]["messageId"] = ses_id
        response = post(env, sns.sign(notification(env, record)))
        assert response.status_code == 200, response.text
        assert response.json() == {"accepted": 0, "duplicates": 0, "unmatched": 1}
    assert suppressed(env, "victim") == []
    assert env.deliveries(victim_message)[0].status == DeliveryStatus.DELIVERED

    # The genuine event still applies.
    record = ses_record("bounce", victim_message, victim_delivery, "ann@example.org")
    record["mail"]["messageId"] = victim_ses_id
    assert post(env, sns.sign(notification(env, record))).json()["accepted"] == 1
    assert suppressed(env, "victim") == ["ann@example.org"]
    assert (
        env.gw.call(env.store.list_deliveries(DeliveryFilter(tenant="attacker")))[0].status
        == DeliveryStatus.DELIVERED
    )
