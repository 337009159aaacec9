"""``capture``: the development default. Each message lands in ``<data_dir>/outbox`` as a
``.eml`` file with a ``.json`` sidecar holding the envelope, so a newcomer can see exactly
what would have been sent (``gateway outbox``). It reports ``sent`` only once both files are
durable (``gateway.durable``): a power cut never leaves an empty ``.eml`` behind a
``delivered``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec

from gateway import durable
from gateway.message import SendResult
from gateway.providers.base import OutboundMessage, Provider


class CapturedEnvelope(msgspec.Struct, kw_only=True):
    message_id: str
    delivery_id: int
    tenant: str
    mail_from: str
    recipient: str
    subject: str
    size: int
    captured_at: float
    file: str


def subject_of(raw: bytes) -> str:
    """The Subject header's raw value (unfolded), or ``""``."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    for i, line in enumerate(lines):
        if line[:8].lower() == b"subject:":
            value = line[8:]
            for more in lines[i + 1 :]:
                if more[:1] not in (b" ", b"\t"):
                    break
                value += more
            return value.strip().decode("utf-8", "replace")
    return ""


class CaptureProvider(Provider):
    def __init__(self, name: str, directory: Path) -> None:
        super().__init__(name)
        self.directory = directory

    async def start(self) -> None:
        await asyncio.to_thread(durable.make_directories, self.directory)

    async def send(self, message: OutboundMessage) -> SendResult:
        try:
            path = await asyncio.to_thread(self._write, message)
        except OSError as e:
            return SendResult.soft_fail(f"capture: cannot write outbox: {e.strerror}")
        # The file's name only: events reach the API, webhooks and the console, which have no
        # business knowing the server's paths (`gateway outbox` shows the full path).
        return SendResult.sent(f"captured to {path.name}", provider_message_id=path.name)

    def _write(self, message: OutboundMessage) -> Path:
        stem = f"{message.message_id}-{message.delivery_id}"
        eml = self.directory / f"{stem}.eml"
        envelope = CapturedEnvelope(
            message_id=message.message_id,
            delivery_id=message.delivery_id,
            tenant=message.tenant,
            mail_from=message.mail_from,
            recipient=message.recipient,
            subject=subject_of(message.raw),
            size=len(message.raw),
            captured_at=time.time(),
            file=str(eml),
        )
        sidecar = eml.with_suffix(".json")
        # The message first: a sidecar (what ``gateway outbox`` lists) never names a lost file.
        durable.write_file(eml, message.raw)
        durable.write_file(sidecar, msgspec.json.encode(envelope))
        return eml


def read_outbox(directory: Path) -> list[CapturedEnvelope]:
    """Captured messages, newest first."""
    if not directory.is_dir():
        return []
    found = [
        msgspec.json.decode(p.read_bytes(), type=CapturedEnvelope) for p in directory.glob("*.json")
    ]
    found.sort(key=lambda e: e.captured_at, reverse=True)
    return found
