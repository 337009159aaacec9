"""``mailgun``: Mailgun's ``POST /v3/<domain>/messages.mime``.

The finished message goes as it is — transformed, tracked and DKIM-signed by the gateway — as
the ``message`` file of a multipart form, with ``to`` set to this delivery's recipient. Tags
become ``o:tag`` (Mailgun keeps up to 3); the sender's metadata and our message and delivery
ids become ``v:`` user variables, which Mailgun returns as ``user-variables`` in every webhook
event. Basic auth with user ``api``.
"""

from __future__ import annotations

import httpx

from gateway.config import MailgunProviderSection
from gateway.message import SendResult
from gateway.providers.base import OutboundMessage
from gateway.providers.http_api import HttpApiProvider, custom_data

BASE_URLS = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}
MAX_TAGS = 3


class MailgunProvider(HttpApiProvider):
    webhook = "mailgun"
    max_size = 25_000_000  # Mailgun takes 25 MB

    def __init__(self, name: str, section: MailgunProviderSection) -> None:
        super().__init__(
            name,
            base_url=section.base_url or BASE_URLS[section.region],
            timeout=section.timeout,
            max_connections=section.max_connections,
            auth=httpx.BasicAuth("api", section.api_key),
        )
        self.section = section

    async def send(self, message: OutboundMessage) -> SendResult:
        form: dict[str, str | list[str]] = {"to": message.recipient}
        if message.tags:
            form["o:tag"] = list(dict.fromkeys(message.tags))[:MAX_TAGS]
        form.update((f"v:{key}", value) for key, value in custom_data(message).items())
        return await self.send_request(
            message,
            "POST",
            f"/v3/{self.section.domain}/messages.mime",
            data=form,
            files={"message": ("message.eml", message.raw, "message/rfc822")},
        )

    def provider_message_id(self, response: httpx.Response) -> str:
        return str(response.json().get("id") or "").strip("<>")

    async def check(self) -> str:
        path = f"/v4/domains/{self.section.domain}"
        return await self.check_get(path, f"GET {path}")
