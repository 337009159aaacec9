"""Provider webhook payloads → normalized :class:`gateway.events.Event` s.

One function per provider takes the decoded payload (already authenticated) and returns the
events it reports, tied back to our message and delivery by the ids every send carries
(``gw_message_id`` / ``gw_delivery_id``, see :mod:`gateway.providers.http_api`). The tenant is
left empty here: :mod:`gateway.feedback` fills it from the stored message, never from the
payload. A payload of the wrong shape raises :class:`PayloadError`; event kinds we do not use
(SES ``Send``, SendGrid ``processed``, Mailgun ``accepted`` …) are skipped.

| ours | SES | SendGrid | Mailgun | Postmark |
|---|---|---|---|---|
| delivered | Delivery | delivered | delivered | Delivery |
| deferred | DeliveryDelay | deferred | failed (temporary) | — |
| bounced hard | Bounce Permanent | bounce | failed (permanent) | HardBounce, BadEmailAddress |
| bounced soft | Bounce Transient/Undetermined | bounce type blocked | — | other Bounce types |
| complained | Complaint | spamreport | complained | SpamComplaint |
| opened | Open | open | opened | Open |
| clicked | Click | click | clicked | Click |
| unsubscribed | Subscription | (group_)unsubscribe | unsubscribed | SubscriptionChange |
| rejected | Reject | dropped | rejected | — |
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, Literal

from gateway.events import Event, EventKind
from gateway.providers.http_api import GATEWAY_DELIVERY_ID, GATEWAY_MESSAGE_ID

ProviderKind = Literal["ses", "sendgrid", "mailgun", "postmark"]


class PayloadError(ValueError):
    """The payload is not shaped like the provider's documented events."""


def _event(
    provider: ProviderKind,
    kind: EventKind,
    recipient: object,
    at: float,
    ids: dict[str, Any],
    event_id: str,
    *,
    bounce: Literal["hard", "soft", ""] = "",
    detail: str = "",
    provider_message_id: str = "",
) -> Event:
    if not isinstance(recipient, str) or "@" not in recipient:
        raise PayloadError(f"{provider} event {event_id!r} has no recipient address")
    try:
        delivery_id = int(ids.get(GATEWAY_DELIVERY_ID) or 0)
    except (TypeError, ValueError):
        delivery_id = 0
    data = {"origin": "webhook"}
    if provider_message_id:
        data["provider_message_id"] = provider_message_id
    return Event(
        type=kind,
        tenant="",
        recipient=recipient.strip(),
        at=at,
        message_id=str(ids.get(GATEWAY_MESSAGE_ID) or ""),
        delivery_id=delivery_id,
        provider=provider,
        bounce=bounce,
        event_id=f"{provider}:{event_id}",
        detail=detail[:500],
        data=data,
    )


def _iso(value: object, now: float) -> float:
    if not isinstance(value, str):
        return now
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        # .NET-style seven-digit fractions ("…54.9070259Z") are too precise for Python 3.11
        head, dot, rest = value.partition(".")
        if not dot:
            return now
        digits = "".join(c for c in rest if c.isdigit())[:6]
        return _iso(f"{head}.{digits}+00:00", now) if digits else now
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"{what} must be a JSON object")
    return value


def _optional_object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise PayloadError(f"{what} must be a JSON array")
    return value


# --- SES (the Message of an SNS Notification) -------------------------------------------------


