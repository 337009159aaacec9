"""``ses``: Amazon SES API v2 ``SendEmail`` (``POST /v2/email/outbound-emails``) with
``Content.Raw`` — the finished message exactly as the gateway built and signed it.

Requests are signed with AWS Signature Version 4 by botocore's ``SigV4Auth`` (AWS's own,
well-tested implementation; only the signing is borrowed, the HTTP goes through the pooled
httpx client). The configuration set routes SES's event publishing (deliveries, bounces,
complaints, opens, clicks) to SNS, which posts them to ``/webhooks/ses``; our message and
delivery ids travel as message tags, which SES echoes in every event (``mail.tags``).

SES tag names and values may only contain ASCII letters, digits, ``_`` and ``-`` (at most
256 characters): other characters in the sender's tags and metadata are replaced by ``_``.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gateway.config import SesProviderSection
from gateway.message import SendResult
from gateway.providers.base import OutboundMessage, ProviderCheckFailed
from gateway.providers.http_api import ApiError, HttpApiProvider, custom_data, error_text

SEND_PATH = "/v2/email/outbound-emails"
CHECK_PATH = "/v2/email/list-identities"
"""``ListEmailIdentities`` (read-only; the model's current request URI)."""
SERVICE = "ses"

PERMANENT_ERRORS = frozenset({"MessageRejected", "BadRequestException"})
"""SES error types that refuse this message for good. Everything else — throttling, a paused
or suspended account, an unverified identity, a missing configuration set — is the gateway's
or the account's problem and must not bounce the mail."""

_XML_CODE = re.compile(r"<Code>([A-Za-z0-9.]+)</Code>")
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def tag_safe(value: str) -> str:
    return _TAG_UNSAFE.sub("_", value)[:256] or "_"


class SesProvider(HttpApiProvider):
    webhook = "ses"
    max_size = 30_000_000  # SES takes 40 MB after base64 (about 30 MB raw)

    def __init__(self, name: str, section: SesProviderSection) -> None:
        super().__init__(
            name,
            base_url=section.endpoint or f"https://email.{section.region}.amazonaws.com",
            timeout=section.timeout,
            max_connections=section.max_connections,
        )
        self.section = section
        self._signer = SigV4Auth(
            Credentials(
                section.access_key_id, section.secret_access_key, section.session_token or None
            ),
            SERVICE,
            section.region,
        )

    def signed_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        """SigV4 headers (``Authorization``, ``X-Amz-Date``, …) for one request."""
        request = AWSRequest(
            method=method,
            url=self.base_url + path,
            data=body,
            headers={"Content-Type": "application/json"} if body else {},
        )
        self._signer.add_auth(request)
        return dict(request.headers.items())

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        # Keyed by the name SES will see, so two keys that fold to one name become one tag and
        # ours, applied last, win: a webhook never sees two values under our names.
        tags: dict[str, str] = {}
        for name, value in self.section.tags.items():
            tags[tag_safe(name)] = tag_safe(value)
        for tag in message.tags:
            tags.setdefault(f"tag_{tag_safe(tag)}"[:256], "1")
        for name, value in custom_data(message).items():
            tags[tag_safe(name)] = tag_safe(value)
        body: dict[str, Any] = {
            "Destination": {"ToAddresses": [message.recipient]},
            "Content": {"Raw": {"Data": base64.b64encode(message.raw).decode("ascii")}},
            "EmailTags": [{"Name": name, "Value": value} for name, value in tags.items()],
        }
        if self.section.configuration_set:
            body["ConfigurationSetName"] = self.section.configuration_set
        return body

    async def send(self, message: OutboundMessage) -> SendResult:
        body = json.dumps(self.payload(message)).encode()
        return await self.send_request(
            message,
            "POST",
            SEND_PATH,
            content=body,
            headers=self.signed_headers("POST", SEND_PATH, body),
        )

    def classify(self, response: httpx.Response) -> SendResult:
        kind, text = error_of(response)
        detail = f"{self.name}: HTTP {response.status_code} {kind}: {text}"
        if kind in PERMANENT_ERRORS:
            return SendResult.hard_fail(detail)
        return SendResult.soft_fail(detail)

    def provider_message_id(self, response: httpx.Response) -> str:
        return str(response.json().get("MessageId") or "")

    async def check(self) -> str:
        body = b'{"PageSize": 1}'
        try:
            response = await self.request(
                "POST",
                CHECK_PATH,
                content=body,
                headers=self.signed_headers("POST", CHECK_PATH, body),
            )
        except ApiError as e:
            raise ProviderCheckFailed(str(e)) from None
        if not response.is_success:
            kind, text = error_of(response)
            raise ProviderCheckFailed(
                f"{self.name}: ListEmailIdentities answered {response.status_code} {kind}: {text}"
            )
        return f"{self.name}: SigV4 credentials accepted (ListEmailIdentities)"


def error_of(response: httpx.Response) -> tuple[str, str]:
    """SES's error type (``x-amzn-ErrorType`` header or the body's ``__type``/``code``) and
    message."""
    kind = response.headers.get("x-amzn-ErrorType", "")
    text = error_text(response)
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        kind = kind or str(body.get("__type") or body.get("code") or body.get("Code") or "")
        text = str(body.get("message") or body.get("Message") or text)
    elif not kind:  # the signature check answers in XML (<Code>SignatureDoesNotMatch</Code>)
        code = _XML_CODE.search(response.text)
        kind = code.group(1) if code else ""
    return kind.split(":", 1)[0].rpartition("#")[2], text
