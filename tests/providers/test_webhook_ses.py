"""POST /webhooks/ses: SES events through SNS. The test makes its own signing key and
certificate, serves the certificate (and a SubscribeURL) over HTTPS on loopback with a
trustme CA, and signs SNS messages with SignatureVersion 1 (SHA1) and 2 (SHA256)."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from gateway.message import DeliveryStatus
from gateway.sns import string_to_sign
from tests.conftest import Certificates, GatewayThread
from tests.providers.spec_check import SPECS
from tests.providers.webhook_env import WebhookEnv, make_env

SAMPLES = SPECS / "webhook-samples" / "ses"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-events"


class SnsSide:
    """The AWS side on loopback: a signing key, its certificate served over HTTPS, and a
    SubscribeURL endpoint that counts confirmations."""

    def __init__(self, certificates: Certificates) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.test")])
        now = dt.datetime.now(dt.UTC)
        self.cert_pem = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
        self.confirmations: list[str] = []
        side = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/cert.pem":
                    body = side.cert_pem
                elif self.path.startswith("/confirm"):
                    side.confirmations.append(self.path)
                    body = b"<ConfirmSubscriptionResponse/>"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificates.cert_file, certificates.key_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def sign(self, message: dict[str, Any], version: str = "1", key: Any = None) -> dict[str, Any]:
        message = {**message, "SignatureVersion": version}
        message.setdefault("SigningCertURL", self.url + "/cert.pem")
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = (key or self.key).sign(string_to_sign(message), padding.PKCS1v15(), algorithm)
        message["Signature"] = base64.b64encode(signature).decode()
        return message


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
) -> Iterator[WebhookEnv]:
    extra = f"""
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


def iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def notification(env: WebhookEnv, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": TOPIC,
        "Message": json.dumps(record),
        "Timestamp": iso(env.clock.now()),
        "UnsubscribeURL": "https://127.0.0.1/unsubscribe",
    }


