"""``/v1/messages``: send (JSON or raw RFC 5322), batch send, status, listing.

Every send goes through ``Ingress.accept`` — the same door as SMTP — and is answered ``202``
only once the spool write is durable. With an ``Idempotency-Key`` header the key is stored in
the same transaction as the message, so a retried request returns the first answer and the
message is queued once (keys are kept for 24 hours).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from email import policy as email_policy
from email.parser import BytesHeaderParser
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, FromQuery, QueryParameter

from gateway.api.auth import requires
from gateway.api.context import ApiContext
from gateway.api.mime import (
    Attachment,
    CheckedAddress,
    Composition,
    DecodedAttachment,
    Recipient,
    build_message,
    check_address,
    check_attachments,
    check_header_text,
    check_headers,
)
from gateway.api.problems import (
    Problem,
    ProblemDetail,
    decode_json,
    query_time,
    rejected_problem,
)
from gateway.ingress import Rejected, Submission, content_problem
from gateway.message import DeliveryStatus
from gateway.store.base import (
    TENANT_SCOPE,
    IdempotencyClaim,
    IdempotencyConflict,
    IdempotencyEntry,
    MessageEvent,
    MessageMeta,
    MessageQuery,
    MessageRecord,
    StoreError,
    Suppression,
    stream_scope,
)
from gateway.streams import TRANSACTIONAL, stream_section, take_header
from gateway.templates.protocol import TemplateSource
from gateway.tenants import ApiKey

IDEMPOTENCY_TTL = 24 * 3600.0
MAX_SCHEDULE = 30 * 86400.0
"""How far ahead ``send_at`` may be."""
MAX_BATCH = 1000
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_TAG = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,64}$")
_ID = re.compile(r"^[0-9a-f]{22}$")

_YEAR = "(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
SEND_AT_PATTERN = (
    "^(?:"
    f"{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    f"|{_LEAP_YEAR}-02-29"
    ")[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:[.][0-9]+)?"
    "(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)
"""The RFC 3339 ``date-time`` values ``send_at`` takes: a zone is required, and a leap second
(``:60``) is refused, since no clock here can hold it. Every value that matches is accepted."""
_SEND_AT = re.compile(SEND_AT_PATTERN)
_SEND_AT_PROBLEM = "expected an RFC 3339 time with a time zone, e.g. 2030-01-31T09:00:00Z"

# --- request Structs -------------------------------------------------------------------------


class Tracking(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Per-message switches for the tracking plugins; ``null`` means the tenant's default."""

    opens: bool | None = None
    clicks: bool | None = None


