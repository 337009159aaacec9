"""POST /webhooks/mailgun (HMAC-SHA256 of timestamp + token) and /webhooks/postmark (basic
auth), with payloads shaped like the providers' documented samples; soft-bounce escalation."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from gateway.message import DeliveryStatus
from gateway.webhook_auth import mailgun_signature
from tests.providers.spec_check import SPECS
from tests.providers.webhook_env import (
    MAILGUN_KEY,
    POSTMARK_PASSWORD,
    POSTMARK_USER,
    WebhookEnv,
)

SAMPLES = SPECS / "webhook-samples"


def mailgun_body(
    env: WebhookEnv, kind: str, message_id: str, delivery_id: int, recipient: str, **signature: str
) -> bytes:
    data: dict[str, Any] = json.loads(
        (SAMPLES / "mailgun" / f"event-data--{kind}.json").read_text()
    )
    data.update(
        id=secrets.token_hex(8),
        recipient=recipient,
        timestamp=env.clock.now(),
    )
    data["user-variables"] = {"gw_message_id": message_id, "gw_delivery_id": str(delivery_id)}
    timestamp = str(int(env.clock.now()))
    token = secrets.token_hex(25)
    sig = {
        "timestamp": timestamp,
        "token": token,
        "signature": mailgun_signature(MAILGUN_KEY, timestamp, token),
        **signature,
    }
    return json.dumps({"signature": sig, "event-data": data}).encode()


JSON = {"Content-Type": "application/json"}


def test_a_mailgun_complaint_suppresses_and_a_replay_is_refused(env: WebhookEnv) -> None:
    message_id, [ann] = env.deliver("ann@example.org")
    body = mailgun_body(env, "complained", message_id, ann.id, "ann@example.org")
    response = env.post("/webhooks/mailgun", body, JSON)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    assert env.suppressions()["ann@example.org"].reason == "complaint"
    replay = env.post("/webhooks/mailgun", body, JSON)
    assert replay.status_code == 409
    assert [e.type for e in env.timeline(message_id)].count("complained") == 1


def test_a_mailgun_permanent_failure_bounces_the_delivery(env: WebhookEnv) -> None:
    message_id, [ann] = env.deliver("ann@example.org")
    body = mailgun_body(env, "failed-permanent", message_id, ann.id, "ann@example.org")
    assert env.post("/webhooks/mailgun", body, JSON).status_code == 200
    assert env.deliveries(message_id)[0].status == DeliveryStatus.BOUNCED
    assert env.suppressions()["ann@example.org"].reason == "bounce"


def test_forged_stale_and_malformed_mailgun_requests_change_nothing(env: WebhookEnv) -> None:
    message_id, [ann] = env.deliver("ann@example.org")
    stale = str(int(env.clock.now()) - 3600)
    token = secrets.token_hex(25)
    cases = [
        (
            mailgun_body(
                env, "complained", message_id, ann.id, "ann@example.org", signature="0" * 64
            ),
            403,
        ),
        (
            mailgun_body(
                env,
                "complained",
                message_id,
                ann.id,
                "ann@example.org",
                timestamp=stale,
                token=token,
                signature=mailgun_signature(MAILGUN_KEY, stale, token),
            ),
            403,
        ),
        (json.dumps({"event-data": {}}).encode(), 401),
        (b"{oops", 400),
    ]
    for body, status in cases:
        response = env.post("/webhooks/mailgun", body, JSON)
        assert response.status_code == status, (status, response.text)
    # correctly signed, but event-data is not an event: 422, and the token is not used up
    good = json.loads(mailgun_body(env, "complained", message_id, ann.id, "ann@example.org"))
    broken = {**good, "event-data": {"event": "complained"}}
    assert env.post("/webhooks/mailgun", json.dumps(broken).encode(), JSON).status_code == 422
    assert env.post("/webhooks/mailgun", json.dumps(good).encode(), JSON).status_code == 200
    assert len(env.suppressions()) == 1


def postmark_body(
    kind: str, message_id: str, delivery_id: int, recipient: str, **fields: Any
) -> bytes:
    record: dict[str, Any] = json.loads(
        (SAMPLES / "postmark" / f"webhook--{kind}.json").read_text()
    )
    record["Metadata"] = {"gw_message_id": message_id, "gw_delivery_id": str(delivery_id)}
    record["Recipient" if "Recipient" in record else "Email"] = recipient
    record.update(fields)
    return json.dumps(record).encode()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", **JSON}


AUTH = basic(POSTMARK_USER, POSTMARK_PASSWORD)


def test_five_consecutive_soft_bounces_suppress_and_a_delivery_resets_the_run(
    env: WebhookEnv,
) -> None:
    def soft_bounce(recipient: str) -> None:
        message_id, [delivery] = env.deliver(recipient)
        body = postmark_body(
            "bounce-soft", message_id, delivery.id, recipient, ID=secrets.randbelow(10**12)
        )
        assert env.post("/webhooks/postmark", body, AUTH).status_code == 200
        # a soft bounce is not the end of the delivery
        assert env.deliveries(message_id)[0].status == DeliveryStatus.DELIVERED

    for _ in range(4):
        soft_bounce("ann@example.org")
    assert env.suppressions() == {}
    message_id, [delivery] = env.deliver("ann@example.org")
    delivered = postmark_body("delivery", message_id, delivery.id, "ann@example.org")
    assert env.post("/webhooks/postmark", delivered, AUTH).status_code == 200
    for _ in range(4):
        soft_bounce("ann@example.org")
    assert env.suppressions() == {}, "the delivery ended the first run"
    soft_bounce("ann@example.org")
    entry = env.suppressions()["ann@example.org"]
    assert entry.reason == "bounce"
    assert "5 consecutive soft bounces" in entry.detail


def test_a_postmark_hard_bounce_suppresses(env: WebhookEnv) -> None:
    message_id, [ann] = env.deliver("ann@example.org")
    body = postmark_body("bounce", message_id, ann.id, "ann@example.org")
    response = env.post("/webhooks/postmark", body, AUTH)
    assert response.status_code == 200, response.text
    assert env.deliveries(message_id)[0].status == DeliveryStatus.BOUNCED
    assert env.suppressions()["ann@example.org"].reason == "bounce"
    assert env.post("/webhooks/postmark", body, AUTH).json()["duplicates"] == 1


def test_postmark_credentials_are_required(env: WebhookEnv) -> None:
    message_id, [ann] = env.deliver("ann@example.org")
    body = postmark_body("bounce", message_id, ann.id, "ann@example.org")
    assert env.post("/webhooks/postmark", body, JSON).status_code == 401
    assert env.post("/webhooks/postmark", body, basic(POSTMARK_USER, "guess")).status_code == 403
    assert env.post("/webhooks/postmark", b"not json", AUTH).status_code == 400
    assert env.post("/webhooks/postmark", b'{"RecordType": 5}', AUTH).status_code == 422
    assert env.suppressions() == {}


def test_a_postmark_secret_header_is_checked_in_constant_time() -> None:
    import pytest

    from gateway.webhook_auth import WebhookRefused, verify_postmark

    settings = {"username": "", "password": "", "secret_header": "X-Hook", "secret": "s3cret"}
    verify_postmark(**settings, authorization=None, header_value="s3cret")
    with pytest.raises(WebhookRefused) as missing:
        verify_postmark(**settings, authorization=None, header_value=None)
    assert missing.value.status == 401
    with pytest.raises(WebhookRefused) as wrong:
        verify_postmark(**settings, authorization=None, header_value="s3cre7")
    assert wrong.value.status == 403


def test_a_legacy_form_encoded_mailgun_webhook_is_read_too(env: WebhookEnv) -> None:
    import urllib.parse

    message_id, [ann] = env.deliver("ann@example.org")
    signed = json.loads(mailgun_body(env, "complained", message_id, ann.id, "ann@example.org"))
    form = {**signed["signature"], "event-data": json.dumps(signed["event-data"])}
    body = urllib.parse.urlencode(form).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = env.post("/webhooks/mailgun", body, headers)
    assert response.status_code == 200, response.text
    assert env.suppressions()["ann@example.org"].reason == "complaint"
    assert env.post("/webhooks/mailgun", b"%%%=&&", headers).status_code == 400
