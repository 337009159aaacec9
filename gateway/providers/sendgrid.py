"""``sendgrid``: SendGrid's v3 ``POST /v3/mail/send``.

The v3 API takes JSON fields, not MIME, so the finished message is taken apart
(:mod:`gateway.providers.mime_fields`): From, Reply-To, Subject, the text and HTML bodies,
attachments and the pass-through headers. Tags become ``categories`` (at most 10); the
sender's metadata and our message and delivery ids become the personalization's
``custom_args``, which SendGrid echoes in every Event Webhook event. SendGrid answers 202
with the message id in the ``X-Message-Id`` header.
"""

from __future__ import annotations

from typing import Any

import httpx

from gateway.config import SendgridProviderSection
from gateway.message import SendResult
from gateway.providers.base import OutboundMessage, ProviderCheckFailed
from gateway.providers.http_api import ApiError, HttpApiProvider, custom_data, error_text
from gateway.providers.mime_fields import MimeFields, MimeProblem, mime_fields

SEND_PATH = "/v3/mail/send"
MAX_CATEGORIES = 10


class SendgridProvider(HttpApiProvider):
    webhook = "sendgrid"
    max_size = 30_000_000  # SendGrid's request limit is 30 MB

    def __init__(self, name: str, section: SendgridProviderSection) -> None:
        super().__init__(
            name,
            base_url=section.base_url,
            timeout=section.timeout,
            max_connections=section.max_connections,
            headers={"Authorization": f"Bearer {section.api_key}"},
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
        sender: dict[str, str] = {"email": fields.from_address}
        if fields.from_name:
            sender["name"] = fields.from_name
        content = []
        # SendGrid requires text/plain first, then text/html.
        if fields.text is not None:
            content.append({"type": "text/plain", "value": fields.text})
        if fields.html is not None:
            content.append({"type": "text/html", "value": fields.html})
        body: dict[str, Any] = {
            "personalizations": [
                {"to": [{"email": message.recipient}], "custom_args": custom_data(message)}
            ],
            "from": sender,
            "subject": fields.subject,
            "content": content,
        }
        if fields.reply_to:
            body["reply_to"] = {"email": fields.reply_to}
        if fields.headers:
            body["headers"] = dict(fields.headers)
        if fields.attachments:
            body["attachments"] = [
                {
                    "content": a.content_base64,
                    "filename": a.filename,
                    "type": a.content_type,
                    "disposition": "inline" if a.inline else "attachment",
                    **({"content_id": a.content_id} if a.content_id else {}),
                }
                for a in fields.attachments
            ]
        if message.tags:
            body["categories"] = list(dict.fromkeys(message.tags))[:MAX_CATEGORIES]
        if self.section.ip_pool:
            body["ip_pool_name"] = self.section.ip_pool
        return body

    def provider_message_id(self, response: httpx.Response) -> str:
        return str(response.headers.get("X-Message-Id", ""))

    async def check(self) -> str:
        # /v3/scopes lists what the key may do; sending needs mail.send.
        try:
            response = await self.request("GET", "/v3/scopes")
        except ApiError as e:
            raise ProviderCheckFailed(str(e)) from None
        if not response.is_success:
            raise ProviderCheckFailed(
                f"{self.name}: GET /v3/scopes answered {response.status_code}: "
                + error_text(response)
            )
        try:
            scopes = response.json().get("scopes", [])
        except ValueError:
            raise ProviderCheckFailed(f"{self.name}: /v3/scopes did not answer JSON") from None
        if "mail.send" not in scopes:
            raise ProviderCheckFailed(f"{self.name}: the API key lacks the mail.send scope")
        return f"{self.name}: API key accepted, mail.send scope present"
