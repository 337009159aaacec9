"""POST /webhooks/sendgrid: SendGrid's ECDSA-signed Event Webhook, with keys made at test time
and payloads shaped like SendGrid's documented samples."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.message import DeliveryStatus
from gateway.webhook_auth import (
    SENDGRID_SIGNATURE,
    SENDGRID_TIMESTAMP,
    WebhookRefused,
    load_sendgrid_key,
    verify_sendgrid,
)
from tests.providers.spec_check import SPECS
from tests.providers.webhook_env import WebhookEnv

SAMPLES = SPECS / "webhook-samples" / "sendgrid"


def sample(name: str) -> dict[str, Any]:
    [event] = json.loads((SAMPLES / f"event-webhook--{name}.json").read_text())
    assert isinstance(event, dict)
    return event


def signed(key: ec.EllipticCurvePrivateKey, body: bytes, timestamp: str) -> dict[str, str]:
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        SENDGRID_SIGNATURE: base64.b64encode(signature).decode(),
        SENDGRID_TIMESTAMP: timestamp,
        "Content-Type": "application/json",
    }


def events_about(
    message_id: str, delivery_id: int, recipient: str, *kinds: str, env: WebhookEnv
) -> bytes:
    out = []
    for i, kind in enumerate(kinds):
        event = sample(kind)
        event.update(
            email=recipient,
            timestamp=int(env.clock.now()),
            sg_event_id=f"{message_id}-{kind}-{i}",
            gw_message_id=message_id,
            gw_delivery_id=str(delivery_id),
        )
        out.append(event)
    return json.dumps(out).encode()


def test_sendgrids_own_test_vector_verifies() -> None:
    vector = json.loads((SAMPLES / "official-test-vector.json").read_text())
    key = load_sendgrid_key(vector["public_key_b64_der"])
    payload = vector["payload"].encode()
    stamp = vector["timestamp_header"]
    verify_sendgrid(key, vector["signature_header"], stamp, payload, now=float(stamp), max_age=60)
    negative = vector["negative"]
    for args in (
        (
            load_sendgrid_key(negative["other_public_key"]),
            vector["signature_header"],
            stamp,
            payload,
        ),
        (key, vector["signature_header"], stamp, negative["bad_payload"].encode()),
        (key, negative["bad_signature"], stamp, payload),
        (key, vector["signature_header"], negative["bad_timestamp"], payload),
    ):
        with pytest.raises(WebhookRefused):
            verify_sendgrid(*args, now=float(stamp), max_age=60)


def test_a_signed_bounce_bounces_the_delivery_and_suppresses_once(env: WebhookEnv) -> None:
    message_id, [ann, _bob] = env.deliver("ann@example.org", "bob@example.org")
    assert ann.status == DeliveryStatus.DELIVERED
    body = events_about(message_id, ann.id, "ann@example.org", "bounce", "open", env=env)
    headers = signed(env.sendgrid_key, body, str(int(env.clock.now())))
    response = env.post("/webhooks/sendgrid", body, headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 2, "duplicates": 0, "unmatched": 0}
    ann_now, bob_now = env.deliveries(message_id)
    assert ann_now.status == DeliveryStatus.BOUNCED
    assert "unknown recipient" in ann_now.last_error
    assert bob_now.status == DeliveryStatus.DELIVERED
    suppressed = env.suppressions()
    assert list(suppressed) == ["ann@example.org"]
    assert suppressed["ann@example.org"].reason == "bounce"

    # SendGrid retries the same POST: counted once.
    again = env.post("/webhooks/sendgrid", body, headers)
    assert again.status_code == 200
    assert again.json() == {"accepted": 0, "duplicates": 2, "unmatched": 0}
    kinds = [e.type for e in env.timeline(message_id) if e.recipient == "ann@example.org"]
    assert kinds.count("bounced") == 1 and kinds.count("opened") == 1


def test_spam_reports_suppress_as_complaints(env: WebhookEnv) -> None:
    message_id, [ann] = env.deliver("ann@example.org")
    body = events_about(message_id, ann.id, "ann@example.org", "spamreport", env=env)
    response = env.post(
        "/webhooks/sendgrid", body, signed(env.sendgrid_key, body, str(int(env.clock.now())))
    )
    assert response.status_code == 200, response.text
    assert env.suppressions()["ann@example.org"].reason == "complaint"


def test_forged_stale_unsigned_and_malformed_requests_change_nothing(env: WebhookEnv) -> None:
    message_id, [ann] = env.deliver("ann@example.org")
    body = events_about(message_id, ann.id, "ann@example.org", "bounce", env=env)
    now = str(int(env.clock.now()))
    stranger = ec.generate_private_key(ec.SECP256R1())
    cases = [
        (body, signed(stranger, body, now), 403),  # another key
        (body.replace(b"ann@", b"eve@"), signed(env.sendgrid_key, body, now), 403),  # altered
        (body, signed(env.sendgrid_key, body, str(int(env.clock.now()) - 3600)), 403),  # stale
        (body, {"Content-Type": "application/json"}, 401),  # unsigned
        (b"[{not json", signed(env.sendgrid_key, b"[{not json", now), 400),
        (b'{"event": "bounce"}', signed(env.sendgrid_key, b'{"event": "bounce"}', now), 422),
    ]
    for payload, headers, status in cases:
        response = env.post("/webhooks/sendgrid", payload, headers)
        assert response.status_code == status, (status, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    assert env.deliveries(message_id)[0].status == DeliveryStatus.DELIVERED
    assert env.suppressions() == {}
    assert [e.type for e in env.timeline(message_id)].count("bounced") == 0


def test_events_about_unknown_messages_are_acknowledged_and_ignored(env: WebhookEnv) -> None:
    body = events_about("nosuchmessage", 1, "ann@example.org", "bounce", env=env)
    response = env.post(
        "/webhooks/sendgrid", body, signed(env.sendgrid_key, body, str(int(env.clock.now())))
    )
    assert response.json() == {"accepted": 0, "duplicates": 0, "unmatched": 1}
    assert env.suppressions() == {}


def test_an_endpoint_without_its_table_is_off(tmp_path: Path, gateway_factory) -> None:
    from tests.providers.webhook_env import make_env

    environment = make_env(tmp_path, gateway_factory)
    try:
        response = environment.post("/webhooks/ses", b"{}", {"Content-Type": "application/json"})
        assert response.status_code == 404
        assert "provider_webhooks.ses" in response.json()["detail"]
    finally:
        environment.client.close()


def test_a_replayed_event_about_an_unknown_message_is_a_duplicate(env: WebhookEnv) -> None:
    body = events_about("nosuchmessage", 1, "ann@example.org", "bounce", env=env)
    headers = signed(env.sendgrid_key, body, str(int(env.clock.now())))
    first = env.post("/webhooks/sendgrid", body, headers)
    assert first.json() == {"accepted": 0, "duplicates": 0, "unmatched": 1}
    again = env.post("/webhooks/sendgrid", body, headers)
    assert again.json() == {"accepted": 0, "duplicates": 1, "unmatched": 0}