def ses_events(record: dict[str, Any], *, sns_message_id: str, now: float) -> list[Event]:
    """Event publishing records (``eventType``) and identity notifications
    (``notificationType``) alike."""
    kind = record.get("eventType") or record.get("notificationType")
    mail = _object(record.get("mail"), "mail")
    tags = _optional_object(mail.get("tags"))
    # A tag SES lists with two different values cannot say which delivery it means.
    ids = {k: v[0] for k, v in tags.items() if isinstance(v, list) and len(set(v)) == 1}
    pmid = str(mail.get("messageId", ""))
    destination: list[Any] = mail.get("destination") or []
    if not isinstance(destination, list):
        raise PayloadError("mail.destination must be a JSON array")

    def each(recipients: list[Any], make: Callable[[Any], Event]) -> list[Event]:
        return [make(r) for r in recipients]

    def base(r: object, ours: EventKind, at: object, **kw: Any) -> Event:
        return _event(
            "ses",
            ours,
            r,
            _iso(at, now),
            ids,
            f"{sns_message_id}:{r}",
            provider_message_id=pmid,
            **kw,
        )

    if kind == "Delivery":
        delivery = _object(record.get("delivery"), "delivery")
        return each(
            _list(delivery.get("recipients"), "delivery.recipients"),
            lambda r: base(
                r,
                "delivered",
                delivery.get("timestamp"),
                detail=str(delivery.get("smtpResponse", "")),
            ),
        )
    if kind == "Bounce":
        bounce = _object(record.get("bounce"), "bounce")
        hard = bounce.get("bounceType") == "Permanent"
        return each(
            _list(bounce.get("bouncedRecipients"), "bounce.bouncedRecipients"),
            lambda r: base(
                _object(r, "bouncedRecipients[]").get("emailAddress"),
                "bounced",
                bounce.get("timestamp"),
                bounce="hard" if hard else "soft",
                detail=str(r.get("diagnosticCode") or bounce.get("bounceSubType", "")),
            ),
        )
    if kind == "Complaint":
        complaint = _object(record.get("complaint"), "complaint")
        return each(
            _list(complaint.get("complainedRecipients"), "complaint.complainedRecipients"),
            lambda r: base(
                _object(r, "complainedRecipients[]").get("emailAddress"),
                "complained",
                complaint.get("timestamp"),
                detail=str(complaint.get("complaintFeedbackType", "")),
            ),
        )
    if kind == "DeliveryDelay":
        delay = _object(record.get("deliveryDelay"), "deliveryDelay")
        return each(
            _list(delay.get("delayedRecipients"), "deliveryDelay.delayedRecipients"),
            lambda r: base(
                _object(r, "delayedRecipients[]").get("emailAddress"),
                "deferred",
                delay.get("timestamp"),
                detail=str(r.get("diagnosticCode") or delay.get("delayType", "")),
            ),
        )
    simple: dict[str, tuple[EventKind, str]] = {
        "Reject": ("rejected", "reject"),
        "Open": ("opened", "open"),
        "Click": ("clicked", "click"),
        "Subscription": ("unsubscribed", "subscription"),
    }
    if kind in simple:
        ours, key = simple[kind]
        body = _object(record.get(key), key)
        detail = str(body.get("link") or body.get("reason") or "")
        return each(destination, lambda r: base(r, ours, body.get("timestamp"), detail=detail))
    if isinstance(kind, str):
        return []  # Send, Rendering Failure, AmazonSnsSubscriptionSucceeded …
    raise PayloadError("an SES record needs eventType or notificationType")


# --- SendGrid ---------------------------------------------------------------------------------

_SENDGRID: dict[str, EventKind] = {
    "delivered": "delivered",
    "deferred": "deferred",
    "bounce": "bounced",
    "dropped": "rejected",
    "spamreport": "complained",
    "open": "opened",
    "click": "clicked",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
}


def sendgrid_events(payload: object, *, now: float) -> list[Event]:
    events = []
    for item in _list(payload, "the SendGrid payload"):
        entry = _object(item, "a SendGrid event")
        kind = entry.get("event")
        event_id = entry.get("sg_event_id")
        if not isinstance(kind, str) or not isinstance(event_id, str):
            raise PayloadError("a SendGrid event needs event and sg_event_id strings")
        ours = _SENDGRID.get(kind)
        if ours is None:
            continue  # processed, group_resubscribe …
        at = entry.get("timestamp")
        bounce: Literal["hard", "soft", ""] = ""
        if ours == "bounced":
            bounce = "soft" if entry.get("type") == "blocked" else "hard"
        detail = str(entry.get("reason") or entry.get("response") or entry.get("url") or "")
        events.append(
            _event(
                "sendgrid",
                ours,
                entry.get("email"),
                float(at) if isinstance(at, int | float) else now,
                entry,
                event_id,
                bounce=bounce,
                detail=detail,
                provider_message_id=str(entry.get("sg_message_id", "")),
            )
        )
    return events


