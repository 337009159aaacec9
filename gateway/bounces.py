"""The inbound SMTP listener of the bounce domain: DSNs and ARF complaint reports that come
back to the VERP return paths (``gateway/verp.py``) become the same normalized events as the
providers' webhooks (reported through :func:`gateway.feedback.report`).

* RCPT: only the bounce domain is accepted. A ``<local_part>+…`` address must carry a valid
  signature (a forged or altered one gets ``550 5.7.1``); other local parts of the domain
  (``fbl@``, ``abuse@``, ``postmaster@``) are accepted for feedback loops, whose reports must
  then name a signed return path inside.
* A DSN (RFC 3464: ``multipart/report; report-type=delivery-status``) to a signed return
  path: per recipient, ``Action: failed`` with a ``5.x.x`` status is a hard bounce, with
  ``4.x.x`` a soft one; ``Action: delayed`` is ``deferred``. ``delivered``/``relayed``/
  ``expanded`` and anything that is not a report (auto-replies go to the return path too)
  are accepted and ignored.
* An ARF report (RFC 5965: ``report-type=feedback-report``) is a complaint about the
  delivery named by its ``Original-Mail-From``, or by the ``Return-Path`` of the returned
  message (or headers), or by the envelope recipient.

The event's recipient is the delivery's own recipient from the store — the address the
gateway sent to, whatever a forwarding chain made of it — so the right address is suppressed.
A report is answered ``250`` once its events are recorded; a local fault answers ``451`` so
the sender retries.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import logging
import re
from email.message import EmailMessage, Message
from typing import Any

import msgspec
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.config import BouncesSection
from gateway.events import Event, EventKind
from gateway.feedback import report
from gateway.smtp import GatewaySMTP
from gateway.store.base import DeliveryFilter
from gateway.submission.auth_throttle import AuthThrottle
from gateway.submission.session_limits import SessionRules
from gateway.verp import ReturnPath, VerpError, VerpSigner

log = logging.getLogger("gateway.bounces")

PARSE_IN_THREAD_ABOVE = 64 * 1024
_STATUS = re.compile(r"^\s*([245])\.\d{1,3}\.\d{1,3}")


def parse_report(raw: bytes) -> tuple[str, list[dict[str, str]], EmailMessage]:
    """``(report type, field blocks, parsed message)``: the report type is
    ``delivery-status``, ``feedback-report`` or ``""`` (not a report); the blocks are the
    DSN's per-recipient field groups, or the single feedback-report group."""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    if parsed.get_content_type() != "multipart/report":
        return "", [], parsed
    kind = str(parsed.get_param("report-type", "")).lower()
    for part in parsed.iter_parts():
        ctype = part.get_content_type()
        if kind == "delivery-status" and ctype == "message/delivery-status":
            blocks = [_fields(block) for block in _payload_messages(part)]
            return kind, blocks[1:], parsed  # the first block is per-message
        if kind == "feedback-report" and ctype == "message/feedback-report":
            blocks = [_fields(block) for block in _payload_messages(part)]
            merged: dict[str, str] = {}
            for block in blocks:
                merged.update(block)
            return kind, [merged], parsed
    return kind, [], parsed


