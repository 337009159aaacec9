"""``POST /webhooks/{ses,sendgrid,mailgun,postmark}``: provider events in, normalized events out.

Each endpoint answers only when its ``[provider_webhooks.<provider>]`` table exists (404
otherwise), then, in this order:

1. authenticates the request with the provider's own scheme (:mod:`gateway.webhook_auth`,
   :mod:`gateway.sns`) — a forgery gets 401/403, a stale timestamp 403 (a replay), and
   nothing is recorded;
2. decodes the body strictly — malformed JSON or form data is 400, a well-formed body that is
   not shaped like the provider's events is 422, and nothing is recorded;
3. normalizes (:mod:`gateway.provider_events`) and reports the events
   (:func:`gateway.feedback.report`: de-duplication on the provider's event id, delivery
   status, timeline, ``gateway_event`` hooks).

The answer is ``200`` with counts (accepted, duplicates, unmatched): the provider stops
retrying. A store failure answers 503 so the provider retries later.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, post
from litestar.handlers import HTTPRouteHandler

from gateway.api.problems import Problem
from gateway.durations import parse_duration
from gateway.events import Event
from gateway.feedback import Outcome, report
from gateway.provider_events import (
    PayloadError,
    mailgun_events,
    postmark_events,
    sendgrid_events,
    ses_events,
)
from gateway.sns import SnsVerifier
from gateway.webhook_auth import (
    SENDGRID_SIGNATURE,
    SENDGRID_TIMESTAMP,
    WebhookRefused,
    load_sendgrid_key,
    verify_mailgun,
    verify_postmark,
    verify_sendgrid,
)

if TYPE_CHECKING:
    from gateway.server import Gateway


def _refused(e: WebhookRefused) -> Problem:
    slug = "webhook-unauthorized" if e.status in (401, 403) else "webhook-refused"
    return Problem(e.status, slug, "Webhook refused", e.reason)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise Problem(400, "malformed-body", "Malformed body", f"invalid JSON: {e}") from None


def _not_configured(provider: str) -> Problem:
    return Problem(
        404,
        "webhook-not-configured",
        "Not found",
        f"no [provider_webhooks.{provider}] table: this endpoint is off",
    )


def _answer(outcome: Outcome) -> Response[bytes]:
    return Response(msgspec.json.encode(outcome), media_type="application/json", status_code=200)


async def _report(gateway: Gateway, parse: Any) -> Response[bytes]:
    try:
        events: list[Event] = parse()
    except PayloadError as e:
        raise Problem(422, "malformed-event", "Malformed event", str(e)) from None
    return _answer(await report(gateway, events))


SNS_MESSAGE_TYPE = "x-amz-sns-message-type"


def webhook_routes(gateway: Gateway) -> list[HTTPRouteHandler]:
    """The four endpoints, bound to ``gateway`` (its clock, store, plugins and settings)."""
    hooks = gateway.config.provider_webhooks
    clock = gateway.clock
    sns = SnsVerifier(hooks.ses) if hooks.ses is not None else None
    sendgrid_key = load_sendgrid_key(hooks.sendgrid.public_key) if hooks.sendgrid else None
    dedup_window = parse_duration(hooks.dedup_window)

    @post("/webhooks/ses", include_in_schema=False, status_code=200)
    async def ses(request: Request[Any, Any, Any]) -> Response[bytes]:
        if sns is None:
            raise _not_configured("ses")
        message = _json(await request.body())
        if not isinstance(message, dict):
            raise Problem(422, "malformed-event", "Malformed event", "an SNS message is an object")
        # SNS names the type twice; a body whose Type disagrees with the header was altered
        # or crafted (the header is not signed, the body is: both must say the same).
        header_type = request.headers.get(SNS_MESSAGE_TYPE)
        if header_type != message.get("Type"):
            raise _refused(
                WebhookRefused(
                    400,
                    f"{SNS_MESSAGE_TYPE} {header_type!r} does not match the body's Type "
                    f"{message.get('Type')!r}",
                )
            )
        try:
            await sns.verify(message, now=clock.now())
            if message["Type"] == "SubscriptionConfirmation":
                done = await sns.confirm(message)
                return Response(
                    msgspec.json.encode({"subscription": done}), media_type="application/json"
                )
        except WebhookRefused as e:
            raise _refused(e) from None
        if message["Type"] != "Notification":
            return _answer(Outcome())
        record = message.get("Message")
        if not isinstance(record, str):
            raise Problem(422, "malformed-event", "Malformed event", "Message is not a string")
        inner = _json(record.encode())
        if not isinstance(inner, dict):
            raise Problem(422, "malformed-event", "Malformed event", "Message is not an object")
        return await _report(
            gateway,
            lambda: ses_events(inner, sns_message_id=str(message["MessageId"]), now=clock.now()),
        )

    @post("/webhooks/sendgrid", include_in_schema=False, status_code=200)
    async def sendgrid(request: Request[Any, Any, Any]) -> Response[bytes]:
        if hooks.sendgrid is None or sendgrid_key is None:
            raise _not_configured("sendgrid")
        body = await request.body()
        try:
            verify_sendgrid(
                sendgrid_key,
                request.headers.get(SENDGRID_SIGNATURE),
                request.headers.get(SENDGRID_TIMESTAMP),
                body,
                now=clock.now(),
                max_age=parse_duration(hooks.sendgrid.max_age),
            )
        except WebhookRefused as e:
            raise _refused(e) from None
        payload = _json(body)
        return await _report(gateway, lambda: sendgrid_events(payload, now=clock.now()))

    @post("/webhooks/mailgun", include_in_schema=False, status_code=200)
    async def mailgun(request: Request[Any, Any, Any]) -> Response[bytes]:
        if hooks.mailgun is None:
            raise _not_configured("mailgun")
        body = await request.body()
        payload = _mailgun_payload(request.headers.get("content-type", ""), body)
        now = clock.now()
        try:
            _, token = verify_mailgun(
                hooks.mailgun.signing_key,
                payload.get("signature"),
                now=now,
                max_age=parse_duration(hooks.mailgun.max_age),
            )
        except WebhookRefused as e:
            raise _refused(e) from None
        event_data = payload.get("event-data")
        try:
            events = mailgun_events(event_data, now=now)
        except PayloadError as e:
            raise Problem(422, "malformed-event", "Malformed event", str(e)) from None
        # Mailgun signs only timestamp + token: a token seen before is a replay.
        if not await gateway.store.first_sighting(
            "mailgun-token:" + token, expires_at=now + dedup_window, now=now
        ):
            raise Problem(
                409, "webhook-replayed", "Webhook refused", "this signature token was used before"
            )
        return _answer(await report(gateway, events))

    @post("/webhooks/postmark", include_in_schema=False, status_code=200)
    async def postmark(request: Request[Any, Any, Any]) -> Response[bytes]:
        settings = hooks.postmark
        if settings is None:
            raise _not_configured("postmark")
        try:
            verify_postmark(
                username=settings.username,
                password=settings.password,
                secret_header=settings.secret_header,
                secret=settings.secret,
                authorization=request.headers.get("authorization"),
                header_value=(
                    request.headers.get(settings.secret_header) if settings.secret_header else None
                ),
            )
        except WebhookRefused as e:
            raise _refused(e) from None
        payload = _json(await request.body())
        return await _report(gateway, lambda: postmark_events(payload, now=clock.now()))

    return [ses, sendgrid, mailgun, postmark]


def _mailgun_payload(content_type: str, body: bytes) -> dict[str, Any]:
    """Mailgun posts JSON (``signature`` + ``event-data``); legacy webhooks post a form with
    ``timestamp``, ``token``, ``signature`` and ``event-data`` as a JSON string."""
    media = content_type.split(";")[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        try:
            form = dict(urllib.parse.parse_qsl(body.decode(), strict_parsing=True))
        except (ValueError, UnicodeDecodeError) as e:
            raise Problem(400, "malformed-body", "Malformed body", f"invalid form: {e}") from None
        signature = {k: form.get(k) for k in ("timestamp", "token", "signature")}
        event_data = _json(form.get("event-data", "null").encode())
        return {"signature": signature, "event-data": event_data}
    payload = _json(body)
    if not isinstance(payload, dict):
        raise Problem(422, "malformed-event", "Malformed event", "the body must be an object")
    return payload