# --- Mailgun ----------------------------------------------------------------------------------

_MAILGUN: dict[str, EventKind] = {
    "delivered": "delivered",
    "opened": "opened",
    "clicked": "clicked",
    "unsubscribed": "unsubscribed",
    "complained": "complained",
    "rejected": "rejected",
}


def mailgun_events(event_data: object, *, now: float) -> list[Event]:
    data = _object(event_data, "event-data")
    kind = data.get("event")
    event_id = data.get("id")
    if not isinstance(kind, str) or not isinstance(event_id, str):
        raise PayloadError("event-data needs event and id strings")
    variables = data.get("user-variables")
    ids = variables if isinstance(variables, dict) else {}
    status = _optional_object(data.get("delivery-status"))
    detail = str(status.get("message") or status.get("description") or data.get("reason") or "")
    headers = _optional_object(_optional_object(data.get("message")).get("headers"))
    pmid = str(headers.get("message-id", ""))
    at = data.get("timestamp")
    when = float(at) if isinstance(at, int | float) else now
    bounce: Literal["hard", "soft", ""] = ""
    if kind == "failed":
        if data.get("severity") == "permanent":
            ours: EventKind = "bounced"
            bounce = "hard"
        else:
            ours = "deferred"
    elif kind in _MAILGUN:
        ours = _MAILGUN[kind]
        if kind == "clicked":
            detail = str(data.get("url", ""))
    else:
        return []  # accepted, stored, list events …
    return [
        _event(
            "mailgun",
            ours,
            data.get("recipient"),
            when,
            ids,
            event_id,
            bounce=bounce,
            detail=detail,
            provider_message_id=pmid,
        )
    ]


# --- Postmark ---------------------------------------------------------------------------------

HARD_BOUNCE_TYPES = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})


def postmark_events(payload: object, *, now: float) -> list[Event]:
    record = _object(payload, "the Postmark payload")
    kind = record.get("RecordType")
    metadata = record.get("Metadata")
    ids = metadata if isinstance(metadata, dict) else {}
    pmid = str(record.get("MessageID", ""))
    recipient = record.get("Recipient") or record.get("Email")

    def one(ours: EventKind, at: object, key: str, **kw: Any) -> list[Event]:
        return [
            _event(
                "postmark",
                ours,
                recipient,
                _iso(at, now),
                ids,
                f"{kind}:{key}:{pmid}:{recipient}",
                provider_message_id=pmid,
                **kw,
            )
        ]

    if kind == "Delivery":
        return one(
            "delivered", record.get("DeliveredAt"), "", detail=str(record.get("Details", ""))
        )
    if kind == "Bounce":
        bounce_type = str(record.get("Type", ""))
        detail = f"{bounce_type}: {record.get('Description', '')} {record.get('Details', '')}"
        return one(
            "bounced",
            record.get("BouncedAt"),
            str(record.get("ID", "")),
            bounce="hard" if bounce_type in HARD_BOUNCE_TYPES else "soft",
            detail=detail.strip(),
        )
    if kind == "SpamComplaint":
        return one("complained", record.get("BouncedAt"), str(record.get("ID", "")))
    if kind == "Open":
        return one("opened", record.get("ReceivedAt"), str(record.get("ReceivedAt", "")))
    if kind == "Click":
        return one(
            "clicked",
            record.get("ReceivedAt"),
            str(record.get("ReceivedAt", "")),
            detail=str(record.get("OriginalLink", "")),
        )
    if kind == "SubscriptionChange":
        if record.get("SuppressSending") is not True:
            return []
        return one(
            "unsubscribed",
            record.get("ChangedAt"),
            str(record.get("ChangedAt", "")),
            detail=str(record.get("SuppressionReason", "")),
        )
    if isinstance(kind, str):
        return []
    raise PayloadError("a Postmark webhook needs a RecordType")