def _payload_messages(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    if isinstance(payload, str):  # some parsers keep it as text: split the blocks ourselves
        blocks = re.split(r"\r?\n\r?\n", payload.strip())
        return [email.message_from_string(b + "\n\n") for b in blocks if b.strip()]
    return []


def _fields(block: Message) -> dict[str, str]:
    return {name.lower(): str(value).strip() for name, value in block.items()}


def _address(value: str) -> str:
    """``rfc822; ann@example.org`` or ``<ann@example.org>`` → ``ann@example.org``."""
    return value.partition(";")[2].strip() if ";" in value else value.strip().strip("<>")


def returned_headers(parsed: EmailMessage) -> Message | None:
    """The returned message (or its headers) in a report's third part."""
    for part in parsed.iter_parts():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if ctype in ("text/rfc822-headers", "message/global-headers"):
            text = part.get_content() if isinstance(part, EmailMessage) else ""
            return email.message_from_string(str(text))
    return None


class BounceHandler:
    """aiosmtpd handler of the bounce domain's listener."""

    def __init__(self, gateway: Any, signer: VerpSigner, settings: BouncesSection) -> None:
        self.gateway = gateway
        self.signer = signer
        self.settings = settings

    async def authenticate(self, username: bytes, password: bytes) -> None:
        return None  # the bounce listener takes no AUTH

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not self.signer.is_ours(address):
            return "550 5.7.1 Relaying denied: this server only takes bounces"
        if address.lower().startswith(self.signer.local_part + "+"):
            try:
                self.signer.parse(address)
            except VerpError as e:
                return f"550 5.7.1 Unknown return path: {e}"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.content
        assert isinstance(raw, bytes)
        try:
            if len(raw) > PARSE_IN_THREAD_ABOVE:
                events = await asyncio.to_thread(self._events_of, raw, envelope.rcpt_tos)
            else:
                events = self._events_of(raw, envelope.rcpt_tos)
            resolved = [e for e in [await self._resolve(e) for e in events] if e is not None]
            outcome = await report(self.gateway, resolved)
        except Exception:
            log.exception("could not record a bounce report")
            return "451 4.3.0 Could not record the report; try again later"
        log.info(
            "bounce report from=%s events=%d accepted=%d duplicates=%d",
            envelope.mail_from,
            len(resolved),
            outcome.accepted,
            outcome.duplicates,
        )
        return "250 2.0.0 OK"

    def _events_of(self, raw: bytes, rcpt_tos: list[str]) -> list[tuple[ReturnPath, Event]]:
        """Events with a placeholder recipient, each with the delivery it is about."""
        kind, blocks, parsed = parse_report(raw)
        # A re-sent report has the same Message-ID (or the same bytes): counted once.
        report_id = str(parsed.get("Message-ID", "")).strip() or hashlib.sha256(raw).hexdigest()
        now = self.gateway.clock.now()
        if kind == "delivery-status":
            paths = self._signed(rcpt_tos)
            if not paths:
                return []
            path = paths[0]
            out = []
            for i, block in enumerate(blocks):
                event = _dsn_event(block, now)
                if event is not None:
                    key = f"dsn:{path.message_id}:{path.delivery_id}:{report_id}:{i}"
                    out.append((path, _with(event, path, key)))
            return out
        if kind == "feedback-report" and blocks:
            about = self._complained_about(blocks[0], parsed, rcpt_tos)
            if about is None:
                log.info("feedback report names no return path of ours; ignored")
                return []
            detail = blocks[0].get("feedback-type", "abuse")
            complaint = Event(
                type="complained",
                tenant="",
                recipient="",
                at=now,
                provider="arf",
                detail=f"feedback-type {detail}",
                data={"origin": "arf"},
            )
            key = f"arf:{about.message_id}:{about.delivery_id}:{report_id}"
            return [(about, _with(complaint, about, key))]
        return []

    def _signed(self, addresses: list[str]) -> list[ReturnPath]:
        paths = []
        for address in addresses:
            try:
                paths.append(self.signer.parse(address))
            except VerpError:
                continue
        return paths

    def _complained_about(
        self, fields: dict[str, str], parsed: EmailMessage, rcpt_tos: list[str]
    ) -> ReturnPath | None:
        candidates = [fields.get("original-mail-from", "")]
        original = returned_headers(parsed)
        if original is not None:
            candidates.append(str(original.get("Return-Path", "")))
        candidates += rcpt_tos
        found = self._signed([_address(c) for c in candidates if c])
        return found[0] if found else None

    async def _resolve(self, item: tuple[ReturnPath, Event]) -> Event | None:
        """Fill in the delivery's own recipient from the store."""
        path, event = item
        deliveries = await self.gateway.store.list_deliveries(
            DeliveryFilter(message_id=path.message_id, limit=10_000)
        )
        for delivery in deliveries:
            if delivery.id == path.delivery_id:
                return _replace(event, recipient=delivery.recipient)
        log.info("bounce report for unknown delivery %s/%s", path.message_id, path.delivery_id)
        return None


def _dsn_event(block: dict[str, str], now: float) -> Event | None:
    action = block.get("action", "").lower()
    status = _STATUS.match(block.get("status", ""))
    diagnostic = block.get("diagnostic-code", "") or block.get("status", "")
    kind: EventKind
    bounce: Any = ""
    if action == "failed":
        kind = "bounced"
        bounce = "soft" if status is not None and status.group(1) == "4" else "hard"
    elif action == "delayed":
        kind = "deferred"
    else:
        return None
    return Event(
        type=kind,
        tenant="",
        recipient="",
        at=now,
        provider="dsn",
        bounce=bounce,
        detail=f"{block.get('status', '')} {diagnostic}".strip(),
        data={"origin": "dsn"},
    )


def _with(event: Event, path: ReturnPath, event_id: str) -> Event:
    return _replace(
        event, message_id=path.message_id, delivery_id=path.delivery_id, event_id=event_id
    )


def _replace(event: Event, **changes: Any) -> Event:
    return msgspec.structs.replace(event, **changes)


def make_bounce_protocol_factory(
    handler: BounceHandler,
    *,
    hostname: str,
    settings: BouncesSection,
    rules: SessionRules,
    throttle: AuthThrottle,
) -> Any:
    """A ``loop.create_server`` factory for the bounce listener (session bounds as a
    submission listener's: ``rules``)."""

    def factory() -> GatewaySMTP:
        protocol = GatewaySMTP(
            handler,
            hostname=hostname,
            ident="ESP gateway bounces",
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            auth_require_tls=True,  # no TLS here, so AUTH is never offered
            timeout=settings.timeout,
            loop=asyncio.get_running_loop(),
        )
        protocol.rules = rules
        protocol.throttle = throttle
        return protocol

    return factory
