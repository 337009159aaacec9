"""A mock provider API on loopback that checks every request against the provider's spec.

A request that does not conform gets ``400`` with the problems as JSON (as the real API
would refuse it), and is recorded with its problems, so a test sees both the provider's
classification and exactly what was wrong. Conforming requests get the answer the test
scripted (default: the provider's documented success answer).
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from tests.providers.spec_check import request_problems


class Recorded(msgspec.Struct):
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    problems: list[str]

    def json(self) -> Any:
        return json.loads(self.body)


Reply = tuple[int, dict[str, str], bytes]
Responder = Callable[[Recorded], Reply]


class MockApi:
    """``start()`` binds 127.0.0.1 on a free port; ``stop()`` shuts that server down."""

    def __init__(self, spec: Path | None, success: Responder) -> None:
        self.spec = spec
        self.success = success
        self.requests: list[Recorded] = []
        self.scripted: list[Reply] = []
        """Answers for the next conforming requests, in order, before ``success`` again."""
        self.extra_routes: dict[tuple[str, str], Responder] = {}
        """(method, path) outside the spec's send operations (credential checks)."""
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> MockApi:
        mock = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                headers = {k: v for k, v in self.headers.items()}
                route = mock.extra_routes.get((self.command, path))
                problems = (
                    []
                    if route is not None or mock.spec is None
                    else request_problems(mock.spec, self.command, path, headers, body)
                )
                recorded = Recorded(self.command, path, query, headers, body, problems)
                mock.requests.append(recorded)
                if route is not None:
                    status, reply_headers, reply = route(recorded)
                elif problems:
                    status, reply_headers = 400, {"Content-Type": "application/json"}
                    reply = json.dumps({"errors": problems}).encode()
                elif mock.scripted:
                    status, reply_headers, reply = mock.scripted.pop(0)
                else:
                    status, reply_headers, reply = mock.success(recorded)
                self.send_response(status)
                for name, value in reply_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)


def json_reply(status: int, body: Any, **headers: str) -> Reply:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode()


def running(mock: MockApi) -> Iterator[MockApi]:
    mock.start()
    try:
        yield mock
    finally:
        mock.stop()