class _Content(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    from_: Recipient = msgspec.field(name="from")
    reply_to: list[Recipient] = msgspec.field(default_factory=list)
    subject: str
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    attachments: list[Attachment] = msgspec.field(default_factory=list)
    tags: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    tracking: Tracking = msgspec.field(default_factory=Tracking)
    send_at: str | None = None
    """RFC 3339 time with a zone (``SEND_AT_PATTERN``); the message is held until then (at most
    30 days ahead)."""
    stream: str | None = None
    """The tenant's message stream (``transactional`` when not given)."""


class SendRequest(_Content, kw_only=True):
    """One message to one or more recipients."""

    to: list[Recipient] = msgspec.field(default_factory=list)
    cc: list[Recipient] = msgspec.field(default_factory=list)
    bcc: list[Recipient] = msgspec.field(default_factory=list)


class BatchRecipient(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    to: Recipient
    variables: dict[str, Any] = msgspec.field(default_factory=dict)
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    """Merged over the request's ``metadata`` for this recipient's message."""


class BatchRequest(_Content, kw_only=True):
    """One template, many recipients: subject, text and html are Jinja2 templates rendered
    in a sandbox with each recipient's ``variables``; each recipient gets their own message."""

    recipients: Annotated[list[BatchRecipient], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


# --- response Structs ------------------------------------------------------------------------

RecipientState = Literal["queued", "scheduled", "suppressed"]


class RecipientResult(msgspec.Struct, omit_defaults=True, kw_only=True):
    email: str
    status: RecipientState
    reason: str | None = None
    scope: str | None = None
    """For ``suppressed``: the entry's scope (``tenant`` or ``stream:<name>``)."""


class SendResponse(msgspec.Struct, kw_only=True):
    id: str
    status: Literal["queued", "scheduled"]
    send_at: dt.datetime | None = None
    recipients: list[RecipientResult]


class BatchItem(msgspec.Struct, omit_defaults=True, kw_only=True):
    index: int
    email: str
    status: Literal["queued", "scheduled", "suppressed", "failed"]
    id: str | None = None
    error: ProblemDetail | None = None


class BatchResponse(msgspec.Struct, kw_only=True):
    queued: int
    suppressed: int
    failed: int
    results: list[BatchItem]


class DeliveryView(msgspec.Struct, kw_only=True):
    email: str
    status: DeliveryStatus
    attempts: int
    last_error: str
    provider: str
    next_attempt_at: dt.datetime | None
    updated_at: dt.datetime


class EventView(msgspec.Struct, omit_defaults=True, kw_only=True):
    at: dt.datetime
    type: str
    recipient: str = ""
    provider: str = ""
    detail: str = ""


class MessageView(msgspec.Struct, kw_only=True):
    id: str
    created_at: dt.datetime
    from_: str = msgspec.field(name="from")
    subject: str
    message_id: str
    """The Message-ID header."""
    source: str
    stream: str
    size: int
    tags: list[str]
    metadata: dict[str, str]
    tracking: dict[str, bool]
    send_at: dt.datetime | None
    recipients: list[DeliveryView]
    events: list[EventView] | None = None
    """Only on ``GET /v1/messages/{id}``."""


class MessageList(msgspec.Struct, kw_only=True):
    data: list[MessageView]
    next_cursor: str | None
    """Pass as ``cursor`` for the next (older) page; ``null`` on the last page."""


# --- checks shared by single and batch sends -------------------------------------------------


def _timestamp(value: str | None, now: float, field: str = "send_at") -> float | None:
    """``send_at`` as epoch seconds, or ``None`` for "now"."""
    if value is None:
        return None
    if not _SEND_AT.match(value):
        raise Problem.invalid(field, _SEND_AT_PROBLEM)
    at = msgspec.convert(value, dt.datetime).timestamp()
    if at > now + MAX_SCHEDULE:
        raise Problem.invalid(field, "may be at most 30 days ahead")
    return at if at > now else None


def _check_meta(request: _Content) -> MessageMeta:
    if len(request.tags) > 10:
        raise Problem.invalid("tags", "at most 10 tags")
    for i, tag in enumerate(request.tags):
        if not _TAG.match(tag):
            raise Problem.invalid(f"tags[{i}]", "1-64 characters: letters, digits and _.:/@+-")
    _check_metadata(request.metadata, "metadata")
    tracking = {k: v for k, v in msgspec.structs.asdict(request.tracking).items() if v is not None}
    return MessageMeta(tags=tuple(request.tags), metadata=request.metadata, tracking=tracking)


def _check_metadata(metadata: dict[str, str], field: str) -> None:
    if len(metadata) > 20:
        raise Problem.invalid(field, "at most 20 keys")
    for k, v in metadata.items():
        if not 1 <= len(k) <= 64 or len(v) > 1024:
            raise Problem.invalid(f"{field}.{k}", "keys are 1-64 characters, values at most 1024")


def _check_sender(api: ApiContext, key: ApiKey, address: CheckedAddress, field: str) -> None:
    domain = address.email.rpartition("@")[2]
    if not api.ingress.senders.domain_allowed(key.tenant, domain):
        allowed = [d.lower() for d in api.tenant(key.tenant).sending_domains]
        listed = f"one of this tenant's sending domains ({', '.join(allowed)})"
        raise Problem.invalid(
            field, f"{domain} is not {listed if allowed else 'a domain this tenant may use'}"
        )


def _check_body(request: _Content) -> None:
    if request.text is None and request.html is None:
        raise Problem.invalid("text", "give text, html or both")


class _Prepared(msgspec.Struct, kw_only=True):
    """The parts of a request that are the same for every recipient."""

    sender: CheckedAddress
    reply_to: list[CheckedAddress]
    headers: list[tuple[str, str]]
    attachments: list[DecodedAttachment]
    meta: MessageMeta
    not_before: float | None
    stream: str


def _check_stream(api: ApiContext, key: ApiKey, name: str | None, field: str = "stream") -> str:
    """The stream a send names (``transactional`` when none), if the tenant has it."""
    chosen = name or TRANSACTIONAL
    if stream_section(api.config, key.tenant, chosen) is None:
        raise Problem.invalid(field, f"this tenant has no message stream {chosen!r}")
    return chosen


def _scopes(stream: str) -> tuple[str, ...]:
    """The suppression scopes that stop a send in ``stream`` (plugins' extra scopes, such as
    lists, are checked when the delivery is processed)."""
    return (TENANT_SCOPE, stream_scope(stream))


def _prepare(api: ApiContext, key: ApiKey, request: _Content) -> _Prepared:
    sender = check_address(request.from_, "from")
    _check_sender(api, key, sender, "from")
    _check_body(request)
    check_header_text(request.subject, "subject")
    return _Prepared(
        sender=sender,
        reply_to=[check_address(a, f"reply_to[{i}]") for i, a in enumerate(request.reply_to)],
        headers=check_headers(request.headers),
        attachments=check_attachments(request.attachments),
        meta=_check_meta(request),
        not_before=_timestamp(request.send_at, api.clock.now()),
        stream=_check_stream(api, key, request.stream),
    )


# --- idempotency -----------------------------------------------------------------------------


def _idempotency_key(request: Request[Any, Any, Any]) -> str | None:
    value = request.headers.get("idempotency-key")
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.match(value):
        raise Problem(
            400,
            "invalid-header",
            "Invalid header",
            "Idempotency-Key: 1-255 printable ASCII characters",
            field="Idempotency-Key",
        )
    return value


def _fingerprint(request: Request[Any, Any, Any], body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (
        request.method,
        request.url.path,
        str(request.url.query),
        request.headers.get("content-type", ""),
    ):
        digest.update(part.encode() + b"\0")
    digest.update(body)
    return digest.hexdigest()


def _check_replay(entries: list[IdempotencyEntry], fingerprint: str) -> None:
    if entries and entries[0].fingerprint != fingerprint:
        raise Problem(
            422,
            "idempotency-key-reused",
            "Idempotency key reused",
            "this Idempotency-Key was used with a different request in the last 24 hours",
            field="Idempotency-Key",
        )


_REPLAYED = {"Idempotent-Replayed": "true"}


# --- the controller --------------------------------------------------------------------------


class MessagesController(Controller):
    path = "/v1/messages"
    tags = ["messages"]

    @post(
        "/",
        guards=[requires("send")],
        status_code=202,
        summary="Send a message",
        description="JSON (`application/json`, the schema below) or a complete RFC 5322 "
        "message (`message/rfc822`; envelope from the `from`/`to` query parameters or the "
        "From/To/Cc headers). Answered only once the message is durable in the spool.",
    )
    async def send(self, request: Request[Any, Any, Any]) -> Response[SendResponse]:
        api = ApiContext.of(request)
        key: ApiKey = request.state.api_key
        body = await request.body()
        idempotency = _idempotency_key(request)
        fingerprint = _fingerprint(request, body) if idempotency is not None else ""
        if idempotency is not None:
            entries = await api.store.find_idempotency(key.tenant, idempotency, api.clock.now())
            _check_replay(entries, fingerprint)
            if entries:
                return _replay_send(entries[0])
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type == "message/rfc822":
            submission, not_before, result = await _raw_submission(api, key, request, body)
        elif media_type in ("application/json", ""):
            _check_raw_message_params(request)  # documented for the operation: never ignored
            submission, not_before, result = await _json_submission(
                api, key, decode_json(body, SendRequest)
            )
        else:
            raise Problem(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                "send application/json or message/rfc822",
                field="Content-Type",
            )
        submission.client_address = _client_address(request)
        claim = None
        if idempotency is not None:
            claim = IdempotencyClaim(
                tenant=key.tenant,
                key=idempotency,
                fingerprint=fingerprint,
                response=msgspec.json.encode(result),
                expires_at=api.clock.now() + IDEMPOTENCY_TTL,
            )
        try:
            message = await api.ingress.accept(submission, not_before=not_before, idempotency=claim)
        except IdempotencyConflict:
            # The same request raced us and won: answer what it answered.
            assert idempotency is not None
            entries = await api.store.find_idempotency(key.tenant, idempotency, api.clock.now())
            _check_replay(entries, fingerprint)
            return _replay_send(entries[0])
        return Response(msgspec.structs.replace(result, id=message.id), status_code=202)

    @post(
        "/batch",
        guards=[requires("send")],
        status_code=202,
        summary="Send one template to up to 1,000 recipients",
        description="Each recipient gets their own message, rendered with their variables; "
        "the answer lists each recipient's result in request order.",
    )
    async def batch(self, request: Request[Any, Any, Any]) -> Response[BatchResponse]:
        api = ApiContext.of(request)
        key: ApiKey = request.state.api_key
        body = await request.body()
        idempotency = _idempotency_key(request)
        fingerprint = _fingerprint(request, body) if idempotency is not None else ""
        batch = decode_json(body, BatchRequest)
        prepared = _prepare(api, key, batch)
        templates = [
            TemplateSource("subject", batch.subject),
            *([TemplateSource("text", batch.text)] if batch.text is not None else []),
            *([TemplateSource("html", batch.html, html=True)] if batch.html is not None else []),
        ]
        addresses = [
            check_address(r.to, f"recipients[{i}].to") for i, r in enumerate(batch.recipients)
        ]
        for i, r in enumerate(batch.recipients):
            _check_metadata(r.metadata, f"recipients[{i}].metadata")
        done: dict[int, IdempotencyEntry] = {}
        if idempotency is not None:
            entries = await api.store.find_idempotency(key.tenant, idempotency, api.clock.now())
            _check_replay(entries, fingerprint)
            done = {e.part: e for e in entries}
        suppressed = await api.store.suppressed(
            key.tenant, [a.email for a in addresses], _scopes(prepared.stream)
        )
        sender = _BatchSender(
            api,
            key,
            batch,
            prepared,
            templates,
            idempotency,
            fingerprint,
            _client_address(request),
        )
        items = await sender.run(addresses, done, suppressed)
        if items and all(r.error is not None and r.error.status == 503 for r in items):
            raise StoreError("no recipient of the batch could be stored")
        counts = {s: sum(1 for r in items if r.status == s) for s in ("suppressed", "failed")}
        return Response(
            BatchResponse(
                queued=len(items) - counts["suppressed"] - counts["failed"],
                suppressed=counts["suppressed"],
                failed=counts["failed"],
                results=items,
            ),
            status_code=202,
            headers=_REPLAYED if done and len(done) == len(addresses) else None,
        )

    @get("/{message_id:str}", guards=[requires("read")], summary="A message and its timeline")
    async def show(self, request: Request[Any, Any, Any], message_id: FromPath[str]) -> MessageView:
        api = ApiContext.of(request)
        key: ApiKey = request.state.api_key
        record = None
        if _ID.match(message_id):
            record = await api.store.message_record(key.tenant, message_id)
        if record is None:
            # Another tenant's message is "not found" too: ids are not an oracle.
            raise Problem(
                404, "not-found", "Not found", f"no message {message_id}", field="message_id"
            )
        view = _view(record)
        view.events = [_event_view(e) for e in await api.store.timeline(record.id)]
        return view

    @get("/", guards=[requires("read")], summary="List messages, newest first")
    async def index(
        self,
        request: Request[Any, Any, Any],
        status: FromQuery[DeliveryStatus | None] = None,
        tag: FromQuery[str | None] = None,
        stream: FromQuery[str | None] = None,
        recipient: FromQuery[str | None] = None,
        since: Annotated[str | None, QueryParameter(format="date-time")] = None,
        until: Annotated[str | None, QueryParameter(format="date-time")] = None,
        cursor: Annotated[str | None, QueryParameter(pattern="^[0-9a-f]{22}$")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> MessageList:
        api = ApiContext.of(request)
        key: ApiKey = request.state.api_key
        if cursor is not None and not _ID.match(cursor):
            raise Problem(
                400,
                "invalid-parameter",
                "Invalid parameter",
                "cursor: use the next_cursor of a previous page",
                field="cursor",
            )
        records = await api.store.list_messages(
            MessageQuery(
                tenant=key.tenant,
                status=status,
                tag=tag,
                stream=stream,
                recipient=recipient,
                since=query_time(since, "since"),
                until=query_time(until, "until"),
                before_id=cursor,
                limit=limit,
            )
        )
        return MessageList(
            data=[_view(r) for r in records],
            next_cursor=records[-1].id if len(records) == limit else None,
        )


# --- single send helpers ---------------------------------------------------------------------


async def _json_submission(
    api: ApiContext, key: ApiKey, request: SendRequest
) -> tuple[Submission, float | None, SendResponse]:
    prepared = _prepare(api, key, request)
    to = [check_address(a, f"to[{i}]") for i, a in enumerate(request.to)]
    cc = [check_address(a, f"cc[{i}]") for i, a in enumerate(request.cc)]
    bcc = [check_address(a, f"bcc[{i}]") for i, a in enumerate(request.bcc)]
    everyone = [*to, *cc, *bcc]
    if not everyone:
        raise Problem.invalid("to", "give at least one recipient in to, cc or bcc")
    _check_recipient_count(api, len(everyone))
    raw = build_message(
        Composition(
            sender=prepared.sender,
            to=to,
            cc=cc,
            reply_to=prepared.reply_to,
            subject=request.subject,
            text=request.text,
            html=request.html,
            headers=prepared.headers,
            attachments=prepared.attachments,
        ),
        now=api.clock.now(),
        max_size=api.config.smtp.max_message_size,
    )
    utf8 = any(a.utf8 for a in (prepared.sender, *everyone))
    return await _submission(
        api,
        key,
        prepared.sender.email,
        everyone,
        raw,
        utf8,
        prepared.meta,
        prepared.not_before,
        prepared.stream,
    )


async def _raw_submission(
    api: ApiContext, key: ApiKey, request: Request[Any, Any, Any], raw: bytes
) -> tuple[Submission, float | None, SendResponse]:
    """A complete message, stored byte for byte (ingress prepends only trace headers)."""
    if len(raw) > api.config.smtp.max_message_size:
        raise Problem(
            413,
            "message-too-large",
            "Message too large",
            f"the limit is {api.config.smtp.max_message_size} bytes",
        )
    problem = content_problem(raw)
    if problem is not None:
        raise Problem(422, "invalid-message", "Invalid message", problem.text, field="body")
    params = request.query_params
    headers = BytesHeaderParser(policy=email_policy.default).parsebytes(raw)
    if headers.get("Bcc") is not None:
        raise Problem.invalid(
            "Bcc",
            "a raw message may not carry a Bcc header (every recipient would see it); "
            "pass hidden recipients as 'to' query parameters",
        )
    try:
        header_from = [a.addr_spec for a in headers["From"].addresses]
        header_to = [
            a.addr_spec
            for name in ("To", "Cc")
            if headers.get(name) is not None
            for a in headers[name].addresses
        ]
    except (AttributeError, TypeError, ValueError, IndexError):
        raise Problem.invalid("body", "the From, To or Cc header cannot be parsed") from None
    if len(header_from) != 1:
        raise Problem.invalid("From", "the From header must hold exactly one address")
    from_header = check_address(header_from[0], "From")
    _check_sender(api, key, from_header, "From")
    sender = from_header
    if params.get("from") is not None:
        sender = check_address(params["from"], "from")
        _check_sender(api, key, sender, "from")
    given = params.getall("to", [])
    field = "to" if given else "To"
    recipients = [check_address(a, f"{field}[{i}]") for i, a in enumerate(given or header_to)]
    if not recipients:
        raise Problem.invalid("to", "no recipients: pass 'to' query parameters or a To header")
    _check_recipient_count(api, len(recipients))
    tags = params.getall("tag", [])
    for i, tag in enumerate(tags):
        if not _TAG.match(tag):
            raise Problem.invalid(f"tag[{i}]", "1-64 characters: letters, digits and _.:/@+-")
    not_before = _timestamp(params.get("send_at"), api.clock.now())
    utf8 = not raw.isascii() or any(a.utf8 for a in (sender, *recipients))
    stream = _check_stream(api, key, params.get("stream") or take_header(raw)[1])
    return await _submission(
        api,
        key,
        sender.email,
        recipients,
        raw,
        utf8,
        MessageMeta(tags=tuple(tags)),
        not_before,
        stream,
    )


def _check_raw_message_params(request: Request[Any, Any, Any]) -> None:
    """The ``message/rfc822`` query parameters are well-formed (they apply to raw messages)."""
    params = request.query_params
    if params.get("from") is not None:
        check_address(params["from"], "from")
    for i, address in enumerate(params.getall("to", [])):
        check_address(address, f"to[{i}]")
    for i, tag in enumerate(params.getall("tag", [])):
        if not _TAG.match(tag):
            raise Problem.invalid(f"tag[{i}]", "1-64 characters: letters, digits and _.:/@+-")
    send_at = params.get("send_at")
    if send_at is not None and not _SEND_AT.match(send_at):
        raise Problem.invalid("send_at", _SEND_AT_PROBLEM)


def _check_recipient_count(api: ApiContext, count: int) -> None:
    limit = api.config.smtp.max_recipients
    if count > limit:
        raise Problem.invalid("to", f"at most {limit} recipients per message (smtp.max_recipients)")


async def _submission(
    api: ApiContext,
    key: ApiKey,
    mail_from: str,
    recipients: Sequence[CheckedAddress],
    raw: bytes,
    utf8: bool,
    meta: MessageMeta,
    not_before: float | None,
    stream: str,
) -> tuple[Submission, float | None, SendResponse]:
    unique = list(dict.fromkeys(a.email for a in recipients))
    suppressed = await api.store.suppressed(key.tenant, unique, _scopes(stream))
    state: Literal["queued", "scheduled"] = "scheduled" if not_before is not None else "queued"
    results = [
        RecipientResult(
            email=a,
            status="suppressed",
            reason=suppressed[a.lower()].reason,
            scope=suppressed[a.lower()].scope,
        )
        if a.lower() in suppressed
        else RecipientResult(email=a, status=state)
        for a in unique
    ]
    deliver_to = [r.email for r in results if r.status != "suppressed"]
    if not deliver_to:
        raise Problem(
            422,
            "recipients-suppressed",
            "All recipients suppressed",
            "every recipient is on this tenant's suppression list; nothing was queued",
            field="to",
        )
    submission = Submission(
        tenant=key.tenant,
        mail_from=mail_from,
        recipients=deliver_to,
        raw=raw,
        source="http",
        smtp_utf8=utf8,
        client_name=key.name,
        protocol="HTTP",
        meta=meta,
        stream=stream,
    )
    send_at = None if not_before is None else dt.datetime.fromtimestamp(not_before, dt.UTC)
    return (
        submission,
        not_before,
        SendResponse(id="", status=state, send_at=send_at, recipients=results),
    )


def _client_address(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client is not None else ""


def _replay_send(entry: IdempotencyEntry) -> Response[SendResponse]:
    result = msgspec.json.decode(entry.response, type=SendResponse)
    return Response(
        msgspec.structs.replace(result, id=entry.message_id), status_code=202, headers=_REPLAYED
    )


def _limit_problem(field: str, detail: str, limit: str | None) -> Problem:
    return Problem(
        422,
        "template-limit",
        "Template limit exceeded",
        f"{field}: {detail}" if field else detail,
        field=field or None,
        limit=limit,
    )


def _suppressed_problem(reason: str) -> ProblemDetail:
    return ProblemDetail(
        type="urn:gateway:problem:recipient-suppressed",
        title="Recipient suppressed",
        status=422,
        detail=f"on this tenant's suppression list ({reason})",
        field="to",
    )


# --- batch -----------------------------------------------------------------------------------


class _BatchSender:
    """Renders and accepts one recipient of a batch; failures become that recipient's result."""

    def __init__(
        self,
        api: ApiContext,
        key: ApiKey,
        batch: BatchRequest,
        prepared: _Prepared,
        templates: list[TemplateSource],
        idempotency: str | None,
        fingerprint: str,
        client_address: str,
    ) -> None:
        self.api, self.key, self.batch, self.prepared = api, key, batch, prepared
        self.client_address = client_address
        self.templates = templates
        self.idempotency, self.fingerprint = idempotency, fingerprint
        self.state: Literal["queued", "scheduled"] = (
            "scheduled" if prepared.not_before is not None else "queued"
        )

    async def run(
        self,
        addresses: list[CheckedAddress],
        done: dict[int, IdempotencyEntry],
        suppressed: dict[str, Suppression],
    ) -> list[BatchItem]:
        """One result per recipient, in order: replayed, suppressed, or sent now."""
        results: list[BatchItem | None] = [None] * len(addresses)
        pending = []
        for i, address in enumerate(addresses):
            if i in done:
                replayed = msgspec.json.decode(done[i].response, type=BatchItem)
                results[i] = msgspec.structs.replace(replayed, id=done[i].message_id)
            elif address.email.lower() in suppressed:
                reason = suppressed[address.email.lower()].reason
                results[i] = BatchItem(
                    index=i,
                    email=address.email,
                    status="suppressed",
                    error=_suppressed_problem(reason),
                )
            else:
                pending.append(i)
        # Concurrent accepts share the spool's group commits: a batch costs a few fsyncs.
        for start in range(0, len(pending), 200):
            chunk = pending[start : start + 200]
            rendered = await self._render_chunk(chunk, addresses, accepted=start > 0)
            stopped = len(rendered) < len(chunk)
            if stopped:  # a broken limit ended rendering: the rest fail with its problem
                chunk = pending[start:]
                rendered += [rendered[-1]] * (len(chunk) - len(rendered))
            sent = await asyncio.gather(
                *(
                    self.send(i, addresses[i], fields)
                    for i, fields in zip(chunk, rendered, strict=True)
                )
            )
            for i, item in zip(chunk, sent, strict=True):
                results[i] = item
            if stopped:
                break
        return [r for r in results if r is not None]

    async def _render_chunk(
        self, chunk: list[int], addresses: list[CheckedAddress], *, accepted: bool
    ) -> list[dict[str, str] | Problem]:
        """Each recipient's rendered fields or why not, in the worker processes. A template
        that does not compile, or one that breaks a limit before anything was queued, fails
        the whole request (422); a limit broken later ends the list early, with its problem
        last."""
        pool = self.api.renderers
        share = -(-len(chunk) // pool.size)
        parts = [chunk[i : i + share] for i in range(0, len(chunk), share)]
        replies = await asyncio.gather(
            *(
                pool.render(self.templates, [self.batch.recipients[i].variables for i in part])
                for part in parts
            )
        )
        out: list[dict[str, str] | Problem] = []
        for part, reply in zip(parts, replies, strict=True):
            for result in reply:
                failure = result.failure
                if failure is None:
                    assert result.fields is not None
                    out.append(result.fields)
                elif failure.kind == "render":
                    out.append(Problem.invalid(failure.field, failure.detail))
                elif failure.kind == "compile":
                    raise Problem.invalid(failure.field, failure.detail)
                else:
                    problem = _limit_problem(failure.field, failure.detail, failure.limit)
                    if not accepted:
                        raise problem
                    out.append(problem)
                    return out
            if len(reply) < len(part):
                break
        return out

    async def send(
        self, index: int, address: CheckedAddress, fields: dict[str, str] | Problem
    ) -> BatchItem:
        recipient = self.batch.recipients[index]
        if isinstance(fields, Problem):
            return self._failed(index, address, fields)
        try:
            raw = self._compose(fields, address)
        except Problem as p:
            return self._failed(index, address, p)
        item = BatchItem(index=index, email=address.email, status=self.state)
        meta = self.prepared.meta
        if recipient.metadata:
            meta = msgspec.structs.replace(meta, metadata={**meta.metadata, **recipient.metadata})
        submission = Submission(
            tenant=self.key.tenant,
            mail_from=self.prepared.sender.email,
            recipients=[address.email],
            raw=raw,
            source="http",
            smtp_utf8=address.utf8 or self.prepared.sender.utf8,
            client_name=self.key.name,
            client_address=self.client_address,
            protocol="HTTP",
            meta=meta,
            stream=self.prepared.stream,
        )
        claim = None
        if self.idempotency is not None:
            claim = IdempotencyClaim(
                tenant=self.key.tenant,
                key=self.idempotency,
                part=index,
                fingerprint=self.fingerprint,
                response=msgspec.json.encode(item),
                expires_at=self.api.clock.now() + IDEMPOTENCY_TTL,
            )
        try:
            message = await self.api.ingress.accept(
                submission, not_before=self.prepared.not_before, idempotency=claim
            )
        except IdempotencyConflict:
            return self._failed(
                index,
                address,
                Problem(
                    409,
                    "in-progress",
                    "Conflict",
                    "a concurrent request with this Idempotency-Key queued this recipient",
                ),
            )
        except Rejected as refused:
            return self._failed(index, address, rejected_problem(refused.verdict))
        except StoreError:
            return self._failed(
                index,
                address,
                Problem(
                    503,
                    "temporarily-unavailable",
                    "Temporarily unavailable",
                    "a local fault stopped this recipient from being stored; retry",
                ),
            )
        return msgspec.structs.replace(item, id=message.id)

    def _compose(self, rendered: dict[str, str], address: CheckedAddress) -> bytes:
        subject = check_header_text(rendered["subject"], "subject")
        return build_message(
            Composition(
                sender=self.prepared.sender,
                to=[address],
                cc=[],
                reply_to=self.prepared.reply_to,
                subject=subject,
                text=rendered.get("text"),
                html=rendered.get("html"),
                headers=self.prepared.headers,
                attachments=self.prepared.attachments,
            ),
            now=self.api.clock.now(),
            max_size=self.api.config.smtp.max_message_size,
        )

    @staticmethod
    def _failed(index: int, address: CheckedAddress, problem: Problem) -> BatchItem:
        return BatchItem(index=index, email=address.email, status="failed", error=problem.detail)


# --- views -----------------------------------------------------------------------------------


def _time(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


_HEAD_PARSER = BytesHeaderParser(policy=email_policy.default)


def _view(record: MessageRecord) -> MessageView:
    head = _HEAD_PARSER.parsebytes(record.head)
    return MessageView(
        id=record.id,
        created_at=_time(record.created_at),
        from_=record.mail_from,
        subject=str(head.get("Subject", "")),
        message_id=str(head.get("Message-ID", "")).strip(),
        source=record.source,
        size=record.size,
        tags=list(record.meta.tags),
        metadata=record.meta.metadata,
        tracking=record.meta.tracking,
        stream=record.stream,
        send_at=None if record.send_at is None else _time(record.send_at),
        recipients=[
            DeliveryView(
                email=d.recipient,
                status=d.status,
                attempts=d.attempts,
                last_error=d.last_error,
                provider=d.provider,
                next_attempt_at=None if d.status.is_terminal else _time(d.next_attempt_at),
                updated_at=_time(d.updated_at),
            )
            for d in record.deliveries
        ],
    )


def _event_view(event: MessageEvent) -> EventView:
    return EventView(
        at=_time(event.at),
        type=event.type,
        recipient=event.recipient,
        provider=event.provider,
        detail=event.detail,
    )
