"""How each provider proves a webhook request is its own (SES's SNS signatures are in
:mod:`gateway.sns`). Every check raises :class:`WebhookRefused` with the HTTP status to answer
and a reason that names what failed; nothing is recorded for a refused request.

* SendGrid: ECDSA P-256 / SHA-256 over ``timestamp + raw body``, the signature (base64 DER)
  in ``X-Twilio-Email-Event-Webhook-Signature``, the timestamp in ``…-Timestamp``.
* Mailgun: HMAC-SHA256 of ``timestamp + token`` with the webhook signing key, in the body's
  ``signature`` object; each token is accepted once.
* Postmark: no signature; HTTP basic auth credentials (put in the webhook URL) and/or a
  custom header with a shared secret, compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"


class WebhookRefused(Exception):
    """Answer ``status`` with ``reason``; the request had no effect."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_freshness(timestamp: float, now: float, max_age: float, what: str) -> None:
    if abs(now - timestamp) > max_age:
        raise WebhookRefused(
            403, f"{what} is {abs(now - timestamp):.0f}s off the current time (a replay?)"
        )


# --- SendGrid ----------------------------------------------------------------------------------


def load_sendgrid_key(text: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER), or PEM."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error) as e:
        raise ValueError(f"not a public key (base64 DER or PEM): {e}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve (ECDSA) public key")
    return key


def verify_sendgrid(
    key: ec.EllipticCurvePublicKey,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    *,
    now: float,
    max_age: float,
) -> None:
    if not signature or not timestamp:
        raise WebhookRefused(401, f"{SENDGRID_SIGNATURE} and {SENDGRID_TIMESTAMP} are required")
    try:
        der = base64.b64decode(signature, validate=True)
    except binascii.Error:
        raise WebhookRefused(403, f"{SENDGRID_SIGNATURE} is not base64") from None
    try:
        key.verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise WebhookRefused(403, "the SendGrid signature does not match") from None
    try:
        sent_at = float(timestamp)
    except ValueError:
        raise WebhookRefused(403, f"{SENDGRID_TIMESTAMP} is not a number") from None
    check_freshness(sent_at, now, max_age, SENDGRID_TIMESTAMP)


# --- Mailgun -----------------------------------------------------------------------------------


def mailgun_signature(signing_key: str, timestamp: str, token: str) -> str:
    return hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


def verify_mailgun(
    signing_key: str, signature: object, *, now: float, max_age: float
) -> tuple[str, str]:
    """Check the body's ``signature`` object; return ``(timestamp, token)``."""
    if not isinstance(signature, dict):
        raise WebhookRefused(401, "the body has no signature object")
    timestamp, token, digest = (signature.get(k) for k in ("timestamp", "token", "signature"))
    if not (isinstance(timestamp, str) and isinstance(token, str) and isinstance(digest, str)):
        raise WebhookRefused(401, "signature needs timestamp, token and signature strings")
    expected = mailgun_signature(signing_key, timestamp, token)
    if not hmac.compare_digest(expected, digest.lower()):
        raise WebhookRefused(403, "the Mailgun signature does not match")
    try:
        sent_at = float(timestamp)
    except ValueError:
        raise WebhookRefused(403, "signature.timestamp is not a number") from None
    check_freshness(sent_at, now, max_age, "signature.timestamp")
    return timestamp, token


# --- Postmark ----------------------------------------------------------------------------------


def verify_postmark(
    *,
    username: str,
    password: str,
    secret_header: str,
    secret: str,
    authorization: str | None,
    header_value: str | None,
) -> None:
    """Every configured credential must be present and right."""
    if username and password:
        expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        if authorization is None:
            raise WebhookRefused(401, "basic auth credentials are required")
        if not hmac.compare_digest(authorization.encode(), expected.encode()):
            raise WebhookRefused(403, "wrong basic auth credentials")
    if secret_header and secret:
        if header_value is None:
            raise WebhookRefused(401, f"header {secret_header} is required")
        if not hmac.compare_digest(header_value.encode(), secret.encode()):
            raise WebhookRefused(403, f"wrong {secret_header}")