def ses_record(kind: str, message_id: str, delivery_id: int, recipient: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(
        (SAMPLES / f"event-publishing--{kind}-record.json").read_text()
    )
    record["mail"]["tags"] = {
        **record["mail"].get("tags", {}),
        "gw_message_id": [message_id],
        "gw_delivery_id": [str(delivery_id)],
    }
    record["mail"]["destination"] = [recipient]
    for key, recipients in (("bounce", "bouncedRecipients"), ("complaint", "complainedRecipients")):
        if key in record:
            for entry in record[key][recipients]:
                entry["emailAddress"] = recipient
    return record


def post(env: WebhookEnv, message: dict[str, Any]) -> Any:
    return env.post(
        "/webhooks/ses",
        json.dumps(message).encode(),
        {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": message["Type"]},
    )


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_bounce_notification_bounces_and_suppresses(
    env: WebhookEnv, sns: SnsSide, version: str
) -> None:
    message_id, [ann] = env.deliver("ann@example.org")
    message = sns.sign(
        notification(env, ses_record("bounce", message_id, ann.id, "ann@example.org")), version
    )
    response = post(env, message)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    assert env.deliveries(message_id)[0].status == DeliveryStatus.BOUNCED
    assert env.suppressions()["ann@example.org"].reason == "bounce"
    assert post(env, message).json()["duplicates"] == 1  # SNS redelivers: counted once


def test_a_complaint_notification_suppresses(env: WebhookEnv, sns: SnsSide) -> None:
    message_id, [ann] = env.deliver("ann@example.org")
    record = ses_record("complaint", message_id, ann.id, "ann@example.org")
    assert post(env, sns.sign(notification(env, record))).status_code == 200
    assert env.suppressions()["ann@example.org"].reason == "complaint"


def test_forgeries_and_replays_are_refused(env: WebhookEnv, sns: SnsSide) -> None:
    message_id, [ann] = env.deliver("ann@example.org")
    record = ses_record("bounce", message_id, ann.id, "ann@example.org")
    good = sns.sign(notification(env, record))
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stale = notification(env, record)
    stale["Timestamp"] = iso(env.clock.now() - 7200)
    cases = [
        ({**good, "Message": good["Message"].replace("Permanent", "Transient")}, 403),  # altered
        (sns.sign(notification(env, record), key=other_key), 403),  # signed by someone else
        (sns.sign(stale), 403),  # an old message replayed
        (sns.sign({**notification(env, record), "TopicArn": "arn:aws:sns:x:1:other"}), 403),
        (
            sns.sign({**notification(env, record), "SigningCertURL": "http://127.0.0.1/cert.pem"}),
            403,
        ),
        (sns.sign({**notification(env, record), "SigningCertURL": "https://localhost/c.pem"}), 403),
        ({**good, "SignatureVersion": "3"}, 400),
        ({key: value for key, value in good.items() if key != "Signature"}, 401),
    ]
    for message, status in cases:
        response = post(env, message)
        assert response.status_code == status, (status, response.text)
    assert env.post("/webhooks/ses", b"{broken", {}).status_code == 400
    not_json_inside = sns.sign({**notification(env, record), "Message": "not json"})
    assert post(env, not_json_inside).status_code == 400
    assert env.deliveries(message_id)[0].status == DeliveryStatus.DELIVERED
    assert env.suppressions() == {}


def test_a_subscription_is_confirmed_only_on_an_allowed_host(env: WebhookEnv, sns: SnsSide) -> None:
    confirmation = {
        "Type": "SubscriptionConfirmation",
        "MessageId": str(uuid.uuid4()),
        "Token": "2336412f37fb687f5d51e6e2425",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe to the topic ...",
        "SubscribeURL": sns.url + "/confirm?Action=ConfirmSubscription&Token=2336412f37",
        "Timestamp": iso(env.clock.now()),
    }
    response = post(env, sns.sign(confirmation, "2"))
    assert response.status_code == 200, response.text
    assert sns.confirmations == ["/confirm?Action=ConfirmSubscription&Token=2336412f37"]
    elsewhere = {**confirmation, "SubscribeURL": "https://localhost:1/confirm?Token=x"}
    assert post(env, sns.sign(elsewhere, "2")).status_code == 403
    forged = {**confirmation, "Token": "other"}
    forged["Signature"] = sns.sign(confirmation, "2")["Signature"]
    forged["SignatureVersion"], forged["SigningCertURL"] = "2", sns.url + "/cert.pem"
    assert post(env, forged).status_code == 403
    assert len(sns.confirmations) == 1


def test_every_documented_ses_record_normalizes() -> None:
    from gateway.provider_events import ses_events

    expected = {
        "bounce": "bounced",
        "complaint": "complained",
        "delivery": "delivered",
        "deliverydelay": "deferred",
        "reject": "rejected",
        "open": "opened",
        "click": "clicked",
        "subscription": "unsubscribed",
        "send": None,
        "rendering-failure": None,
    }
    for kind, ours in expected.items():
        record = json.loads((SAMPLES / f"event-publishing--{kind}-record.json").read_text())
        events = ses_events(record, sns_message_id="m", now=0.0)
        assert [e.type for e in events][:1] == ([ours] if ours else []), kind
    for name in ("bounce-notification-with-a-dsn", "complaint-notification-with-a-feedback-report"):
        record = json.loads((SAMPLES / f"identity-notification--{name}.json").read_text())
        assert ses_events(record, sns_message_id="m", now=0.0)


def test_the_message_type_header_must_match_the_body(env: WebhookEnv, sns: SnsSide) -> None:
    message_id, [ann] = env.deliver("ann@example.org")
    message = sns.sign(notification(env, ses_record("bounce", message_id, ann.id, ann.recipient)))
    body = json.dumps(message).encode()
    for header in ({"x-amz-sns-message-type": "SubscriptionConfirmation"}, {}):
        response = env.post("/webhooks/ses", body, {"Content-Type": "text/plain", **header})
        assert response.status_code == 400, response.text
        assert "x-amz-sns-message-type" in response.text
    assert env.deliveries(message_id)[0].status == DeliveryStatus.DELIVERED
    assert post(env, message).json()["accepted"] == 1
