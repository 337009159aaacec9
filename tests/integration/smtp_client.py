"""A raw-socket SMTP client for the abuse tests: it says exactly what a test tells it to,
from a chosen loopback source address (all of 127.0.0.0/8 routes to the loopback device)."""

from __future__ import annotations

import socket
from typing import Any

from gateway.server import Gateway


class RawSession:
    """One TCP connection; ``reply()`` reads one (possibly multi-line) SMTP reply."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 10) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        self._buffer = b""

    def send(self, line: str | bytes) -> None:
        data = line.encode() if isinstance(line, str) else line
        self.sock.sendall(data if data.endswith(b"\n") else data + b"\r\n")

    def reply(self) -> str:
        """The next reply, lines joined by newlines; ``""`` when the server closed."""
        lines: list[bytes] = []
        while True:
            while b"\r\n" not in self._buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return b"\n".join(lines).decode()
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return b"\n".join(lines).decode()

    def command(self, line: str | bytes) -> str:
        self.send(line)
        return self.reply()

    def closed(self) -> bool:
        """``True`` once the server has closed (EOF), waiting up to the socket timeout."""
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def limit_hits(gateway: Gateway, listener: str, limit: str) -> float:
    value = gateway.metrics.registry.get_sample_value(
        "gateway_smtp_limit_hits_total", {"listener": listener, "limit": limit}
    )
    return value or 0.0


def code(reply: str) -> tuple[int, str]:
    """``(code, enhanced code)`` of the last line of a reply."""
    last = reply.rsplit("\n", 1)[-1]
    return int(last[:3]), last[4:].split(" ", 1)[0]
