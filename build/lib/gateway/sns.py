"""Amazon SNS HTTP(S) deliveries, as SES event publishing uses them: message signatures and
subscription confirmation.

A message is trusted when its RSA signature (``SignatureVersion`` 1 = SHA1, 2 = SHA256,
PKCS#1 v1.5) verifies with the certificate at ``SigningCertURL`` — and that URL is HTTPS on a
host matching the configured pattern (by default SNS's own ``sns.<region>.amazonaws.com``),
so a forger cannot point us at a certificate of their own. Certificates are fetched once and
cached. The string to sign is built from the message's fields exactly as AWS documents it
("Verifying the signatures of Amazon SNS messages").

A ``SubscriptionConfirmation`` is confirmed by fetching its ``SubscribeURL``, only when that
URL is HTTPS on an allowed host too, and only after the signature verified.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import ssl
import urllib.parse
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway.config import SesWebhookSection
from gateway.durations import parse_duration
from gateway.webhook_auth import WebhookRefused, check_freshness

NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
SUBSCRIPTION_FIELDS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
MESSAGE_TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
MAX_CERTIFICATES = 32


def string_to_sign(message: dict[str, Any]) -> bytes:
    kind = message.get("Type")
    fields = NOTIFICATION_FIELDS if kind == "Notification" else SUBSCRIPTION_FIELDS
    out = []
    for name in fields:
        if name == "Subject" and name not in message:
            continue  # the only optional field
        value = message.get(name)
        if not isinstance(value, str):
            raise WebhookRefused(400, f"SNS message field {name} is missing or not a string")
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode()


def parse_timestamp(value: object) -> float:
    if not isinstance(value, str):
        raise WebhookRefused(400, "SNS message has no Timestamp")
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise WebhookRefused(400, f"SNS Timestamp is not ISO 8601: {value!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


class SnsVerifier:
    """Verifies SNS messages for ``/webhooks/ses``; one per gateway (it caches certificates)."""

    def __init__(self, section: SesWebhookSection) -> None:
        self.section = section
        self.max_age = parse_duration(section.max_age)
        self._cert_hosts = re.compile(section.cert_host_pattern)
        self._subscribe_hosts = re.compile(section.subscribe_host_pattern)
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._tls = ssl.create_default_context()
        if section.ca_file:
            self._tls.load_verify_locations(section.ca_file)

    async def _get(self, url: str) -> httpx.Response:
        """One HTTPS GET (certificates are cached and confirmations rare: no pool kept)."""
        async with httpx.AsyncClient(
            verify=self._tls, timeout=httpx.Timeout(10.0), follow_redirects=False
        ) as client:
            return await client.get(url)

    async def verify(self, message: dict[str, Any], *, now: float) -> None:
        """Raise :class:`WebhookRefused` unless ``message`` is a fresh, genuine SNS message
        from an accepted topic."""
        kind = message.get("Type")
        if kind not in MESSAGE_TYPES:
            raise WebhookRefused(400, f"unknown SNS message Type {kind!r}")
        topics = self.section.topic_arns
        if topics and message.get("TopicArn") not in topics:
            raise WebhookRefused(403, f"topic {message.get('TopicArn')!r} is not accepted")
        algorithm = _HASHES.get(str(message.get("SignatureVersion")))
        if algorithm is None:
            raise WebhookRefused(
                400, f"unsupported SignatureVersion {message.get('SignatureVersion')!r}"
            )
        signature = message.get("Signature")
        if not isinstance(signature, str):
            raise WebhookRefused(401, "SNS message has no Signature")
        try:
            signature_bytes = base64.b64decode(signature, validate=True)
        except binascii.Error:
            raise WebhookRefused(403, "SNS Signature is not base64") from None
        key = await self._certificate_key(message.get("SigningCertURL"))
        try:
            key.verify(signature_bytes, string_to_sign(message), padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise WebhookRefused(403, "the SNS signature does not match") from None
        check_freshness(parse_timestamp(message.get("Timestamp")), now, self.max_age, "Timestamp")

    def _allowed(self, url: object, hosts: re.Pattern[str], what: str) -> str:
        if not isinstance(url, str):
            raise WebhookRefused(400, f"SNS message has no {what}")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname or not hosts.search(parts.hostname):
            raise WebhookRefused(403, f"{what} {url!r} is not HTTPS on an allowed host")
        return url

    async def _certificate_key(self, url: object) -> rsa.RSAPublicKey:
        checked = self._allowed(url, self._cert_hosts, "SigningCertURL")
        key = self._keys.get(checked)
        if key is not None:
            return key
        try:
            response = await self._get(checked)
        except httpx.HTTPError as e:
            raise WebhookRefused(503, f"cannot fetch the SNS certificate: {e!r}") from None
        if response.status_code != 200:
            raise WebhookRefused(
                503, f"fetching the SNS certificate answered {response.status_code}"
            )
        try:
            certificate = x509.load_pem_x509_certificate(response.content)
        except ValueError:
            raise WebhookRefused(403, "SigningCertURL does not hold a PEM certificate") from None
        public_key = certificate.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise WebhookRefused(403, "the SNS certificate has no RSA key")
        if len(self._keys) >= MAX_CERTIFICATES:
            self._keys.clear()
        self._keys[checked] = public_key
        return public_key

    async def confirm(self, message: dict[str, Any]) -> str:
        """Confirm a verified ``SubscriptionConfirmation``; return what was done."""
        if not self.section.confirm_subscriptions:
            return "subscription confirmation is switched off"
        url = self._allowed(message.get("SubscribeURL"), self._subscribe_hosts, "SubscribeURL")
        try:
            response = await self._get(url)
        except httpx.HTTPError as e:
            raise WebhookRefused(502, f"confirming the subscription failed: {e!r}") from None
        if response.status_code != 200:
            raise WebhookRefused(
                502, f"confirming the subscription answered {response.status_code}"
            )
        return f"subscription to {message.get('TopicArn')} confirmed"
