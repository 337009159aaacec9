"""Fault injection per API provider: no 2xx, whatever its body, and no failure after the
request was written may lead to a second copy.

A raw TCP server on loopback plays the provider: it answers 2xx with odd bodies, reads the
whole request and then says nothing (read timeout) or drops the connection, or never reads
(write timeout). Each outcome must be ``sent`` (a hand-over), ``maybe_sent`` (outcome
unknown: routing never fails it over at once) or, only when the request never arrived whole,
a plain ``soft_fail`` that may fail over.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Literal

import pytest

from gateway.config import (
    MailgunProviderSection,
    PostmarkProviderSection,
    SendgridProviderSection,
    SesProviderSection,
)
from gateway.message import SendResult
from gateway.providers.base import OutboundMessage
from gateway.providers.http_api import HttpApiProvider
from gateway.providers.mailgun import MailgunProvider
from gateway.providers.postmark import PostmarkProvider
from gateway.providers.sendgrid import SendgridProvider
from gateway.providers.ses import SesProvider
from tests.providers.conftest import finished_message

Mode = Literal["reply", "silent", "close", "reset", "no_read"]
TIMEOUT = 0.5


class FaultServer:
    """Accepts on 127.0.0.1; per connection it does what ``mode`` says. Counts the requests
    it received whole."""

    def __init__(self, mode: Mode, reply: bytes = b"") -> None:
        self.mode = mode
        self.reply = reply
        self.complete_requests = 0
        self.sock = socket.socket()
        if mode == "no_read":
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            if self.mode == "no_read":
                continue
            if not self._read_request(conn):
                continue
            self.complete_requests += 1
            if self.mode == "reply":
                conn.sendall(self.reply)
                conn.close()
            elif self.mode == "close":
                conn.close()
            elif self.mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()

    def _read_request(self, conn: socket.socket) -> bool:
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            body += chunk
        return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.stopped.set()
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        for conn in self.connections:
            conn.close()
        self.thread.join(10)


def make(kind: str, url: str) -> HttpApiProvider:
    if kind == "ses":
        return SesProvider(
            kind,
            SesProviderSection(
                region="eu-west-1",
                access_key_id="AKIDTEST",
                secret_access_key="secret-made-for-this-test",
                endpoint=url,
                timeout=TIMEOUT,
            ),
        )
    if kind == "sendgrid":
        return SendgridProvider(
            kind, SendgridProviderSection(api_key="sg", base_url=url, timeout=TIMEOUT)
        )
    if kind == "mailgun":
        return MailgunProvider(
            kind,
            MailgunProviderSection(
                api_key="mg", domain="mg.example", base_url=url, timeout=TIMEOUT
            ),
        )
    return PostmarkProvider(
        kind, PostmarkProviderSection(server_token="pm", base_url=url, timeout=TIMEOUT)
    )


PROVIDERS = ["ses", "sendgrid", "mailgun", "postmark"]


def response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    return (
        f"HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


ODD_SUCCESSES = {
    "html": response(200, b"<html>ok</html>", "text/html"),
    "empty": response(200, b""),
    "empty-object": response(200, b"{}"),
    "array": response(200, b"[1, 2]"),
    "null": response(200, b"null"),
    "error-code-beside-200": response(200, b'{"ErrorCode": 406, "Message": "odd"}'),
    "202-truncated-json": response(202, b'{"MessageId": "abc'),
}


def message(size: int = 0) -> OutboundMessage:
    raw = finished_message()
    if size:
        raw = raw.replace(b"your order shipped.", b"your order shipped. " + b"x" * size, 1)
    return OutboundMessage(
        message_id="0193aaaabbbbccccdddd01",
        delivery_id=7,
        tenant="acme",
        mail_from="bounce@shop.example",
        recipient="ann@example.org",
        raw=raw,
    )


@pytest.fixture
def fault() -> Iterator[Callable[..., FaultServer]]:
    servers: list[FaultServer] = []

    def start(mode: Mode, reply: bytes = b"") -> FaultServer:
        server = FaultServer(mode, reply)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


async def send(kind: str, url: str, outbound: OutboundMessage) -> SendResult:
    provider = make(kind, url)
    await provider.start()
    try:
        return await provider.send(outbound)
    finally:
        await provider.close()


@pytest.mark.parametrize("body", sorted(ODD_SUCCESSES))
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_any_2xx_is_a_hand_over(
    kind: str, body: str, fault: Callable[..., FaultServer]
) -> None:
    server = fault("reply", ODD_SUCCESSES[body])
    result = await send(kind, server.url, message())
    assert server.complete_requests == 1
    assert result.kind == "sent", result.detail
    assert "warning" in result.detail


@pytest.mark.parametrize("mode", ["silent", "close", "reset"])
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_no_answer_after_the_request_was_written_is_maybe_sent(
    kind: str, mode: Mode, fault: Callable[..., FaultServer]
) -> None:
    server = fault(mode)
    result = await send(kind, server.url, message())
    assert server.complete_requests == 1
    assert result.kind == "soft_fail" and result.maybe_sent, result


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_request_that_never_arrived_whole_may_fail_over(
    kind: str, fault: Callable[..., FaultServer]
) -> None:
    server = fault("no_read")
    result = await send(kind, server.url, message(size=8 * 1024 * 1024))
    assert server.complete_requests == 0
    assert result.kind == "soft_fail" and not result.maybe_sent, result
    assert "WriteTimeout" in result.detail

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: refused before anything was written
    result = await send(kind, f"http://127.0.0.1:{port}", message())
    assert result.kind == "soft_fail" and not result.maybe_sent, result
