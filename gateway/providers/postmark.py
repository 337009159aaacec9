"""``postmark``: Postmark's ``POST /email`` through a message stream.

Postmark takes JSON fields, not MIME (see :mod:`gateway.providers.mime_fields`). The first
tag becomes ``Tag`` (Postmark keeps one per message); the sender's metadata and our message
and delivery ids become ``Metadata``, which Postmark returns in every webhook.

Postmark answers errors with an ``ErrorCode``: the ones that concern this message or
recipient (invalid request, inactive or invalid recipient) are permanent; account, token and
rate problems are temporary, so they never bounce mail.
"""

from __future__ import annotations

from email.utils import formataddr
from typing import Any

import httpx

from gateway.config import PostmarkProviderSection
from gateway.message import SendResult
from gateway.providers.base import OutboundMessage
from gateway.providers.http_api import HttpApiProvider, classify_status, custom_data, error_text
from gateway.providers.mime_fields import MimeFields, MimeProblem, mime_fields

SEND_PATH = "/email"

PERMANENT_ERROR_CODES = frozenset({300, 406, 409, 411, 412, 413, 415, 416, 417, 418, 701})
"""Postmark error codes that refuse this message for good: invalid email request (300),
inactive recipient (406), JSON/field errors (409-418) and an invalid recipient (701…)."""


class PostmarkProvider(HttpApiProvider):
    webhook = "postmark"
    max_size = 10_000_000  # Postmark takes 10 MB

    def __init__(self, name: str, section: PostmarkProviderSection) -> None:
        super().__init__(
            name,
            base_url=section.base_url,
            timeout=section.timeout,
            max_connections=section.max_connections,
            headers={"X-Postmark-Server-Token": section.server_token, "Accept": "application/json"},
        )
        self.section = section

    async def send(self, message: OutboundMessage) -> SendResult:
        try:
            fields = await mime_fields(message.raw)
        except MimeProblem as e:
            return SendResult.hard_fail(f"{self.name}: {e}")
        return await self.send_request(
            message, "POST", SEND_PATH, json=self.payload(message, fields)
        )

    def payload(self, message: OutboundMessage, fields: MimeFields) -> dict[str, Any]:
        sender = formataddr((fields.from_name, fields.from_address))
        body: dict[str, Any] = {
            "From": sender,
            "To": message.recipient,
            "Subject": fields.subject,
            "MessageStream": self.section.message_stream,
            "Metadata": custom_data(message),
        }
        if fields.text is not None:
            body["TextBody"] = fields.text
        if fields.html is not None:
            body["HtmlBody"] = fields.html
        if fields.reply_to:
            body["ReplyTo"] = fields.reply_to
        if fields.headers:
            body["Headers"] = [{"Name": n, "Value": v} for n, v in fields.headers]
        if fields.attachments:
            body["Attachments"] = [
                {
                    "Name": a.filename,
                    "Content": a.content_base64,
                    "ContentType": a.content_type,
                    **({"ContentID": f"cid:{a.content_id}"} if a.content_id else {}),
                }
                for a in fields.attachments
            ]
        if message.tags:
            body["Tag"] = message.tags[0]
        return body

    def classify(self, response: httpx.Response) -> SendResult:
        code, text = _error_of(response)
        detail = f"{self.name}: HTTP {response.status_code} ErrorCode {code}: {text}"
        if response.status_code == 422 and code in PERMANENT_ERROR_CODES:
            return SendResult.hard_fail(detail)
        if response.status_code == 422:
            return SendResult.soft_fail(detail)
        return classify_status(self.name, response.status_code, error_text(response))

    def provider_message_id(self, response: httpx.Response) -> str:
        return str(response.json().get("MessageID") or "")

    def success_warning(self, response: httpx.Response) -> str:
        # Postmark documents ErrorCode 0 on every 2xx; anything else is odd but the message
        # was taken: a resend would make a second copy.
        code, text = _error_of(response)
        return "" if code == 0 else f"ErrorCode {code} beside HTTP {response.status_code}: {text}"

    async def check(self) -> str:
        return await self.check_get("/server", "GET /server")


def _error_of(response: httpx.Response) -> tuple[int, str]:
    try:
        body = response.json()
    except ValueError:
        return -1, error_text(response)
    if not isinstance(body, dict):
        return -1, error_text(response)
    code = body.get("ErrorCode", -1)
    return (code if isinstance(code, int) else -1), str(body.get("Message", ""))
