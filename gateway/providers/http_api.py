"""What the ESP API providers (SES, SendGrid, Mailgun, Postmark) share: one pooled httpx
client per provider, and the mapping of transport failures and HTTP statuses to
``SendResult``.

The classification every API provider starts from:

* 2xx → handed over (``sent``), whatever the body says: the provider's message id is
  recorded when the body or headers carry one, and a body we cannot read (not JSON, a field
  missing, an error code beside a 2xx) only adds a warning to the detail. A 2xx is never
  retried or failed over: that would make a second copy (docs/routing.md).
* 408, 429 and 5xx, connection errors and timeouts *before* the request was fully written
  (connect, pool and write timeouts, a refused connection) → temporary (``soft_fail``):
  retry, or fail over to the next route.
* A timeout or a dropped connection *after* the request was written (read timeout, a reset
  or closed connection while waiting for the answer) leaves the outcome unknown:
  ``SendResult.unknown``, which routing never fails over at once (docs/routing.md).
* 401 and 403 → temporary too: a wrong or revoked key is the gateway's problem, not the
  recipient's, and must not bounce every message — the circuit breaker and failover take the
  provider out of rotation until it is fixed.
* any other 4xx → permanent (``hard_fail``): the API refused this message for good.

Each provider refines this from the error body (e.g. Postmark's ``ErrorCode``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx

from gateway.message import SendResult
from gateway.providers.base import OutboundMessage, Provider, ProviderCheckFailed

log = logging.getLogger("gateway.providers")

GATEWAY_MESSAGE_ID = "gw_message_id"
"""Name under which our message id travels in a provider's custom data (tags, custom args,
user variables, metadata), so webhook events can be tied back to the delivery."""
GATEWAY_DELIVERY_ID = "gw_delivery_id"
RESERVED_PREFIX = "gw_"
"""The gateway's namespace in custom data. A sender key that could be read as ours on any
provider — one that starts with ``gw`` and a separator once folded to lower case, where SES
turns ``.`` or ``-`` into ``_`` — is renamed with :data:`SENDER_PREFIX`."""
SENDER_PREFIX = "user_"
_FOLD = re.compile(r"[^a-z0-9]")


AFTER_WRITE = (httpx.ReadError, httpx.RemoteProtocolError)
"""Transport errors raised while reading the answer: the request had been written, so the
provider may have taken it. Connect, pool and write failures happen before the request is
complete, and an API does not act on a request it did not fully receive."""


class ApiError(Exception):
    """A request to the provider's API did not get a usable answer."""

    def __init__(self, message: str, *, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent
        """The request was sent and no response came: the API may have taken it."""


class HttpApiProvider(Provider):
    """Base of the providers that talk to an ESP's HTTP API."""

    reports_delivery = True
    """A ``sent`` result means the API took the message, not that it reached the mailbox:
    delivery, bounces and complaints arrive later through the provider's webhook."""
    smtputf8 = False
    """No ESP API takes a non-ASCII local part (their address formats are ASCII)."""
    webhook: str = ""
    """The ``/webhooks/<name>`` endpoint whose events report on this provider's sends."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        timeout: float,
        max_connections: int,
        headers: dict[str, str] | None = None,
        auth: httpx.Auth | None = None,
    ) -> None:
        super().__init__(name)
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._max_connections = max_connections
        self._headers = headers or {}
        self._auth = auth
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=httpx.Timeout(self._timeout),
                limits=httpx.Limits(
                    max_connections=self._max_connections,
                    max_keepalive_connections=self._max_connections,
                ),
                headers={"User-Agent": "esp-gateway", **self._headers},
                auth=self._auth,
                follow_redirects=False,
            )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(f"provider {self.name} used before start()")
        return self._client

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; transport failures become :class:`ApiError` naming what failed."""
        await self.start()
        try:
            return await self.client.request(method, path, **kwargs)
        except httpx.TimeoutException as e:
            raise ApiError(
                f"{self.name}: timed out after {self._timeout:g}s ({type(e).__name__})",
                maybe_sent=isinstance(e, httpx.ReadTimeout),
            ) from e
        except httpx.HTTPError as e:
            raise ApiError(
                f"{self.name}: {type(e).__name__}: {e}",
                maybe_sent=isinstance(e, AFTER_WRITE),
            ) from e

    async def send_request(
        self, message: OutboundMessage, method: str, path: str, **kwargs: Any
    ) -> SendResult:
        """Make the send call and classify it; providers override :meth:`classify`."""
        try:
            response = await self.request(method, path, **kwargs)
        except ApiError as e:
            return SendResult.unknown(str(e)) if e.maybe_sent else SendResult.soft_fail(str(e))
        if response.is_success:
            result = self.handed_over(response)
        else:
            result = self.classify(response)
        log.debug(
            "%s send message=%s delivery=%s → %s %s",
            self.name,
            message.message_id,
            message.delivery_id,
            response.status_code,
            result.kind,
        )
        return result

    def handed_over(self, response: httpx.Response) -> SendResult:
        """A 2xx: ``sent``, with the provider's message id when it can be read and a warning
        in the detail when the answer is not what the provider documents."""
        detail = f"{self.name}: {response.status_code}"
        try:
            provider_message_id = self.provider_message_id(response)
            warning = self.success_warning(response)
        except Exception as e:  # an odd body must never turn a hand-over into a resend
            provider_message_id, warning = "", f"unreadable answer ({type(e).__name__})"
        if not provider_message_id:
            warning = warning or "no message id in the answer"
        if warning:
            log.warning("%s accepted a message with an odd answer: %s", self.name, warning)
            detail += f" (warning: {warning})"
        return SendResult.sent(detail, provider_message_id)

    def classify(self, response: httpx.Response) -> SendResult:
        """Map the API's non-2xx answer to a ``SendResult`` (module docstring)."""
        return classify_status(self.name, response.status_code, error_text(response))

    def provider_message_id(self, response: httpx.Response) -> str:
        """The provider's id of the message just accepted (from the body or a header); may
        raise on a malformed body (:meth:`handed_over` catches it)."""
        return ""

    def success_warning(self, response: httpx.Response) -> str:
        """What is odd about a 2xx answer (``""``: nothing); the send counts as made anyway."""
        return ""

    async def check_get(self, path: str, what: str, **kwargs: Any) -> str:
        """``check()`` helper: a GET that must answer 2xx with these credentials."""
        try:
            response = await self.request("GET", path, **kwargs)
        except ApiError as e:
            raise ProviderCheckFailed(str(e)) from None
        if response.status_code in (401, 403):
            raise ProviderCheckFailed(
                f"{self.name}: credentials refused ({response.status_code}): {error_text(response)}"
            )
        if not response.is_success:
            raise ProviderCheckFailed(
                f"{self.name}: {what} answered {response.status_code}: {error_text(response)}"
            )
        return f"{self.name}: {what} accepted the credentials"


def classify_status(name: str, status: int, text: str) -> SendResult:
    detail = f"{name}: HTTP {status}: {text}" if text else f"{name}: HTTP {status}"
    if status in (401, 403, 408, 429) or status >= 500 or status < 400:
        return SendResult.soft_fail(detail)
    return SendResult.hard_fail(detail)


def error_text(response: httpx.Response, limit: int = 300) -> str:
    """A short, single-line excerpt of an error body for logs and delivery records."""
    text = response.text.strip().replace("\r", " ").replace("\n", " ")
    return text[:limit]


def tracking_fields(message: OutboundMessage) -> dict[str, str]:
    """Our ids, as custom data every provider echoes back in its webhook events."""
    return {
        GATEWAY_MESSAGE_ID: message.message_id,
        GATEWAY_DELIVERY_ID: str(message.delivery_id),
    }


def in_reserved_namespace(key: str) -> bool:
    """Whether ``key`` could be taken for one of the gateway's keys on some provider."""
    return _FOLD.sub("_", key.lower()).startswith(RESERVED_PREFIX)


def custom_data(message: OutboundMessage) -> dict[str, str]:
    """The sender's metadata plus our ids. Sender keys in the gateway's namespace are renamed
    (``gw.message.id`` → ``user_gw.message.id``), so no provider can echo a sender's value
    where a webhook reads ours."""
    data = {
        (SENDER_PREFIX + key if in_reserved_namespace(key) else key): value
        for key, value in message.metadata.items()
    }
    data.update(tracking_fields(message))
    return data
